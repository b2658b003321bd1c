//! Inbound: HBONE (15008) and plaintext capture (15006).
//!
//! HBONE: TLS 1.3 with a required client SVID → HTTP/2 → per CONNECT stream: the target must
//! be a workload on this node whose identity is the one the client asked for in SNI; L4 policy
//! is evaluated for the peer identity; the upstream connection is made; only then 200, and the
//! bytes are spliced. Status codes: 400 malformed (not CONNECT, bad authority, not a local
//! workload, identity mismatch), 401 denied by policy, 503 upstream or proxy not ready.
//!
//! Plaintext capture: the original destination must be a local workload; STRICT refuses before
//! policy, PERMISSIVE evaluates policy with no identity.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_lib_api::config::{Snapshot, Workload};
use ward_lib_identity::SpiffeId;
use ward_lib_policy::{Attributes, MtlsMode, PeerIdentity};

use crate::accesslog::Record;
use crate::hbone::{self, Tunnel};
use crate::{relay, socket, tls, Ctx};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts HBONE connections until `stop` turns true.
pub async fn serve_hbone(ctx: Arc<Ctx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    crate::accept_loop(ctx, listener, stop, "hbone", hbone_connection).await;
}

async fn hbone_connection(ctx: Arc<Ctx>, tcp: TcpStream, peer_addr: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Some(snap) = ctx.state.snapshot() else {
        return;
    };
    let Some(acceptor) = hbone_acceptor(&ctx, &snap.trust_domain) else {
        return;
    };
    let accepted = acceptor.accept(tcp);
    let tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepted).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = tls::handshake_reason(&e);
            ctx.metrics
                .tls_failure("inbound", tls::handshake_reason_code(&e));
            tracing::info!(peer = %peer_addr, %reason, "HBONE handshake refused");
            return;
        }
        Err(_) => {
            ctx.metrics.tls_failure("inbound", "timeout");
            tracing::info!(peer = %peer_addr, "HBONE handshake timed out");
            return;
        }
    };
    let (_, conn) = tls_stream.get_ref();
    let (Some(client_id), Some(server_id)) = (
        ward_lib_identity::tls::peer_identity(conn),
        conn.server_name()
            .and_then(|s| tls::identity_from_sni(&snap.trust_domain, s)),
    ) else {
        return;
    };
    // What protects this tunnel: the hybrid post-quantum group between ward proxies
    // (`tls::provider`), X25519 with peers that lack it.
    tracing::debug!(
        peer = %peer_addr,
        client = %client_id,
        key_exchange = ?conn.negotiated_key_exchange_group().map(|g| g.name()),
        cipher_suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()),
        "HBONE handshake"
    );
    let peer = Arc::new(PeerIdentity::from_spiffe_id(&client_id));
    let client_id = Arc::new(client_id);
    let server_id = Arc::new(server_id);
    let handled = hbone::serve(tls_stream, |req, respond| {
        connect_stream(
            ctx.clone(),
            req,
            respond,
            peer.clone(),
            client_id.clone(),
            server_id.clone(),
            peer_addr,
        )
    });
    if let Err(e) = handled.await {
        tracing::debug!(peer = %peer_addr, error = %e, "HBONE connection ended with an error");
    }
}

/// The HBONE TLS acceptor, built once per trust domain (certificates and the bundle are read
/// live through the resolver and the shared bundle, so nothing else invalidates it).
fn hbone_acceptor(
    ctx: &Ctx,
    td: &ward_lib_identity::TrustDomain,
) -> Option<tokio_rustls::TlsAcceptor> {
    let mut cached = ctx.hbone_tls.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((cached_td, acceptor)) = cached.as_ref() {
        if cached_td == td {
            return Some(acceptor.clone());
        }
    }
    match tls::server_config(ctx.state.bundle.clone(), ctx.certs.clone(), td.clone()) {
        Ok(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            *cached = Some((td.clone(), acceptor.clone()));
            Some(acceptor)
        }
        Err(e) => {
            tracing::error!(error = %e, "HBONE TLS configuration");
            None
        }
    }
}

