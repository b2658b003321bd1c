//! The TokenReview authenticator against a fake API server over real HTTP, and Kubernetes-mode
//! issuance end to end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use ward_ca::auth::{AuthError, Authenticator, Requester};
use ward_ca::tokenreview::{TokenReview, TokenReviewConfig};
use ward_lib_api::ca_client::CaClientError;

use crate::fake_apiserver::{self, Known, CALLER_CREDENTIAL};
use crate::harness::{start, Options};

async fn setup() -> (
    fake_apiserver::FakeApiServer,
    TokenReview,
    tempfile::TempDir,
) {
    let tokens = BTreeMap::from([
        (
            "proxy-node-1",
            Known::ServiceAccount {
                ns: "ward-system",
                name: "ward-proxy",
                node: Some("node-1"),
                audiences: vec!["ward-ca"],
            },
        ),
        (
            "proxy-no-node",
            Known::ServiceAccount {
                ns: "ward-system",
                name: "ward-proxy",
                node: None,
                audiences: vec!["ward-ca"],
            },
        ),
        (
            "some-app",
            Known::ServiceAccount {
                ns: "default",
                name: "web",
                node: Some("node-1"),
                audiences: vec!["ward-ca"],
            },
        ),
        (
            "apiserver-audience",
            Known::ServiceAccount {
                ns: "ward-system",
                name: "ward-proxy",
                node: Some("node-1"),
                audiences: vec!["https://kubernetes.default.svc"],
            },
        ),
        ("revoked", Known::Invalid),
        ("boom", Known::ServerError),
    ]);
    let api = fake_apiserver::start(tokens).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("token");
    std::fs::write(&cred, format!("{CALLER_CREDENTIAL}\n")).unwrap();
    let tr = TokenReview::new(TokenReviewConfig {
        api_server: format!("http://{}", api.addr),
        ca_pem: None,
        credential_path: Some(cred),
        audience: "ward-ca".into(),
        allowed_service_accounts: vec!["ward-system/ward-proxy".into()],
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    (api, tr, dir)
}

#[tokio::test]
async fn answers_of_the_api_server() {
    let (api, tr, _dir) = setup().await;
    assert_eq!(
        tr.authenticate("proxy-node-1").await.unwrap(),
        Requester {
            node: "node-1".into(),
            subject: "system:serviceaccount:ward-system:ward-proxy".into()
        }
    );
    type Check = fn(&AuthError) -> bool;
    let cases: Vec<(&str, Check)> = vec![
        (
            "revoked",
            |e| matches!(e, AuthError::NotAuthenticated(m) if m.contains("invalid bearer token")),
        ),
        ("never-seen", |e| {
            matches!(e, AuthError::NotAuthenticated(_))
        }),
        ("proxy-no-node", |e| *e == AuthError::NoNodeClaim),
        (
            "some-app",
            |e| matches!(e, AuthError::WrongServiceAccount(u) if u == "system:serviceaccount:default:web"),
        ),
        (
            "apiserver-audience",
            |e| matches!(e, AuthError::NotAuthenticated(m) if m.contains("audience")),
        ),
        (
            "boom",
            |e| matches!(e, AuthError::Unavailable(m) if m.contains("500")),
        ),
    ];
    for (token, pred) in cases {
        let err = tr.authenticate(token).await.unwrap_err();
        assert!(pred(&err), "{token}: {err:?}");
    }
    // Every review carried the CA's own credential, the token and the audience.
    let seen = api.seen.lock().unwrap();
    assert_eq!(seen.len(), 7);
    for (auth, review) in seen.iter() {
        assert_eq!(auth, &format!("Bearer {CALLER_CREDENTIAL}"));
        assert_eq!(review["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(review["kind"], "TokenReview");
        assert_eq!(review["spec"]["audiences"][0], "ward-ca");
    }
}

#[tokio::test]
async fn unreachable_api_server_is_unavailable_not_unauthenticated() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let tr = TokenReview::new(TokenReviewConfig {
        api_server: format!("http://{addr}"),
        ca_pem: None,
        credential_path: None,
        audience: "ward-ca".into(),
        allowed_service_accounts: vec!["ward-system/ward-proxy".into()],
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    assert!(matches!(
        tr.authenticate("x").await,
        Err(AuthError::Unavailable(_))
    ));
}

#[tokio::test]
async fn kubernetes_mode_issuance_end_to_end() {
    let (_api, tr, _dir) = setup().await;
    let ca = start(Options {
        authn: Some(Arc::new(tr)),
        ..Options::default()
    })
    .await;
    let mut c = ca.client("proxy-node-1");
    let svid = c.issue("default", "web", None).await.unwrap();
    assert_eq!(svid.id.as_str(), "spiffe://cluster.local/ns/default/sa/web");
    // The node comes from the API server: node-1's proxy cannot get node-2's workload.
    match c.issue("default", "db", None).await {
        Err(CaClientError::Refused { code, .. }) => assert_eq!(code, Code::PermissionDenied),
        other => panic!("{other:?}"),
    }
    let mut app = ca.client("some-app");
    match app.issue("default", "web", None).await {
        Err(CaClientError::Refused { code, message }) => {
            assert_eq!(code, Code::Unauthenticated);
            assert!(message.contains("ward-proxy"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut boom = ca.client("boom");
    match boom.issue("default", "web", None).await {
        Err(CaClientError::Refused { code, .. }) => assert_eq!(code, Code::Unavailable),
        other => panic!("{other:?}"),
    }
}
