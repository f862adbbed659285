//! `skerry list` and `skerry ps`, in runc's output formats.

use std::{
    collections::HashMap,
    fmt::Write as _,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use serde::Serialize;
use skerry_runtime::{
    config::Isolation,
    lifecycle::{self, OciState},
    plain,
    state::{ContainerState, StateStore},
};

/// Output format of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    Table,
    /// JSON.
    Json,
}

/// One container as `runc list --format json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListEntry {
    /// Spec version.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Host pid standing for the container (0 once stopped).
    pub pid: u32,
    /// creating | created | running | stopped.
    pub status: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem (from the bundle's config.json; empty if unreadable).
    pub rootfs: PathBuf,
    /// Creation time (RFC 3339).
    pub created: String,
    /// The spec's annotations (omitted when empty).
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// Owner of the container's state directory.
    pub owner: String,
}

impl ListEntry {
    fn new(state: OciState, owner: String) -> Self {
        let rootfs = rootfs_of(&state.bundle).unwrap_or_default();
        Self {
            oci_version: state.oci_version,
            id: state.id,
            pid: state.pid,
            status: state.status,
            bundle: state.bundle,
            rootfs,
            created: state.created,
            annotations: state.annotations,
            owner,
        }
    }
}

/// `root.path` of the bundle's config.json, made absolute.
fn rootfs_of(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let path = Path::new(value.get("root")?.get("path")?.as_str()?);
    Some(bundle.join(path))
}

/// User name of `uid`, or `#uid` as runc writes an unknown one.
fn owner_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) => user.name,
        _ => format!("#{uid}"),
    }
}

/// Every container in the store. A container whose state cannot be read is
/// reported on stderr and skipped, as runc does.
pub fn entries(store: &StateStore) -> Vec<ListEntry> {
    let mut out = Vec::new();
    for id in store.list() {
        let state = match lifecycle::state(store, &id) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skerry: {}", skerry_runtime::monitor::error_chain(&e));
                continue;
            }
        };
        let owner = match std::fs::metadata(store.dir(&id)) {
            Ok(m) => owner_name(m.uid()),
            Err(_) => String::new(),
        };
        out.push(ListEntry::new(state, owner));
    }
    out
}

/// Lays out tab-separated cells like Go's tabwriter with runc's settings
/// (minimum width 12, padding 3): every cell but the last of a line is
/// padded to its column's width.
pub fn tabwrite(rows: &[Vec<String>]) -> String {
    const MIN_WIDTH: usize = 12;
    const PADDING: usize = 3;
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            let w = (cell.chars().count() + PADDING).max(MIN_WIDTH);
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}", width = widths[i]);
            }
        }
        out.push('\n');
    }
    out
}

/// The `list` output.
pub fn render_list(entries: &[ListEntry], format: Format, quiet: bool) -> anyhow::Result<String> {
    if quiet {
        return Ok(entries.iter().map(|e| format!("{}\n", e.id)).collect());
    }
    match format {
        Format::Json => Ok(serde_json::to_string(entries)? + "\n"),
        Format::Table => {
            let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(String::from)
                .to_vec()];
            rows.extend(entries.iter().map(|e| {
                vec![
                    e.id.clone(),
                    e.pid.to_string(),
                    e.status.clone(),
                    e.bundle.display().to_string(),
                    e.created.clone(),
                    e.owner.clone(),
                ]
            }));
            Ok(tabwrite(&rows))
        }
    }
}

/// `skerry list`.
pub fn list(store: &StateStore, format: Format, quiet: bool) -> anyhow::Result<i32> {
    print!("{}", render_list(&entries(store), format, quiet)?);
    Ok(0)
}

/// Host pids that stand for a VM container's processes: the monitor while
/// it lives (it stands for the container process). The VM's own processes
/// (hypervisor, device back ends) are machinery, not container processes.
pub fn container_pids(state: &ContainerState) -> Vec<u32> {
    state
        .monitor
        .iter()
        .filter(|m| m.is_alive())
        .map(|m| m.pid)
        .collect()
}

