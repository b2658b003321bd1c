//! The control stream: xDS delta (`DeltaAggregatedResources`), serving each proxy the view of
//! its own node.
//!
//! Per stream:
//! 1. the proxy authenticates with `authorization: Bearer <token>` (projected service-account
//!    token via TokenReview, or a local bootstrap token); the node is what the token proves,
//!    and a request naming another node is refused — whatever resources a proxy asks for, it
//!    is sent its own node's view and nothing else;
//! 2. it subscribes to the four ward types, each first request carrying the versions it
//!    already holds (resumption after a reconnect);
//! 3. once every type is subscribed and the index has delivered its initial state, the server
//!    sends a *push*: responses for every type, always all four and in [`TYPES`] order (the
//!    address table in chunks of at most 500 resources, the policies in exactly one final
//!    response), with the view's sequence number as `system_version_info`. The proxy applies
//!    a push as one unit when the Policy response arrives, so it never enforces half an update
//!    (e.g. a new workload without the policies that came with it). A view that changes
//!    nothing for this node is not pushed;
//! 4. the proxy ACKs or NACKs every response by nonce. Only when all four are ACKed does the
//!    pushed view become the stream's baseline; the next push is the difference between the
//!    baseline and the newest view (by the index's change log, or a full comparison when the
//!    stream is too far behind). After a NACK the baseline stays, and the same view is not
//!    pushed again: the next change is sent as a difference from what the proxy really holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use ward_ca::auth::{bearer, AuthError, Authenticator};
use ward_lib_api::resources::{short_type, Encoded, MESH_CONFIG, POLICY, SERVICE, TYPES, WORKLOAD};
use ward_lib_api::xds_server::aggregated_discovery_service_server::AggregatedDiscoveryService;
use ward_lib_api::xds_server::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use crate::index::{NodePolicies, Resources, View};
use crate::metrics::Metrics;

/// The `AggregatedDiscoveryService` implementation.
pub struct XdsServer {
    views: watch::Receiver<Arc<View>>,
    authn: Arc<dyn Authenticator>,
    stats: Metrics,
}

impl XdsServer {
    pub fn new(
        views: watch::Receiver<Arc<View>>,
        authn: Arc<dyn Authenticator>,
        stats: Metrics,
    ) -> Self {
        Self {
            views,
            authn,
            stats,
        }
    }
}

/// The policies of a node without any (a `'static` empty set to borrow from).
static EMPTY_POLICIES: std::sync::OnceLock<NodePolicies> = std::sync::OnceLock::new();

