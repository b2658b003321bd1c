//! A node's credentials get that node's view and certificates only; bad tokens get nothing.

use std::sync::Arc;
use std::time::Duration;

use ward_lib_api::resources::{POLICY, TYPES};
use ward_lib_api::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ward_lib_api::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Node};
use ward_lib_identity::{SpiffeId, TrustBundle, TrustDomain};

use crate::*;

fn td() -> TrustDomain {
    TrustDomain::parse("cluster.local").unwrap_or_else(|e| panic!("{e}"))
}

fn bundle(m: &Mesh) -> ward_lib_identity::SharedBundle {
    let mut b = TrustBundle::new();
    b.add_pem(&td(), &m.roots_pem)
        .unwrap_or_else(|e| panic!("{e}"));
    ward_lib_identity::bundle::shared(b)
}

fn control_id() -> SpiffeId {
    SpiffeId::for_service_account(&td(), "ward-system", "ward-control")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Opens a raw control stream with `token`, sending `requests` first; returns the first
/// push's responses, or the error status.
async fn raw_stream(
    m: &Mesh,
    token: &str,
    requests: Vec<DeltaDiscoveryRequest>,
) -> Result<Vec<DeltaDiscoveryResponse>, tonic::Status> {
    let channel = ward_lib_api::ca_client::svid_channel(m.addr, bundle(m), control_id(), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for r in requests {
        tx.send(r).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut stream = client.delta_aggregated_resources(req).await?.into_inner();
    let mut push = Vec::new();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no push within 10 s"))?
            .unwrap_or_else(|| panic!("stream ended"));
        let last = r.type_url == POLICY;
        push.push(r);
        if last {
            drop(tx);
            return Ok(push);
        }
    }
}

fn subscribe(node: &str, names: &[&str]) -> Vec<DeltaDiscoveryRequest> {
    TYPES
        .iter()
        .map(|t| DeltaDiscoveryRequest {
            node: Some(Node {
                id: node.into(),
                cluster: String::new(),
            }),
            type_url: (*t).into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .collect()
}

fn policy_names(push: &[DeltaDiscoveryResponse]) -> Vec<String> {
    push.iter()
        .filter(|r| r.type_url == POLICY)
        .flat_map(|r| r.resources.iter().map(|x| x.name.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_its_own_view_whatever_it_asks_for() {
    let m = mesh().await;
    let push = raw_stream(&m, "node-1-token", subscribe("node-1", &[]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy_names(&push), ["AuthorizationPolicy/shop/allow-a"]);
    // The cluster-wide address table is everyone's.
    let workloads: Vec<&str> = push
        .iter()
        .filter(|r| r.type_url.ends_with("Workload"))
        .flat_map(|r| r.resources.iter().map(|x| x.name.as_str()))
        .collect();
    assert_eq!(workloads.len(), 2);

    // Asking by name for node-2's policy changes nothing.
    let push = raw_stream(
        &m,
        "node-1-token",
        subscribe("node-1", &["AuthorizationPolicy/shop/allow-b"]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(policy_names(&push), ["AuthorizationPolicy/shop/allow-a"]);

    // Claiming to be node-2 with node-1's credential is refused.
    let e = raw_stream(&m, "node-1-token", subscribe("node-2", &[]))
        .await
        .err()
        .unwrap_or_else(|| panic!("node-1's token was served node-2's view"));
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_wrong_audience_tokens_get_nothing() {
    let m = mesh().await;
    for token in [
        "forged-token",
        "expired-token",
        "wrong-audience-token",
        "other-sa-token",
        "unbound-token",
    ] {
        let e = raw_stream(&m, token, subscribe("node-1", &[]))
            .await
            .err()
            .unwrap_or_else(|| panic!("{token} was served a view"));
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{token}: {e}");
        let mut ca = ward_lib_api::ca_client::CaClient::new(
            m.addr,
            bundle(&m),
            control_id(),
            token,
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let e = ca
            .issue("shop", "a", None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{token} got a certificate"));
        assert!(e.to_string().contains("Unauthenticated"), "{token}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_certificates_only_for_its_own_workloads() {
    let m = mesh().await;
    let mut ca = ward_lib_api::ca_client::CaClient::new(
        m.addr,
        bundle(&m),
        control_id(),
        "node-1-token",
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Wait for the index to have synced (the CA answers UNAVAILABLE before).
    let svid = wait_until_ok(|| ca.clone(), "shop", "a").await;
    assert_eq!(svid.id.to_string(), "spiffe://cluster.local/ns/shop/sa/a");
    let e = ca
        .issue("shop", "b", None)
        .await
        .err()
        .unwrap_or_else(|| panic!("node-1 got b's certificate"));
    assert!(e.to_string().contains("PermissionDenied"), "{e}");

    // When b's pod moves to node-1, node-1 may have it; when a's pod ends, not any more.
    m.api.apply(pod("b-1", "node-1", "10.1.0.9", "b"));
    let mut done = pod("a-1", "node-1", "10.1.0.2", "a");
    done["status"]["phase"] = serde_json::json!("Succeeded");
    m.api.apply(done);
    let svid = wait_until_ok(|| ca.clone(), "shop", "b").await;
    assert_eq!(svid.id.to_string(), "spiffe://cluster.local/ns/shop/sa/b");
    // The termination is the watch's next event: refused as soon as the index has it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ca.issue("shop", "a", None).await {
            Err(e) => {
                assert!(e.to_string().contains("PermissionDenied"), "{e}");
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "a terminated pod's identity is still issued"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_ok(
    ca: impl Fn() -> ward_lib_api::ca_client::CaClient,
    ns: &str,
    sa: &str,
) -> ward_lib_api::ca_client::IssuedSvid {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ca().issue(ns, sa, None).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{ns}/{sa}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_client_installs_its_node_view_and_follows_changes() {
    let m = mesh().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token = dir.path().join("token");
    std::fs::write(&token, "node-1-token").unwrap_or_else(|e| panic!("{e}"));
    let state = ward_proxy::state::State::new("node-1".into());
    let mut b = TrustBundle::new();
    b.add_pem(&td(), &m.roots_pem)
        .unwrap_or_else(|e| panic!("{e}"));
    state.seed_bundle(b);
    tokio::spawn(ward_proxy::control::run(
        state.clone(),
        ward_proxy::control::ControlSettings {
            address: m.addr,
            identity: "ward-system/ward-control".into(),
            trust_domain: td(),
            token_file: token,
        },
    ));
    let snap = wait_for(|| state.snapshot()).await;
    let ids: Vec<String> = snap
        .policies
        .policies()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["shop/allow-a"]);
    let a = snap
        .local_workloads("node-1")
        .next()
        .unwrap_or_else(|| panic!("no local workload"));
    assert_eq!(a.policies.policies().len(), 1);

    // A new policy for a's pod arrives; the snapshot follows.
    m.api.apply(policy("also-a", "a"));
    let snap = wait_for(|| {
        state
            .snapshot()
            .filter(|s| s.policies.policies().len() == 2)
    })
    .await;
    let a = snap
        .local_workloads("node-1")
        .next()
        .unwrap_or_else(|| panic!("no local workload"));
    assert_eq!(a.policies.policies().len(), 2);
    let _ = Arc::clone(&state);
}
