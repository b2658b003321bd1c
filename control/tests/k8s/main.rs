//! The control component against the in-repo fake API server, over real HTTP: kube-rs's own
//! watchers and clients, the API server's documented semantics.

mod kubectl;
mod root;
mod status;
mod watches;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use ward_control::index::{Index, View};
use ward_tests_fake_apiserver::FakeApiServer;

/// The ValidatingWebhookConfiguration committed under `deploy/webhook/`.
pub fn webhook_configuration() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/webhook/ward-policy-validation.yaml"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("deploy/webhook: {e}"))
}

/// Starts a control component (replica `replica-a`, a 3 s Lease) against `api` and serves its
/// admission webhook on a loopback port; returns it and that port's address.
pub async fn start_with_webhook(
    api: &FakeApiServer,
) -> (ward_control::runtime::Running, std::net::SocketAddr) {
    let args = <ward_control::runtime::Args as clap::Parser>::parse_from([
        "ward-control",
        "--instance",
        "replica-a",
        "--lease-duration",
        "3",
    ]);
    let running = ward_control::runtime::start(args, Some(client(api)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let webhook = running
        .webhook
        .clone()
        .unwrap_or_else(|| panic!("Kubernetes mode serves a webhook"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(webhook.serve(listener, std::future::pending()));
    (running, addr)
}

/// A kube client for the fake server.
pub fn client(api: &FakeApiServer) -> kube::Client {
    let url = api.url().parse().unwrap_or_else(|e| panic!("{e}"));
    kube::Client::try_from(kube::Config::new(url)).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the watchers and the index against `api`; returns the views.
pub fn start_index(api: &FakeApiServer) -> watch::Receiver<Arc<View>> {
    let (tx, rx) = mpsc::channel(1024);
    let (views_tx, views) = watch::channel(Arc::new(View::default()));
    ward_control::k8s::spawn_watchers(
        client(api),
        tx.clone(),
        false,
        ward_control::metrics::Metrics::default(),
    );
    // The mesh settings come from the CA root in production; a fixed one here.
    let mut expected = ward_control::k8s::expected_kinds(false);
    expected.retain(|k| *k != ward_control::index::Kind::Mesh);
    tokio::spawn(ward_control::index::run(
        Index::new(expected),
        mpsc_keep(tx, rx),
        views_tx,
        None,
    ));
    views
}

/// Keeps a sender alive for the index's lifetime (the watchers hold clones).
fn mpsc_keep(
    tx: mpsc::Sender<ward_control::index::Event>,
    rx: mpsc::Receiver<ward_control::index::Event>,
) -> mpsc::Receiver<ward_control::index::Event> {
    std::mem::forget(tx);
    rx
}

/// Waits until `pred` holds for the current view.
pub async fn wait_view(
    views: &mut watch::Receiver<Arc<View>>,
    what: &str,
    pred: impl Fn(&View) -> bool,
) -> Arc<View> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = views.borrow().clone();
        if v.synced && pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}; last view seq {} synced {} workloads {:?}",
            v.seq,
            v.synced,
            {
                let mut n: Vec<String> = v.workloads.keys().map(|k| k.to_string()).collect();
                n.sort();
                n
            }
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), views.changed()).await;
    }
}

pub fn namespace(name: &str, enrolled: bool) -> Value {
    let mut labels = json!({});
    if enrolled {
        labels["ward.dev/mesh"] = json!("enabled");
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

pub fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "x"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub fn names(v: &View) -> Vec<String> {
    let mut n: Vec<String> = v.workloads.keys().map(|k| k.to_string()).collect();
    n.sort();
    n
}