/// Most resources in one response (a workload is ~190 bytes on the wire: ~100 KB per
/// response, which is what each stream's encode buffer grows to).
const CHUNK: usize = 500;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let header = request.metadata().get("authorization").map(|v| {
            v.to_str()
                .map_err(|_| AuthError::Malformed("authorization is not ASCII"))
        });
        let token = match header {
            None => Err(AuthError::Missing),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => bearer(Some(v)),
        };
        let requester = match token {
            Ok(t) => self.authn.authenticate(t).await,
            Err(e) => Err(e),
        };
        let requester = match requester {
            Ok(r) => r,
            Err(e) => {
                let reason = match e {
                    AuthError::Unavailable(_) => "unavailable",
                    _ => "unauthenticated",
                };
                self.stats
                    .streams_refused
                    .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
                    .inc();
                tracing::warn!(error = %e, "control stream refused");
                return Err(match e {
                    AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                });
            }
        };
        // Two responses in flight per stream: enough to keep the connection busy, little
        // memory held per proxy during a first sync of the whole address table.
        let (tx, rx) = mpsc::channel(2);
        let stream = StreamState::new(requester.node, self.views.clone(), self.stats.clone());
        tokio::spawn(stream.run(request.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What a stream's proxy holds, as far as the server knows.
enum Baseline {
    /// The versions the proxy said it held when it (re)connected, per type.
    Resume(HashMap<&'static str, BTreeMap<String, String>>),
    /// Everything of this view (all four responses of its push were ACKed).
    View(Arc<View>),
}

struct Pending {
    view: Arc<View>,
    nonces: HashMap<String, &'static str>,
    nacked: bool,
    sent_at: Instant,
}

struct StreamState {
    node: String,
    views: watch::Receiver<Arc<View>>,
    stats: Metrics,
    subscribed: BTreeSet<&'static str>,
    baseline: Baseline,
    pending: Option<Pending>,
    nacked_seq: Option<u64>,
    nonce: u64,
}

impl StreamState {
    fn new(node: String, views: watch::Receiver<Arc<View>>, stats: Metrics) -> Self {
        Self {
            node,
            views,
            stats,
            subscribed: BTreeSet::new(),
            baseline: Baseline::Resume(HashMap::new()),
            pending: None,
            nacked_seq: None,
            nonce: 0,
        }
    }

    async fn run(
        mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        self.stats.proxies_connected.inc();
        tracing::info!(node = %self.node, "proxy connected");
        let why = loop {
            if let Err(e) = self.maybe_push(&tx).await {
                break e;
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Err(status) = self.on_request(req) {
                            let why = status.message().to_owned();
                            let _ = tx.send(Err(status)).await;
                            break why;
                        }
                    }
                    Ok(None) => break "the proxy closed the stream".into(),
                    Err(e) => break format!("stream error: {e}"),
                },
                changed = self.views.changed() => {
                    if changed.is_err() {
                        break "the control component is stopping".into();
                    }
                }
            }
        };
        self.stats.proxies_connected.dec();
        tracing::info!(node = %self.node, reason = %why, "proxy disconnected");
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        if let Some(n) = req.node.as_ref().filter(|n| !n.id.is_empty()) {
            if n.id != self.node {
                self.stats
                    .streams_refused
                    .get_or_create(&vec![("reason".to_owned(), "wrong_node".to_owned())])
                    .inc();
                return Err(Status::permission_denied(format!(
                    "this credential is for node {:?}, not {:?}",
                    self.node, n.id
                )));
            }
        }
        let Some(type_url) = TYPES.iter().copied().find(|t| *t == req.type_url) else {
            tracing::warn!(node = %self.node, type_url = %req.type_url, "subscription to an unknown type ignored");
            return Ok(());
        };
        if req.response_nonce.is_empty() {
            // A (re)subscription. Only the first one of a type carries what the proxy holds.
            if self.subscribed.insert(type_url) {
                if let Baseline::Resume(held) = &mut self.baseline {
                    held.insert(type_url, req.initial_resource_versions);
                }
            }
            return Ok(());
        }
        let Some(p) = self.pending.as_mut() else {
            return Ok(());
        };
        if p.nonces.remove(&req.response_nonce).is_none() {
            // A stale nonce (xDS allows the client to ACK late); nothing to do.
            return Ok(());
        }
        match &req.error_detail {
            Some(err) => {
                p.nacked = true;
                self.stats.nacks.inc();
                tracing::warn!(node = %self.node, r#type = short_type(type_url), seq = p.view.seq, error = %err.message, "proxy rejected an update (NACK); it keeps its previous configuration");
            }
            None => {
                self.stats.acks.inc();
            }
        }
        if p.nonces.is_empty() {
            if let Some(p) = self.pending.take() {
                if p.nacked {
                    self.nacked_seq = Some(p.view.seq);
                } else {
                    self.stats
                        .push_latency
                        .0
                        .observe(p.sent_at.elapsed().as_secs_f64());
                    tracing::debug!(node = %self.node, seq = p.view.seq, ms = p.sent_at.elapsed().as_millis() as u64, "push acknowledged");
                    self.baseline = Baseline::View(p.view);
                }
            }
        }
        Ok(())
    }

    /// Sends the next push if one is due (see the module docs).
    async fn maybe_push(
        &mut self,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), String> {
        if self.pending.is_some() || self.subscribed.len() < TYPES.len() {
            return Ok(());
        }
        let view = self.views.borrow().clone();
        if !view.synced {
            return Ok(());
        }
        match &self.baseline {
            Baseline::View(b) if b.seq == view.seq => return Ok(()),
            _ if self.nacked_seq == Some(view.seq) => return Ok(()),
            _ => {}
        }
        // References into the view (8 bytes per resource): a first push of 10 000 workloads
        // to 100 proxies must not hold 100 copies of the table's entries.
        let diffs: Vec<(&'static str, Vec<&Encoded>, Vec<String>)> = TYPES
            .iter()
            .map(|t| {
                let (r, d) = self.diff(t, &view);
                (*t, r, d)
            })
            .collect();
        let initial = matches!(self.baseline, Baseline::Resume(_));
        if !initial && diffs.iter().all(|(_, r, d)| r.is_empty() && d.is_empty()) {
            // Nothing of this node changed (e.g. a policy of another node): no push, and the
            // proxy already holds this view.
            self.baseline = Baseline::View(view);
            return Ok(());
        }
        let mut nonces = HashMap::new();
        for (type_url, resources, removed) in diffs {
            // The address table goes in chunks, so a first push to many proxies at once does
            // not hold many whole copies of it in encode buffers; the push still ends with the
            // one Policy response, where the proxy applies it.
            let chunk = if type_url == POLICY {
                usize::MAX
            } else {
                CHUNK
            };
            let mut chunks = resources.chunks(chunk.min(resources.len().max(1)));
            let mut removed = Some(removed);
            loop {
                let part = chunks.next();
                if part.is_none() && removed.is_none() {
                    break;
                }
                let mut wire = Vec::with_capacity(part.map_or(0, <[_]>::len));
                for r in part.into_iter().flatten() {
                    // Pre-encoded `Resource` messages, shared with every other stream.
                    wire.push(r.wire.clone());
                }
                self.nonce += 1;
                let nonce = format!("{}-{}", view.seq, self.nonce);
                let response = DeltaDiscoveryResponse {
                    system_version_info: view.seq.to_string(),
                    resources: wire,
                    type_url: type_url.to_owned(),
                    nonce: nonce.clone(),
                    removed_resources: removed.take().unwrap_or_default(),
                };
                nonces.insert(nonce, type_url);
                tx.send(Ok(response))
                    .await
                    .map_err(|_| "the proxy went away".to_owned())?;
            }
        }
        self.stats.pushes.inc();
        self.pending = Some(Pending {
            view,
            nonces,
            nacked: false,
            sent_at: Instant::now(),
        });
        Ok(())
    }

    /// What to send for one type: resources that differ from the baseline, and names removed.
    fn diff<'v>(&self, type_url: &'static str, view: &'v View) -> (Vec<&'v Encoded>, Vec<String>) {
        let node_policies: &'v NodePolicies = match view.node_policies.get(&self.node) {
            Some(p) => p,
            None => EMPTY_POLICIES.get_or_init(NodePolicies::new),
        };
        match &self.baseline {
            Baseline::Resume(held) => {
                let empty = BTreeMap::new();
                let held = held.get(type_url).unwrap_or(&empty);
                let current: Box<dyn Iterator<Item = &'v Encoded>> = match type_url {
                    MESH_CONFIG => Box::new(view.mesh.iter()),
                    WORKLOAD => Box::new(view.workloads.values()),
                    SERVICE => Box::new(view.services.values()),
                    _ => Box::new(node_policies.values()),
                };
                let send = current
                    .filter(|e| held.get(&*e.name).map(String::as_str) != Some(&*e.version))
                    .collect();
                let present = |n: &str| match type_url {
                    MESH_CONFIG => view.mesh.as_ref().is_some_and(|m| &*m.name == n),
                    WORKLOAD => view.workloads.contains_key(n),
                    SERVICE => view.services.contains_key(n),
                    _ => node_policies.contains_key(n),
                };
                let removed = held.keys().filter(|n| !present(n)).cloned().collect();
                (send, removed)
            }
            Baseline::View(b) => match type_url {
                MESH_CONFIG => {
                    if b.mesh.as_ref().map(|e| &e.version) == view.mesh.as_ref().map(|e| &e.version)
                    {
                        (Vec::new(), Vec::new())
                    } else {
                        match &view.mesh {
                            Some(m) => (vec![m], Vec::new()),
                            None => (
                                Vec::new(),
                                b.mesh.iter().map(|m| m.name.to_string()).collect(),
                            ),
                        }
                    }
                }
                WORKLOAD | SERVICE => {
                    let (old, new) = if type_url == WORKLOAD {
                        (&b.workloads, &view.workloads)
                    } else {
                        (&b.services, &view.services)
                    };
                    match view.changes_since(b.seq) {
                        Some((w, s)) => {
                            let names = if type_url == WORKLOAD { w } else { s };
                            diff_names(names.iter().map(|n| &**n), old, new)
                        }
                        None => diff_maps(&**old, &**new),
                    }
                }
                POLICY => diff_maps(&*b.policies_of(&self.node), node_policies),
                _ => (Vec::new(), Vec::new()),
            },
        }
    }
}

