//! Two control components starting together end up with one CA root.

use std::time::Duration;

use ward_lib_identity::TrustDomain;
use ward_tests_fake_apiserver::FakeApiServer;

use crate::client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controls_starting_together_agree_on_one_root() {
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let td = TrustDomain::parse("cluster.local").unwrap_or_else(|e| panic!("{e}"));
    let validity = Duration::from_secs(3600 * 24 * 365);
    // Both replicas read "not found" before either creates.
    api.rendezvous("GET /api/v1/namespaces/ward-system/secrets/ward-ca", 2);
    let (a, b) = tokio::join!(
        ward_control::ca::load_or_create_root(
            client(&api),
            "ward-system",
            "ward-ca",
            &td,
            validity
        ),
        ward_control::ca::load_or_create_root(
            client(&api),
            "ward-system",
            "ward-ca",
            &td,
            validity
        ),
    );
    let (a, pa) = a.unwrap_or_else(|e| panic!("{e:#}"));
    let (b, pb) = b.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(a.roots(), b.roots(), "the two replicas use different roots");
    assert_eq!(pa.root, pb.root);
    let creates = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /api/v1/namespaces/ward-system/secrets"))
        .count();
    assert_eq!(
        creates, 2,
        "both replicas should have raced to create the Secret"
    );
    assert_eq!(api.list("v1", "Secret").len(), 1);

    // A third start reads what is there and creates nothing.
    let (c, _) = ward_control::ca::load_or_create_root(
        client(&api),
        "ward-system",
        "ward-ca",
        &td,
        validity,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(c.roots(), a.roots());

    // A Secret for another trust domain is refused, not silently used.
    let other = TrustDomain::parse("other.example").unwrap_or_else(|e| panic!("{e}"));
    let e = ward_control::ca::load_or_create_root(
        client(&api),
        "ward-system",
        "ward-ca",
        &other,
        validity,
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("a root for another trust domain was accepted"));
    assert!(e.to_string().contains("not \"other.example\""), "{e}");
}
