//! The validating admission webhook: invalid policies are refused at `kubectl apply` time.
//!
//! The API server sends an `AdmissionReview` (admission.k8s.io/v1) for every CREATE and
//! UPDATE of a policy kind; the object is validated exactly as the status writer and
//! `ward policy validate` validate it (the same `lib/policy` parser, the same messages):
//! invalid → denied (422 `Invalid`, every error on its own line); valid but enforced
//! differently from what was written (fail-closed rewrites, dry-run, targetRefs) → allowed
//! with admission warnings, which kubectl prints. Anything else — another kind, DELETE,
//! CONNECT — is allowed untouched (no patch: this webhook never mutates).
//!
//! Transport: HTTPS on :15017 (istiod's webhook port) with a certificate from ward's own CA
//! that names the control component's Service by DNS (`ward-control.ward-system.svc`); the
//! `caBundle` of the ValidatingWebhookConfiguration is kept equal to ward's trust bundle by the
//! leading replica ([`spawn_ca_bundle_sync`]), so root rotation needs no manual step. Every
//! replica serves the webhook. `failurePolicy: Fail` in the configuration makes an unreachable
//! webhook refuse policy writes rather than store unvalidated ones.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::ByteString;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use ward_ca::authority::Authority;
use ward_ca::server::ServingCert;
use ward_lib_policy::TrustConfig;

use crate::model::PolicyKind;
use crate::policies::{PolicyState, Verdict};

/// The path the webhook configuration names.
pub const PATH: &str = "/validate";
/// Largest AdmissionReview read: an object and its old version, each at most etcd's 1.5 MiB.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Concurrent connections (the API server keeps a few; anything more is not the API server).
const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server's own limit is the configuration's `timeoutSeconds` (at most 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides AdmissionReviews.
#[derive(Clone)]
pub struct Validator {
    trust: TrustConfig,
    istio: bool,
}

impl Validator {
    /// `istio`: also validate `security.istio.io` kinds (when ward enforces them).
    pub fn new(trust: TrustConfig, istio: bool) -> Self {
        Self { trust, istio }
    }

    /// One AdmissionReview (JSON) → the review to answer with (JSON). `Err` names what is
    /// wrong with a request that is not an AdmissionReview at all (answered with 400).
    pub fn review(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
        let api_version = review.types.api_version.clone();
        if api_version != "admission.k8s.io/v1" {
            return Err(format!(
                "AdmissionReview apiVersion {api_version:?} is not supported; configure admissionReviewVersions: [v1]"
            ));
        }
        let request: AdmissionRequest<DynamicObject> = review
            .try_into()
            .map_err(|_| "the AdmissionReview has no request".to_owned())?;
        let response = self.admit(&request);
        serde_json::to_vec(&response.into_review()).map_err(|e| e.to_string())
    }

    /// The decision for one request.
    pub fn admit(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(req);
        if !matches!(req.operation, Operation::Create | Operation::Update) {
            return allowed;
        }
        let Some(kind) = self.kind_of(&req.kind.group, &req.kind.kind) else {
            return allowed;
        };
        let Some(object) = &req.object else {
            return deny(allowed, "the request carries no object".into());
        };
        // The object's namespace may be implied by the request (kubectl -n).
        let mut object = object.clone();
        if object.metadata.namespace.is_none() {
            object.metadata.namespace = req.namespace.clone();
        }
        if object.metadata.name.is_none() && !req.name.is_empty() {
            object.metadata.name = Some(req.name.clone());
        }
        let Some(policy) = crate::k8s::policy(&object, kind) else {
            return deny(allowed, "the policy has no name or no namespace".into());
        };
        let state = PolicyState::compile(policy, None, &self.trust);
        match &state.verdict {
            Verdict::Invalid { errors } => deny(allowed, errors.join("\n")),
            Verdict::Accepted { .. } => {
                let (_, reason, message) = crate::status::enforcement(&state);
                let mut allowed = allowed;
                if reason != "AsWritten" {
                    allowed.warnings = Some(message.lines().map(str::to_owned).collect());
                }
                allowed
            }
        }
    }

    fn kind_of(&self, group: &str, kind: &str) -> Option<PolicyKind> {
        let k = match group {
            "security.ward.dev" => PolicyKind::of("security.ward.dev/v1", kind)?,
            "security.istio.io" if self.istio => PolicyKind::of("security.istio.io/v1", kind)?,
            _ => return None,
        };
        Some(k)
    }
}

fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut r = response.deny(message);
    r.result.code = 422;
    r.result.reason = "Invalid".into();
    r
}

