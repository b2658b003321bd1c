//! The admission webhook as the API server uses it: real AdmissionReview v1 JSON over TLS,
//! verified with the `caBundle` the control component put in the ValidatingWebhookConfiguration
//! committed under `deploy/webhook/`, by the Service's DNS name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use ward_tests_fake_apiserver::FakeApiServer;

const SERVER_NAME: &str = "ward-control.ward-system.svc";

fn ca_bundle(api: &FakeApiServer) -> Option<String> {
    let o = api.get(
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
        "",
        "ward-policy-validation",
    )?;
    let b64 = o["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(pem).ok()
}

/// POSTs `body` to the webhook over TLS, trusting only `bundle_pem` and checking the Service's
/// DNS name, as the API server does. Returns the status code and body.
async fn post(
    addr: std::net::SocketAddr,
    bundle_pem: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in ward_lib_identity::bundle::parse_pem_certs(bundle_pem)
        .unwrap_or_else(|e| panic!("caBundle: {e}"))
    {
        roots.add(c).unwrap_or_else(|e| panic!("{e}"));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(ward_lib_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let name =
        rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap_or_else(|e| panic!("{e}"));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to the webhook as {SERVER_NAME}: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", SERVER_NAME)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = send
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let code = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    (code, body.to_vec())
}

/// An AdmissionReview v1 request as kube-apiserver sends it for `object`.
fn review(
    uid: &str,
    operation: &str,
    group: &str,
    kind: &str,
    resource: &str,
    object: Value,
) -> Vec<u8> {
    let ns = object["metadata"]["namespace"].clone();
    let name = object["metadata"]["name"].clone();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": name,
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": if operation == "DELETE" { Value::Null } else { object.clone() },
            "oldObject": if operation == "DELETE" { object } else { Value::Null },
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl-client-side-apply"}
        }
    }))
    .unwrap_or_default()
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
           "metadata": {"namespace": "shop", "name": name, "generation": 1,
                        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
           "spec": spec})
}

