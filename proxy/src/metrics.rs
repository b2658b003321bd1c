//! The proxy's metrics: OpenMetrics text on `:15020/metrics` (and the admin port's `/metrics`).
//!
//! Names are prefixed `ward_`; label names are Istio's standard ones where the meaning is the
//! same (`reporter`, `source_workload`, `source_workload_namespace`, `source_principal`,
//! `destination_workload`, `destination_workload_namespace`, `destination_principal`,
//! `destination_service`, `connection_security_policy`, `response_code`), so dashboards and
//! queries written for Istio port.
//!
//! Cardinality is bounded by design: labels name workloads, identities, policies and reasons —
//! never a connection, a client address or a path. Per pair of workloads (source,
//! destination) a node has at most: 5 TCP series (opened, closed, sent, received, open) per
//! reporter and security policy; one request counter per response code and a 12-bucket
//! duration histogram per response code on HTTP ports; one decision counter per (decision,
//! policy, action) that applied to the pair. Proxy-wide: failures by reason (a fixed set),
//! one expiry gauge per identity held.
//!
//! Counters are updated where things happen, once per connection or request (never per
//! byte: byte counts are added when a connection ends); gauges describing state (certificate
//! expiry, configuration, control-stream state, access-log drops) are read at scrape time.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ward_lib_api::config::{Snapshot, Workload};

/// Who reports: the proxy of the destination (inbound) or of the source (outbound).
pub const DESTINATION: &str = "destination";
pub const SOURCE: &str = "source";
/// `connection_security_policy` values, as Istio names them.
pub const MUTUAL_TLS: &str = "mutual_tls";
pub const NONE: &str = "none";
const UNKNOWN: &str = "unknown";

/// The labels of a connection (Istio's standard TCP labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub connection_security_policy: &'static str,
}

impl ConnLabels {
    /// Labels for a connection from `source` (an address, attributed to a workload when the
    /// address table knows it; the principal only if proven by a handshake) to `destination`.
    pub fn new(
        reporter: &'static str,
        snap: &Snapshot,
        source: IpAddr,
        source_principal: Option<String>,
        destination: Option<&Workload>,
        destination_service: Option<String>,
        security: &'static str,
    ) -> Self {
        let src = snap.by_ip.get(&source);
        Self {
            reporter,
            source_workload: src.map_or_else(|| UNKNOWN.into(), |w| w.name.clone()),
            source_workload_namespace: src.map_or_else(|| UNKNOWN.into(), |w| w.namespace.clone()),
            source_principal: source_principal.unwrap_or_else(|| UNKNOWN.into()),
            destination_workload: destination.map_or_else(|| UNKNOWN.into(), |w| w.name.clone()),
            destination_workload_namespace: destination
                .map_or_else(|| UNKNOWN.into(), |w| w.namespace.clone()),
            destination_principal: destination
                .map_or_else(|| UNKNOWN.into(), |w| w.identity.to_string()),
            destination_service: destination_service.unwrap_or_else(|| UNKNOWN.into()),
            connection_security_policy: security,
        }
    }
}

/// A request's labels: the connection's and the response code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    #[prometheus(flatten)]
    pub conn: ConnLabels,
    pub response_code: u16,
}

/// An authorization decision's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    /// `allow` or `deny` (for AUDIT: `audit`; for a dry-run policy: what it would have done,
    /// `dry_run_allow` / `dry_run_deny`).
    pub decision: &'static str,
    /// `namespace/name` of the deciding policy, or `none`.
    pub policy: String,
    /// `ALLOW`, `DENY`, `AUDIT`, `STRICT` (plaintext refused by peer authentication before
    /// any policy), or `none` when no policy decided.
    pub action: &'static str,
}

