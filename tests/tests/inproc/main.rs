//! Cross-component tests in one process (no root needed): the control component in
//! Kubernetes mode on the fake API server, real gRPC and TLS on loopback, and the proxy's own
//! control-stream and CA client code.

mod security;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_tests_fake_apiserver::{FakeApiServer, TokenInfo};

/// A control component on a fake API server.
pub struct Mesh {
    pub api: FakeApiServer,
    pub addr: SocketAddr,
    pub roots_pem: String,
    pub views: tokio::sync::watch::Receiver<Arc<ward_control::index::View>>,
}

pub const PROXY_USER: &str = "system:serviceaccount:ward-system:ward-proxy";

/// Objects: namespace `shop` (enrolled), nodes node-1/node-2, pod `a-1` (sa a) on node-1 and
/// `b-1` (sa b) on node-2, a policy per pod; tokens for both nodes and hostile ones.
pub async fn mesh() -> Mesh {
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"ward.dev/mesh": "enabled"}}}));
    for (n, ip) in [("node-1", "10.0.0.1"), ("node-2", "10.0.0.2")] {
        api.apply(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }
    for (name, node, ip, sa) in [
        ("a-1", "node-1", "10.1.0.2", "a"),
        ("b-1", "node-2", "10.2.0.2", "b"),
    ] {
        api.apply(pod(name, node, ip, sa));
        api.apply(policy(&format!("allow-{sa}"), sa));
    }
    for (token, node, aud, user, expired) in [
        (
            "node-1-token",
            Some("node-1"),
            "ward-control",
            PROXY_USER,
            false,
        ),
        (
            "node-2-token",
            Some("node-2"),
            "ward-control",
            PROXY_USER,
            false,
        ),
        (
            "expired-token",
            Some("node-1"),
            "ward-control",
            PROXY_USER,
            true,
        ),
        (
            "wrong-audience-token",
            Some("node-1"),
            "kubernetes",
            PROXY_USER,
            false,
        ),
        (
            "other-sa-token",
            Some("node-1"),
            "ward-control",
            "system:serviceaccount:shop:a",
            false,
        ),
        ("unbound-token", None, "ward-control", PROXY_USER, false),
    ] {
        api.add_token(
            token,
            TokenInfo {
                username: user.into(),
                audiences: vec![aud.into()],
                node: node.map(str::to_owned),
                expired,
            },
        );
    }
    let url = api.url().parse().unwrap_or_else(|e| panic!("{e}"));
    let client = kube::Client::try_from(kube::Config::new(url)).unwrap_or_else(|e| panic!("{e}"));
    let args = <ward_control::runtime::Args as clap::Parser>::parse_from(["ward-control"]);
    let running = ward_control::runtime::start(args, Some(client))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let views = running.views.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(running.serve(listener, std::future::pending()));
    let roots_pem = wait_for(|| {
        api.get("v1", "ConfigMap", "ward-system", "ward-root-ca")
            .and_then(|cm| cm["data"]["root.pem"].as_str().map(str::to_owned))
    })
    .await;
    Mesh {
        api,
        addr,
        roots_pem,
        views,
    }
}

pub fn pod(name: &str, node: &str, ip: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "shop", "name": name, "labels": {"app": sa}},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub fn policy(name: &str, app: &str) -> Value {
    json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}})
}

/// Polls `f` until it returns something (10 s at most).
pub async fn wait_for<T>(f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