/// Why a tunnel request was refused before any configuration was consulted.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// Bounded reason (a metric label).
    pub why: &'static str,
    /// The access log's words.
    pub reason: String,
}

/// The target of an HBONE request: it must be `CONNECT` to an `ip:port` authority (names are
/// never resolved here — the caller's proxy chose the address). Pure, so it can be fuzzed.
pub fn connect_target<B>(req: &http::Request<B>) -> Result<SocketAddr, Refusal> {
    if req.method() != http::Method::CONNECT {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            why: "not_connect",
            reason: format!("method {} is not CONNECT", req.method()),
        });
    }
    req.uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or_else(|| Refusal {
            status: StatusCode::BAD_REQUEST,
            why: "bad_authority",
            reason: format!("authority {:?} is not ip:port", req.uri().to_string()),
        })
}

/// One CONNECT stream: answered (and logged) here; an accepted one is relayed on this task.
pub(crate) async fn connect_stream(
    ctx: Arc<Ctx>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: Arc<PeerIdentity>,
    client_id: Arc<SpiffeId>,
    server_id: Arc<SpiffeId>,
    peer_addr: SocketAddr,
) {
    let started = Instant::now();
    let mut rec = Record::new("inbound", peer_addr.ip().to_string(), String::new());
    rec.src_identity = Some(client_id.to_string());
    rec.dst_identity = Some(server_id.to_string());
    // `why` is the bounded reason of the failure metric; `reason` the access log's own words.
    let refuse = |ctx: &Ctx,
                  mut rec: Record,
                  respond,
                  code: StatusCode,
                  why: &'static str,
                  reason: String| {
        ctx.metrics.tunnel_failure("inbound", why);
        rec.reason = reason;
        ctx.log.log(rec);
        hbone::respond(respond, code);
    };
    if ctx.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let reason = "proxy is draining".into();
        let code = StatusCode::SERVICE_UNAVAILABLE;
        return refuse(&ctx, rec, respond, code, "draining", reason);
    }
    let target = match connect_target(&req) {
        Ok(t) => t,
        Err(r) => return refuse(&ctx, rec, respond, r.status, r.why, r.reason),
    };
    rec.dst = target.to_string();
    let Some(snap) = ctx.state.snapshot() else {
        let reason = "no configuration yet".into();
        let code = StatusCode::SERVICE_UNAVAILABLE;
        return refuse(&ctx, rec, respond, code, "no_configuration", reason);
    };
    let Some(w) = local_workload(&snap, &ctx.state.node, target.ip()) else {
        let reason = format!("{} is not a workload on this node", target.ip());
        let code = StatusCode::BAD_REQUEST;
        return refuse(&ctx, rec, respond, code, "unknown_destination", reason);
    };
    rec.dst_workload = Some(format!("{}/{}", w.namespace, w.name));
    if w.identity != *server_id {
        let reason = format!(
            "the tunnel is for {server_id}, but {} runs as {}",
            target.ip(),
            w.identity
        );
        let code = StatusCode::BAD_REQUEST;
        return refuse(&ctx, rec, respond, code, "identity_mismatch", reason);
    }
    let source_ip = forwarded_for(&req, &snap, &client_id).unwrap_or(peer_addr.ip());
    rec.src = source_ip.to_string();
    let recv = req.into_body();
    let labels = Box::new(crate::metrics::ConnLabels::new(
        crate::metrics::DESTINATION,
        &snap,
        source_ip,
        Some(client_id.to_string()),
        Some(w),
        None,
        crate::metrics::MUTUAL_TLS,
    ));
    if w.is_http_port(target.port()) {
        // HTTP port: every request is authorized (and forwarded) by the L7 layer. Boxed: its
        // state is large and lives on the heap, keeping this future small.
        let Some(send) = hbone::respond(respond, StatusCode::OK) else {
            rec.reason = "the peer reset the stream before it was answered".into();
            ctx.log.log(rec);
            return;
        };
        let io = relay::TunnelIo::new(Tunnel { send, recv });
        let caller = crate::l7::Caller {
            peer: Some((*peer).clone()),
            source_ip,
            target,
            workload: w.clone(),
            labels: *labels,
            bytes: Arc::default(),
        };
        return Box::pin(serve_l7(ctx, io, caller, rec, started)).await;
    }
    let attrs = Attributes::tcp(Some(&peer), source_ip, target, jiff::Timestamp::now());
    let decision = w.policies.evaluate(&attrs);
    ctx.metrics.decision(&labels, &decision);
    rec.policy = decision.policy.map(|(p, _)| p.id.to_string());
    rec.reason = decision.to_string();
    if !decision.allowed {
        ctx.log.log(rec);
        hbone::respond(respond, StatusCode::UNAUTHORIZED);
        return;
    }
    let from = ctx.upstream_source(source_ip);
    let upstream = match socket::connect_as(target, from, UPSTREAM_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("connecting to {target}: {e}");
            let code = StatusCode::SERVICE_UNAVAILABLE;
            return refuse(&ctx, rec, respond, code, "upstream_connect", reason);
        }
    };
    let Some(send) = hbone::respond(respond, StatusCode::OK) else {
        rec.reason = format!(
            "{}; the peer reset the stream before it was answered",
            rec.reason
        );
        ctx.log.log(rec);
        return;
    };
    rec.decision = "allow";
    let (_registration, cancel) =
        ctx.conns
            .register(Some((*peer).clone()), source_ip, target, false);
    ctx.metrics.opened(&labels);
    // Boxed: the relay is the long-lived part; the set-up state above is not kept alongside.
    let out = Box::pin(relay::splice_tunnel(
        &ctx,
        upstream,
        Tunnel { send, recv },
        Some(cancel),
    ))
    .await;
    // The socket is `a` here: a → b is what the workload sent back to the caller.
    rec.bytes_sent = out.a_to_b;
    rec.bytes_received = out.b_to_a;
    ctx.metrics
        .closed(&labels, rec.bytes_sent, rec.bytes_received);
    if out.ended_by != "closed" {
        rec.reason = format!("{}; closed: {}", rec.reason, out.ended_by);
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    ctx.log.log(rec);
}