/// Differences for the given names only.
fn diff_names<'a, 'n>(
    names: impl Iterator<Item = &'a str>,
    old: &Resources,
    new: &'n Resources,
) -> (Vec<&'n Encoded>, Vec<String>) {
    let mut send = Vec::new();
    let mut removed = Vec::new();
    for n in names {
        match (old.get(n), new.get(n)) {
            (_, Some(e)) if old.get(n).map(|o| &o.version) != Some(&e.version) => send.push(e),
            (Some(_), None) => removed.push(n.to_owned()),
            _ => {}
        }
    }
    (send, removed)
}

/// A map of resources by name (the address table's hash maps, a node's ordered policies).
trait ByName {
    fn entry(&self, name: &str) -> Option<&Encoded>;
    fn entries(&self) -> Box<dyn Iterator<Item = &Encoded> + '_>;
}

impl ByName for Resources {
    fn entry(&self, name: &str) -> Option<&Encoded> {
        self.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = &Encoded> + '_> {
        Box::new(self.values())
    }
}

impl ByName for NodePolicies {
    fn entry(&self, name: &str) -> Option<&Encoded> {
        self.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = &Encoded> + '_> {
        Box::new(self.values())
    }
}

/// Differences between two whole maps (a stream the change log no longer covers, a node's
/// policies).
fn diff_maps<'n, M: ByName>(old: &M, new: &'n M) -> (Vec<&'n Encoded>, Vec<String>) {
    if std::ptr::eq(old, new) {
        return (Vec::new(), Vec::new());
    }
    let send = new
        .entries()
        .filter(|e| old.entry(&e.name).map(|o| &o.version) != Some(&e.version))
        .collect();
    let removed = old
        .entries()
        .filter(|o| new.entry(&o.name).is_none())
        .map(|o| o.name.to_string())
        .collect();
    (send, removed)
}
