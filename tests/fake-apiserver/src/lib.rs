//! A stateful fake Kubernetes API server for tests: real HTTP on loopback, so the code under
//! test runs kube-rs's own clients and watchers against it.
//!
//! It keeps objects and implements what ward relies on as the API server documents it — not a
//! replay of canned answers:
//! - **list** with a collection `resourceVersion`, label and field selectors
//!   (`metadata.name`, `metadata.namespace`), and pagination (`limit`, `continue`, every page
//!   of a list from one snapshot);
//! - **watch** from a resourceVersion (history replayed, then live events), `BOOKMARK`s when
//!   asked (`allowWatchBookmarks`), `timeoutSeconds`, and `410 Gone` (an `ERROR` event with
//!   reason `Expired`) for a resourceVersion older than the compacted history;
//! - **get / create / replace / delete**, with `409 AlreadyExists` on create and `409 Conflict`
//!   on a replace with a stale resourceVersion; `uid`, `creationTimestamp`, `generation`
//!   (bumped when anything but metadata and status changes);
//! - **patch**: JSON merge patch, strategic merge (as a merge patch) and server-side apply
//!   (`application/apply-patch+yaml`, a field manager required): field ownership in
//!   `managedFields` (leaf fields; a list is one field), `409 Conflict` when applying a field
//!   another manager owns with another value unless `force=true`, which takes it over; updates
//!   take the fields they change; a removed field is owned by nobody; the `status` subresource
//!   is written only through `/status`;
//! - **dryRun=All** on every write: computed, answered, not stored;
//! - **validating admission**: writes matching a ValidatingWebhookConfiguration's rules are sent
//!   as AdmissionReview v1 to its Service (routed by [`FakeApiServer::route_service`]) over TLS,
//!   verified against `caBundle` by the name `NAME.NAMESPACE.svc`; denials and call failures
//!   (`failurePolicy`) are answered as the API server words them, warnings as `Warning`
//!   headers;
//! - **discovery** (`/version`, `/api`, `/apis`, resource lists) and enough OpenAPI v3 for
//!   kubectl to run against it (it leaves field validation to the server);
//! - **TokenReview**: tokens registered by the test, with audiences, expiry and the pod-bound
//!   node claim, answered as the API server would (unknown, expired and wrong-audience tokens
//!   are not authenticated).
//!
//! Test controls: [`FakeApiServer::drop_watches`] cuts every open watch (as a lost connection
//! would), [`FakeApiServer::compact`] forgets history (so resuming watches get `410 Gone`).
//! Simplifications, stated: one resourceVersion counter for all kinds (as etcd has), no
//! authentication of the caller, lists are atomic for server-side apply, no schema
//! validation, no mutating admission, no namespace lifecycle.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

/// One kind the server knows.
#[derive(Debug, Clone)]
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    /// Writes to the main resource leave `.status` alone (a status subresource).
    status_subresource: bool,
}

const KINDS: &[Kind] = &[
    k("", "v1", "Pod", "pods", true, true),
    k("", "v1", "Service", "services", true, true),
    k("", "v1", "Namespace", "namespaces", false, true),
    k("", "v1", "Node", "nodes", false, true),
    k("", "v1", "Secret", "secrets", true, false),
    k("", "v1", "ConfigMap", "configmaps", true, false),
    k("", "v1", "ServiceAccount", "serviceaccounts", true, false),
    k("", "v1", "Event", "events", true, false),
    k(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        false,
    ),
    k("events.k8s.io", "v1", "Event", "events", true, false),
    k("coordination.k8s.io", "v1", "Lease", "leases", true, false),
    k(
        "security.ward.dev",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
        true,
    ),
    k(
        "security.ward.dev",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
        true,
    ),
    k(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
        true,
        true,
    ),
    k(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
        true,
        true,
    ),
    k(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        false,
    ),
    k(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
    ),
    k(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
        false,
    ),
];

const fn k(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> Kind {
    Kind {
        group,
        version,
        kind,
        plural,
        namespaced,
        status_subresource,
    }
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn id(&self) -> (&'static str, &'static str) {
        (self.group, self.plural)
    }
}

/// A token the fake TokenReview knows.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// e.g. `system:serviceaccount:ward-system:ward-proxy`
    pub username: String,
    pub audiences: Vec<String>,
    /// The node of the pod the token is bound to.
    pub node: Option<String>,
    pub expired: bool,
}

type ObjKey = ((&'static str, &'static str), String, String);

/// A change, as a watch delivers it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: (&'static str, &'static str),
    event: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get `410 Gone`.
    compacted: u64,
    tokens: HashMap<String, TokenInfo>,
    /// Requests served, by `METHOD path` (for assertions on what clients did).
    requests: Vec<String>,
    /// `(METHOD path prefix, barrier)`: matching requests wait until the barrier's count of
    /// them has arrived (to make races deterministic).
    rendezvous: Option<(String, Arc<tokio::sync::Barrier>)>,
    /// Paginated lists in progress: continue token → (list resourceVersion, remaining items).
    pages: HashMap<String, (u64, Vec<Value>)>,
    /// Where admission webhooks' Services (`namespace/name`) are reached.
    services: HashMap<String, SocketAddr>,
    /// `(METHOD path prefix, count)`: the next `count` matching requests fail with
    /// `500 InternalError` (an API server having a bad moment).
    failing: Option<(String, usize)>,
}

