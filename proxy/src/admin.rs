//! Admin (loopback, 15000), metrics (15020) and readiness (15021) endpoints.
//!
//! Metrics: `/metrics` (OpenMetrics; also on the admin port). Admin: `/logging` (GET the log
//! filter; POST `?level=` to change it at runtime), `/config_dump` (version, node, local workloads, certificates, live connections),
//! `/connections` (live inbound connections with the peer identity each was authorized for),
//! `/certs`, `/healthz/ready`. Readiness serves only `/healthz/ready`: 200 once the proxy has a
//! configuration that declares this node and certificates for all its workloads, else 503.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Ctx;

/// Changes the log filter (`tracing_subscriber` directives, e.g. `info,ward_proxy=debug`).
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process's log filter, as `main` installed it: its current directives and how to
/// replace them.
static LOG_FILTER: std::sync::OnceLock<(std::sync::Mutex<String>, SetLogFilter)> =
    std::sync::OnceLock::new();

/// Registers the log filter `/logging` reads and changes (once, from `main`).
pub fn set_log_filter(current: String, set: SetLogFilter) {
    let _ = LOG_FILTER.set((std::sync::Mutex::new(current), set));
}

/// `GET /logging`: the current filter. `POST /logging?level=DIRECTIVES`: replace it (a bad
/// directive is refused with 400 and changes nothing).
fn logging(method: &http::Method, query: Option<&str>) -> http::Response<Full<Bytes>> {
    let Some((current, set)) = LOG_FILTER.get() else {
        return reply(
            503,
            "the log filter cannot be changed in this process\n".into(),
            "text/plain",
        );
    };
    if method == http::Method::POST {
        let level = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("level="))
            .map(percent_decode);
        let Some(level) = level.filter(|l| !l.is_empty()) else {
            return reply(
                400,
                "POST /logging?level=DIRECTIVES (e.g. debug, or info,ward_proxy=debug)\n".into(),
                "text/plain",
            );
        };
        if let Err(e) = set(&level) {
            return reply(
                400,
                format!("invalid log filter {level:?}: {e}\n"),
                "text/plain",
            );
        }
        tracing::info!(filter = %level, "log filter changed");
        *current.lock().unwrap_or_else(|p| p.into_inner()) = level;
    } else if method != http::Method::GET {
        return reply(405, "GET or POST\n".into(), "text/plain");
    }
    let now = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
    reply(200, format!("{now}\n"), "text/plain")
}

/// Decodes `%XX` escapes and `+` (a query value); invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Ready once a configuration is in force and every local workload has its certificate.
pub fn is_ready(ctx: &Ctx) -> bool {
    ctx.state.snapshot().is_some() && *ctx.certs.ready().borrow()
}

/// Which endpoints a port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Everything (loopback only).
    Admin,
    /// `/healthz/ready` only.
    Readiness,
    /// `/metrics` only.
    Metrics,
}

pub async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    port: Port,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let ctx = ctx.clone();
                let accept = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                async move {
                    if port == Port::Admin && req.uri().path() == "/logging" {
                        return Ok::<_, Infallible>(logging(req.method(), req.uri().query()));
                    }
                    Ok::<_, Infallible>(route(&ctx, req.uri().path(), port, accept.as_deref()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(code: u16, body: String, content_type: &str) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn route(ctx: &Ctx, path: &str, port: Port, accept: Option<&str>) -> http::Response<Full<Bytes>> {
    let full = port == Port::Admin;
    match (path, full) {
        ("/metrics", _) if port != Port::Readiness => {
            let (body, content_type) =
                ward_lib_api::exposition::negotiate(ctx.metrics.render(ctx), accept);
            reply(200, body, content_type)
        }
        ("/healthz/ready", _) if port != Port::Metrics => {
            if is_ready(ctx) {
                reply(200, "ready\n".into(), "text/plain")
            } else {
                reply(503, "not ready\n".into(), "text/plain")
            }
        }
        ("/connections", true) => reply(200, connections(ctx).to_string(), "application/json"),
        ("/certs", true) => reply(
            200,
            serde_json::to_string(&ctx.certs.summaries()).unwrap_or_default(),
            "application/json",
        ),
        ("/config_dump", true) => {
            let snap = ctx.state.snapshot();
            let workloads: Vec<_> = snap
                .iter()
                .flat_map(|s| s.local_workloads(&ctx.state.node))
                .map(|w| {
                    json!({
                        "name": w.name, "namespace": w.namespace, "identity": w.identity.to_string(),
                        "ip": w.ip.to_string(), "httpPorts": w.http_ports,
                        "mtls": w.mtls, "policies": w.policies.policies().iter().map(|p| p.id.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let body = json!({
                "node": ctx.state.node,
                "version": snap.as_ref().map(|s| s.version.clone()),
                "ready": is_ready(ctx),
                "workloads": workloads,
                "certificates": ctx.certs.summaries(),
                "connections": connections(ctx),
                "pooledTunnels": ctx.pool.len(),
                "activeRelays": ctx.active.load(Ordering::Relaxed),
                "accessLogDropped": ctx.log.dropped(),
            });
            reply(200, body.to_string(), "application/json")
        }
        _ => reply(404, "not found\n".into(), "text/plain"),
    }
}

fn connections(ctx: &Ctx) -> serde_json::Value {
    ctx.conns
        .snapshot()
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "peer": c.peer.as_ref().map(|p| format!("spiffe://{}", p.principal)),
                "source": c.source_ip.to_string(),
                "target": c.target.to_string(),
                "opened": c.opened_unix,
            })
        })
        .collect()
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the {what} listener on {addr}: {e}"))
}

/// Binds `addr` and, when it is the IPv4 wildcard (`0.0.0.0:P`, the default), its IPv6 twin
/// `[::]:P` as an IPv6-only socket: a dual-stack node's IPv6 traffic is redirected to the same
/// ports, and separate sockets keep every peer address in its own family (no `::ffff:` mapped
/// IPv4 addresses reaching policy or logs). A node without IPv6 gets a warning, not an error:
/// nothing can arrive there over IPv6.
pub async fn bind_all(addr: SocketAddr, what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = vec![bind(addr, what).await?];
    if addr.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
        let v6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match bind_v6_only(v6) {
            Ok(l) => listeners.push(l),
            Err(e)
                // The kernel has no IPv6 at all (booted with `ipv6.disable=1`).
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    || e.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                tracing::warn!(listener = what, error = %e, "IPv6 is not available on this node; listening on IPv4 only");
            }
            Err(e) => anyhow::bail!("binding the {what} listener on {v6}: {e}"),
        }
    }
    Ok(listeners)
}

fn bind_v6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::IPV6,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