/// Keeps the header of `ps` output and the rows whose PID column is in
/// `pids`.
pub fn filter_ps(output: &str, pids: &[u32]) -> anyhow::Result<String> {
    let mut lines = output.lines();
    let header = lines.next().unwrap_or_default();
    let index = header
        .split_whitespace()
        .position(|f| f == "PID")
        .context("couldn't find PID field in ps output")?;
    let mut out = format!("{header}\n");
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let field = line.split_whitespace().nth(index).unwrap_or_default();
        let pid: u32 = field
            .parse()
            .with_context(|| format!("unable to parse pid {field:?} in ps output"))?;
        if pids.contains(&pid) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `skerry ps`: the container's host pids as JSON, or `ps ARGS` (default
/// `-ef`) filtered to them.
pub fn ps(store: &StateStore, id: &str, format: Format, ps_args: &[String]) -> anyhow::Result<i32> {
    let state = store.load(id)?;
    let pids = match state.isolation {
        Isolation::Vm => container_pids(&state),
        Isolation::Container => plain::pids(store, id)?,
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let output = Command::new("ps")
        .args(&args)
        .output()
        .context("cannot run ps")?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        bail!(
            "ps {} failed ({}): {}",
            args.join(" "),
            output.status,
            err.lines().next().unwrap_or_default().trim()
        );
    }
    print!(
        "{}",
        filter_ps(&String::from_utf8_lossy(&output.stdout), &pids)?
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, pid: u32, status: &str) -> ListEntry {
        ListEntry {
            oci_version: "1.0.2".into(),
            id: id.into(),
            pid,
            status: status.into(),
            bundle: format!("/bundles/{id}").into(),
            rootfs: format!("/bundles/{id}/rootfs").into(),
            created: "2026-11-22T06:00:00Z".into(),
            annotations: HashMap::new(),
            owner: "root".into(),
        }
    }

    #[test]
    fn table_is_aligned_like_runcs_tabwriter() {
        let text = render_list(
            &[
                entry("c1", 4242, "running"),
                entry("a-much-longer-id", 0, "stopped"),
            ],
            Format::Table,
            false,
        )
        .unwrap();
        let expected = "\
ID                 PID         STATUS      BUNDLE                      CREATED                OWNER
c1                 4242        running     /bundles/c1                 2026-11-22T06:00:00Z   root
a-much-longer-id   0           stopped     /bundles/a-much-longer-id   2026-11-22T06:00:00Z   root
";
        assert_eq!(text, expected);
        let empty = render_list(&[], Format::Table, false).unwrap();
        assert_eq!(
            empty,
            "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"
        );
    }

    #[test]
    fn json_and_quiet() {
        let entries = [entry("c1", 4242, "running")];
        let json: serde_json::Value =
            serde_json::from_str(&render_list(&entries, Format::Json, false).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "ociVersion": "1.0.2", "id": "c1", "pid": 4242, "status": "running",
                "bundle": "/bundles/c1", "rootfs": "/bundles/c1/rootfs",
                "created": "2026-11-22T06:00:00Z", "owner": "root"
            }])
        );
        assert_eq!(render_list(&[], Format::Json, false).unwrap(), "[]\n");
        assert_eq!(render_list(&entries, Format::Table, true).unwrap(), "c1\n");
    }

    #[test]
    fn ps_output_is_filtered_by_the_pid_column() {
        let ps = "\
UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 06:00 ?        00:00:01 /sbin/init
root        4242       1  0 06:01 ?        00:00:00 skerry monitor --bundle /b c1
root       42420       1  0 06:01 ?        00:00:00 other
";
        assert_eq!(
            filter_ps(ps, &[4242]).unwrap(),
            "UID          PID    PPID  C STIME TTY          TIME CMD\n\
             root        4242       1  0 06:01 ?        00:00:00 skerry monitor --bundle /b c1\n"
        );
        assert_eq!(
            filter_ps(ps, &[]).unwrap().lines().count(),
            1,
            "header only"
        );
        let err = filter_ps("USER COMMAND\nroot x\n", &[1]).unwrap_err();
        assert_eq!(err.to_string(), "couldn't find PID field in ps output");
    }

    #[test]
    fn rootfs_comes_from_the_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"rfs"}}"#,
        )
        .unwrap();
        assert_eq!(rootfs_of(tmp.path()), Some(tmp.path().join("rfs")));
        assert_eq!(rootfs_of(&tmp.path().join("gone")), None);
        assert_eq!(owner_name(0), "root");
        assert_eq!(owner_name(4_000_000_000), "#4000000000");
    }
}
