//! Relays a guest process's stdio, terminal size and signals between a host
//! process (the monitor, or an exec proxy) and the agent.

use std::{fs::File, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::agent_client::{AgentConn, Proc};

/// How long to wait for the last output after the process exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the host terminal's size is compared with the guest's.
const WINSIZE_POLL: Duration = Duration::from_millis(200);

/// A guest process's stdio as a host process holds it.
pub struct ProcessStdio {
    /// Fed to the process's stdin.
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    /// Receives the process's stdout (and, with a terminal, everything).
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Receives the process's stderr.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
}

/// What to relay besides the byte streams.
#[derive(Debug, Default)]
pub struct RelayOptions {
    /// Forward SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2 received by this
    /// host process to the guest process.
    pub forward_signals: bool,
    /// A host terminal whose window size the guest terminal follows.
    pub terminal: Option<File>,
}

/// The running relay tasks of one guest process.
#[derive(Debug)]
pub struct Relay {
    stdout: JoinHandle<()>,
    stderr: JoinHandle<()>,
    others: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying for process `exec` (empty: init) of `container`.
    pub fn start(
        agent: &AgentConn,
        container: &str,
        exec: &str,
        stdio: ProcessStdio,
        opts: RelayOptions,
    ) -> Self {
        let name = (container.to_string(), exec.to_string());
        let spawn_output =
            |stderr, out| tokio::spawn(pump_output(agent.clone(), name.clone(), stderr, out));
        let stdout = spawn_output(false, stdio.stdout);
        let stderr = spawn_output(true, stdio.stderr);
        let mut others = vec![tokio::spawn(pump_input(
            agent.clone(),
            name.clone(),
            stdio.stdin,
        ))];
        if opts.forward_signals {
            others.push(tokio::spawn(forward_signals(agent.clone(), name.clone())));
        }
        if let Some(tty) = opts.terminal {
            others.push(tokio::spawn(follow_winsize(agent.clone(), name, tty)));
        }
        Self {
            stdout,
            stderr,
            others,
        }
    }

    /// Waits (bounded) for the output streams to end after the process
    /// exited, then stops the other relays.
    pub async fn finish(self) {
        let drain = async {
            let _ = self.stdout.await;
            let _ = self.stderr.await;
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            warn!("process output did not end; dropping the rest");
        }
        for task in self.others {
            task.abort();
        }
    }
}

type Name = (String, String);

fn proc(name: &Name) -> Proc<'_> {
    Proc {
        container: &name.0,
        exec: &name.1,
    }
}

/// Copies one output stream of the process to `out` until EOF.
async fn pump_output(
    agent: AgentConn,
    name: Name,
    stderr: bool,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
) {
    let mut reader_gone = false;
    loop {
        match agent.read_output(proc(&name), stderr).await {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                // Once the reader is gone, keep draining so the guest never blocks.
                if !reader_gone {
                    reader_gone = out.write_all(&data).await.is_err() || out.flush().await.is_err();
                }
            }
            Err(e) => {
                debug!(container = %name.0, exec = %name.1, stderr, error = %e, "output stream ended");
                break;
            }
        }
    }
}

/// Copies `input` to the process's stdin; closes it at EOF.
async fn pump_input(agent: AgentConn, name: Name, mut input: Box<dyn AsyncRead + Send + Unpin>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            match agent.write_stdin(proc(&name), data).await {
                Ok(0) => return,
                Ok(taken) => data = &data[taken..],
                Err(e) => {
                    debug!(container = %name.0, exec = %name.1, error = %e, "stdin closed by the guest");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(proc(&name)).await {
        debug!(container = %name.0, exec = %name.1, error = %e, "closing stdin");
    }
}

/// Forwards the signals a supervisor sends to this host process.
async fn forward_signals(agent: AgentConn, name: Name) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(16);
    for kind in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(kind.as_raw_value()).await.is_err() {
                    break;
                }
            }
        });
    }
    while let Some(sig) = rx.recv().await {
        info!(container = %name.0, exec = %name.1, signal = sig, "forwarding signal");
        if let Err(e) = agent.signal(proc(&name), sig as u32, false).await {
            warn!(container = %name.0, error = %e, "forwarding signal");
        }
    }
}

/// Keeps the guest terminal's size equal to the host terminal's.
async fn follow_winsize(agent: AgentConn, name: Name, tty: File) {
    let mut last = None;
    loop {
        if let Ok(ws) = rustix::termios::tcgetwinsize(&tty) {
            let size = (ws.ws_row, ws.ws_col);
            if last != Some(size) && size.0 > 0 && size.1 > 0 {
                match agent.resize_tty(proc(&name), size.0, size.1).await {
                    Ok(()) => last = Some(size),
                    Err(e) => {
                        // The guest process has no terminal: nothing to follow.
                        debug!(container = %name.0, error = %e, "resizing terminal");
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(WINSIZE_POLL).await;
    }
}
