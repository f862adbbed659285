//! Host-side helpers shared by the unit tests (as `devices::virtio::testutil::host`) and the
//! KVM tests (as `common::host`): a virtiofsd to talk to, and a packet socket on a tap.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The virtiofsd binary: `$SKERRY_VIRTIOFSD`, `~/.cargo/bin`, `/usr/libexec` or `/usr/bin`.
pub fn virtiofsd() -> Result<PathBuf, String> {
    let candidates = [
        std::env::var_os("SKERRY_VIRTIOFSD").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd")),
        Some(PathBuf::from("/usr/libexec/virtiofsd")),
        Some(PathBuf::from("/usr/bin/virtiofsd")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "virtiofsd not found (cargo install virtiofsd, or set SKERRY_VIRTIOFSD)".to_owned()
        })
}

/// A virtiofsd serving `shared` (an empty temporary directory) on `socket`; killed on drop.
pub struct Virtiofsd {
    /// The daemon process.
    pub child: Child,
    /// Its vhost-user socket.
    pub socket: PathBuf,
    /// The directory it serves.
    pub shared: PathBuf,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    /// Starts `bin` and waits (at most 10 s) for its socket.
    pub fn start(bin: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let socket = dir.path().join("fs.sock");
        let child = Command::new(bin)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--cache", "never", "--sandbox", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Self {
            child,
            socket,
            shared,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd never created its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Stops the daemon (SIGSTOP) and waits (at most 10 s) until every one of its threads is
    /// stopped: `kill` returns before a thread already running on another CPU has noticed,
    /// and such a thread could still answer a request sent right after.
    pub fn freeze(&self) {
        let pid = self.child.id();
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "virtiofsd never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a frozen daemon run again.
    pub fn thaw(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                let state = s.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'T')
            })
            .unwrap_or(false)
    })
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ifreq` naming interface `name`, otherwise zero.
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    ifr
}

/// A raw `AF_PACKET` socket for every protocol; `flags` are added to
/// `SOCK_RAW | SOCK_CLOEXEC`.
pub fn packet_socket(flags: i32) -> OwnedFd {
    // SAFETY: plain socket creation; the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Brings interface `name` up, through any socket `sock`.
pub fn set_up(sock: &OwnedFd, name: &str) {
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
    unsafe {
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr),
            0
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as i16;
        assert_eq!(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr),
            0
        );
    }
}

/// Binds packet socket `sock` to the interface with index `index`.
pub fn bind_packet(sock: &OwnedFd, index: i32) {
    // SAFETY: an all-zero sockaddr_ll is valid; bind reads `len` bytes of it.
    let r = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index;
        libc::bind(
            sock.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
}
