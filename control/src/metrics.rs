//! The control component's metrics (OpenMetrics text on `--metrics`, default `:15014`, path
//! `/metrics`). Names are prefixed `ward_control_` (the CA it hosts: `ward_ca_`); labels are
//! bounded (a kind, a reason, a gRPC code).
//!
//! Counters are updated where things happen (the xDS server, the watches); gauges describing
//! state (connected proxies, published objects, invalid policies) are read from the current
//! view at scrape time, so they can never drift from what is served.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::index::View;
use crate::policies::{PolicyState, Verdict};

/// Label set: one `(name, value)` pair.
type Labels = Vec<(String, String)>;

/// Every metric of the control component.
#[derive(Clone, Default)]
pub struct Metrics {
    pub proxies_connected: Gauge,
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    /// Streams refused, by reason (`unauthenticated`, `wrong_node`, `unavailable`).
    pub streams_refused: Family<Labels, Counter>,
    /// Watch errors after which a watcher backed off and resumed, by kind.
    pub watch_restarts: Family<Labels, Counter>,
    /// Local-mode files rejected (not parseable), current.
    pub rejected_files: Gauge,
    view_sequence: Gauge,
    workloads: Gauge,
    services: Gauge,
    /// Policy objects by kind and state (`accepted`, `invalid`).
    policies: Family<Labels, Gauge>,
    /// Seconds from sending a push to the proxy's acknowledgement of all of it.
    pub push_latency: PushLatency,
    /// CA: certificates issued, and requests refused by gRPC code.
    pub ca_issued: Counter,
    pub ca_refused: Family<Labels, Counter>,
}

/// The push-latency histogram (1 ms … 10 s).
#[derive(Clone)]
pub struct PushLatency(pub Histogram);

impl Default for PushLatency {
    fn default() -> Self {
        Self(Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ]))
    }
}

/// The CA's audit trail, counted on its way to the JSON-lines sink.
pub struct CountingAudit<A> {
    inner: A,
    metrics: Metrics,
}

impl<A> CountingAudit<A> {
    /// Every refusal code starts at zero, so `rate()` and alerts see the series before the
    /// first refusal.
    pub fn new(inner: A, metrics: Metrics) -> Self {
        for code in [
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "INVALID_ARGUMENT",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "INTERNAL",
        ] {
            metrics
                .ca_refused
                .get_or_create(&vec![("code".to_owned(), code.to_owned())])
                .inc_by(0);
        }
        Self { inner, metrics }
    }
}