async fn serve_l7(
    ctx: Arc<Ctx>,
    io: relay::TunnelIo,
    caller: crate::l7::Caller,
    mut rec: Record,
    started: Instant,
) {
    rec.decision = "allow";
    rec.reason = "HTTP port: requests authorized individually".into();
    let (_registration, _cancel) =
        ctx.conns
            .register(caller.peer.clone(), caller.source_ip, caller.target, true);
    let labels = caller.labels.clone();
    let bytes = caller.bytes.clone();
    ctx.metrics.opened(&labels);
    crate::l7::serve(ctx.clone(), io, caller).await;
    l7_closed(&ctx, &labels, &bytes, &mut rec);
    rec.duration_ms = started.elapsed().as_millis() as u64;
    ctx.log.log(rec);
}

/// An HTTP connection ended: its record and byte metrics carry the body bytes of all its
/// requests (each request has its own line too).
fn l7_closed(
    ctx: &Ctx,
    labels: &crate::metrics::ConnLabels,
    bytes: &crate::l7::ConnBytes,
    rec: &mut Record,
) {
    use std::sync::atomic::Ordering::Relaxed;
    rec.bytes_sent = bytes.sent.load(Relaxed);
    rec.bytes_received = bytes.received.load(Relaxed);
    ctx.metrics
        .closed(labels, rec.bytes_sent, rec.bytes_received);
}

fn local_workload<'s>(snap: &'s Snapshot, node: &str, ip: IpAddr) -> Option<&'s Arc<Workload>> {
    snap.by_ip.get(&ip).filter(|w| w.node == node)
}

