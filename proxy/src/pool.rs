//! Outbound HBONE: pooled HTTP/2 connections over mTLS per (source identity, destination
//! identity, destination proxy), each carrying up to [`MAX_STREAMS`] CONNECT streams; when all
//! of a key's connections are full, another is dialled (so long-lived tunnels never queue
//! behind a peer's stream limit).
//!
//! With pooling off (`--no-tunnel-pool`, for benchmarks and debugging) every tunnel gets a
//! connection of its own, which closes when the tunnel ends.
//!
//! A pooled connection is reused while it is open; a closed one is replaced on the next use.
//! Connections unused for [`IDLE`] are dropped from the pool (live streams finish on their
//! own). HTTP/2 PINGs detect dead peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::sign::CertifiedKey;
use tokio::time::Instant;
use ward_lib_identity::SpiffeId;

use crate::certs::CertManager;
use crate::hbone::{self, Tunnel};
use crate::socket;
use crate::state::State;
use crate::tls;

/// Pooled connections unused this long are dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// Concurrent streams per pooled connection (the server allows more; this keeps head-of-line
/// blocking and per-connection flow control in check).
pub const MAX_STREAMS: usize = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no certificate yet for source identity {0}")]
    NoCertificate(SpiffeId),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("TLS with {addr}: {}", tls::handshake_reason(.source))]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HBONE with {0}: {1}")]
    Hbone(SocketAddr, hbone::OpenError),
    #[error("building the TLS configuration: {0}")]
    Config(String),
}

impl TunnelError {
    /// A bounded name for the failure (a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            TunnelError::NoCertificate(_) => "no_certificate",
            TunnelError::Connect(..) => "connect",
            TunnelError::Tls { .. } => "tls",
            TunnelError::Hbone(..) => "hbone_refused",
            TunnelError::Config(_) => "config",
        }
    }
}

type Key = (SpiffeId, SpiffeId, SocketAddr);

struct Pooled {
    client: hbone::Client,
    streams: Arc<AtomicUsize>,
    last_used: Instant,
}

/// Holds a stream slot of a pooled connection; released on drop (when the tunnel ends).
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client TLS configuration for (source, destination), valid while the source's certificate
/// is the one it was built with.
struct CachedConfig {
    cert: Arc<CertifiedKey>,
    config: Arc<rustls::ClientConfig>,
}

pub struct Pool {
    state: Arc<State>,
    certs: Arc<CertManager>,
    conns: Mutex<HashMap<Key, Vec<Pooled>>>,
    configs: Mutex<HashMap<(SpiffeId, SpiffeId), CachedConfig>>,
    pooling: bool,
}

impl Pool {
    /// `pooling: false` gives every tunnel its own HBONE connection.
    pub fn new(state: Arc<State>, certs: Arc<CertManager>, pooling: bool) -> Arc<Self> {
        Arc::new(Self {
            state,
            certs,
            conns: Mutex::new(HashMap::new()),
            configs: Mutex::new(HashMap::new()),
            pooling,
        })
    }

    /// Opens a CONNECT stream to `target` through `proxy`, as `src`, requiring `dst`. Keep the
    /// returned slot alive as long as the stream.
    pub async fn tunnel(
        &self,
        src: &SpiffeId,
        dst: &SpiffeId,
        proxy: SocketAddr,
        target: SocketAddr,
        client_ip: IpAddr,
    ) -> Result<(Tunnel, StreamSlot), TunnelError> {
        let key = (src.clone(), dst.clone(), proxy);
        let checked_out = if self.pooling {
            self.checkout(&key)
        } else {
            None
        };
        let (client, slot) = match checked_out {
            Some(s) => s,
            None => self.dial(&key).await?,
        };
        let tunnel = client
            .open(target, client_ip)
            .await
            .map_err(|e| TunnelError::Hbone(proxy, e))?;
        Ok((tunnel, slot))
    }

    /// A pooled connection of `key` with a free stream slot, if any.
    fn checkout(&self, key: &Key) -> Option<(hbone::Client, StreamSlot)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.client.is_closed());
        let c = list
            .iter_mut()
            .find(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS)?;
        c.last_used = Instant::now();
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some((c.client.clone(), StreamSlot(c.streams.clone())))
    }

    /// The client TLS configuration for `src` → `dst`: cached, because building one (verifier,
    /// provider, key schedule set-up) costs more than the handshake's bookkeeping; rebuilt when
    /// `src`'s certificate is renewed. The trust bundle is read live by the verifier.
    fn client_config(
        &self,
        src: &SpiffeId,
        dst: &SpiffeId,
    ) -> Result<Arc<rustls::ClientConfig>, TunnelError> {
        let cert = self
            .certs
            .get(src)
            .ok_or_else(|| TunnelError::NoCertificate(src.clone()))?;
        let mut configs = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (src.clone(), dst.clone());
        if let Some(c) = configs.get(&key) {
            if Arc::ptr_eq(&c.cert, &cert) {
                return Ok(c.config.clone());
            }
        }
        let config = Arc::new(
            tls::client_config(self.state.bundle.clone(), cert.clone(), dst.clone())
                .map_err(|e| TunnelError::Config(e.to_string()))?,
        );
        configs.insert(
            key,
            CachedConfig {
                cert,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    async fn dial(&self, key: &Key) -> Result<(hbone::Client, StreamSlot), TunnelError> {
        let (src, dst, proxy) = key;
        let cfg = self.client_config(src, dst)?;
        let sni = tls::sni_for(dst)
            .and_then(|s| rustls::pki_types::ServerName::try_from(s).ok())
            .ok_or_else(|| {
                TunnelError::Config(format!("{dst} has no namespace/service-account form"))
            })?;
        let tcp = socket::connect(*proxy, CONNECT_TIMEOUT)
            .await
            .map_err(|e| TunnelError::Connect(*proxy, e))?;
        let tls_stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(cfg).connect(sni, tcp),
        )
        .await
        .map_err(|_| TunnelError::Tls {
            addr: *proxy,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
        })?
        .map_err(|e| TunnelError::Tls {
            addr: *proxy,
            source: e,
        })?;
        let (client, driver) = hbone::client(tls_stream)
            .await
            .map_err(|e| TunnelError::Hbone(*proxy, e.into()))?;
        tokio::spawn(driver);
        let streams = Arc::new(AtomicUsize::new(1));
        if !self.pooling {
            // The caller's handle is the only one: the connection closes with its stream.
            return Ok((client, StreamSlot(streams)));
        }
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push(Pooled {
                client: client.clone(),
                streams: streams.clone(),
                last_used: Instant::now(),
            });
        Ok((client, StreamSlot(streams)))
    }

    /// Drops closed pooled connections, and idle ones (no stream for [`IDLE`]), and cached
    /// TLS configurations whose certificate was replaced; run it periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for list in conns.values_mut() {
            list.retain(|c| {
                !c.client.is_closed()
                    && (c.streams.load(Ordering::Relaxed) > 0
                        || now.duration_since(c.last_used) < IDLE)
            });
        }
        conns.retain(|_, l| !l.is_empty());
        drop(conns);
        self.configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(src, _), c| {
                self.certs
                    .get(src)
                    .is_some_and(|cur| Arc::ptr_eq(&cur, &c.cert))
            });
    }

    /// Pooled connections, all keys together.
    pub fn len(&self) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
