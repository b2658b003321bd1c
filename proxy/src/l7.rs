//! L7: HTTP-aware authorization for ports declared HTTP.
//!
//! Inside an accepted tunnel (or PERMISSIVE plaintext) to an HTTP port, the proxy serves
//! HTTP/1.1 (keep-alive, pipelining) and HTTP/2 (prior knowledge, gRPC) itself and authorizes
//! every request with the destination's policies (methods, paths, hosts, headers,
//! X-Forwarded-For client address, plus everything L4):
//! - the path is normalized first (`ward_lib_policy::path`); an ambiguous path (`%2F`, `%5C`,
//!   `\`, `;`) is refused with 400 unless `--allow-ambiguous-paths`;
//! - a denial is 403 with a short generic body (no policy names leak to the caller); gRPC
//!   requests get a trailers-only response with `grpc-status: 7` (PERMISSION_DENIED);
//! - allowed requests go to the workload over a pooled client (per target, caller address and
//!   HTTP version: connections are made from the caller's own address);
//!   chunked request bodies are read whole (≤ 4 MiB) before anything is forwarded, so a request
//!   with broken chunking never reaches the workload; malformed requests get 400 from the HTTP
//!   parser and close the connection.
//!
//! One access-log line per request — written when its response has been sent, with the bytes
//! of both bodies and the whole duration — and request metrics by response code.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use ward_lib_api::config::Workload;
use ward_lib_policy::eval::HttpAttributes;
use ward_lib_policy::path::{normalize, Ambiguous};
use ward_lib_policy::{Attributes, PeerIdentity, Protocol};

use crate::accesslog::Record;
use crate::{socket, Ctx};

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<TargetConnector, Body>;

/// A body passed through while its data bytes are counted into `bytes`; `on_end` runs once,
/// with the count, when the body ends or is dropped unfinished (the client went away).
struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
    on_end: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl Counted {
    fn new(inner: Body, bytes: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            bytes,
            on_end: None,
        }
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes.load(Ordering::Relaxed));
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            std::task::Poll::Ready(None) => self.end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.end();
    }
}

/// Largest chunked request body buffered before forwarding.
const MAX_BUFFERED_BODY: usize = 4 * 1024 * 1024;

/// L7 settings and the upstream pool (request counts live in [`crate::metrics`]).
#[derive(Default)]
pub struct L7 {
    pub allow_ambiguous_paths: bool,
    clients: Mutex<HashMap<ClientKey, (Upstream, Instant)>>,
}

/// One pooled client per target, source address (connections are made from the caller's own
/// address, so callers never share one) and HTTP version.
type ClientKey = (SocketAddr, Option<IpAddr>, bool);

/// A client unused this long is dropped by [`L7::sweep`] (its connections idle out sooner).
const CLIENT_IDLE: Duration = Duration::from_secs(120);

impl L7 {
    pub fn new(allow_ambiguous_paths: bool) -> Self {
        Self {
            allow_ambiguous_paths,
            ..Self::default()
        }
    }

    fn client(&self, target: SocketAddr, source: Option<IpAddr>, h2: bool) -> Upstream {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (client, used) = clients.entry((target, source, h2)).or_insert_with(|| {
            let client = Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .http2_only(h2)
                .build(TargetConnector { target, source });
            (client, Instant::now())
        });
        *used = Instant::now();
        client.clone()
    }

    /// Forgets clients nobody used for 2 minutes (`CLIENT_IDLE`): one exists per caller
    /// address, and callers come and go, so the map must not only grow.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, (_, used)| now.duration_since(*used) < CLIENT_IDLE);
    }
}

/// Connects every request of a client to one fixed target, with the proxy's mark, from the
/// caller's address when transparent connections work.
#[derive(Clone)]
pub struct TargetConnector {
    target: SocketAddr,
    source: Option<IpAddr>,
}

impl tower_service::Service<http::Uri> for TargetConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (target, source) = (self.target, self.source);
        Box::pin(async move {
            socket::connect_as(target, source, Duration::from_secs(5))
                .await
                .map(TokioIo::new)
        })
    }
}

/// Who is calling, for every request on one connection.
#[derive(Clone)]
pub struct Caller {
    pub peer: Option<PeerIdentity>,
    pub source_ip: IpAddr,
    pub target: SocketAddr,
    pub workload: Arc<Workload>,
    /// The connection's metric labels (requests are counted under them).
    pub labels: crate::metrics::ConnLabels,
    /// Body bytes of the connection's requests so far (its access-log line and byte metrics).
    pub bytes: Arc<ConnBytes>,
}

/// Body bytes of every request on one connection, each direction.
#[derive(Debug, Default)]
pub struct ConnBytes {
    /// To the caller (response bodies).
    pub sent: AtomicU64,
    /// From the caller (request bodies forwarded to the workload).
    pub received: AtomicU64,
}

/// Serves HTTP on `io` (the client side of a tunnel or plaintext connection) until it closes.
pub async fn serve<I>(ctx: Arc<Ctx>, io: I, caller: Caller)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let ctx = ctx.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, &caller, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        // A client may send its request and shut its write side (HTTP/1.1 allows it; `nc -N`,
        // socat at end of input): its response is still owed. Without this, hyper treats
        // the read EOF as the connection's end and drops the response — after the request
        // was already forwarded to the workload.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(256);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "L7 connection ended with an error");
    }
}

