//! Text from the guest made safe for the host's logs, terminals and error statuses.
//!
//! Every string an agent reply carries passes through [`guest_text`] where the reply enters
//! the host ([`crate::agent_client`]), so nothing downstream sees raw guest bytes: the guest
//! can neither flood a log line nor drive the terminal that prints it.

use std::fmt::Write;

/// Most bytes of escaped guest text kept; the rest is counted in a marker.
pub const GUEST_TEXT_MAX: usize = 4096;

/// `bytes` as bounded, printable text: invalid UTF-8 becomes U+FFFD; control characters
/// (C0, DEL, C1) and bidirectional overrides are escaped (`\n`, `\x1b`, `\u{202e}`); past
/// [`GUEST_TEXT_MAX`] bytes the rest is dropped and replaced by `…(N bytes dropped)`.
pub fn guest_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut taken = 0;
    'chunks: for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid().chars().map(|c| (c, c.len_utf8()));
        let invalid = (!chunk.invalid().is_empty())
            .then_some((char::REPLACEMENT_CHARACTER, chunk.invalid().len()));
        for (c, len) in valid.chain(invalid) {
            let before = out.len();
            push_escaped(&mut out, c);
            if out.len() > GUEST_TEXT_MAX {
                out.truncate(before);
                break 'chunks;
            }
            taken += len;
        }
    }
    if taken < bytes.len() {
        let _ = write!(out, "…({} bytes dropped)", bytes.len() - taken);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0'..='\x1f' | '\x7f'..='\u{9f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        // Bidi embeddings, overrides and isolates, and the Arabic letter mark.
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}' => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_controls(s: &str) -> Vec<char> {
        s.chars()
            .filter(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(c))
            .collect()
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(guest_text(b"no such process"), "no such process");
        assert_eq!(
            guest_text("caf\u{e9} \u{1f600}".as_bytes()),
            "caf\u{e9} \u{1f600}"
        );
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        let s = "a\nb\r\t\x1b[2J\x07\x7f\u{9b}31m\u{202e}gpj.exe";
        assert_eq!(
            guest_text(s.as_bytes()),
            "a\\nb\\r\\t\\x1b[2J\\x07\\x7f\\x9b31m\\u{202e}gpj.exe"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            guest_text(b"ok\xff\xfe!\xe2\x82"),
            "ok\u{fffd}\u{fffd}!\u{fffd}"
        );
    }

    #[test]
    fn a_huge_hostile_message_comes_out_bounded_and_inert() {
        let mut msg = Vec::new();
        while msg.len() < 4 << 20 {
            msg.extend_from_slice(b"\x1b]0;pwned\x07\x1b[31m\r\n\xff\xc2\x9b\xe2\x80\xae");
        }
        let out = guest_text(&msg);
        let (kept, marker) = out.rsplit_once('…').unwrap();
        assert!(kept.len() <= GUEST_TEXT_MAX, "{}", kept.len());
        assert!(raw_controls(&out).is_empty());
        let dropped: usize = marker
            .strip_prefix('(')
            .and_then(|m| m.strip_suffix(" bytes dropped)"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(dropped >= msg.len() - GUEST_TEXT_MAX && dropped < msg.len());
    }

    #[test]
    fn text_at_the_bound_is_kept_whole() {
        let msg = "x".repeat(GUEST_TEXT_MAX);
        assert_eq!(guest_text(msg.as_bytes()), msg);
        let over = guest_text("x".repeat(GUEST_TEXT_MAX + 3).as_bytes());
        assert_eq!(over, format!("{msg}…(3 bytes dropped)"));
    }
}
