//! A loopback HTTP server that answers TokenReview as kube-apiserver does: `201 Created` with
//! the review echoed back and `status` filled in, `401` for a bad caller credential, and
//! `500` when asked to fail. Each request is recorded for assertions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// What the API server knows about each token.
#[derive(Clone)]
pub enum Known {
    ServiceAccount {
        ns: &'static str,
        name: &'static str,
        node: Option<&'static str>,
        audiences: Vec<&'static str>,
    },
    Invalid,
    ServerError,
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const CALLER_CREDENTIAL: &str = "ca-own-sa-token";

pub async fn start(tokens: BTreeMap<&'static str, Known>) -> FakeApiServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tokens = Arc::new(tokens);
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let tokens = tokens.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let tokens = tokens.clone();
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(req, &tokens, &seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    FakeApiServer { addr, seen, task }
}

async fn answer(
    req: http::Request<Incoming>,
    tokens: &BTreeMap<&'static str, Known>,
    seen: &Mutex<Vec<(String, Value)>>,
) -> http::Response<Full<Bytes>> {
    let reply = |code: u16, v: Value| {
        http::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .unwrap()
    };
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((auth.clone(), review.clone()));
    if auth != format!("Bearer {CALLER_CREDENTIAL}") {
        return reply(
            401,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
        );
    }
    if method != http::Method::POST || path != "/apis/authentication.k8s.io/v1/tokenreviews" {
        return reply(
            404,
            json!({"kind": "Status", "status": "Failure", "code": 404}),
        );
    }
    let token = review["spec"]["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let status = match tokens.get(token) {
        Some(Known::ServerError) => {
            return reply(
                500,
                json!({"kind": "Status", "status": "Failure",
                "message": "etcdserver: request timed out", "code": 500}),
            )
        }
        Some(Known::ServiceAccount {
            ns,
            name,
            node,
            audiences,
        }) => {
            // The API server intersects the requested audiences with the token's.
            let common: Vec<&str> = audiences
                .iter()
                .copied()
                .filter(|a| wanted.iter().any(|w| w == a))
                .collect();
            if common.is_empty() {
                json!({"authenticated": false, "error": "token audiences are invalid"})
            } else {
                let mut extra = serde_json::Map::new();
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    json!(["ward-proxy-x7k2"]),
                );
                if let Some(n) = node {
                    extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
                }
                json!({
                    "authenticated": true,
                    "audiences": common,
                    "user": {
                        "username": format!("system:serviceaccount:{ns}:{name}"),
                        "uid": "5f1c7c3e-0000-4000-8000-000000000001",
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": extra,
                    }
                })
            }
        }
        Some(Known::Invalid) | None => {
            json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
        }
    };
    let mut echoed = review.clone();
    echoed["metadata"] = json!({"creationTimestamp": null});
    echoed["status"] = status;
    reply(201, echoed)
}
