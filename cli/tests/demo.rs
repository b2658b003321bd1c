//! `ward demo` says in one line what is missing — its sibling binaries, root, a tool — and
//! exits non-zero before creating anything. (The demo itself runs in the network-namespace
//! suite: `tests/tests/netns/demo.rs`.)
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::path::Path;
use std::process::{Command, Output};

/// A copy of `ward` in its own directory, with (empty) stand-ins for its sibling binaries
/// when `siblings` — the demo only checks that they exist before it checks anything else.
fn ward_in(dir: &Path, siblings: bool) -> std::path::PathBuf {
    let ward = dir.join("ward");
    std::fs::copy(env!("CARGO_BIN_EXE_ward"), &ward).unwrap();
    if siblings {
        for name in ["ward-proxy", "ward-control"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
    }
    ward
}

/// Runs `cmd`, retrying while the kernel says the copied binary is busy: another test thread
/// may be writing its own copy at the moment this one forks, and the child then inherits that
/// write descriptor until it execs (ETXTBSY) — a race of tests that copy executables, not of
/// the demo.
fn output(cmd: &mut Command) -> Output {
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.unwrap(),
        }
    }
    panic!("{cmd:?}: the executable stayed busy");
}

fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// Exit status non-zero, nothing on stdout, one line on stderr containing `needle`.
fn says_only(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} does not say {needle:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn without_its_sibling_binaries_the_demo_says_how_to_build_them() {
    let dir = tempfile::tempdir().unwrap();
    let ward = ward_in(dir.path(), false);
    let out = output(Command::new(ward).args(["demo", "--once"]));
    says_only(&out, "needs ward-proxy next to ward");
    says_only(&out, "cargo build --release -p ward-proxy -p ward-control");
}

#[test]
fn without_root_the_demo_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ward = ward_in(dir.path(), true);
    let mut cmd = if is_root() {
        // Drop to nobody for this one run (setpriv is in util-linux, on every Debian).
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&ward);
        c
    } else {
        Command::new(&ward)
    };
    // The directory must be readable by nobody to exec the copy.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status();
    let out = output(cmd.args(["demo", "--once"]));
    says_only(&out, "needs root");
}

#[test]
fn without_nft_the_demo_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let ward = ward_in(dir.path(), true);
    // A PATH with everything the demo needs except nft.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["ip", "sysctl", "kill"] {
        let o = Command::new("sh")
            .args([
                "-c",
                &format!("PATH=$PATH:/usr/sbin:/sbin command -v {tool}"),
            ])
            .output()
            .unwrap();
        let real = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(!real.is_empty(), "{tool} is not installed here");
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }
    let out = output(
        Command::new(ward)
            .args(["demo", "--once"])
            .env("PATH", &bin),
    );
    if is_root() {
        says_only(&out, "needs `nft`: apt-get install -y nftables");
    } else {
        // Root is checked first; CI runs as root and checks the rest.
        says_only(&out, "needs root");
    }
}