fn response(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v:#}");
    assert_eq!(v["kind"], "AdmissionReview", "{v:#}");
    v["response"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_over_tls_with_the_ca_bundle_it_maintains() {
    let api = FakeApiServer::start("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.apply(crate::webhook_configuration());
    assert_eq!(
        ca_bundle(&api),
        None,
        "the committed configuration leaves caBundle to ward-control"
    );
    let (running, addr) = crate::start_with_webhook(&api).await;

    // The leader sets caBundle to ward's trust bundle (the root the control component made).
    let start = Instant::now();
    let bundle = loop {
        if let Some(b) = ca_bundle(&api) {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "caBundle never set"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let root_cm = api
        .get("v1", "ConfigMap", "ward-system", "ward-root-ca")
        .unwrap_or_else(|| panic!("no root ConfigMap"));
    let certs = |pem: &str| {
        ward_lib_identity::bundle::parse_pem_certs(pem).unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        certs(root_cm["data"]["root.pem"].as_str().unwrap_or("")),
        certs(&bundle),
        "caBundle is the trust bundle"
    );

    // 1. Allowed: a valid policy, nothing to warn about.
    let (code, body) = post(
        addr,
        &bundle,
        "/validate",
        review(
            "u-1",
            "CREATE",
            "security.ward.dev",
            "AuthorizationPolicy",
            "authorizationpolicies",
            policy(
                "good",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
            ),
        ),
    )
    .await;
    assert_eq!(code, 200);
    let r = response(&body);
    assert_eq!(r["uid"], "u-1");
    assert_eq!(r["allowed"], true, "{r:#}");
    assert!(r.get("warnings").is_none(), "{r:#}");
    assert!(
        r.get("patch").is_none(),
        "a validating webhook never patches: {r:#}"
    );

    // 2. Denied with the CLI's messages: every error, each naming its field.
    let bad = policy(
        "bad",
        json!({"action": "DENY", "rules": [
        {"to": [{"operation": {"ports": ["ssh"]}}]},
        {"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}),
    );
    let (code, body) = post(
        addr,
        &bundle,
        "/validate",
        review(
            "u-2",
            "UPDATE",
            "security.ward.dev",
            "AuthorizationPolicy",
            "authorizationpolicies",
            bad.clone(),
        ),
    )
    .await;
    assert_eq!(code, 200);
    let r = response(&body);
    assert_eq!(r["uid"], "u-2");
    assert_eq!(r["allowed"], false, "{r:#}");
    assert_eq!(r["status"]["code"], 422, "{r:#}");
    assert_eq!(r["status"]["reason"], "Invalid", "{r:#}");
    let message = r["status"]["message"].as_str().unwrap_or("");
    // What `ward policy validate` prints for the same object, where the origin (a file and
    // document there) is the object itself here.
    let cli: Vec<String> =
        match ward_lib_policy::parse_documents(&bad.to_string(), "bad.yaml", &Default::default()) {
            Err(errors) => errors
                .into_iter()
                .map(|mut e| {
                    e.origin = "AuthorizationPolicy shop/bad".into();
                    e.to_string()
                })
                .collect(),
            Ok(_) => panic!("the CLI accepts what the webhook must deny"),
        };
    assert_eq!(cli.len(), 2, "{cli:?}");
    assert_eq!(message, cli.join("\n"));
    assert!(
        message.contains(
            "policy shop/bad: rules[0].to[0].operation.ports[0]: \"ssh\" is not a port number"
        ),
        "{message}"
    );
    assert!(
        message.contains("rules[1].from[0].source.ipBlocks[0]"),
        "{message}"
    );

    // 3. Allowed with warnings: a fail-closed rewrite, as `ward policy validate` warns.
    let (code, body) = post(addr, &bundle, "/validate", review("u-3", "CREATE", "security.ward.dev", "AuthorizationPolicy", "authorizationpolicies",
        policy("rewritten", json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]})))).await;
    assert_eq!(code, 200);
    let r = response(&body);
    assert_eq!(r["allowed"], true, "{r:#}");
    let warnings: Vec<&str> = r["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(warnings.len(), 1, "{r:#}");
    assert!(
        warnings[0].contains("rules[0] uses HTTP-only attributes (to[0].operation.methods)")
            && warnings[0].contains("denies more"),
        "{warnings:?}"
    );
    // Dry-run is a difference between what is written and what is enforced, too.
    let mut dry = policy("dry", json!({"action": "DENY", "rules": [{}]}));
    dry["metadata"]["annotations"]["security.ward.dev/dry-run"] = json!("true");
    let (_, body) = post(
        addr,
        &bundle,
        "/validate",
        review(
            "u-4",
            "CREATE",
            "security.ward.dev",
            "AuthorizationPolicy",
            "authorizationpolicies",
            dry,
        ),
    )
    .await;
    let r = response(&body);
    assert_eq!(r["allowed"], true, "{r:#}");
    assert!(
        r["warnings"][0].as_str().unwrap_or("").contains("dry-run"),
        "{r:#}"
    );

    // 4. Another kind is allowed untouched; so is deleting even an invalid policy.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": "ssh"}]}]}});
    let (code, body) = post(
        addr,
        &bundle,
        "/validate",
        review("u-5", "CREATE", "", "Pod", "pods", pod),
    )
    .await;
    assert_eq!(code, 200);
    let r = response(&body);
    assert_eq!(
        (r["uid"].clone(), r["allowed"].clone()),
        (json!("u-5"), json!(true)),
        "{r:#}"
    );
    assert!(
        r.get("warnings").is_none() && r.get("patch").is_none(),
        "{r:#}"
    );
    let (_, body) = post(
        addr,
        &bundle,
        "/validate",
        review(
            "u-6",
            "DELETE",
            "security.ward.dev",
            "AuthorizationPolicy",
            "authorizationpolicies",
            bad,
        ),
    )
    .await;
    assert_eq!(response(&body)["allowed"], true);
    // PeerAuthentication is validated too.
    let pa = json!({"apiVersion": "security.ward.dev/v1", "kind": "PeerAuthentication",
                    "metadata": {"namespace": "shop", "name": "pa"}, "spec": {"mtls": {"mode": "DISABLE"}}});
    let (_, body) = post(
        addr,
        &bundle,
        "/validate",
        review(
            "u-7",
            "CREATE",
            "security.ward.dev",
            "PeerAuthentication",
            "peerauthentications",
            pa,
        ),
    )
    .await;
    let r = response(&body);
    assert_eq!(r["allowed"], false, "{r:#}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("DISABLE"),
        "{r:#}"
    );

    // 5. Not an AdmissionReview: a clear 400, and the server keeps serving.
    let (code, body) = post(addr, &bundle, "/validate", b"{\"kind\": 3}".to_vec()).await;
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"));
    let (code, _) = post(addr, &bundle, "/elsewhere", b"{}".to_vec()).await;
    assert_eq!(code, 404);

    // 6. A Helm upgrade that resets caBundle: it is set again.
    api.apply(crate::webhook_configuration());
    assert_eq!(ca_bundle(&api), None);
    let start = Instant::now();
    while ca_bundle(&api).as_deref() != Some(bundle.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "caBundle not restored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(running);
}