/// The running server.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Change>,
    cut: watch::Sender<u64>,
    hold: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeApiServer {
    /// Starts on `addr` (port 0 for any) in the current tokio runtime.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(65536);
        let (cut, _) = watch::channel(0u64);
        let (hold, _) = watch::channel(false);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let srv = Server {
            state: state.clone(),
            events: events.clone(),
            cut: cut.subscribe(),
            hold: hold.subscribe(),
        };
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
                };
                let srv = srv.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let srv = srv.clone();
                        async move { Ok::<_, Infallible>(srv.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            state,
            events,
            cut,
            hold,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{token: fake}}\n",
            self.url()
        )
    }

    /// Registers a token for TokenReview.
    pub fn add_token(&self, token: &str, info: TokenInfo) {
        self.lock().tokens.insert(token.to_owned(), info);
    }

    /// Creates or replaces an object, status included (as an update of the object followed
    /// by one of its status, the way a controller and the kubelet would write a pod); returns
    /// it as stored.
    pub fn apply(&self, object: Value) -> Value {
        let kind = kind_of(&object).unwrap_or_else(|| panic!("unknown kind in {object}"));
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let key = (kind.id(), ns, name);
        let mut st = self.lock();
        let existing = st.objects.get(&key).cloned();
        match existing {
            Some(old) => write(
                &mut st,
                &self.events,
                kind,
                key,
                Some(&old),
                object,
                WriteMode::Everything,
                false,
            ),
            None => write(
                &mut st,
                &self.events,
                kind,
                key,
                None,
                object,
                WriteMode::Create,
                false,
            ),
        }
    }

    /// Deletes an object; whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let k = KINDS
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)
            .unwrap_or_else(|| panic!("unknown kind {api_version} {kind}"));
        let mut st = self.lock();
        delete(
            &mut st,
            &self.events,
            k,
            &(k.id(), namespace.to_owned(), name.to_owned()),
        )
        .is_some()
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let k = KINDS
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)?;
        self.lock()
            .objects
            .get(&(k.id(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of a kind.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(k) = KINDS
            .iter()
            .find(|k| k.api_version() == api_version && k.kind == kind)
        else {
            return Vec::new();
        };
        self.lock()
            .objects
            .iter()
            .filter(|((id, _, _), _)| *id == k.id())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Cuts every open watch, as a dropped connection would.
    pub fn drop_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// Cuts every open watch and holds new watch requests (they wait, as behind a network
    /// outage) until [`FakeApiServer::compact`] or [`FakeApiServer::release_watches`].
    pub fn drop_and_hold_watches(&self) {
        self.hold.send_replace(true);
        self.drop_watches();
    }

    /// Lets held watch requests proceed.
    pub fn release_watches(&self) {
        self.hold.send_replace(false);
    }

    /// Forgets the change history: a watch resuming from before now gets `410 Gone`. Releases
    /// held watches.
    pub fn compact(&self) {
        {
            let mut st = self.lock();
            st.compacted = st.rv;
            st.history.clear();
        }
        self.release_watches();
    }

    /// The next `n` requests starting with `prefix` (`METHOD /path`) each wait until all `n`
    /// have arrived, then proceed together: two clients racing through get-then-create are
    /// made to race for real.
    pub fn rendezvous(&self, prefix: &str, n: usize) {
        self.lock().rendezvous = Some((prefix.to_owned(), Arc::new(tokio::sync::Barrier::new(n))));
    }

    /// Routes the Service `namespace/name` named by webhook configurations to `addr` (the
    /// server calls the webhook there, verifying `NAME.NAMESPACE.svc` against `caBundle`).
    pub fn route_service(&self, namespace: &str, name: &str, addr: SocketAddr) {
        self.lock()
            .services
            .insert(format!("{namespace}/{name}"), addr);
    }

    /// The next `n` requests starting with `prefix` (`METHOD /path`) fail with `500`.
    pub fn fail_next(&self, prefix: &str, n: usize) {
        self.lock().failing = Some((prefix.to_owned(), n));
    }

    /// Requests served so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.drop_watches();
    }
}

fn kind_of(object: &Value) -> Option<&'static Kind> {
    let av = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    KINDS
        .iter()
        .find(|k| k.api_version() == av && k.kind == kind)
}

#[derive(Clone)]
struct Server {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Change>,
    cut: watch::Receiver<u64>,
    hold: watch::Receiver<bool>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

/// One webhook of a ValidatingWebhookConfiguration (service references only).
struct Webhook {
    name: String,
    rules: Vec<Value>,
    /// Where the Service is reached (`route_service`); `None`: unreachable.
    addr: Option<SocketAddr>,
    /// `NAME.NAMESPACE.svc`, the name the certificate must carry.
    host: String,
    port: u64,
    path: String,
    /// Base64 PEM, as in the object.
    ca_bundle: String,
    /// `failurePolicy: Fail` (the default).
    fail: bool,
    timeout: Duration,
}

impl Webhook {
    fn rule_matches(rule: &Value, kind: &Kind, operation: Option<&str>) -> bool {
        let has = |field: &str, v: &str| {
            rule[field]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "*" || x == v))
        };
        has("apiGroups", kind.group)
            && has("apiVersions", kind.version)
            && has("resources", kind.plural)
            && operation.is_none_or(|op| has("operations", op))
    }

    fn names(&self, kind: &Kind) -> bool {
        self.rules.iter().any(|r| Self::rule_matches(r, kind, None))
    }

    fn matches(&self, kind: &Kind, operation: &str) -> bool {
        self.rules
            .iter()
            .any(|r| Self::rule_matches(r, kind, Some(operation)))
    }
}

