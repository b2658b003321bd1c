//! Node binding, token checks, CSR checks and audit records, through the real service.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::Code;
use ward_ca::auth::BootstrapTokens;
use ward_ca::ratelimit::RateLimit;
use ward_lib_api::ca::IssueRequest;
use ward_lib_api::ca_client::{new_key_and_csr, CaClientError};
use ward_lib_identity::svid::{verify_svid, PeerRole};
use x509_parser::prelude::*;

use crate::harness::{start, Options};

fn refused(r: Result<impl std::fmt::Debug, CaClientError>) -> (Code, String) {
    match r {
        Err(CaClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn issues_for_identity_on_own_node() {
    let ca = start(Options::default()).await;
    let mut client = ca.client(&ca.token("node-1"));
    let svid = client
        .issue("default", "web", Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(svid.id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
    assert_eq!(svid.roots, ca.authority.roots());
    let now = UnixTime::now();
    let v = verify_svid(&svid.chain, &ca.authority.bundle(), now, PeerRole::Client).unwrap();
    assert_eq!(v.id, svid.id);
    // Requested lifetime honoured (notBefore is backdated 60 s).
    assert_eq!(v.not_after - v.not_before, 600 + 60);

    let audit = ca.audit_lines();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].outcome, "issued");
    assert_eq!(audit[0].node.as_deref(), Some("node-1"));
    assert_eq!(audit[0].requester.as_deref(), Some("bootstrap:node-1"));
    assert!(audit[0].serial.is_some());
}

#[tokio::test]
async fn refuses_identity_not_on_requesters_node() {
    let ca = start(Options::default()).await;
    let mut client = ca.client(&ca.token("node-1"));
    // db runs on node-2 only.
    let (code, msg) = refused(client.issue("default", "db", None).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        msg.contains("default/db") && msg.contains("node-1"),
        "{msg}"
    );
    let (code, _) = refused(client.issue("nowhere", "web", None).await);
    assert_eq!(code, Code::PermissionDenied);
    let (code, msg) = refused(client.issue("Bad_NS", "web", None).await);
    assert_eq!(code, Code::InvalidArgument, "{msg}");

    let audit = ca.audit_lines();
    assert_eq!(audit.len(), 3, "one audit record per request");
    assert!(audit.iter().all(|r| r.outcome == "refused"));
    assert_eq!(audit[0].code, Some("PERMISSION_DENIED"));
    let reason = audit[0].reason.as_deref().unwrap();
    assert!(
        reason.starts_with("no workload with service account default/db"),
        "{reason}"
    );
    assert_eq!(
        audit[0].spiffe_id.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/db")
    );
}

#[tokio::test]
async fn refuses_bad_tokens() {
    let ca = start(Options::default()).await;
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let good = ca.token("node-1");
    let other_key: [u8; 32] = rand::random();
    let forged_mac = BootstrapTokens::mint(&other_key, "node-1", now + 3600).unwrap();
    // Same MAC, but the node name edited to another node: the MAC no longer matches.
    let edited = good.replacen("node-1", "node-2", 1);
    let expired = BootstrapTokens::mint(&ca.key, "node-1", now - 10).unwrap();
    let unknown_node = BootstrapTokens::mint(&ca.key, "node-9", now + 3600).unwrap();
    let cases = [
        (forged_mac.as_str(), "signature is invalid"),
        (edited.as_str(), "signature is invalid"),
        (expired.as_str(), "expired"),
        (unknown_node.as_str(), "not a known node"),
        ("garbage", "malformed"),
        ("wardbt1:node-1:notanumber:abc", "malformed"),
    ];
    for (token, want) in cases {
        let mut client = ca.client(token);
        let (code, msg) = refused(client.issue("default", "web", None).await);
        assert_eq!(code, Code::Unauthenticated, "{token}: {msg}");
        assert!(msg.contains(want), "{token}: {msg}");
    }
    // No token at all.
    let mut client = ca.client("");
    let (code, msg) = refused(client.issue("default", "web", None).await);
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert_eq!(ca.audit_lines().len(), cases.len() + 1);
}

#[tokio::test]
async fn refuses_bad_csrs() {
    let ca = start(Options::default()).await;
    let mut client = ca.client(&ca.token("node-1"));
    let (_, csr) = new_key_and_csr().unwrap();
    let mut bad_sig = csr.clone();
    let n = bad_sig.len();
    bad_sig[n - 2] ^= 0x41;
    let rsa_like = b"\x30\x03\x02\x01\x00".to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bad_sig, "self-signature"),
        (rsa_like, "not valid DER"),
        (Vec::new(), "empty"),
        (vec![0x30; 9 * 1024], "limit"),
        ([csr.as_slice(), b"xx"].concat(), "trailing"),
    ];
    for (der, want) in cases {
        let r = client
            .issue_raw(IssueRequest {
                csr_der: der,
                namespace: "default".into(),
                service_account: "web".into(),
                ttl_seconds: 0,
            })
            .await;
        let status = r.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{want}: {status:?}");
        assert!(
            status.message().contains(want),
            "{want}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn names_in_the_csr_never_reach_the_certificate() {
    let ca = start(Options::default()).await;
    let mut client = ca.client(&ca.token("node-1"));
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    );
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap();
    let resp = client
        .issue_raw(IssueRequest {
            csr_der: csr.der().to_vec(),
            namespace: "default".into(),
            service_account: "web".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    let leaf = CertificateDer::from(resp.chain_der[0].clone());
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "subject must be empty");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert_eq!(
        names,
        vec!["URI(\"spiffe://cluster.local/ns/default/sa/web\")".to_string()]
    );
    assert!(!cert.is_ca());
    // Default lifetime is 24 h (+60 s backdating).
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        86_400 + 60
    );
}

#[tokio::test]
async fn rate_limit_per_node() {
    let ca = start(Options {
        rate_limit: RateLimit {
            burst: 2,
            per_second: 0.001,
        },
        ..Options::default()
    })
    .await;
    let mut n1 = ca.client(&ca.token("node-1"));
    n1.issue("default", "web", None).await.unwrap();
    n1.issue("default", "web", None).await.unwrap();
    let (code, msg) = refused(n1.issue("default", "web", None).await);
    assert_eq!(code, Code::ResourceExhausted, "{msg}");
    // node-2 has its own bucket.
    let mut n2 = ca.client(&ca.token("node-2"));
    n2.issue("default", "db", None).await.unwrap();
}

#[tokio::test]
async fn node_directory_reload_and_bad_edit() {
    let ca = start(Options::default()).await;
    let path = ca.dir.path().join("nodes.yaml");
    let mut client = ca.client(&ca.token("node-1"));
    assert!(client.issue("default", "db", None).await.is_err());
    // Schedule db on node-1 too (mtime granularity: make sure it changes).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let updated = crate::harness::NODES.replace(
        "serviceAccount: web",
        "serviceAccount: web\n      - namespace: default\n        serviceAccount: db",
    );
    std::fs::write(&path, &updated).unwrap();
    bump_mtime(&path, 1);
    client.issue("default", "db", None).await.unwrap();
    // A broken edit is rejected and the last good content stays in force.
    std::fs::write(&path, "nodes: [ {name: ").unwrap();
    bump_mtime(&path, 2);
    client.issue("default", "db", None).await.unwrap();
}

fn bump_mtime(path: &std::path::Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}