/// The client's original address from `Forwarded: for="ip"`, trusted only if that address is a
/// workload running as the authenticated peer identity (a peer cannot claim another's address).
fn forwarded_for(
    req: &http::Request<RecvStream>,
    snap: &Snapshot,
    client: &SpiffeId,
) -> Option<IpAddr> {
    let v = req.headers().get("forwarded")?.to_str().ok()?;
    let ip: IpAddr = v
        .split(';')
        .find_map(|p| p.trim().strip_prefix("for="))?
        .trim_matches('"')
        .parse()
        .ok()?;
    snap.by_ip
        .get(&ip)
        .filter(|w| &w.identity == client)
        .map(|_| ip)
}

/// Accepts redirected plaintext until `stop` turns true.
pub async fn serve_plaintext(ctx: Arc<Ctx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    crate::accept_loop(
        ctx,
        listener,
        stop,
        "inbound plaintext",
        plaintext_connection,
    )
    .await;
}

pub(crate) async fn plaintext_connection(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let Ok(target) = socket::original_dst(&tcp, peer) else {
        return;
    };
    let mut rec = Record::new(
        "inbound-plaintext",
        peer.ip().to_string(),
        target.to_string(),
    );
    let Some(snap) = ctx.state.snapshot() else {
        rec.reason = "no configuration yet".into();
        ctx.log.log(rec);
        return;
    };
    let Some(w) = local_workload(&snap, &ctx.state.node, target.ip()) else {
        rec.reason = format!("{} is not a workload on this node", target.ip());
        ctx.log.log(rec);
        return;
    };
    rec.dst_workload = Some(format!("{}/{}", w.namespace, w.name));
    let labels = Box::new(crate::metrics::ConnLabels::new(
        crate::metrics::DESTINATION,
        &snap,
        peer.ip(),
        None,
        Some(w),
        None,
        crate::metrics::NONE,
    ));
    if w.mtls == MtlsMode::Strict {
        rec.reason = "plaintext refused: peer authentication is STRICT".into();
        ctx.metrics.strict_refusal(&labels);
        ctx.log.log(rec);
        return;
    }
    if w.is_http_port(target.port()) {
        rec.decision = "allow";
        rec.reason = "HTTP port: requests authorized individually".into();
        let (_registration, _cancel) = ctx.conns.register(None, peer.ip(), target, true);
        let caller = crate::l7::Caller {
            peer: None,
            source_ip: peer.ip(),
            target,
            workload: w.clone(),
            labels: (*labels).clone(),
            bytes: Arc::default(),
        };
        let bytes = caller.bytes.clone();
        ctx.metrics.opened(&labels);
        // Boxed: the HTTP server state lives on the heap, keeping this future small.
        Box::pin(crate::l7::serve(ctx.clone(), tcp, caller)).await;
        l7_closed(&ctx, &labels, &bytes, &mut rec);
        rec.duration_ms = started.elapsed().as_millis() as u64;
        ctx.log.log(rec);
        return;
    }
    let attrs = Attributes::tcp(None, peer.ip(), target, jiff::Timestamp::now());
    let decision = w.policies.evaluate(&attrs);
    ctx.metrics.decision(&labels, &decision);
    rec.policy = decision.policy.map(|(p, _)| p.id.to_string());
    rec.reason = decision.to_string();
    if !decision.allowed {
        ctx.log.log(rec);
        return;
    }
    // The peer completed a TCP handshake from this address: it owns it.
    let from = ctx.upstream_source(peer.ip());
    let upstream = match socket::connect_as(target, from, UPSTREAM_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            rec.reason = format!("connecting to {target}: {e}");
            ctx.log.log(rec);
            return;
        }
    };
    rec.decision = "allow";
    let (_registration, cancel) = ctx.conns.register(None, peer.ip(), target, false);
    ctx.metrics.opened(&labels);
    let out = relay::splice(&ctx, tcp, upstream, Some(cancel)).await;
    rec.bytes_received = out.a_to_b;
    rec.bytes_sent = out.b_to_a;
    ctx.metrics
        .closed(&labels, rec.bytes_sent, rec.bytes_received);
    rec.duration_ms = started.elapsed().as_millis() as u64;
    ctx.log.log(rec);
}
