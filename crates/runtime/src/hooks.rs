//! OCI hooks (`config.json` `hooks`): host programs run at fixed points of the
//! container lifecycle, each given the OCI state document on stdin.

use std::{fmt, path::PathBuf, process::ExitStatus, time::Duration};

use oci_spec::runtime::Hook;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    process::Command,
};
use tracing::{debug, warn};

use crate::lifecycle::OciState;

/// Most bytes of a hook's stderr kept for the error message and the log.
const MAX_STDERR: u64 = 16 * 1024;

/// How long to wait for a hook's stderr to close after the hook exited
/// (a daemon it left behind may hold it open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// The lifecycle point a hook runs at; `Display` gives the OCI name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `prestart` (deprecated by OCI in favour of the create* hooks).
    Prestart,
    /// `createRuntime`: after the container is created, before pivot_root.
    CreateRuntime,
    /// `createContainer`: after the container is created, before pivot_root.
    CreateContainer,
    /// `startContainer`: just before the user program is executed.
    StartContainer,
    /// `poststart`: after the user program was started.
    Poststart,
    /// `poststop`: after the container was stopped.
    Poststop,
}

impl HookKind {
    /// All kinds, in lifecycle order.
    pub const ALL: [HookKind; 6] = [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];

    /// The OCI name of the kind, as in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// Whether a failure must stop the lifecycle. OCI: a failing poststart or
    /// poststop hook is only logged, and the remaining hooks still run.
    pub fn is_fatal(self) -> bool {
        !matches!(self, HookKind::Poststart | HookKind::Poststop)
    }

