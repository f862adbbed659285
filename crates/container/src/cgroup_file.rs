//! Parsing of cgroup interface files, shared by the guest agent (its
//! containers' cgroup v2) and the host's container mode (cgroup v1 or v2).

/// A single-value file such as `memory.current`; `max` (no limit) and
/// anything unparsable read as 0.
pub fn number(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// The value of `key` in a flat-keyed file such as `cpu.stat`,
/// `memory.events` (v2) or `memory.oom_control` (v1); 0 when absent.
pub fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .map_or(0, |(_, v)| number(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_single_values_parse() {
        let cpu = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\n";
        assert_eq!(keyed(cpu, "usage_usec"), 1234);
        assert_eq!(keyed(cpu, "system_usec"), 234);
        assert_eq!(keyed(cpu, "usage"), 0);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), 3);
        assert_eq!(number("max\n"), 0);
        assert_eq!(number("4096\n"), 4096);
    }
}
