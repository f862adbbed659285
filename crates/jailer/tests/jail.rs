//! The jailer as root: the jailed program runs as the target uid/gid, as PID 1 of a new pid
//! namespace, in a root holding only itself and the requested device node; the real VMM runs
//! a tiny guest from inside a jail. Skips (printing why) unless root; panics instead when
//! `SKERRY_E2E_REQUIRED=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[path = "../../../tests/support/skip.rs"]
mod skip_rule;

fn require(cond: Result<(), String>) -> bool {
    cond.map_err(|reason| skip_rule::skip(&reason)).is_ok()
}

fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the jailer needs root (namespaces, mknod, pivot_root)".into());
    }
    Ok(())
}

fn tool(name: &str) -> Result<(), String> {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|_| format!("`{name}` not found"))
}

fn jailer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jailer"))
}

const LISTER: &str = r#"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void walk(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return;
    while ((e = readdir(d))) {
        char p[512];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", e->d_name);
        printf("%s\n", p);
        if (e->d_type == DT_DIR) walk(p);
    }
    closedir(d);
}
extern char **environ;
int main(int argc, char **argv) {
    int env = 0, fds = 0;
    while (environ[env]) env++;
    for (int fd = 3; fd < 64; fd++) fds += fcntl(fd, F_GETFD) != -1;
    printf("uid=%d gid=%d pid=%d groups=%d env=%d extra_fds=%d\n", getuid(), getgid(), getpid(),
           getgroups(0, 0), env, fds);
    if (argc > 1) {
        char buf[64] = {0};
        int fd = open(argv[1], O_RDONLY);
        if (fd >= 0) read(fd, buf, sizeof buf - 1);
        int w = open(argv[1], O_WRONLY);
        printf("%s: read=%s write=%s\n", argv[1], buf, w >= 0 ? "ok" : strerror(errno));
    }
    walk("/");
    return 7;
}
"#;

fn cgroup_v1_pids() -> bool {
    Path::new("/sys/fs/cgroup/pids/tasks").exists()
}

#[test]
fn jailed_program_sees_only_its_root_and_runs_as_target_uid() {
    if !(require(root()) && require(tool("gcc"))) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("lister.c");
    std::fs::write(&src, LISTER).unwrap();
    let exe = dir.path().join("lister");
    let st = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let base = dir.path().join("jails");
    let id = format!("jt-{}", std::process::id());
    // A host directory bound into the jail, readable by the target uid.
    let shared = dir.path().join("sock");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"hi").unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A host file given with --file, writable by everyone on the host: in the jail it is
    // the host's file (no copy), read-only.
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, b"kernel!").unwrap();
    std::fs::set_permissions(&kernel, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut cmd = jailer();
    cmd.args([
        "--id",
        &id,
        "--uid",
        "1234",
        "--gid",
        "1235",
        "--new-pid-ns",
    ])
    .arg("--exec-file")
    .arg(&exe)
    .arg("--chroot-base-dir")
    .arg(&base)
    .arg("--bind-dir")
    .arg(&shared)
    .arg("--file")
    .arg(&kernel)
    .args(["--device", "/dev/null"]);
    if cgroup_v1_pids() {
        cmd.args([
            "--cgroup-version",
            "v1",
            "--parent-cgroup",
            "skerry-test",
            "--cgroup",
            "pids.max=32",
        ]);
    }
    let out = cmd
        .env("SECRET", "must-not-leak")
        .args(["--", "/kernel"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "the jailer passes the exit status on"
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("uid=1234 gid=1235 pid=1 groups=0 env=0 extra_fds=0")
    );
    assert_eq!(
        lines.next(),
        Some("/kernel: read=kernel! write=Read-only file system")
    );
    let mut listing: Vec<&str> = lines.collect();
    listing.sort_unstable();
    assert_eq!(
        listing,
        vec![
            "/dev",
            "/dev/null",
            "/kernel",
            "/lister",
            "/sock",
            "/sock/hello"
        ]
    );
    assert_eq!(std::fs::read(&kernel).unwrap(), b"kernel!");
    assert!(
        !base.join("lister").join(&id).exists(),
        "jail dir is removed after exit"
    );
    assert!(
        shared.join("hello").is_file(),
        "removing the jail leaves the bound host directory alone"
    );
    if cgroup_v1_pids() {
        let cg = PathBuf::from("/sys/fs/cgroup/pids/skerry-test").join(&id);
        assert_eq!(
            std::fs::read_to_string(cg.join("pids.max")).unwrap().trim(),
            "32"
        );
        let _ = std::fs::remove_dir(&cg);
        // The parent goes too once no other test uses it.
        let _ = std::fs::remove_dir(cg.parent().unwrap());
    }
}

#[test]
fn bad_id_and_missing_exec_file_are_one_line_errors() {
    let out = jailer()
        .args([
            "--id",
            "../x",
            "--uid",
            "1",
            "--gid",
            "1",
            "--exec-file",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid --id") && err.trim().lines().count() == 1,
        "{err}"
    );
    let out = jailer()
        .args([
            "--id",
            "ok",
            "--uid",
            "1",
            "--gid",
            "1",
            "--exec-file",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exec-file /nonexistent"));
}

/// The real VMM in a jail: as uid 1234 in an empty root with /dev/kvm, its libraries and the
/// guest; seccomp on. The guest prints and resets (exit status 3).
#[test]
fn vm_vmm_runs_a_guest_inside_the_jail() {
    if !(require(root()) && require(tool("as")) && require(tool("ld"))) {
        return;
    }
    if !require(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(|_| ())
            .map_err(|e| format!("/dev/kvm unusable: {e}")),
    ) {
        return;
    }
    let vmm = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("skerry-vmm"))
        .unwrap();
    if !require(vmm.is_file().then_some(()).ok_or(format!(
        "{} not built (cargo build -p skerry-vmm)",
        vmm.display()
    ))) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let asm = ".code64\n.globl _start\n_start:\n mov $0x3f8, %dx\n lea msg(%rip), %rsi\n \
               mov $msg_end - msg, %ecx\n1: lodsb\n outb %al, %dx\n loop 1b\n mov $0xfe, %al\n \
               outb %al, $0x64\n2: hlt\n jmp 2b\nmsg: .ascii \"hello from the jailed vmm\\n\"\nmsg_end:\n";
    std::fs::write(dir.path().join("g.S"), asm).unwrap();
    let ok = Command::new("as")
        .current_dir(dir.path())
        .args(["--64", "-o", "g.o", "g.S"])
        .status()
        .unwrap()
        .success()
        && Command::new("ld")
            .current_dir(dir.path())
            .args([
                "-N",
                "-static",
                "-nostdlib",
                "--no-warn-rwx-segments",
                "-Ttext=0x100000",
            ])
            .args(["-e", "_start", "-o", "guest.elf", "g.o"])
            .status()
            .unwrap()
            .success();
    assert!(ok);
    let out = jailer()
        .args([
            "--id",
            &format!("vm-{}", std::process::id()),
            "--uid",
            "1234",
            "--gid",
            "1234",
        ])
        .arg("--exec-file")
        .arg(&vmm)
        .arg("--chroot-base-dir")
        .arg(dir.path().join("jails"))
        .arg("--file")
        .arg(dir.path().join("guest.elf"))
        .args(["--device", "/dev/kvm", "--copy-libs", "--new-pid-ns"])
        .args(["--", "--kernel", "/guest.elf", "--memory", "32"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert!(stdout.contains("hello from the jailed vmm"));
    assert_eq!(
        out.status.code(),
        Some(3),
        "guest reset status through the jailer"
    );
}
