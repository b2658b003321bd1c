//! Outbound capture (15001): the original destination of a redirected pod connection decides
//! where it goes.
//! - a mesh workload → HBONE to that workload's node proxy, as the source workload, requiring
//!   the destination's identity;
//! - a Service VIP:port → one of its endpoints (chosen at random), then as above;
//! - anything else → passthrough, directly from the node.
//!
//! The source must be a workload on this node (only pods are captured); an unknown source, or
//! a proxy with no configuration yet, gets its connection closed: nothing is forwarded unless
//! it can be attributed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::accesslog::Record;
use crate::metrics::{self, ConnLabels};
use crate::{relay, socket, Ctx};

pub async fn serve(ctx: Arc<Ctx>, listener: TcpListener, stop: watch::Receiver<bool>) {
    crate::accept_loop(ctx, listener, stop, "outbound", connection).await;
}

pub(crate) async fn connection(ctx: Arc<Ctx>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let Ok(orig) = socket::original_dst(&tcp, peer) else {
        tracing::debug!(%peer, "outbound connection without an original destination; closing");
        return;
    };
    let mut rec = Record::new("outbound", peer.ip().to_string(), orig.to_string());
    let Some(snap) = ctx.state.snapshot() else {
        rec.reason = "no configuration yet".into();
        ctx.log.log(rec);
        return;
    };
    let Some(src) = snap
        .by_ip
        .get(&peer.ip())
        .filter(|w| w.node == ctx.state.node)
    else {
        rec.reason = format!("source {} is not a workload on this node", peer.ip());
        ctx.log.log(rec);
        return;
    };
    rec.src_identity = Some(src.identity.to_string());
    // Resolve the destination: a workload, a service (pick an endpoint), or passthrough (to
    // `direct`).
    let mut direct = orig;
    let mut service = None;
    let target = if let Some(w) = snap.by_ip.get(&orig.ip()) {
        Some((w.clone(), orig))
    } else if let Some(svc) = snap.services.get(&orig) {
        service = Some(format!("{}.{}", svc.name, svc.namespace));
        if svc.endpoints.is_empty() {
            rec.reason = format!("service {}/{} has no endpoints", svc.namespace, svc.name);
            ctx.log.log(rec);
            return;
        }
        // The backend holds the endpoints of the VIP's own family (`service_from_pb`).
        let ep = svc.endpoints[rand::random_range(0..svc.endpoints.len())];
        match snap.by_ip.get(&ep.ip()) {
            Some(w) => Some((w.clone(), ep)),
            // An endpoint outside the mesh: passed through like any non-mesh destination.
            None => {
                direct = ep;
                None
            }
        }
    } else {
        None
    };
    match target {
        Some((w, addr)) => {
            rec.dst = addr.to_string();
            rec.dst_workload = Some(format!("{}/{}", w.namespace, w.name));
            rec.dst_identity = Some(w.identity.to_string());
            // Boxed: the dial path is large and needed once; the long-lived relay state stays small.
            match Box::pin(
                ctx.pool
                    .tunnel(&src.identity, &w.identity, w.hbone, addr, peer.ip()),
            )
            .await
            {
                Ok((tunnel, _slot)) => {
                    rec.decision = "allow";
                    rec.reason = format!("tunnel via {}", w.hbone);
                    let labels = Box::new(ConnLabels::new(
                        metrics::SOURCE,
                        &snap,
                        peer.ip(),
                        Some(src.identity.to_string()),
                        Some(&w),
                        service,
                        metrics::MUTUAL_TLS,
                    ));
                    ctx.metrics.opened(&labels);
                    let out = relay::splice_tunnel(&ctx, tcp, tunnel, None).await;
                    rec.bytes_sent = out.a_to_b;
                    rec.bytes_received = out.b_to_a;
                    // Istio's meaning: sent = the response direction, received = the request.
                    ctx.metrics.closed(&labels, out.b_to_a, out.a_to_b);
                }
                Err(e) => {
                    if let crate::pool::TunnelError::Tls { source, .. } = &e {
                        ctx.metrics
                            .tls_failure("outbound", crate::tls::handshake_reason_code(source));
                    }
                    ctx.metrics.tunnel_failure("outbound", e.code());
                    rec.reason = e.to_string();
                    tracing::info!(src = %src.identity, dst = %w.identity, error = %e, "tunnel failed");
                }
            }
        }
        None => match socket::connect(direct, Duration::from_secs(5)).await {
            Ok(up) => {
                rec.dst = direct.to_string();
                rec.decision = "allow";
                rec.reason = "passthrough: not a mesh destination".into();
                let labels = Box::new(ConnLabels::new(
                    metrics::SOURCE,
                    &snap,
                    peer.ip(),
                    Some(src.identity.to_string()),
                    None,
                    service,
                    metrics::NONE,
                ));
                ctx.metrics.opened(&labels);
                let out = relay::splice(&ctx, tcp, up, None).await;
                rec.bytes_sent = out.a_to_b;
                rec.bytes_received = out.b_to_a;
                ctx.metrics.closed(&labels, out.b_to_a, out.a_to_b);
            }
            Err(e) => rec.reason = format!("passthrough to {direct}: {e}"),
        },
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    ctx.log.log(rec);
}
