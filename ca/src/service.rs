//! The `ward.ca.v1.CertificateService` implementation: authenticate → rate-limit → authorize
//! (node binding) → verify CSR → sign → audit.
//!
//! Every request produces exactly one audit record, issued or refused, with the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::{Request, Response, Status};
use ward_lib_api::ca::certificate_service_server::CertificateService;
use ward_lib_api::ca::{IssueRequest, IssueResponse};
use ward_lib_identity::SpiffeId;

use crate::auth::{bearer, AuthError, Authenticator, Requester};
use crate::authority::{Authority, DEFAULT_TTL};
use crate::clock::Clock;
use crate::csr::verify_csr;
use crate::directory::WorkloadDirectory;
use crate::ratelimit::{RateLimit, RateLimiter};

/// The remote address of a request, inserted by the server's accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// One issuance decision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRecord {
    pub outcome: &'static str,
    /// gRPC status code name for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where audit records go.
pub trait AuditSink: Send + Sync + 'static {
    fn record(&self, rec: &AuditRecord);
}

/// Writes each record as one JSON object per line (e.g. to stdout, kept apart from the
/// diagnostic log on stderr so audit trails can be shipped and retained on their own).
pub struct JsonLinesAudit<W: std::io::Write + Send + 'static>(std::sync::Mutex<W>);

impl<W: std::io::Write + Send + 'static> JsonLinesAudit<W> {
    pub fn new(w: W) -> Self {
        Self(std::sync::Mutex::new(w))
    }
}

impl<W: std::io::Write + Send + 'static> AuditSink for JsonLinesAudit<W> {
    fn record(&self, rec: &AuditRecord) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            ts: String,
            kind: &'static str,
            #[serde(flatten)]
            rec: &'a AuditRecord,
        }
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = Line {
            ts,
            kind: "ward.ca.audit",
            rec,
        };
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // An audit line that cannot be written is reported on the diagnostic log.
        if let Err(e) = serde_json::to_writer(&mut *w, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush())
        {
            tracing::error!(error = %e, "writing an audit record failed");
        }
    }
}

/// Keeps records in memory (tests, diagnostics).
#[derive(Debug, Default)]
pub struct MemoryAudit(pub std::sync::Mutex<Vec<AuditRecord>>);

impl AuditSink for MemoryAudit {
    fn record(&self, rec: &AuditRecord) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(rec.clone());
    }
}

/// Service settings.
#[derive(Debug, Clone)]
pub struct IssuePolicy {
    pub default_ttl: Duration,
    pub rate_limit: RateLimit,
}

impl Default for IssuePolicy {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TTL,
            rate_limit: RateLimit::default(),
        }
    }
}

pub struct IssuerService {
    /// Swappable, so a root rotation (switching the signing CA) needs no restart.
    authority: Arc<ArcSwap<Authority>>,
    authn: Arc<dyn Authenticator>,
    directory: Arc<dyn WorkloadDirectory>,
    limiter: RateLimiter,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    policy: IssuePolicy,
}

impl IssuerService {
    pub fn new(
        authority: Arc<Authority>,
        authn: Arc<dyn Authenticator>,
        directory: Arc<dyn WorkloadDirectory>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
        policy: IssuePolicy,
    ) -> Self {
        Self::with_shared_authority(
            Arc::new(ArcSwap::new(authority)),
            authn,
            directory,
            audit,
            clock,
            policy,
        )
    }

    /// A service whose signing authority the caller may replace at any time.
    pub fn with_shared_authority(
        authority: Arc<ArcSwap<Authority>>,
        authn: Arc<dyn Authenticator>,
        directory: Arc<dyn WorkloadDirectory>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
        policy: IssuePolicy,
    ) -> Self {
        Self {
            authority,
            authn,
            directory,
            limiter: RateLimiter::new(policy.rate_limit),
            audit,
            clock,
            policy,
        }
    }

    async fn decide(
        &self,
        token: Result<&str, AuthError>,
        req: &IssueRequest,
        rec: &mut AuditRecord,
    ) -> Result<IssueResponse, Status> {
        let requester: Requester = match token {
            Ok(t) => self.authn.authenticate(t).await,
            Err(e) => Err(e),
        }
        .map_err(|e| match e {
            AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        })?;
        rec.requester = Some(requester.subject.clone());
        rec.node = Some(requester.node.clone());

        if !self.limiter.allow(&requester.node) {
            return Err(Status::resource_exhausted(format!(
                "rate limit for node {:?} exceeded; retry with backoff",
                requester.node
            )));
        }

        let authority = self.authority.load_full();
        let id = SpiffeId::for_service_account(
            authority.trust_domain(),
            &req.namespace,
            &req.service_account,
        )
        .map_err(|e| Status::invalid_argument(format!("requested identity: {e}")))?;
        rec.spiffe_id = Some(id.to_string());

        let scheduled = self
            .directory
            .is_scheduled(&requester.node, &req.namespace, &req.service_account)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !scheduled {
            return Err(Status::permission_denied(format!(
                "no workload with service account {}/{} is scheduled on node {:?}",
                req.namespace, req.service_account, requester.node
            )));
        }

        let csr = verify_csr(&req.csr_der).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = match req.ttl_seconds {
            0 => self.policy.default_ttl,
            s => Duration::from_secs(u64::from(s)),
        };
        let issued = authority
            .sign(&csr, &id, ttl, self.clock.now())
            .map_err(|e| Status::internal(e.to_string()))?;
        rec.serial = Some(issued.serial.clone());
        rec.not_after = Some(issued.not_after);
        Ok(IssueResponse {
            chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            roots_der: authority.roots().iter().map(|c| c.to_vec()).collect(),
            spiffe_id: id.to_string(),
            not_after_unix: issued.not_after,
        })
    }
}

#[tonic::async_trait]
impl CertificateService for IssuerService {
    async fn issue(
        &self,
        request: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let auth_header = request.metadata().get("authorization").map(|v| {
            v.to_str()
                .map_err(|_| AuthError::Malformed("authorization is not ASCII"))
        });
        let token = match auth_header {
            None => Err(AuthError::Missing),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => bearer(Some(v)),
        };
        let mut rec = AuditRecord {
            outcome: "refused",
            code: None,
            peer: peer.map(|p| p.to_string()),
            requester: None,
            node: None,
            spiffe_id: None,
            serial: None,
            not_after: None,
            reason: None,
        };
        let result = self.decide(token, request.get_ref(), &mut rec).await;
        match &result {
            Ok(_) => rec.outcome = "issued",
            Err(status) => {
                rec.code = Some(code_name(status.code()));
                rec.reason = Some(status.message().to_owned());
            }
        }
        self.audit.record(&rec);
        result.map(Response::new)
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Unauthenticated => "UNAUTHENTICATED",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::Unavailable => "UNAVAILABLE",
        C::Internal => "INTERNAL",
        _ => "OTHER",
    }
}
