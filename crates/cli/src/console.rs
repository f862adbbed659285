//! Terminals: runc's `--console-socket` protocol (the pty master is sent over
//! a Unix socket with SCM_RIGHTS), and raw mode for a foreground `run`.

use std::{
    io::IoSlice,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
};

use anyhow::{bail, Context};
use nix::{
    pty::openpty,
    sys::{
        socket::{sendmsg, ControlMessage, MsgFlags},
        termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios},
    },
};

/// Where a guest process's terminal is relayed to on the host.
#[derive(Debug)]
pub enum Console {
    /// No terminal, or the caller's own stdio: inherit.
    Inherit,
    /// The slave of a pty whose master went to the console socket.
    Pty(OwnedFd),
}

/// Checks the terminal settings the way runc does and, when a console socket
/// is given, creates a pty and sends its master there.
pub fn setup(
    terminal: bool,
    console_socket: Option<&Path>,
    detached: bool,
) -> anyhow::Result<Console> {
    match (terminal, console_socket) {
        (true, Some(socket)) => send_pty(socket),
        (true, None) if detached => bail!(
            "process.terminal is true: --console-socket is required when the process is detached"
        ),
        (false, Some(socket)) => bail!(
            "--console-socket {} given but process.terminal is false",
            socket.display()
        ),
        _ => Ok(Console::Inherit),
    }
}

fn send_pty(socket: &Path) -> anyhow::Result<Console> {
    let pty = openpty(None, None).context("allocating a terminal")?;
    // The guest's terminal does the line discipline; ours passes bytes through.
    let mut attrs = tcgetattr(&pty.slave).context("terminal attributes")?;
    cfmakeraw(&mut attrs);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).context("terminal attributes")?;
    let name = nix::unistd::ttyname(pty.slave.as_fd())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "pty".into());
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("console socket {}", socket.display()))?;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| {
        format!(
            "sending the terminal to console socket {}",
            socket.display()
        )
    })?;
    Ok(Console::Pty(pty.slave))
}

/// Puts the terminal on `fd` into raw mode until dropped (for `run` with a
/// terminal on the caller's own tty).
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Enters raw mode if `fd` is a terminal.
    pub fn enter(fd: impl AsFd) -> Option<Self> {
        let fd = fd.as_fd().try_clone_to_owned().ok()?;
        let saved = tcgetattr(&fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&fd, SetArg::TCSANOW, &raw).ok()?;
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use nix::sys::socket::{recvmsg, ControlMessageOwned};

    use super::*;

    #[test]
    fn runc_rules_for_terminal_and_socket() {
        assert!(matches!(
            setup(false, None, true).unwrap(),
            Console::Inherit
        ));
        assert!(matches!(
            setup(true, None, false).unwrap(),
            Console::Inherit
        ));
        let err = setup(true, None, true).unwrap_err().to_string();
        assert!(err.contains("--console-socket is required"), "{err}");
        let err = setup(false, Some(Path::new("/x.sock")), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("process.terminal is false"), "{err}");
    }

    #[test]
    fn pty_master_arrives_over_the_console_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let Console::Pty(slave) = setup(true, Some(&path), true).unwrap() else {
            panic!("no pty");
        };
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let fds: Vec<_> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(fds.len(), 1);
        // Bytes written to the slave come out of the received master.
        nix::unistd::write(&slave, b"ping").unwrap();
        let mut out = [0u8; 4];
        let n = nix::unistd::read(fds[0], &mut out).unwrap();
        assert_eq!(&out[..n], b"ping");
        let _ = nix::unistd::close(fds[0]);
    }
}
