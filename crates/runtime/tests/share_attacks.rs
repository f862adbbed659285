//! The host share under attack, with real mounts (root, no VM): the tests
//! play a guest writing through virtiofsd (as root) where the share lets it,
//! and, as defence in depth, one that could even rearrange the share's
//! read-only skeleton; the host's data and mounts must stay untouched.

mod common;

use std::{
    fs::{self, Permissions},
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
};

use skerry_runtime::{
    bundle::Bundle,
    mounts::{mounted_under, HostMounts, SysMounts},
    sandbox::SandboxPaths,
    share,
    state::StateStore,
};

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    (!nix::unistd::Uid::effective().is_root()).then_some("needs root (mounts)")
}

/// A sandbox's share (bound shared, as the sandbox does) and a bundle whose
/// rootfs holds `/bin/sh` and which binds the host directory `volume` (and
/// its file `volume/f`) with `options`.
struct World {
    tmp: tempfile::TempDir,
    paths: SandboxPaths,
}

impl World {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::new(tmp.path().join("root"));
        let paths = SandboxPaths::new(&store, "pod");
        for dir in [&paths.shared_dir, &paths.share_rw] {
            fs::create_dir_all(dir).unwrap();
        }
        SysMounts
            .mount_share(&paths.share_rw, &paths.shared_dir)
            .unwrap();
        Self { tmp, paths }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A bundle `name` with a rootfs (read-only if `root_ro`) and a bind
    /// of `source` with `options`.
    fn bundle(&self, name: &str, root_ro: bool, source: &Path, options: &[&str]) -> Bundle {
        let dir = self.path(name);
        fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        fs::write(dir.join("rootfs/bin/sh"), "host rootfs").unwrap();
        fs::set_permissions(dir.join("rootfs/bin/sh"), Permissions::from_mode(0o755)).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": root_ro},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/vol", "type": "bind",
                        "source": source, "options": options}],
        });
        fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        Bundle::load(&dir).unwrap()
    }

    /// A host directory with the file `f` holding "host".
    fn volume(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), "host").unwrap();
        dir
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = SysMounts.unmount_path(&self.paths.shared_dir);
        let _ = SysMounts.unmount_path(&self.paths.share_rw);
        for m in mounted_under(self.tmp.path()) {
            let _ = SysMounts.unmount_path(&m);
        }
    }
}

fn read_only_fs(path: &Path) -> bool {
    let st = nix::sys::statvfs::statvfs(path).unwrap();
    st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
}

/// What `ro` and `root.readonly` ask for holds on the host: the guest
/// (through virtiofsd, as root) cannot write the volume or the rootfs, even
/// by remounting inside the VM; every share is nosuid and nodev.
#[test]
fn read_only_shares_are_read_only_on_the_host() {
    if let Some(reason) = skip_reason() {
        return common::skip(reason);
    }
    let w = World::new();
    let volume = w.volume("data");
    let bundle = w.bundle("b", true, &volume, &["rbind", "ro"]);
    let shared = share::share(&bundle, "c1", &w.paths, &SysMounts).unwrap();
    let c1 = w.paths.shared_dir.join("c1");
    for (path, ro) in [("rootfs/bin/sh", true), ("mounts/0/f", true)] {
        let file = c1.join(path);
        assert_eq!(read_only_fs(&file), ro, "{}", file.display());
        let err = fs::write(&file, "guest").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}", file.display());
        let st = nix::sys::statvfs::statvfs(&file).unwrap();
        assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID));
        assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV));
    }
    assert_eq!(fs::read_to_string(volume.join("f")).unwrap(), "host");

    // rw stays writable, and reaches the host.
    let rw = w.volume("rw");
    let bundle = w.bundle("b2", false, &rw, &["rbind", "rw"]);
    let shared2 = share::share(&bundle, "c2", &w.paths, &SysMounts).unwrap();
    fs::write(w.paths.shared_dir.join("c2/mounts/0/f"), "guest").unwrap();
    assert_eq!(fs::read_to_string(rw.join("f")).unwrap(), "guest");

    share::unshare(&w.paths, &SysMounts, &shared2.mounts);
    share::unshare(&w.paths, &SysMounts, &shared.mounts);
    assert_eq!(mounted_under(&c1), Vec::<PathBuf>::new());
}

