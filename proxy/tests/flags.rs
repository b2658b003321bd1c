//! `ward-proxy`'s flags as a DaemonSet passes them: `--control` takes the control component's
//! Service name (`HOST:PORT`, resolved at start) as well as `IP:PORT`, and a malformed value is
//! refused with a message naming the flag.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::process::Command;

fn proxy(control: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward-proxy"))
        .args(["--node", "node-1", "--token-file", "/nonexistent/token"])
        .args([
            "--trust-bundle",
            "/nonexistent/root.pem",
            "--control",
            control,
        ])
        .env("WARD_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn control_accepts_a_host_name_and_refuses_what_is_not_host_and_port() {
    // A name resolves (localhost), so start-up proceeds to the next check: the bundle.
    for good in ["localhost:15012", "127.0.0.1:15012", "[::1]:15012"] {
        let (ok, err) = proxy(good);
        assert!(!ok);
        assert!(
            err.contains("--trust-bundle /nonexistent/root.pem"),
            "{good}: {err}"
        );
    }
    for bad in ["nocolon", "host:", ":15012", "host:99999", "host:port"] {
        let (ok, err) = proxy(bad);
        assert!(!ok);
        assert!(
            err.contains(&format!("--control {bad:?}: expected IP:PORT or HOST:PORT")),
            "{bad}: {err}"
        );
    }
}
