//! `kubectl apply` of policies, end to end: the real kubectl binary against the fake API
//! server, which calls ward's admission webhook over TLS as the API server does (the
//! ValidatingWebhookConfiguration committed under `deploy/webhook/`, its `caBundle` set by
//! ward-control). The README's transcript is checked against what kubectl prints here.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use ward_tests_fake_apiserver::FakeApiServer;

/// kubectl: `$KUBECTL`, else `target/tools/kubectl`, else on `PATH`. `scripts/test` installs it (see `.ci/run`).
fn kubectl() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBECTL") {
        return PathBuf::from(p);
    }
    let tools = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/tools/kubectl"
    ));
    if tools.is_file() {
        return tools;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("kubectl not found: set KUBECTL or put it on PATH (scripts/test installs kubectl 1.35 into target/tools)")
    })
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(kubeconfig: &std::path::Path, args: &[&str]) -> Run {
    let out = std::process::Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl: {e}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const BAD: &str = "apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ssh-off
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"ssh\"]
  - from:
    - source:
        ipBlocks: [\"10.0.0.0/33\"]
";

const REWRITTEN: &str = "apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata:
  name: no-posts
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: [\"POST\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_is_refused_or_warned_by_the_webhook() {
    let kubectl_path = kubectl();
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"ward.dev/mesh": "enabled"}}}));
    api.apply(crate::webhook_configuration());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("bad-policy.yaml"), BAD).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.path().join("no-posts.yaml"), REWRITTEN).unwrap_or_else(|e| panic!("{e}"));

    let apply = |file: &str| {
        let path = dir.path().join(file).display().to_string();
        tokio::task::block_in_place(|| run(&kubeconfig, &["apply", "-f", &path]))
    };

    // Before any ward-control runs, the API server cannot call the webhook: with the committed
    // configuration's failurePolicy (Fail), the write is refused rather than stored unvalidated.
    let unvalidated = apply("bad-policy.yaml");
    assert_ne!(
        unvalidated.code, 0,
        "stored without validation: {}",
        unvalidated.stdout
    );
    assert!(
        unvalidated.stderr.contains("failed calling webhook"),
        "{}",
        unvalidated.stderr
    );
    assert!(api
        .get(
            "security.ward.dev/v1",
            "AuthorizationPolicy",
            "shop",
            "ssh-off"
        )
        .is_none());

    let (running, addr) = crate::start_with_webhook(&api).await;
    api.route_service("ward-system", "ward-control", addr);
    // Until ward-control has set caBundle, the call fails (refused the same way); then the
    // webhook answers.
    let start = Instant::now();
    let bad = loop {
        let r = apply("bad-policy.yaml");
        if r.stderr.contains("denied the request") {
            break r;
        }
        assert!(
            r.code != 0,
            "stored although the webhook could not be called: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(r.stderr.contains("failed calling webhook"), "{}", r.stderr);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the webhook never answered: {}",
            r.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // 1. A bad policy: refused at apply time with the CLI's messages; nothing stored.
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    let expected = "The request is invalid: error when creating \"bad-policy.yaml\": admission webhook \"policies.security.ward.dev\" denied the request: \
AuthorizationPolicy shop/ssh-off: policy shop/ssh-off: rules[0].to[0].operation.ports[0]: \"ssh\" is not a port number\n\
AuthorizationPolicy shop/ssh-off: policy shop/ssh-off: rules[1].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR\n";
    let stderr = bad
        .stderr
        .replace(&dir.path().to_string_lossy().to_string(), "")
        .replace("\"/", "\"");
    assert_eq!(stderr, expected);
    assert!(api
        .get(
            "security.ward.dev/v1",
            "AuthorizationPolicy",
            "shop",
            "ssh-off"
        )
        .is_none());

    // 2. A policy enforced differently from what it says: stored, and kubectl prints why.
    let warned = apply("no-posts.yaml");
    assert_eq!(warned.code, 0, "{}", warned.stderr);
    assert_eq!(
        warned.stdout,
        "authorizationpolicy.security.ward.dev/no-posts created\n"
    );
    assert_eq!(
        warned.stderr,
        "Warning: rules[0] uses HTTP-only attributes (to[0].operation.methods); on ports that are not HTTP they are dropped and the rest of the rule is enforced, so it denies more\n"
    );
    assert!(api
        .get(
            "security.ward.dev/v1",
            "AuthorizationPolicy",
            "shop",
            "no-posts"
        )
        .is_some());

    // 3. The README shows exactly this.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .unwrap_or_else(|e| panic!("{e}"));
    for line in expected
        .lines()
        .chain(warned.stderr.lines())
        .chain(warned.stdout.lines())
    {
        assert!(
            readme.contains(line),
            "README's kubectl transcript lacks: {line}"
        );
    }
    eprintln!("kubectl: {}\n$ kubectl apply -f bad-policy.yaml\n{stderr}$ kubectl apply -f no-posts.yaml\n{}{}", kubectl_path.display(), warned.stderr, warned.stdout);
    drop(running);
}