    /// The hooks of this kind in `hooks` (empty if none).
    pub fn select(self, hooks: &oci_spec::runtime::Hooks) -> &[Hook] {
        let list = match self {
            #[allow(deprecated)]
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Failure of one hook; every variant names the kind and the program.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook definition is unusable.
    #[error("{kind} hook {path}: {reason}")]
    Invalid {
        /// Hook kind.
        kind: HookKind,
        /// The program.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The program could not be started.
    #[error("{kind} hook {path}: cannot start it")]
    Spawn {
        /// Hook kind.
        kind: HookKind,
        /// The program.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the program failed.
    #[error("{kind} hook {path}: waiting for it failed")]
    Wait {
        /// Hook kind.
        kind: HookKind,
        /// The program.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The program exited non-zero or was killed by a signal.
    #[error("{kind} hook {path} {status}{}", stderr_suffix(.stderr))]
    Failed {
        /// Hook kind.
        kind: HookKind,
        /// The program.
        path: PathBuf,
        /// "exited with status N" or "was killed by signal N".
        status: String,
        /// First line of its stderr (may be empty).
        stderr: String,
    },
    /// The program outlived its `timeout` and was killed.
    #[error("{kind} hook {path} timed out after {secs}s and was killed")]
    Timeout {
        /// Hook kind.
        kind: HookKind,
        /// The program.
        path: PathBuf,
        /// The hook's timeout.
        secs: i64,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Runs `hooks` of `kind` one after the other, each with `state` as JSON on
/// stdin, its environment exactly the hook's `env`, stdout discarded.
///
/// For fatal kinds (see [`HookKind::is_fatal`]) the first failure stops the
/// run and is returned. For poststart and poststop every hook runs; failures
/// are logged as warnings and the first one is returned, which the caller
/// should treat as a warning only.
pub async fn run_hooks(kind: HookKind, hooks: &[Hook], state: &OciState) -> Result<(), HookError> {
    let json = serde_json::to_vec(state).expect("OCI state serialises");
    let mut first_error = None;
    for hook in hooks {
        match run_hook(kind, hook, &json).await {
            Ok(()) => {}
            Err(e) if kind.is_fatal() => return Err(e),
            Err(e) => {
                warn!(container = %state.id, error = %e, "hook failed");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn run_hook(kind: HookKind, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let invalid = |reason: String| HookError::Invalid {
        kind,
        path: path.clone(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid("path is not absolute".into()));
    }
    let timeout = match hook.timeout() {
        Some(secs) if secs <= 0 => return Err(invalid(format!("timeout {secs} is not positive"))),
        Some(secs) => Some(secs),
        None => None,
    };
    let mut cmd = Command::new(&path);
    // `args` are the full argv, argv[0] included (execv semantics).
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for entry in hook.env().as_deref().unwrap_or_default() {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                cmd.env(key, value);
            }
            _ => return Err(invalid(format!("env entry {entry:?} is not KEY=VALUE"))),
        }
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    debug!(%kind, path = %path.display(), "running hook");
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    let stdin = child.stdin.take();
    let json = state_json.to_vec();
    let writer = tokio::spawn(async move {
        if let Some(mut stdin) = stdin {
            // A hook need not read its stdin: a broken pipe is no error.
            let _ = stdin.write_all(&json).await;
        }
    });
    let reader = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));

    let waited = match timeout {
        Some(secs) => {
            match tokio::time::timeout(Duration::from_secs(secs.unsigned_abs()), child.wait()).await
            {
                Ok(r) => r,
                Err(_) => {
                    let _ = child.kill().await;
                    writer.abort();
                    if let Some(r) = reader {
                        r.abort();
                    }
                    return Err(HookError::Timeout { kind, path, secs });
                }
            }
        }
        None => child.wait().await,
    };
    writer.abort();
    let status = waited.map_err(|source| HookError::Wait {
        kind,
        path: path.clone(),
        source,
    })?;
    let stderr = match reader {
        Some(task) => {
            let abort = task.abort_handle();
            match tokio::time::timeout(STDERR_GRACE, task).await {
                Ok(Ok(text)) => text,
                _ => {
                    abort.abort();
                    String::new()
                }
            }
        }
        None => String::new(),
    };
    if !stderr.trim().is_empty() {
        debug!(%kind, path = %path.display(), stderr = %stderr.trim_end(), "hook stderr");
    }
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        kind,
        path,
        status: describe(status),
        stderr: stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string(),
    })
}

/// Reads at most [`MAX_STDERR`] bytes, then drains the rest.
async fn read_bounded(mut stream: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = (&mut stream).take(MAX_STDERR).read_to_end(&mut buf).await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended with {status}"),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, fs, path::Path};

    use oci_spec::runtime::HookBuilder;

    use super::*;

    fn state() -> OciState {
        OciState {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: "created".into(),
            pid: 4242,
            bundle: "/b".into(),
            annotations: HashMap::from([("k".into(), "v".into())]),
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn hook(path: &Path, args: &[&str], env: &[&str], timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path(path)
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(env.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    /// A hook running `script` with /bin/sh (a fresh executable file could
    /// hit ETXTBSY while other test threads fork).
    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        hook(Path::new("/bin/sh"), &["sh", "-c", script], &[], timeout)
    }

    #[test]
    fn kinds_display_their_oci_names() {
        let names: Vec<String> = HookKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ]
        );
        assert!(HookKind::CreateRuntime.is_fatal());
        assert!(!HookKind::Poststop.is_fatal());
    }

    #[tokio::test]
    async fn hook_gets_state_on_stdin_with_args_and_env() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let script = format!(
            "cat > {o}.json; tr '\\0' ' ' < /proc/$$/cmdline > {o}.args; \
             tr '\\0' ' ' < /proc/$$/environ > {o}.env",
            o = out.display()
        );
        let h = hook(
            Path::new("/bin/sh"),
            &["my-hook", "-c", &script, "a", "b"],
            &["FOO=bar=baz"],
            Some(5),
        );
        run_hooks(HookKind::CreateRuntime, &[h], &state())
            .await
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(json["ociVersion"], "1.0.2");
        assert_eq!(json["id"], "c1");
        assert_eq!(json["status"], "created");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["bundle"], "/b");
        assert_eq!(json["annotations"]["k"], "v");
        let argv = fs::read_to_string(out.with_extension("args")).unwrap();
        assert!(argv.starts_with("my-hook -c "), "{argv:?}");
        assert!(argv.ends_with(" a b "), "{argv:?}");
        let env = fs::read_to_string(out.with_extension("env")).unwrap();
        assert_eq!(
            env, "FOO=bar=baz ",
            "the environment is exactly the hook's env"
        );
    }

    #[tokio::test]
    async fn failing_hook_is_named_with_status_and_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let never = tmp.path().join("never");
        let hooks = [
            sh("echo 'no network' >&2; echo more >&2; exit 3", None),
            sh(&format!("touch {}", never.display()), None),
        ];
        let err = run_hooks(HookKind::Prestart, &hooks, &state())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "prestart hook /bin/sh exited with status 3: no network"
        );
        assert!(!never.exists(), "a hook after a fatal failure ran");
    }

    #[tokio::test]
    async fn poststop_failures_do_not_stop_later_hooks() {
        let tmp = tempfile::tempdir().unwrap();
        let ran = tmp.path().join("ran");
        let hooks = [
            sh("kill -9 $$", None),
            sh(&format!("touch {}", ran.display()), None),
        ];
        let err = run_hooks(HookKind::Poststop, &hooks, &state())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "poststop hook /bin/sh was killed by signal 9"
        );
        assert!(ran.exists(), "the hook after the failing one did not run");
    }

    #[tokio::test]
    async fn slow_hook_times_out_and_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let slow = sh(
            &format!("echo $$ > {}; exec sleep 30", pidfile.display()),
            Some(1),
        );
        let started = std::time::Instant::now();
        let err = run_hooks(HookKind::StartContainer, &[slow], &state())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            err.to_string(),
            "startContainer hook /bin/sh timed out after 1s and was killed"
        );
        let pid: u32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            crate::state::ProcessId::of(pid).is_none_or(|p| !p.is_alive()),
            "timed-out hook {pid} still runs"
        );
    }

    #[tokio::test]
    async fn bad_definitions_are_refused() {
        let sh_path = Path::new("/bin/sh");
        let cases = [
            (
                hook(Path::new("rel/hook"), &[], &[], None),
                "path is not absolute",
            ),
            (
                hook(sh_path, &[], &[], Some(0)),
                "timeout 0 is not positive",
            ),
            (hook(sh_path, &[], &["NOEQUALS"], None), "is not KEY=VALUE"),
        ];
        for (h, needle) in cases {
            let err = run_hooks(HookKind::CreateContainer, &[h], &state())
                .await
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("createContainer hook "), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        let err = run_hooks(
            HookKind::Poststart,
            &[hook(&missing, &[], &[], None)],
            &state(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("poststart hook {}: cannot start it", missing.display())
        );
    }

    #[tokio::test]
    async fn hook_that_ignores_stdin_succeeds() {
        // More state than a pipe buffer holds, and a hook that never reads it.
        let mut s = state();
        s.annotations.insert("big".into(), "x".repeat(256 * 1024));
        run_hooks(HookKind::Poststart, &[sh("exit 0", Some(10))], &s)
            .await
            .unwrap();
    }
}
