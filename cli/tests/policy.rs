//! `ward policy validate / eval / explain / test` as users and CI call them.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn ward(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The command may exit before reading its input (e.g. on invalid policies): a broken pipe
    // here is expected, not a failure.
    let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const REQUEST: &str = r#"{"destination": {"namespace": "shop", "labels": {"app": "storefront"}, "ip": "10.1.0.5", "port": 8080, "protocol": "http"},
 "source": {"principal": "spiffe://cluster.local/ns/shop/sa/frontend", "ip": "10.1.0.9", "remote_ip": "203.0.113.7"},
 "connection": {"sni": "storefront.shop.svc"},
 "request": {"method": "DELETE", "path": "/cart/../cart/7?x=1", "host": "storefront.shop:8080", "headers": {"x-token": "abc"}, "jwt_claims": {"iss": "https://idp", "sub": "u1"}},
 "time": "2026-11-23T10:00:00Z"}"#;

fn eval(request: &str) -> Output {
    ward(
        &[
            "policy",
            "eval",
            "--root-namespace",
            "ward-system",
            "--trust-domain",
            "cluster.local",
            "--policy",
            "examples/policies",
            "--request",
            "-",
        ],
        Some(request),
    )
}

#[test]
fn eval_prints_exactly_one_json_verdict() {
    let o = eval(REQUEST);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "decision": "allow",
            "policy": "shop/namespace-isolation",
            "action": "ALLOW",
            "rule": 0,
            "audit": ["ward-system/audit-deletes"],
            "reason": "allowed by ALLOW policy shop/namespace-isolation rule 0"
        })
    );
    // Plaintext, and a request file on disk; several --policy paths.
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        REQUEST.replace("\"spiffe://cluster.local/ns/shop/sa/frontend\"", "null"),
    )
    .unwrap();
    let o = ward(
        &[
            "policy",
            "eval",
            "--policy",
            "examples/policies/namespace-isolation.yaml",
            "--policy",
            "examples/policies/deny-admin-path.yaml",
            "--request",
            req.to_str().unwrap(),
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policy"], serde_json::Value::Null);
    assert_eq!(v["rule"], serde_json::Value::Null);
}

#[test]
fn eval_exits_2_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]\n",
    )
    .unwrap();
    let o = ward(
        &[
            "policy",
            "eval",
            "--policy",
            bad.to_str().unwrap(),
            "--request",
            "-",
        ],
        Some(REQUEST),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("policy ns/p: rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR"),
        "{}",
        stderr(&o)
    );
    for (req, want) in [
        ("{not json", "request:"),
        (
            r#"{"destination": {"namespace": "a", "ip": "10.0.0.1", "port": 99999, "protocol": "tcp"}, "source": {"principal": null, "ip": "10.0.0.2"}}"#,
            "destination.port",
        ),
        (
            r#"{"destination": {"namespace": "a", "ip": "10.0.0.1", "port": 80, "protocol": "udp"}, "source": {"principal": null, "ip": "10.0.0.2"}}"#,
            "destination.protocol",
        ),
        (
            r#"{"destination": {"namespace": "a", "ip": "10.0.0.1", "port": 80, "protocol": "tcp"}, "source": {"principal": "cluster.local/ns/a/sa/b", "ip": "10.0.0.2"}}"#,
            "source.principal",
        ),
        (
            r#"{"destination": {"namespace": "a", "ip": "10.0.0.1", "port": 80, "protocol": "tcp"}, "source": {"principal": null, "ip": "10.0.0.2"}, "time": "yesterday"}"#,
            "time",
        ),
        (
            r#"{"destination": {"namespace": "a", "ip": "10.0.0.1", "port": 80, "protocol": "tcp"}, "source": {"principal": null, "ip": "10.0.0.2"}, "extra": 1}"#,
            "unknown field `extra`",
        ),
    ] {
        let o = eval(req);
        assert_eq!(o.status.code(), Some(2), "{req}");
        assert!(stderr(&o).contains(want), "{req}: {}", stderr(&o));
    }
}

#[test]
fn explain_traces_fields() {
    let o = ward(
        &[
            "policy",
            "explain",
            "--policy",
            "examples/policies",
            "--request",
            "-",
        ],
        Some(&REQUEST.replace("/cart/../cart/7", "/admin/x")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "DENY shop/deny-admin",
        "rules[0] MATCHES",
        "✓ operation.paths",
        "ALLOW shop/payments-from-checkout: selector {app=payments} does not select the workload",
        "verdict: DENY — denied by DENY policy shop/deny-admin rule 0",
        "audited by: ward-system/audit-deletes",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn validate_reports_errors_and_warnings() {
    let o = ward(&["policy", "validate", "examples/policies"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(
        "shop/deny-admin: warning: rules[0] uses HTTP-only attributes (to[0].operation.paths)"
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec: {action: DENY}\n",
    )
    .unwrap();
    let o = ward(&["policy", "validate", dir.path().to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("policy ns/p: rules: a DENY policy needs at least one rule"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn test_command_runs_the_example_suite_and_fails_on_a_wrong_expectation() {
    let o = ward(
        &["policy", "test", "examples/policies/policies.test.yaml"],
        None,
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(" 0 failed"), "{}", stdout(&o));
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &t,
        format!(
            "policies: [\"{}\"]\ncases:\n  - name: expects the wrong thing\n    request: {{destination: {{namespace: shop, ip: 10.0.0.1, port: 80, protocol: tcp}}, source: {{principal: null, ip: 10.0.0.2}}}}\n    expect: allow\n",
            repo().join("examples/policies").display()
        ),
    )
    .unwrap();
    let o = ward(&["policy", "test", t.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL  expects the wrong thing: expected allow, got deny"),
        "{}",
        stdout(&o)
    );
}