/// The DNS names of the webhook's Service, as the API server addresses it.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// TLS 1.2 and 1.3 (the API server's Go client offers both), ALPN h2 and http/1.1.
pub fn tls_config(cert: Arc<ServingCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(ward_lib_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves the webhook on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    validator: Validator,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "webhook: connection limit reached; refusing connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let validator = validator.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let validator = validator.clone();
                    async move {
                        let resp = tokio::time::timeout(REQUEST_TIMEOUT, handle(&validator, req))
                            .await
                            .unwrap_or_else(|_| {
                                reply(408, "text/plain", "request timed out\n".into())
                            });
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}

async fn handle(
    validator: &Validator,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return reply(
            404,
            "text/plain",
            format!("not found; the webhook is at {PATH}\n").into(),
        );
    }
    if req.method() != http::Method::POST {
        return reply(405, "text/plain", "POST an AdmissionReview\n".into());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                413,
                "text/plain",
                format!("reading the AdmissionReview (limit {MAX_BODY} bytes): {e}\n").into(),
            )
        }
    };
    match validator.review(&body) {
        Ok(json) => reply(200, "application/json", json.into()),
        Err(e) => {
            tracing::warn!(error = %e, "webhook: bad request");
            reply(400, "text/plain", format!("{e}\n").into())
        }
    }
}

fn reply(code: u16, content_type: &str, body: Bytes) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(body));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_REQUEST);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Keeps `caBundle` of every webhook in the ValidatingWebhookConfiguration `name` equal to
/// ward's trust bundle, while `leader` is true: on start, whenever the object changes (a Helm
/// upgrade resets it) and whenever the roots change (rotation). Writes are replaces with the
/// object's resourceVersion, so a concurrent edit is never overwritten; a conflict is retried
/// from the newer object.
pub fn spawn_ca_bundle_sync(
    client: kube::Client,
    name: String,
    authority: Arc<ArcSwap<Authority>>,
    mut leader: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api.clone(), cfg).default_backoff().boxed();
        let mut current: Option<ValidatingWebhookConfiguration> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => current = Some(o),
                    Some(Ok(watcher::Event::Delete(_))) => current = None,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, configuration = %name, "watching the webhook configuration"),
                    None => return,
                },
                // Roots change rarely; a cheap comparison every tick notices rotation.
                _ = tick.tick() => {}
                r = leader.changed() => if r.is_err() { return },
            }
            if !*leader.borrow() {
                continue;
            }
            let Some(obj) = current.as_ref() else {
                continue;
            };
            let a = authority.load();
            let pem = a.bundle().to_pem(a.trust_domain().as_str());
            let Some(updated) = with_ca_bundle(obj, pem.as_bytes()) else {
                continue;
            };
            match api
                .replace(
                    &name,
                    &PostParams {
                        field_manager: Some(crate::status::FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &updated,
                )
                .await
            {
                Ok(o) => {
                    tracing::info!(configuration = %name, "webhook caBundle set to ward's trust bundle");
                    current = Some(o);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Someone else wrote first: the watch brings the newer object.
                    tracing::debug!(configuration = %name, "webhook configuration changed meanwhile; retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, configuration = %name, "setting the webhook caBundle failed; retrying")
                }
            }
        }
    });
}

/// `obj` with every webhook's `caBundle` set to `pem`, or `None` when it already is.
pub fn with_ca_bundle(
    obj: &ValidatingWebhookConfiguration,
    pem: &[u8],
) -> Option<ValidatingWebhookConfiguration> {
    let webhooks = obj.webhooks.as_ref()?;
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(pem))
    {
        return None;
    }
    let mut next = obj.clone();
    for w in next.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(pem.to_vec()));
    }
    Some(next)
}
