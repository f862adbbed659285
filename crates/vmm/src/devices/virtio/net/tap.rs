//! The host tap device: the only place with tun/tap ioctls. No crate offers a blocking-free
//! tap with `IFF_VNET_HDR` on our libc/vmm-sys-util versions, so this is the fenced,
//! hand-written part (libc supplies the constants and `ifreq`). All ioctls run at VMM
//! start-up, before the seccomp filter; afterwards the device only `read`s and `write`s.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Failure to open or configure a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL or '/'.
    #[error("invalid tap name {0:?} (1..=15 bytes, no NUL or '/')")]
    Name(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// A tun ioctl failed.
    #[error("{what} on tap {name} failed")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The interface.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An open tap interface (non-blocking; each read/write is one virtio-net header + frame).
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed) the tap `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
    /// a 12-byte virtio-net header and no offloads.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() >= libc::IFNAMSIZ
            || bytes.iter().any(|b| *b == 0 || *b == b'/')
        {
            return Err(TapError::Name(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let tap = Tap {
            file,
            name: name.to_owned(),
        };
        // SAFETY: an all-zero ifreq is a valid value (name empty, union zeroed).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is and outlives the call.
        tap.check("TUNSETIFF", unsafe {
            libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut ifr)
        })?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
        tap.check("TUNSETVNETHDRSZ", unsafe {
            libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len)
        })?;
        // No checksum/segmentation offloads: the kernel hands us only complete, checksummed
        // frames, matching the features the device offers the guest.
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        tap.check("TUNSETOFFLOAD", unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                0 as libc::c_ulong,
            )
        })?;
        Ok(tap)
    }

    fn check(&self, what: &'static str, ret: libc::c_int) -> Result<(), TapError> {
        if ret < 0 {
            return Err(TapError::Ioctl {
                what,
                name: self.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's fd as a file (read = one frame from the host, write = one frame to it).
    pub fn into_file(self) -> File {
        self.file
    }
}