impl<A: ward_ca::service::AuditSink> ward_ca::service::AuditSink for CountingAudit<A> {
    fn record(&self, rec: &ward_ca::service::AuditRecord) {
        if rec.outcome == "issued" {
            self.metrics.ca_issued.inc();
        } else {
            self.metrics
                .ca_refused
                .get_or_create(&vec![(
                    "code".to_owned(),
                    rec.code.unwrap_or("unknown").to_owned(),
                )])
                .inc();
        }
        self.inner.record(rec);
    }
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut root = Registry::with_prefix("ward");
        let ca = root.sub_registry_with_prefix("ca");
        ca.register(
            "certificates_issued",
            "Workload certificates issued",
            self.ca_issued.clone(),
        );
        ca.register(
            "requests_refused",
            "Certificate requests refused, by gRPC code (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, INVALID_ARGUMENT)",
            self.ca_refused.clone(),
        );
        let r = root.sub_registry_with_prefix("control");
        r.register(
            "push_latency_seconds",
            "Time from sending a push to a proxy until it acknowledged all of it",
            self.push_latency.0.clone(),
        );
        r.register(
            "proxies_connected",
            "Proxies with an open control stream",
            self.proxies_connected.clone(),
        );
        r.register(
            "pushes",
            "Pushes sent to proxies (one response per type each)",
            self.pushes.clone(),
        );
        r.register("acks", "Responses proxies acknowledged", self.acks.clone());
        r.register(
            "nacks",
            "Responses proxies rejected; they keep their previous configuration",
            self.nacks.clone(),
        );
        r.register(
            "streams_refused",
            "Control streams refused, by reason",
            self.streams_refused.clone(),
        );
        r.register(
            "watch_restarts",
            "Kubernetes watch errors after which the watcher resumed, by kind",
            self.watch_restarts.clone(),
        );
        r.register(
            "rejected_files",
            "Local-mode files currently rejected (their last good content stays in force)",
            self.rejected_files.clone(),
        );
        r.register(
            "view_sequence",
            "Sequence number of the published view",
            self.view_sequence.clone(),
        );
        r.register(
            "workloads",
            "Workloads in the published address table",
            self.workloads.clone(),
        );
        r.register(
            "services",
            "Services in the published address table",
            self.services.clone(),
        );
        r.register("policies", "Policy objects by kind and state (invalid ones are reported and enforced fail-closed or at their last good version)", self.policies.clone());
        root
    }

    /// The OpenMetrics text of every metric, gauges refreshed from `view` and `policies`.
    pub fn render(&self, view: &View, policies: &[PolicyState]) -> String {
        self.view_sequence
            .set(i64::try_from(view.seq).unwrap_or(i64::MAX));
        self.workloads.set(view.workloads.len() as i64);
        self.services.set(view.services.len() as i64);
        self.policies.clear();
        for p in policies {
            let state = match p.verdict {
                Verdict::Accepted { .. } => "accepted",
                Verdict::Invalid { .. } => "invalid",
            };
            self.policies
                .get_or_create(&vec![
                    (
                        "kind".to_owned(),
                        p.object.kind.resource_prefix().to_owned(),
                    ),
                    ("state".to_owned(), state.to_owned()),
                ])
                .inc();
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry()).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics`, `/healthz` and `/ready` on `listener` forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    views: watch::Receiver<Arc<View>>,
    policies: watch::Receiver<Arc<Vec<PolicyState>>>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let views = views.clone();
        let policies = policies.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    // Probes: `/healthz` answers while the process serves; `/ready` only once
                    // every watch has delivered its initial state (before that the replica
                    // serves proxies nothing, so it should get no traffic).
                    let probe = match req.uri().path() {
                        "/healthz" => Some(true),
                        "/ready" => Some(views.borrow().synced),
                        _ => None,
                    };
                    let body = if req.uri().path() == "/metrics" {
                        let accept = req
                            .headers()
                            .get(http::header::ACCEPT)
                            .and_then(|v| v.to_str().ok());
                        Some(ward_lib_api::exposition::negotiate(
                            metrics.render(&views.borrow(), &policies.borrow()),
                            accept,
                        ))
                    } else {
                        None
                    };
                    async move {
                        let resp = match (probe, body) {
                            (Some(true), _) => http::Response::builder().body(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")),
                            ),
                            (Some(false), _) => {
                                http::Response::builder()
                                    .status(503)
                                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"not synced: waiting for the initial state of every watch\n",
                                )))
                            }
                            (None, Some((b, content_type))) => http::Response::builder()
                                .header("content-type", content_type)
                                .body(http_body_util::Full::new(bytes::Bytes::from(b))),
                            (None, None) => http::Response::builder().status(404).body(
                                http_body_util::Full::new(bytes::Bytes::from_static(
                                    b"not found\n",
                                )),
                            ),
                        };
                        resp.map_err(std::io::Error::other)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use crate::index::View;

    async fn status_of(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn ready_only_once_every_watch_has_synced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (views_tx, views) = watch::channel(Arc::new(View::default()));
        let (_policies_tx, policies) = watch::channel(Arc::new(Vec::new()));
        tokio::spawn(super::serve(
            listener,
            super::Metrics::default(),
            views,
            policies,
        ));
        assert_eq!(status_of(addr, "/healthz").await, "HTTP/1.1 200 OK");
        assert_eq!(
            status_of(addr, "/ready").await,
            "HTTP/1.1 503 Service Unavailable"
        );
        views_tx.send_modify(|v| Arc::make_mut(v).synced = true);
        assert_eq!(status_of(addr, "/ready").await, "HTTP/1.1 200 OK");
        assert_eq!(status_of(addr, "/nope").await, "HTTP/1.1 404 Not Found");
    }
}