/// A failure's labels: where and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Request-duration buckets, seconds: 1 ms … 10 s.
const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the proxy.
pub struct Metrics {
    registry: Registry,
    pub tcp_opened: Family<ConnLabels, Counter>,
    pub tcp_closed: Family<ConnLabels, Counter>,
    pub tcp_sent: Family<ConnLabels, Counter>,
    pub tcp_received: Family<ConnLabels, Counter>,
    pub tcp_open: Family<ConnLabels, Gauge>,
    pub authz: Family<AuthzLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub tls_failures: Family<FailureLabels, Counter>,
    pub tunnel_failures: Family<FailureLabels, Counter>,
    // Read from the proxy's state at scrape time:
    log_dropped: Counter,
    config_updates: Counter,
    cert_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    config_loaded: Gauge,
    config_info: Family<VersionLabels, Gauge>,
    control_connected: Gauge,
    control_applied: Counter,
    control_rejected: Counter,
    /// One scrape at a time (catching up counters must not race).
    rendering: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("ward"),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_open: Family::default(),
            authz: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
            tls_failures: Family::default(),
            tunnel_failures: Family::default(),
            log_dropped: Counter::default(),
            config_updates: Counter::default(),
            cert_expiry: Family::default(),
            config_loaded: Gauge::default(),
            config_info: Family::default(),
            control_connected: Gauge::default(),
            control_applied: Counter::default(),
            control_rejected: Counter::default(),
            rendering: std::sync::Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register(
            "tcp_connections_opened",
            "TCP connections opened (authorized and connected to their destination)",
            m.tcp_opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.tcp_closed.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "Bytes sent to the client of a connection (the response direction), counted when it closes",
            m.tcp_sent.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "Bytes received from the client of a connection, counted when it closes",
            m.tcp_received.clone(),
        );
        r.register(
            "tcp_connections_open",
            "TCP connections open now",
            m.tcp_open.clone(),
        );
        r.register(
            "authz_decisions",
            "Authorization decisions (connections on TCP ports, requests on HTTP ports), with AUDIT and dry-run matches",
            m.authz.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests on HTTP ports, by response code",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request duration on HTTP ports, until the response headers",
            m.http_duration.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "mTLS handshakes that failed, by reason (the X509-SVID rule that failed, where one did)",
            m.tls_failures.clone(),
        );
        r.register(
            "tunnel_failures",
            "HBONE tunnels refused or failed, by reason",
            m.tunnel_failures.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access-log records dropped because the writer fell behind (the data path never waits for it)",
            m.log_dropped.clone(),
        );
        r.register(
            "config_updates",
            "Configurations accepted",
            m.config_updates.clone(),
        );
        r.register(
            "config_loaded",
            "Whether a configuration is in force (1) or not yet (0: nothing is forwarded)",
            m.config_loaded.clone(),
        );
        r.register(
            "config_info",
            "The version of the configuration in force (the control stream's sequence number, or the mesh file's fingerprint), as a label; always 1",
            m.config_info.clone(),
        );
        r.register(
            "certificate_expiration_timestamp_seconds",
            "When each workload certificate held by this proxy expires (Unix time)",
            m.cert_expiry.clone(),
        );
        r.register(
            "control_stream_connected",
            "Whether the control stream is connected (1) or not (0)",
            m.control_connected.clone(),
        );
        r.register(
            "control_pushes_applied",
            "Pushes from the control stream applied and acknowledged",
            m.control_applied.clone(),
        );
        r.register(
            "control_pushes_rejected",
            "Pushes from the control stream rejected (NACKed); the previous configuration stays in force",
            m.control_rejected.clone(),
        );
        m
    }

    /// Records an authorization decision about a connection or request labelled `conn`.
    pub fn decision(&self, conn: &ConnLabels, decision: &ward_lib_policy::Decision<'_>) {
        let labels = |decision: &'static str, policy: String, action: &'static str| {
            authz_labels(conn, decision, policy, action)
        };
        let (policy, action) = match decision.policy {
            Some((p, _)) => (p.id.to_string(), action_name(p)),
            None => ("none".to_owned(), "none"),
        };
        let verdict = if decision.allowed { "allow" } else { "deny" };
        self.authz
            .get_or_create(&labels(verdict, policy, action))
            .inc();
        for (p, _) in &decision.audit {
            self.authz
                .get_or_create(&labels("audit", p.id.to_string(), "AUDIT"))
                .inc();
        }
        for (p, matched) in &decision.dry_run {
            if matched.is_some() {
                let would = match p.action {
                    ward_lib_policy::Action::Deny => "dry_run_deny",
                    _ => "dry_run_allow",
                };
                self.authz
                    .get_or_create(&labels(would, p.id.to_string(), action_name(p)))
                    .inc();
            }
        }
    }

    /// Plaintext refused before policy because the destination is STRICT.
    pub fn strict_refusal(&self, conn: &ConnLabels) {
        self.authz
            .get_or_create(&authz_labels(conn, "deny", "none".into(), "STRICT"))
            .inc();
    }

    /// A connection was authorized and connected: count it open until [`Metrics::closed`].
    pub fn opened(&self, labels: &ConnLabels) {
        self.tcp_opened.get_or_create(labels).inc();
        self.tcp_open.get_or_create(labels).inc();
    }

    /// A connection opened with `labels` closed after moving these bytes.
    pub fn closed(&self, labels: &ConnLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_open.get_or_create(labels).dec();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }

    /// One HTTP request answered with `code` after `took`.
    pub fn request(&self, conn: &ConnLabels, code: u16, took: Duration) {
        let labels = HttpLabels {
            conn: conn.clone(),
            response_code: code,
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn tls_failure(&self, direction: &'static str, reason: impl Into<String>) {
        self.tls_failures
            .get_or_create(&FailureLabels {
                direction,
                reason: reason.into(),
            })
            .inc();
    }

    pub fn tunnel_failure(&self, direction: &'static str, reason: impl Into<String>) {
        self.tunnel_failures
            .get_or_create(&FailureLabels {
                direction,
                reason: reason.into(),
            })
            .inc();
    }

    /// The OpenMetrics text, with what is read from the proxy's state refreshed first.
    pub fn render(&self, ctx: &crate::Ctx) -> String {
        let _one = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        self.cert_expiry.clear();
        for c in ctx.certs.summaries() {
            self.cert_expiry
                .get_or_create(&IdentityLabels {
                    identity: c.identity,
                })
                .set(c.not_after as f64);
        }
        let snapshot = ctx.state.snapshot();
        self.config_loaded.set(i64::from(snapshot.is_some()));
        self.config_info.clear();
        if let Some(s) = &snapshot {
            self.config_info
                .get_or_create(&VersionLabels {
                    version: s.version.clone(),
                })
                .set(1);
        }
        let control = &ctx.state.control;
        self.control_connected
            .set(i64::from(control.connected.load(Ordering::Relaxed)));
        catch_up(
            &self.control_applied,
            control.applied.load(Ordering::Relaxed),
        );
        catch_up(
            &self.control_rejected,
            control.rejected.load(Ordering::Relaxed),
        );
        catch_up(&self.config_updates, *ctx.state.subscribe().borrow());
        catch_up(&self.log_dropped, ctx.log.dropped());
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn authz_labels(
    conn: &ConnLabels,
    decision: &'static str,
    policy: String,
    action: &'static str,
) -> AuthzLabels {
    AuthzLabels {
        reporter: conn.reporter,
        source_workload: conn.source_workload.clone(),
        source_workload_namespace: conn.source_workload_namespace.clone(),
        source_principal: conn.source_principal.clone(),
        destination_workload: conn.destination_workload.clone(),
        destination_workload_namespace: conn.destination_workload_namespace.clone(),
        decision,
        policy,
        action,
    }
}

/// Brings a counter up to a monotonic count kept elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let have = counter.get();
    if total > have {
        counter.inc_by(total - have);
    }
}

fn action_name(p: &ward_lib_policy::Policy) -> &'static str {
    match p.action {
        ward_lib_policy::Action::Allow => "ALLOW",
        ward_lib_policy::Action::Deny => "DENY",
        ward_lib_policy::Action::Audit => "AUDIT",
    }
}
