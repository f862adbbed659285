//! `jailer`: puts a VMM into its cell and execs it. Exit status: the VMM's (with
//! `--new-pid-ns`, passed on by the waiting jailer), or 1 with a one-line error.

mod cgroup;
mod jail;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "jailer",
    version,
    about = "Put a skerry VMM into its cell, then exec it"
)]
struct Args {
    /// VM id: 1 to 64 characters from [A-Za-z0-9-].
    #[arg(long)]
    id: String,
    /// The VMM binary (copied into the jail root).
    #[arg(long)]
    exec_file: PathBuf,
    /// Target uid.
    #[arg(long)]
    uid: u32,
    /// Target gid.
    #[arg(long)]
    gid: u32,
    /// Jails live in <dir>/<exec name>/<id>/root.
    #[arg(long, default_value = "/srv/skerry-jail")]
    chroot_base_dir: PathBuf,
    /// Character device to recreate inside (repeatable), e.g. /dev/kvm, /dev/net/tun.
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// Regular file to place at the jail root under its base name (repeatable).
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// Host directory to bind-mount at /<base name> inside (repeatable; nosuid, nodev,
    /// noexec), e.g. the directory of the VM's sockets.
    #[arg(long = "bind-dir")]
    bind_dirs: Vec<PathBuf>,
    /// Copy the VMM's shared libraries into the jail (for non-static builds).
    #[arg(long)]
    copy_libs: bool,
    /// Network namespace to join (e.g. /var/run/netns/<name>).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Run the VMM as PID 1 of a new pid namespace.
    #[arg(long)]
    new_pid_ns: bool,
    /// Cgroup API.
    #[arg(long, value_enum)]
    cgroup_version: Option<cgroup::Version>,
    /// Parent cgroup of the VM's group.
    #[arg(long, default_value = "skerry")]
    parent_cgroup: String,
    /// Cgroup setting controller.file=value (repeatable).
    #[arg(long = "cgroup")]
    cgroups: Vec<String>,
    /// Cgroup file system root.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// RLIMIT_NOFILE for the VMM.
    #[arg(long, default_value_t = 2048)]
    rlimit_nofile: u64,
    /// RLIMIT_FSIZE for the VMM, in bytes.
    #[arg(long)]
    rlimit_fsize: Option<u64>,
    /// Arguments for the VMM.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() {
    let a = Args::parse();
    let cfg = jail::JailConfig {
        id: a.id,
        exec_file: a.exec_file,
        args: a.args,
        uid: a.uid,
        gid: a.gid,
        base_dir: a.chroot_base_dir,
        devices: a.devices,
        files: a.files,
        bind_dirs: a.bind_dirs,
        copy_libs: a.copy_libs,
        netns: a.netns,
        new_pid_ns: a.new_pid_ns,
        cgroup: a.cgroup_version.map(|v| (v, a.parent_cgroup, a.cgroups)),
        cgroup_root: a.cgroup_root,
        nofile: a.rlimit_nofile,
        fsize: a.rlimit_fsize,
    };
    match jail::run(&cfg) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("jailer: {:#}", anyhow::Error::from(e));
            std::process::exit(1);
        }
    }
}
