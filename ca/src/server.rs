//! The CA's network edge: TLS 1.3 (server-authenticated with the CA's own SVID), HTTP/2, gRPC.
//!
//! Hostile or broken clients are bounded here, before any CA logic runs: a connection cap,
//! a TLS handshake time-out, a per-request time-out (which also bounds slow request bodies),
//! a maximum connection age, HTTP/2 header-list and message-size limits, and keep-alive pings
//! that drop dead peers. Each connection is its own task, so a stalled one never delays others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use ward_lib_api::ca::certificate_service_server::CertificateServiceServer;
use ward_lib_identity::SpiffeId;

use crate::authority::Authority;
use crate::clock::Clock;
use crate::csr::verify_csr;
use crate::service::{IssuerService, PeerAddr};

/// Limits applied to every client.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub handshake_timeout: Duration,
    /// Bounds every request except those under `streaming_paths`.
    pub request_timeout: Duration,
    /// Path prefixes of long-lived streams (the control stream), exempt from
    /// `request_timeout`; `max_connection_age` still bounds them.
    pub streaming_paths: Vec<&'static str>,
    pub max_connections: usize,
    pub max_connection_age: Duration,
    /// Largest gRPC request message accepted.
    pub max_message_bytes: usize,
    pub max_header_list_bytes: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            streaming_paths: Vec::new(),
            max_connections: 4096,
            max_connection_age: Duration::from_secs(300),
            max_message_bytes: 64 * 1024,
            max_header_list_bytes: 16 * 1024,
        }
    }
}

/// The CA's serving certificate: an SVID it issues to itself, renewed at half-life.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    /// DNS names the certificate carries beside its SPIFFE ID (kept across renewals).
    dns_names: Vec<String>,
}

impl ServingCert {
    /// Issues the first certificate for `id`, valid for `ttl`.
    pub fn issue(
        authority: &Authority,
        id: &SpiffeId,
        ttl: Duration,
        clock: &dyn Clock,
    ) -> Result<Arc<Self>, String> {
        Self::issue_with_dns_names(authority, id, Vec::new(), ttl, clock)
    }

    /// As [`ServingCert::issue`], with DNS names beside the SPIFFE ID (a server that clients
    /// outside the mesh verify by name, such as the admission webhook).
    pub fn issue_with_dns_names(
        authority: &Authority,
        id: &SpiffeId,
        dns_names: Vec<String>,
        ttl: Duration,
        clock: &dyn Clock,
    ) -> Result<Arc<Self>, String> {
        let ck = self_issue(authority, id, &dns_names, ttl, clock)?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(ck),
            dns_names,
        }))
    }

    /// Replaces the certificate with a new one from `authority` now (e.g. after the signing
    /// CA changed).
    pub fn renew_now(
        &self,
        authority: &Authority,
        id: &SpiffeId,
        ttl: Duration,
        clock: &dyn Clock,
    ) -> Result<(), String> {
        let ck = self_issue(authority, id, &self.dns_names, ttl, clock)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }

    /// Renews the certificate at half-life until the returned task is dropped/aborted.
    pub fn spawn_renewal(
        self: &Arc<Self>,
        authority: Arc<Authority>,
        id: SpiffeId,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 2).await;
                match self_issue(&authority, &id, &me.dns_names, ttl, clock.as_ref()) {
                    Ok(ck) => me.current.store(Arc::new(ck)),
                    Err(e) => tracing::error!(error = %e, "renewing the CA serving certificate"),
                }
            }
        })
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn self_issue(
    authority: &Authority,
    id: &SpiffeId,
    dns_names: &[String],
    ttl: Duration,
    clock: &dyn Clock,
) -> Result<CertifiedKey, String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| e.to_string())?;
    let verified = verify_csr(csr.der()).map_err(|e| e.to_string())?;
    let issued = authority
        .sign_with_dns_names(&verified, id, dns_names, ttl, clock.now())
        .map_err(|e| e.to_string())?;
    let provider = ward_lib_identity::tls::provider();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    CertifiedKey::from_der(issued.chain, der, &provider).map_err(|e| e.to_string())
}

/// TLS 1.3, ALPN h2, server authentication only (clients authenticate with a bearer token).
pub fn tls_config(certs: Arc<dyn ResolvesServerCert>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(ward_lib_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The issuing service as a gRPC service with the message-size limit of `opts`.
pub fn issuer_grpc(
    service: IssuerService,
    opts: &ServerOptions,
) -> CertificateServiceServer<IssuerService> {
    CertificateServiceServer::new(service).max_decoding_message_size(opts.max_message_bytes)
}

/// Serves the issuing service alone (`ward ca serve`); see [`serve_grpc`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: IssuerService,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let grpc = issuer_grpc(service, &opts);
    serve_grpc(listener, tls, grpc, opts, shutdown).await;
}

/// Accepts connections until `shutdown` resolves, serving any gRPC service (one, or tonic
/// `Routes` of several) behind the limits of `opts`. In-flight connections finish on their
/// own.
pub async fn serve_grpc<S>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    grpc: S,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(opts.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let grpc = grpc.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            serve_connection(tls, peer, grpc, &opts).await;
        });
    }
}

async fn serve_connection<S>(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    grpc: S,
    opts: &ServerOptions,
) where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let request_timeout = opts.request_timeout;
    let streaming: Arc<[&'static str]> = opts.streaming_paths.clone().into();
    let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let grpc = grpc.clone();
        let is_stream = streaming.iter().any(|p| req.uri().path().starts_with(p));
        async move {
            let call = grpc.oneshot(req);
            if is_stream {
                return call.await;
            }
            match tokio::time::timeout(request_timeout, call).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "request not completed within {request_timeout:?}"
                ))
                .into_http()),
            }
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        // Control-stream pushes carry the whole address table at first; a small window would
        // make every proxy's initial sync wait on round trips.
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        // Bounds what a slow reader makes the server buffer per stream.
        .max_send_buf_size(128 * 1024)
        .max_header_list_size(opts.max_header_list_bytes)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
    match tokio::time::timeout(opts.max_connection_age, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        Err(_) => tracing::debug!(%peer, "connection reached its maximum age"),
    }
}