fn simple(status: http::StatusCode, body: &'static str) -> http::Response<Body> {
    let mut r = http::Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

fn grpc_denied() -> http::Response<Body> {
    let mut r = http::Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", http::HeaderValue::from_static("7"));
    h.insert(
        "grpc-message",
        http::HeaderValue::from_static("PERMISSION_DENIED: RBAC: access denied"),
    );
    r
}

async fn handle(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let raw_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let mut rec = Record::new(
        "inbound-http",
        caller.source_ip.to_string(),
        caller.target.to_string(),
    );
    rec.src_identity = caller
        .peer
        .as_ref()
        .map(|p| format!("spiffe://{}", p.principal));
    rec.dst_workload = Some(format!(
        "{}/{}",
        caller.workload.namespace, caller.workload.name
    ));
    rec.dst_identity = Some(caller.workload.identity.to_string());
    rec.reason = format!("{method} {raw_path}");
    // Bytes of the request body forwarded to the workload (0 for a refused request).
    let request_bytes = Arc::new(AtomicU64::new(0));
    // The request's access-log line is written when its response body has been sent (or
    // abandoned), with both directions' bytes and the whole duration; metrics count the
    // request when its response headers are ready.
    let finish = |ctx: &Ctx, mut rec: Record, resp: http::Response<Body>| {
        rec.reason = format!("{} -> {}", rec.reason, resp.status().as_u16());
        ctx.metrics
            .request(&caller.labels, resp.status().as_u16(), started.elapsed());
        let log = ctx.log.handle();
        let received = request_bytes.clone();
        let totals = caller.bytes.clone();
        let (parts, body) = resp.into_parts();
        let mut counted = Counted::new(body, Arc::new(AtomicU64::new(0)));
        counted.on_end = Some(Box::new(move |sent| {
            rec.bytes_sent = sent;
            rec.bytes_received = received.load(Ordering::Relaxed);
            totals.sent.fetch_add(rec.bytes_sent, Ordering::Relaxed);
            totals
                .received
                .fetch_add(rec.bytes_received, Ordering::Relaxed);
            rec.duration_ms = started.elapsed().as_millis() as u64;
            log.log(rec);
        }));
        http::Response::from_parts(parts, counted.boxed())
    };
    let ambiguous = if ctx.l7.allow_ambiguous_paths {
        Ambiguous::Allow
    } else {
        Ambiguous::Reject
    };
    let path = match normalize(&raw_path, ambiguous) {
        Ok(p) => p,
        Err(e) => {
            rec.reason = format!("{}: {e}", rec.reason);
            return finish(
                ctx,
                rec,
                simple(
                    http::StatusCode::BAD_REQUEST,
                    "bad request: ambiguous path\n",
                ),
            );
        }
    };
    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers().len());
    for (k, v) in req.headers() {
        if let Ok(v) = v.to_str() {
            match headers.iter_mut().find(|(n, _)| n == k.as_str()) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(v);
                }
                None => headers.push((k.as_str().to_owned(), v.to_owned())),
            }
        }
    }
    let remote_ip = headers
        .iter()
        .find(|(k, _)| k == "x-forwarded-for")
        .and_then(|(_, v)| v.split(',').next())
        .and_then(|v| v.trim().parse().ok());
    let http_attrs = HttpAttributes {
        method: method.to_string(),
        path,
        host,
        headers,
        remote_ip,
        jwt: None,
    };
    let attrs = Attributes {
        peer: caller.peer.as_ref(),
        source_ip: caller.source_ip,
        destination_ip: caller.target.ip(),
        destination_port: caller.target.port(),
        protocol: Protocol::Http,
        sni: None,
        http: Some(&http_attrs),
        time: jiff::Timestamp::now(),
    };
    let decision = caller.workload.policies.evaluate(&attrs);
    ctx.metrics.decision(&caller.labels, &decision);
    rec.policy = decision.policy.map(|(p, _)| p.id.to_string());
    if !decision.allowed {
        rec.reason = format!("{}: {decision}", rec.reason);
        let resp = if grpc {
            grpc_denied()
        } else {
            simple(http::StatusCode::FORBIDDEN, "RBAC: access denied\n")
        };
        return finish(ctx, rec, resp);
    }
    rec.decision = "allow";
    // The upstream speaks what its port declares, whatever the client spoke.
    let h2 = caller.workload.h2_ports.contains(&caller.target.port());
    // Forward: absolute URI for the pooled client (it connects to the fixed target anyway).
    let (mut parts, body) = req.into_parts();
    let authority = if http_attrs.host.is_empty() {
        caller.target.to_string()
    } else {
        http_attrs.host.clone()
    };
    let uri = format!("http://{authority}{raw_path}");
    parts.uri = match uri.parse() {
        Ok(u) => u,
        Err(_) => {
            return finish(
                ctx,
                rec,
                simple(http::StatusCode::BAD_REQUEST, "bad request\n"),
            )
        }
    };
    parts.version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let chunked = parts
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    // Hop-by-hop headers belong to the client's connection, not the upstream one.
    for h in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    let body: Body = if chunked {
        match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                request_bytes.store(b.len() as u64, Ordering::Relaxed);
                Full::new(b).map_err(|e| match e {}).boxed()
            }
            Err(e) => {
                rec.reason = format!("{}: request body: {e}", rec.reason);
                return finish(
                    ctx,
                    rec,
                    simple(http::StatusCode::BAD_REQUEST, "bad request: body\n"),
                );
            }
        }
    } else {
        Counted::new(body.boxed(), request_bytes.clone()).boxed()
    };
    let source = ctx.upstream_source(caller.source_ip);
    let resp = match ctx
        .l7
        .client(caller.target, source, h2)
        .request(http::Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r.map(|b| b.boxed()),
        Err(e) => {
            rec.reason = format!("{}: upstream: {e}", rec.reason);
            simple(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable\n",
            )
        }
    };
    finish(ctx, rec, resp)
}