/// POSTs `review` to `hook` over TLS (trusting its `caBundle` only, verifying its Service's DNS
/// name); the review's `response`.
async fn call_webhook(hook: &Webhook, review: &Value) -> Result<Value, String> {
    use base64::Engine;
    use rustls_pki_types::pem::PemObject;
    let url = format!(
        "https://{}:{}{}?timeout={}s",
        hook.host,
        hook.port,
        hook.path,
        hook.timeout.as_secs()
    );
    let fail = |e: String| format!("Post \"{url}\": {e}");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(&hook.ca_bundle)
        .map_err(|e| fail(format!("caBundle: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| fail(format!("caBundle: {e}")))?;
        roots.add(c).map_err(|e| fail(format!("caBundle: {e}")))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = hook
        .addr
        .ok_or_else(|| fail(format!("dial tcp: lookup {}: no such host", hook.host)))?;
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("dial tcp {addr}: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from(hook.host.clone())
            .map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("tls: failed to verify certificate: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::post(format!("{}?timeout={}s", hook.path, hook.timeout.as_secs()))
            .header(http::header::HOST, hook.host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| fail(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !code.is_success() {
            return Err(fail(format!(
                "the server responded {code}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("decoding the response: {e}")))?;
        Ok(v["response"].clone())
    };
    tokio::time::timeout(hook.timeout, call)
        .await
        .map_err(|_| fail("context deadline exceeded".into()))?
}

/// A webhook's denial as the API server returns it: the webhook's status, at least 400,
/// its message prefixed with which webhook denied.
fn denied(webhook: &str, result: &Value) -> Response<Body> {
    let mut status = result.clone();
    if !status.is_object() {
        status = json!({});
    }
    let code = status["code"].as_u64().filter(|c| *c >= 400).unwrap_or(400);
    let denied_by = format!("admission webhook \"{webhook}\" denied the request");
    let message = match (status["message"].as_str(), status["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{denied_by}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{denied_by}: {r}"),
        _ => format!("{denied_by} without explanation"),
    };
    status["kind"] = json!("Status");
    status["apiVersion"] = json!("v1");
    status["metadata"] = json!({});
    status["status"] = json!("Failure");
    status["code"] = json!(code);
    status["message"] = json!(message);
    full(
        StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_REQUEST),
        &status,
    )
}

/// Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION`), as
/// kubectl reads them (the legacy, unaggregated form: clients fall back to it).
fn discovery(path: &str) -> Option<Value> {
    let resources = |group: &str, version: &str| {
        let mut list = Vec::new();
        for k in KINDS
            .iter()
            .filter(|k| k.group == group && k.version == version)
        {
            let verbs = if k.kind == "TokenReview" {
                json!(["create"])
            } else {
                json!(["create", "delete", "get", "list", "patch", "update", "watch"])
            };
            list.push(
                json!({"name": k.plural, "singularName": k.kind.to_lowercase(),
                "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs}),
            );
            if k.status_subresource {
                list.push(json!({"name": format!("{}/status", k.plural), "singularName": "",
                    "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
            }
        }
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => Some(
            json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-ward-fake",
            "platform": "linux/amd64"}),
        ),
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["api", "v1"] => Some(resources("", "v1")),
        // OpenAPI v3: enough for kubectl to see that writes take `fieldValidation`, so it
        // leaves validation to the server instead of downloading schemas.
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            for k in KINDS {
                let gv = if k.group.is_empty() {
                    format!("api/{}", k.version)
                } else {
                    format!("apis/{}/{}", k.group, k.version)
                };
                paths.insert(
                    gv.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=0")}),
                );
            }
            Some(json!({"paths": paths}))
        }
        ["openapi", "v3", rest @ ..] => {
            let (group, version) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return None,
            };
            let mut paths = serde_json::Map::new();
            for k in KINDS
                .iter()
                .filter(|k| k.group == group && k.version == version)
            {
                let prefix = if group.is_empty() {
                    format!("/api/{version}")
                } else {
                    format!("/apis/{group}/{version}")
                };
                let collection = if k.namespaced {
                    format!("{prefix}/namespaces/{{namespace}}/{}", k.plural)
                } else {
                    format!("{prefix}/{}", k.plural)
                };
                let gvk = json!({"group": group, "version": version, "kind": k.kind});
                let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}}]);
                let op = json!({"x-kubernetes-group-version-kind": gvk, "parameters": params,
                                "responses": {"200": {"description": "OK"}}});
                paths.insert(collection.clone(), json!({"post": op}));
                paths.insert(
                    format!("{collection}/{{name}}"),
                    json!({"put": op, "patch": op, "get": op, "delete": op}),
                );
            }
            Some(
                json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.35.0"},
                        "paths": paths, "components": {"schemas": {}}}),
            )
        }
        ["apis"] => {
            let mut groups: Vec<(&str, &str)> = KINDS
                .iter()
                .filter(|k| !k.group.is_empty())
                .map(|k| (k.group, k.version))
                .collect();
            groups.dedup();
            groups.sort();
            groups.dedup();
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g, v] if KINDS.iter().any(|k| k.group == *g && k.version == *v) => {
            Some(resources(g, v))
        }
        _ => None,
    }
}

/// A parsed request path.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    };
    match rest {
        ["namespaces", ns, plural, more @ ..] if find(plural).is_some_and(|k| k.namespaced) => {
            Some(Target {
                kind: find(plural)?,
                namespace: Some((*ns).to_owned()),
                name: more.first().map(|s| (*s).to_owned()),
                subresource: more.get(1).map(|s| (*s).to_owned()),
            })
        }
        [plural, more @ ..] => Some(Target {
            kind: find(plural)?,
            namespace: None,
            name: more.first().map(|s| (*s).to_owned()),
            subresource: more.get(1).map(|s| (*s).to_owned()),
        }),
        _ => None,
    }
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dry_run(q: &HashMap<String, String>) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

/// Label (`k=v,k2=v2`, `k!=v`, `k`) and field (`metadata.name=`, `metadata.namespace=`)
/// selectors.
#[derive(Default, Clone)]
struct Selector {
    labels: Vec<(String, Option<String>, bool)>,
    fields: Vec<(String, String)>,
}

impl Selector {
    fn from(q: &HashMap<String, String>) -> Self {
        let mut s = Selector::default();
        for part in q
            .get("labelSelector")
            .into_iter()
            .flat_map(|l| l.split(','))
        {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some((k, v)) = part.split_once("!=") {
                s.labels.push((k.to_owned(), Some(v.to_owned()), false));
            } else if let Some((k, v)) = part.split_once('=') {
                s.labels.push((
                    k.to_owned(),
                    Some(v.trim_start_matches('=').to_owned()),
                    true,
                ));
            } else {
                s.labels.push((part.to_owned(), None, true));
            }
        }
        for part in q
            .get("fieldSelector")
            .into_iter()
            .flat_map(|l| l.split(','))
        {
            if let Some((k, v)) = part.split_once('=') {
                s.fields
                    .push((k.to_owned(), v.trim_start_matches('=').to_owned()));
            }
        }
        s
    }

    fn matches(&self, o: &Value) -> bool {
        let labels = &o["metadata"]["labels"];
        self.labels.iter().all(|(k, v, eq)| {
            let have = labels[k].as_str();
            match (v, eq) {
                (None, _) => have.is_some(),
                (Some(v), true) => have == Some(v.as_str()),
                (Some(v), false) => have != Some(v.as_str()),
            }
        }) && self.fields.iter().all(|(k, v)| {
            let have = match k.as_str() {
                "metadata.name" => o["metadata"]["name"].as_str(),
                "metadata.namespace" => o["metadata"]["namespace"].as_str(),
                _ => None,
            };
            have == Some(v.as_str())
        })
    }
}

enum WriteMode {
    Create,
    Replace,
    /// Spec and status together (the test's own writes).
    Everything,
    /// Only `.status` changes.
    Status,
}

/// Stores a new version of an object (bumping the resourceVersion, keeping server-owned
/// metadata) and records the change.
#[allow(clippy::too_many_arguments)] // reason: one private function, every argument distinct
fn write(
    st: &mut State,
    events: &broadcast::Sender<Change>,
    kind: &'static Kind,
    key: ObjKey,
    old: Option<&Value>,
    mut object: Value,
    mode: WriteMode,
    dry_run: bool,
) -> Value {
    st.rv += 1;
    let rv = st.rv;
    if dry_run {
        // Everything a write computes, nothing stored (`dryRun=All`).
        st.rv -= 1;
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.kind);
    match (old, &mode) {
        (Some(old), _) => {
            for f in ["uid", "creationTimestamp", "generation"] {
                object["metadata"][f] = old["metadata"][f].clone();
            }
            if object["metadata"]["managedFields"].is_null() {
                object["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
            }
            match mode {
                WriteMode::Status => {
                    let status = object["status"].clone();
                    let managed = object["metadata"]["managedFields"].clone();
                    object = old.clone();
                    object["status"] = status;
                    if !managed.is_null() {
                        object["metadata"]["managedFields"] = managed;
                    }
                }
                _ => {
                    if kind.status_subresource && !matches!(mode, WriteMode::Everything) {
                        object["status"] = old["status"].clone();
                    }
                    let strip = |v: &Value| {
                        let mut v = v.clone();
                        if let Some(m) = v.as_object_mut() {
                            m.remove("metadata");
                            m.remove("status");
                        }
                        v
                    };
                    if strip(old) != strip(&object) {
                        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                        object["metadata"]["generation"] = json!(g + 1);
                    }
                }
            }
        }
        (None, _) => {
            object["metadata"]["uid"] = json!(format!("uid-{rv}"));
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            object["metadata"]["generation"] = json!(1);
        }
    }
    if object.get("status").is_some_and(Value::is_null) {
        if let Some(m) = object.as_object_mut() {
            m.remove("status");
        }
    }
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if dry_run {
        return object;
    }
    let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
    st.objects.insert(key, object.clone());
    let change = Change {
        rv,
        kind: kind.id(),
        event,
        object: object.clone(),
    };
    st.history.push(change.clone());
    let _ = events.send(change);
    object
}

fn delete(
    st: &mut State,
    events: &broadcast::Sender<Change>,
    kind: &'static Kind,
    key: &ObjKey,
) -> Option<Value> {
    let mut object = st.objects.remove(key)?;
    st.rv += 1;
    object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let change = Change {
        rv: st.rv,
        kind: kind.id(),
        event: "DELETED",
        object: object.clone(),
    };
    st.history.push(change.clone());
    let _ = events.send(change);
    Some(object)
}

/// One entry of `metadata.managedFields`, as leaf paths.
#[derive(Debug, Clone)]
struct Managed {
    manager: String,
    operation: String,
    subresource: String,
    paths: std::collections::BTreeSet<Vec<String>>,
}

/// The leaf paths of a value (objects recursed; lists and scalars are leaves), as
/// server-side apply tracks ownership (simplified: a list is one field).
fn leaf_paths(v: &Value) -> std::collections::BTreeSet<Vec<String>> {
    leaves(v, str::to_owned)
}

/// The leaf paths of `v`, each key mapped by `key`.
fn leaves(v: &Value, key: fn(&str) -> String) -> std::collections::BTreeSet<Vec<String>> {
    fn walk(
        v: &Value,
        key: fn(&str) -> String,
        prefix: &mut Vec<String>,
        out: &mut std::collections::BTreeSet<Vec<String>>,
    ) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, x) in m {
                    prefix.push(key(k));
                    walk(x, key, prefix, out);
                    prefix.pop();
                }
            }
            _ if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, key, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// `fieldsV1` (`{"f:spec": {"f:x": {}}}`) ↔ leaf paths.
fn to_fields_v1(paths: &std::collections::BTreeSet<Vec<String>>) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut node = &mut root;
        for k in p {
            node = node
                .as_object_mut()
                .map(|m| m.entry(format!("f:{k}")).or_insert_with(|| json!({})))
                .unwrap_or_else(|| unreachable!("fieldsV1 nodes are objects"));
        }
    }
    root
}

fn from_fields_v1(v: &Value) -> std::collections::BTreeSet<Vec<String>> {
    leaves(v, |k| k.trim_start_matches("f:").to_owned())
}

fn managed_fields(o: &Value) -> Vec<Managed> {
    o["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Managed {
            manager: f["manager"].as_str().unwrap_or("").to_owned(),
            operation: f["operation"].as_str().unwrap_or("").to_owned(),
            subresource: f["subresource"].as_str().unwrap_or("").to_owned(),
            paths: from_fields_v1(&f["fieldsV1"]),
        })
        .collect()
}

/// Stores `fields` as the object's `managedFields`. As the API server does, nobody owns a field
/// the object no longer has (a field removed by one manager's update is gone for all of them).
fn set_managed_fields(o: &mut Value, api_version: &str, mut fields: Vec<Managed>) {
    for f in &mut fields {
        f.paths
            .retain(|p| get_path(o, p).is_some_and(|v| !v.is_null()));
    }
    o["metadata"]["managedFields"] = json!(fields
        .into_iter()
        .filter(|f| !f.paths.is_empty())
        .map(|f| {
            let mut e = json!({"manager": f.manager, "operation": f.operation, "apiVersion": api_version,
                "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&f.paths)});
            if !f.subresource.is_empty() {
                e["subresource"] = json!(f.subresource);
            }
            e
        })
        .collect::<Vec<_>>());
}

/// An update (create, replace, merge patch) by `manager`: it takes the fields it changed.
fn record_update(
    next: &mut Value,
    before: &Value,
    written: &Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
) {
    let mut w = written.clone();
    if let Some(m) = w.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("metadata");
    }
    let changed: std::collections::BTreeSet<Vec<String>> = leaf_paths(&w)
        .into_iter()
        .filter(|p| get_path(before, p) != get_path(next, p))
        .collect();
    if changed.is_empty() {
        return;
    }
    let mut fields = managed_fields(next);
    for f in &mut fields {
        f.paths.retain(|p| !changed.contains(p));
    }
    match fields
        .iter_mut()
        .find(|f| f.manager == manager && f.operation == "Update" && f.subresource == subresource)
    {
        Some(f) => f.paths.extend(changed),
        None => fields.push(Managed {
            manager: manager.to_owned(),
            operation: "Update".into(),
            subresource: subresource.into(),
            paths: changed,
        }),
    }
    set_managed_fields(next, api_version, fields);
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let line = format!(
            "{method} {}",
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        let barrier = {
            let mut st = self.lock();
            st.requests.push(line.clone());
            if let Some((prefix, left)) = st.failing.as_mut() {
                if line.starts_with(prefix.as_str()) && *left > 0 {
                    *left -= 1;
                    return status(500, "InternalError", "injected failure".into());
                }
            }
            st.rendezvous
                .as_ref()
                .filter(|(prefix, _)| line.starts_with(prefix.as_str()))
                .map(|(_, b)| b.clone())
        };
        if let Some(b) = barrier {
            if b.wait().await.is_leader() {
                self.lock().rendezvous = None;
            }
        }
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(400, "BadRequest", format!("reading the body: {e}")),
        };
        if method == Method::GET {
            if let Some(d) = discovery(uri.path()) {
                return full(StatusCode::OK, &d);
            }
        }
        let Some(t) = parse_path(uri.path()) else {
            return status(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({})",
                    uri.path()
                ),
            );
        };
        let q = query(&uri);
        #[allow(clippy::result_large_err)] // reason: the error is the response to send
        let parse_body = || -> Result<Value, Response<Body>> {
            // JSON is YAML: apply patches (YAML) and JSON bodies parse the same way.
            serde_yaml::from_slice::<Value>(&body)
                .map_err(|e| status(400, "BadRequest", format!("body is not JSON/YAML: {e}")))
        };
        match (method, &t.name) {
            (Method::GET, None) => {
                let sel = Selector::from(&q);
                if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                    let _ = self.hold.clone().wait_for(|h| !*h).await;
                    self.watch(&t, &q, sel)
                } else {
                    self.list(&t, sel, &q)
                }
            }
            (Method::GET, Some(name)) => {
                let key = (
                    t.kind.id(),
                    t.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                match self.lock().objects.get(&key) {
                    Some(o) => full(StatusCode::OK, o),
                    None => not_found(t.kind, name),
                }
            }
            (Method::POST, None) => match parse_body() {
                Ok(o) if t.kind.kind == "TokenReview" => self.token_review(o),
                Ok(o) => {
                    let name = o["metadata"]["name"].as_str().unwrap_or("").to_owned();
                    self.admitted(&t, &name, &q, |q| self.create(&t, o.clone(), q))
                        .await
                }
                Err(r) => r,
            },
            (Method::PUT, Some(name)) => match parse_body() {
                Ok(o) => {
                    self.admitted(&t, name, &q, |q| self.replace(&t, name, o.clone(), q))
                        .await
                }
                Err(r) => r,
            },
            (Method::PATCH, Some(name)) => match parse_body() {
                Ok(p) => {
                    self.admitted(&t, name, &q, |q| {
                        self.patch(&t, name, &content_type, q, p.clone())
                    })
                    .await
                }
                Err(r) => r,
            },
            (Method::DELETE, Some(name)) => {
                let key = (
                    t.kind.id(),
                    t.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let mut st = self.lock();
                match delete(&mut st, &self.events, t.kind, &key) {
                    Some(o) => full(StatusCode::OK, &o),
                    None => not_found(t.kind, name),
                }
            }
            (m, _) => status(
                405,
                "MethodNotAllowed",
                format!("{m} is not supported here"),
            ),
        }
    }

    /// Answers a TokenReview as the API server does for service-account tokens.
    /// Runs a write through validating admission, as the API server does: the write is
    /// computed first (`dryRun=All`), the result is sent to every matching webhook of every
    /// ValidatingWebhookConfiguration, and only if all allow it is the write made for real.
    /// Denials come back as the API server words them; warnings as `Warning` headers;
    /// a webhook that cannot be called fails the write under `failurePolicy: Fail`.
    async fn admitted(
        &self,
        t: &Target,
        name: &str,
        q: &HashMap<String, String>,
        run: impl Fn(&HashMap<String, String>) -> Response<Body>,
    ) -> Response<Body> {
        let hooks = if t.subresource.is_some() {
            Vec::new()
        } else {
            self.webhooks(t.kind)
        };
        if hooks.is_empty() {
            return run(q);
        }
        let mut dry = q.clone();
        dry.insert("dryRun".into(), "All".into());
        let probe = run(&dry);
        if !probe.status().is_success() {
            return probe;
        }
        let object: Value = match probe.into_body().collect().await {
            Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let key = (
            t.kind.id(),
            t.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let old = self.lock().objects.get(&key).cloned();
        let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
        let mut warnings = Vec::new();
        for hook in hooks.iter().filter(|h| h.matches(t.kind, operation)) {
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": format!("admission-{}", object["metadata"]["resourceVersion"].as_str().unwrap_or("0")),
                    "kind": {"group": t.kind.group, "version": t.kind.version, "kind": t.kind.kind},
                    "resource": {"group": t.kind.group, "version": t.kind.version, "resource": t.kind.plural},
                    "requestKind": {"group": t.kind.group, "version": t.kind.version, "kind": t.kind.kind},
                    "requestResource": {"group": t.kind.group, "version": t.kind.version, "resource": t.kind.plural},
                    "name": name,
                    "namespace": t.namespace,
                    "operation": operation,
                    "userInfo": {"username": "fake-admin", "groups": ["system:masters", "system:authenticated"]},
                    "object": object,
                    "oldObject": old,
                    "dryRun": dry_run(q),
                    "options": {"apiVersion": "meta.k8s.io/v1",
                                "kind": if operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
                }
            });
            let uid = review["request"]["uid"].clone();
            match call_webhook(hook, &review).await {
                Ok(r) if r["uid"] != uid => {
                    return status(500, "InternalError", format!(
                        "Internal error occurred: failed calling webhook \"{}\": expected response.uid={uid}, got {}", hook.name, r["uid"]));
                }
                Ok(r) if r["allowed"] == true => {
                    warnings.extend(
                        r["warnings"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_owned),
                    );
                }
                Ok(r) => return denied(&hook.name, &r["status"]),
                Err(e) if hook.fail => {
                    return status(500, "InternalError", format!(
                        "Internal error occurred: failed calling webhook \"{}\": failed to call webhook: {e}", hook.name));
                }
                Err(_) => {}
            }
        }
        let mut resp = run(q);
        for w in warnings {
            let text = w.replace('\\', "\\\\").replace('"', "\\\"");
            if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
                resp.headers_mut().append(http::header::WARNING, v);
            }
        }
        resp
    }

    /// Every webhook of every ValidatingWebhookConfiguration that names `kind` at all.
    fn webhooks(&self, kind: &Kind) -> Vec<Webhook> {
        let st = self.lock();
        st.objects
            .iter()
            .filter(|((k, _, _), _)| {
                *k == (
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations",
                )
            })
            .flat_map(|(_, o)| o["webhooks"].as_array().cloned().unwrap_or_default())
            .filter_map(|w| {
                let svc = &w["clientConfig"]["service"];
                let service = format!("{}/{}", svc["namespace"].as_str()?, svc["name"].as_str()?);
                let hook = Webhook {
                    name: w["name"].as_str().unwrap_or("").to_owned(),
                    rules: w["rules"].as_array().cloned().unwrap_or_default(),
                    addr: st.services.get(&service).copied(),
                    host: format!(
                        "{}.{}.svc",
                        svc["name"].as_str()?,
                        svc["namespace"].as_str()?
                    ),
                    port: svc["port"].as_u64().unwrap_or(443),
                    path: svc["path"].as_str().unwrap_or("/").to_owned(),
                    ca_bundle: w["clientConfig"]["caBundle"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    fail: w["failurePolicy"].as_str() != Some("Ignore"),
                    timeout: Duration::from_secs(w["timeoutSeconds"].as_u64().unwrap_or(10)),
                };
                hook.names(kind).then_some(hook)
            })
            .collect()
    }

    fn token_review(&self, mut review: Value) -> Response<Body> {
        let token = review["spec"]["token"].as_str().unwrap_or("").to_owned();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let info = self.lock().tokens.get(&token).cloned();
        let status = match info {
            None => {
                json!({"authenticated": false, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
            }
            Some(i) if i.expired => {
                json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"})
            }
            Some(i) => {
                let granted: Vec<&String> = if wanted.is_empty() {
                    i.audiences.iter().collect()
                } else {
                    wanted.iter().filter(|a| i.audiences.contains(a)).collect()
                };
                if granted.is_empty() {
                    json!({"authenticated": false, "error": "[invalid bearer token, token audiences [\"wrong\"] is invalid for the target audiences]"})
                } else {
                    let mut extra = serde_json::Map::new();
                    if let Some(n) = &i.node {
                        extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
                    }
                    json!({"authenticated": true, "audiences": granted,
                           "user": {"username": i.username, "uid": "uid-token", "extra": extra,
                                    "groups": ["system:serviceaccounts", "system:authenticated"]}})
                }
            }
        };
        review["status"] = status;
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        full(StatusCode::CREATED, &review)
    }

    /// A list, paginated as the API server does: `limit` items per page and a `continue`
    /// token for the rest, all pages of one list from the same snapshot (same
    /// resourceVersion).
    fn list(&self, t: &Target, sel: Selector, q: &HashMap<String, String>) -> Response<Body> {
        let mut st = self.lock();
        let limit = q
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let (rv, mut items) = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => match st.pages.remove(token) {
                Some(page) => page,
                None => {
                    return status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.".into(),
                    )
                }
            },
            None => (
                st.rv,
                st.objects
                    .iter()
                    .filter(|((id, ns, _), o)| {
                        *id == t.kind.id()
                            && t.namespace.as_ref().is_none_or(|want| want == ns)
                            && sel.matches(o)
                    })
                    .map(|(_, o)| o.clone())
                    .collect(),
            ),
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(limit) = limit.filter(|l| items.len() > *l) {
            let rest = items.split_off(limit);
            let token = format!("{rv}-{}-{}", st.pages.len(), rest.len());
            metadata["continue"] = json!(token);
            metadata["remainingItemCount"] = json!(rest.len());
            st.pages.insert(token, (rv, rest));
        }
        full(
            StatusCode::OK,
            &json!({
                "apiVersion": t.kind.api_version(),
                "kind": format!("{}List", t.kind.kind),
                "metadata": metadata,
                "items": items,
            }),
        )
    }

    fn create(&self, t: &Target, mut o: Value, q: &HashMap<String, String>) -> Response<Body> {
        if let Some(ns) = &t.namespace {
            o["metadata"]["namespace"] = json!(ns);
        }
        let Some(name) = o["metadata"]["name"].as_str().map(str::to_owned) else {
            return status(422, "Invalid", "metadata.name: Required value".into());
        };
        let key = (
            t.kind.id(),
            t.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        let mut st = self.lock();
        if st.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.kind.plural),
            );
        }
        let manager = q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let written = o.clone();
        record_update(
            &mut o,
            &json!({}),
            &written,
            &manager,
            "",
            &t.kind.api_version(),
        );
        let stored = write(
            &mut st,
            &self.events,
            t.kind,
            key,
            None,
            o,
            WriteMode::Create,
            dry_run(q),
        );
        full(StatusCode::CREATED, &stored)
    }

    fn replace(
        &self,
        t: &Target,
        name: &str,
        mut o: Value,
        q: &HashMap<String, String>,
    ) -> Response<Body> {
        let key = (
            t.kind.id(),
            t.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let mut st = self.lock();
        let Some(old) = st.objects.get(&key).cloned() else {
            return not_found(t.kind, name);
        };
        if let Some(rv) = o["metadata"]["resourceVersion"].as_str() {
            if Some(rv) != old["metadata"]["resourceVersion"].as_str() {
                return status(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.kind.plural),
                );
            }
        }
        let mode = if t.subresource.as_deref() == Some("status") {
            WriteMode::Status
        } else {
            WriteMode::Replace
        };
        let manager = q
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        let written = o.clone();
        o["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        let sub = if matches!(mode, WriteMode::Status) {
            "status"
        } else {
            ""
        };
        record_update(&mut o, &old, &written, &manager, sub, &t.kind.api_version());
        let stored = write(
            &mut st,
            &self.events,
            t.kind,
            key,
            Some(&old),
            o,
            mode,
            dry_run(q),
        );
        full(StatusCode::OK, &stored)
    }

    fn patch(
        &self,
        t: &Target,
        name: &str,
        content_type: &str,
        q: &HashMap<String, String>,
        patch: Value,
    ) -> Response<Body> {
        let key = (
            t.kind.id(),
            t.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let mut st = self.lock();
        let old = st.objects.get(&key).cloned();
        let apply = content_type.starts_with("application/apply-patch");
        let status_only = t.subresource.as_deref() == Some("status");
        let mut next = match (&old, apply) {
            (Some(o), _) => o.clone(),
            (None, true) if !status_only => {
                let mut o = json!({"metadata": {"name": name}});
                if let Some(ns) = &t.namespace {
                    o["metadata"]["namespace"] = json!(ns);
                }
                o
            }
            (None, _) => return not_found(t.kind, name),
        };
        let subresource = if status_only { "status" } else { "" };
        if apply {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return status(
                    422,
                    "Invalid",
                    "fieldManager: Required value: is required for apply patch".into(),
                );
            };
            if patch["apiVersion"].as_str() != Some(&t.kind.api_version())
                || patch["kind"].as_str() != Some(t.kind.kind)
            {
                return status(
                    400,
                    "BadRequest",
                    "apply patches must name apiVersion and kind".into(),
                );
            }
            let mut p = patch.clone();
            if let Some(m) = p.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            if let Some(m) = p["metadata"].as_object_mut() {
                for k in [
                    "resourceVersion",
                    "managedFields",
                    "name",
                    "namespace",
                    "uid",
                ] {
                    m.remove(k);
                }
                if m.is_empty() {
                    p.as_object_mut().map(|o| o.remove("metadata"));
                }
            }
            let force = q.get("force").is_some_and(|f| f == "true");
            let applied = leaf_paths(&p);
            let mut fields = managed_fields(&next);
            // A field another manager owns, set here to another value, is a conflict — unless
            // forced, which takes it over.
            let mut conflicts = Vec::new();
            for f in fields.iter_mut().filter(|f| f.manager != *manager) {
                for path in &applied {
                    if f.paths.contains(path) && get_path(&next, path) != get_path(&p, path) {
                        if force {
                            f.paths.remove(path);
                        } else {
                            conflicts.push(format!("{} owns .{}", f.manager, path.join(".")));
                        }
                    }
                }
            }
            if !conflicts.is_empty() {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        conflicts.join("; ")
                    ),
                );
            }
            merge(&mut next, &p);
            fields.retain(|f| {
                !(f.manager == *manager && f.operation == "Apply" && f.subresource == subresource)
            });
            fields.push(Managed {
                manager: manager.clone(),
                operation: "Apply".into(),
                subresource: subresource.into(),
                paths: applied.into_iter().collect(),
            });
            set_managed_fields(&mut next, &t.kind.api_version(), fields);
        } else {
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
                if old
                    .as_ref()
                    .and_then(|o| o["metadata"]["resourceVersion"].as_str())
                    != Some(rv)
                {
                    return status(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified", t.kind.plural));
                }
            }
            let before = next.clone();
            merge(&mut next, &patch);
            let manager = q
                .get("fieldManager")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            record_update(
                &mut next,
                &before,
                &patch,
                &manager,
                subresource,
                &t.kind.api_version(),
            );
        }
        let mode = if status_only {
            WriteMode::Status
        } else if old.is_some() {
            WriteMode::Replace
        } else {
            WriteMode::Create
        };
        let stored = write(
            &mut st,
            &self.events,
            t.kind,
            key,
            old.as_ref(),
            next,
            mode,
            dry_run(q),
        );
        full(StatusCode::OK, &stored)
    }

    fn watch(&self, t: &Target, q: &HashMap<String, String>, sel: Selector) -> Response<Body> {
        let kind = t.kind;
        let namespace = t.namespace.clone();
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_secs);
        let from: Option<u64> = q
            .get("resourceVersion")
            .filter(|s| !s.is_empty() && *s != "0")
            .and_then(|s| s.parse().ok());
        let in_scope = move |c: &Change| {
            c.kind == kind.id()
                && namespace
                    .as_ref()
                    .is_none_or(|ns| c.object["metadata"]["namespace"].as_str() == Some(ns))
        };
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1024);
        let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
        // Under the lock: the backlog, and a subscription taken before any later change.
        let mut live = self.events.subscribe();
        let (backlog, mut last) = {
            let st = self.lock();
            match from {
                Some(rv) if rv < st.compacted => {
                    let msg = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": format!("too old resource version: {rv} ({})", st.compacted)}});
                    let _ = tx.try_send(line(msg));
                    drop(tx);
                    return stream_response(rx);
                }
                Some(rv) => (
                    st.history
                        .iter()
                        .filter(|c| c.rv > rv && in_scope(c))
                        .cloned()
                        .collect::<Vec<_>>(),
                    st.rv,
                ),
                None => (
                    st.objects
                        .iter()
                        .filter(|((id, _, _), _)| *id == kind.id())
                        .map(|(_, o)| Change {
                            rv: st.rv,
                            kind: kind.id(),
                            event: "ADDED",
                            object: o.clone(),
                        })
                        .filter(|c| in_scope(c))
                        .collect(),
                    st.rv,
                ),
            }
        };
        let mut cut = self.cut.clone();
        cut.mark_unchanged();
        tokio::spawn(async move {
            for c in backlog {
                if sel.matches(&c.object)
                    && tx
                        .send(line(json!({"type": c.event, "object": c.object})))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = expired => return,
                    _ = cut.changed() => {
                        // A lost connection: the body ends with an error, not cleanly.
                        let _ = tx.send(Err(std::io::Error::other("watch cut by the test"))).await;
                        return;
                    }
                    _ = tick.tick(), if bookmarks => {
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": kind.kind,
                            "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last.to_string()}}});
                        if tx.send(line(bm)).await.is_err() { return; }
                    }
                    c = live.recv() => match c {
                        Ok(c) => {
                            if c.rv <= last { continue; }
                            last = last.max(c.rv);
                            if in_scope(&c) && sel.matches(&c.object)
                                && tx.send(line(json!({"type": c.event, "object": c.object}))).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(Err(std::io::Error::other("watch fell behind"))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        stream_response(rx)
    }
}

fn stream_response(rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>) -> Response<Body> {
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn not_found(kind: &Kind, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.plural),
    )
}