/// A guest that plants a symlink where the host is about to add a container
/// (`shared/<id>` pointing at a host directory) makes the add fail; nothing
/// is created or mounted outside the share.
#[test]
fn a_symlink_planted_in_the_share_is_not_followed_when_adding() {
    if let Some(reason) = skip_reason() {
        return common::skip(reason);
    }
    let w = World::new();
    let victim = w.volume("victim");
    let volume = w.volume("data");
    let bundle = w.bundle("b", false, &volume, &["rbind", "rw"]);
    // The skeleton is read-only to the guest; plant through the host's side.
    symlink(&victim, w.paths.share_rw.join("c1")).unwrap();
    let err = share::share(&bundle, "c1", &w.paths, &SysMounts).unwrap_err();
    assert!(matches!(err, share::ShareError::Resolve { .. }), "{err}");
    // One level deeper too: shared/c2/mounts -> victim.
    fs::create_dir(w.paths.share_rw.join("c2")).unwrap();
    symlink(&victim, w.paths.share_rw.join("c2/mounts")).unwrap();
    share::share(&bundle, "c2", &w.paths, &SysMounts).unwrap_err();
    let mut entries: Vec<_> = fs::read_dir(&victim)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    entries.sort();
    assert_eq!(entries, ["f"]);
    assert_eq!(mounted_under(&victim), Vec::<PathBuf>::new());
    // c2's rootfs was mounted before the bad mount point: undone.
    assert_eq!(
        mounted_under(&w.paths.shared_dir.join("c2")),
        Vec::<PathBuf>::new()
    );
}

/// A guest that renames a container's share directory away and puts a
/// symlink to a host mount in its place before the host removes the
/// container: the host's mount stays; the container's is left for the
/// sandbox's teardown.
#[test]
fn a_symlink_swapped_in_before_removal_does_not_redirect_the_unmount() {
    if let Some(reason) = skip_reason() {
        return common::skip(reason);
    }
    let w = World::new();
    // A host mount the attacker aims at: victim/c1/rootfs.
    let victim = w.path("victim");
    let target = victim.join("c1/rootfs");
    fs::create_dir_all(&target).unwrap();
    let host_data = w.volume("host-data");
    let handle = pathrs::Root::open(&victim)
        .unwrap()
        .resolve("c1/rootfs")
        .unwrap();
    let point = skerry_runtime::mounts::MountPoint::new(target.clone(), handle);
    SysMounts.bind(&host_data, &point, false).unwrap();
    assert_eq!(mounted_under(&victim), std::slice::from_ref(&target));

    let volume = w.volume("data");
    let bundle = w.bundle("b", false, &volume, &["rbind", "rw"]);
    let shared = share::share(&bundle, "c1", &w.paths, &SysMounts).unwrap();
    // As if the guest could rearrange the skeleton (it is read-only to it).
    let c1 = w.paths.share_rw.join("c1");
    fs::rename(&c1, w.paths.share_rw.join("moved")).unwrap();
    symlink(victim.join("c1"), &c1).unwrap();
    share::unshare(&w.paths, &SysMounts, &shared.mounts);
    assert_eq!(mounted_under(&victim), std::slice::from_ref(&target));
    assert_eq!(fs::read_to_string(target.join("f")).unwrap(), "host");
    // The container's own mounts are still there (moved), for the teardown.
    assert_eq!(mounted_under(&w.paths.shared_dir.join("moved")).len(), 2);
    SysMounts.unmount_path(&target).unwrap();
}

/// The share's skeleton (everything outside the rootfs and volumes) is
/// read-only to the guest and a small tmpfs: the guest can neither plant
/// entries in it nor fill host memory through it.
#[test]
fn the_share_skeleton_is_read_only_to_the_guest_and_small() {
    if let Some(reason) = skip_reason() {
        return common::skip(reason);
    }
    let w = World::new();
    let volume = w.volume("data");
    let bundle = w.bundle("b", false, &volume, &["rbind", "rw"]);
    let shared = share::share(&bundle, "c1", &w.paths, &SysMounts).unwrap();
    let view = &w.paths.shared_dir;
    for path in [
        view.join("big"),
        view.join("c1/big"),
        view.join("c1/mounts/x"),
    ] {
        let err = fs::write(&path, "guest").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{}", path.display());
    }
    let err = symlink("/", view.join("c2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // The rootfs and the rw volume stay writable.
    fs::write(view.join("c1/rootfs/new"), "guest").unwrap();
    fs::write(view.join("c1/mounts/0/f"), "guest").unwrap();
    // Even the host's side holds at most 1 MiB.
    let err = fs::write(w.paths.share_rw.join("big"), vec![0u8; 2 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    share::unshare(&w.paths, &SysMounts, &shared.mounts);
    // The container's directory is gone with its mounts.
    assert!(!view.join("c1").exists());
}
