//! ward's node proxy.
//!
//! The data path, top to bottom: [`outbound`] (15001: captured pod connection → original
//! destination → [`pool`] HBONE tunnel or passthrough) and [`inbound`] (15008: mTLS → HTTP/2
//! CONNECT → identify → authorize → connect → [`relay`] splice; 15006: plaintext capture).
//! [`hbone`] speaks HTTP/2 CONNECT (both roles) over any byte stream.
//! Around it: [`state`] (atomically swapped configuration), [`certs`] (workload certificates
//! from the CA), [`tls`] (which certificate, which peer), [`conns`] (live connections,
//! re-authorized on policy change), [`redirect`] (nftables interception and the return route
//! of transparent connections), [`socket`] (marks, original destinations, connections from
//! the client's address), [`admin`] (15000/15020/15021), [`metrics`], [`accesslog`],
//! [`memory`] (freed memory given back after a load).
//!
//! Never: trust an identity not proven by a handshake, forward before configuration and
//! certificates exist, or block the data path on logging.
// `deny`, not `forbid`: [`memory`] alone allows one allocator call; nothing else may.
#![deny(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod certs;
pub mod conns;
pub mod control;
pub mod hbone;
pub mod inbound;
pub mod l7;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod redirect;
pub mod relay;
pub mod socket;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the proxy's configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A mesh file, re-read when it changes (local use without a control component).
    File(PathBuf),
    /// The control component's stream; the bundle is trusted until the stream brings one.
    Control {
        settings: control::ControlSettings,
        bootstrap_bundle: ward_lib_identity::TrustBundle,
    },
}

/// Effective configuration of a proxy process (parsed from flags by `main`).
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub source: Source,
    pub ca_address: SocketAddr,
    pub ca_identity: String,
    pub token_file: PathBuf,
    pub cert_ttl: Option<Duration>,
    pub redirect: redirect::Mode,
    pub outbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    /// `/metrics` (Prometheus scrapes it; Istio's merged-metrics port).
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    pub drain_timeout: Duration,
    /// Let paths with `%2F`, `%5C`, `\` or `;` through L7 ports instead of answering 400.
    pub allow_ambiguous_paths: bool,
    /// Share HBONE connections between tunnels (off: one mTLS connection per tunnel).
    pub tunnel_pooling: bool,
    /// Write access logs (JSON lines on stdout).
    pub access_log: bool,
}

/// What every connection task shares.
pub struct Ctx {
    pub state: Arc<state::State>,
    pub certs: Arc<certs::CertManager>,
    pub pool: Arc<pool::Pool>,
    pub conns: Arc<conns::Registry>,
    pub log: accesslog::AccessLog,
    pub metrics: metrics::Metrics,
    /// Relays in progress (drain waits for zero).
    pub active: AtomicUsize,
    /// The HBONE TLS acceptor and the trust domain it was built for.
    pub hbone_tls:
        std::sync::Mutex<Option<(ward_lib_identity::TrustDomain, tokio_rustls::TlsAcceptor)>>,
    /// HTTP-aware authorization state (upstream pools, counters).
    pub l7: l7::L7,
    /// Set on SIGTERM: no new connections or tunnel streams are accepted.
    pub draining: std::sync::atomic::AtomicBool,
    /// Set at the end of the drain: every relay closes.
    pub hard_stop: watch::Sender<bool>,
    /// The return route of transparent connections is installed: connections to workloads
    /// are made from their clients' own addresses (see [`socket::connect_as`]).
    pub transparent: std::sync::atomic::AtomicBool,
}

impl Ctx {
    /// The address to connect to a workload from, for a client at `client`: the client's own
    /// when transparent connections work here, else none (the node's address).
    pub fn upstream_source(&self, client: std::net::IpAddr) -> Option<std::net::IpAddr> {
        self.transparent.load(Ordering::Relaxed).then_some(client)
    }
}

/// Runs the proxy until SIGTERM/SIGINT, then drains and cleans up.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    tracing::info!(config = ?cfg, "ward-proxy starting");
    // Every proxied connection holds two sockets; the default soft limit (often 1024) would cap
    // a node at a few hundred connections.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "file-descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file-descriptor limit"),
    }
    let state = state::State::new(cfg.node.clone());
    match &cfg.source {
        Source::File(path) => {
            tokio::spawn(
                state
                    .clone()
                    .watch_file(path.clone(), Duration::from_millis(250)),
            );
        }
        Source::Control {
            settings,
            bootstrap_bundle,
        } => {
            state.seed_bundle(bootstrap_bundle.clone());
            tokio::spawn(control::run(state.clone(), settings.clone()));
        }
    }
    let certs = certs::CertManager::new(
        certs::CaSettings {
            address: cfg.ca_address,
            identity: cfg.ca_identity.clone(),
            token_file: cfg.token_file.clone(),
            ttl: cfg.cert_ttl,
        },
        state.clone(),
    );
    tokio::spawn(certs.clone().run());
    let pool = pool::Pool::new(state.clone(), certs.clone(), cfg.tunnel_pooling);
    let ctx = Arc::new(Ctx {
        state: state.clone(),
        certs,
        pool,
        conns: Arc::new(conns::Registry::default()),
        log: if cfg.access_log {
            accesslog::AccessLog::start()
        } else {
            accesslog::AccessLog::off()
        },
        metrics: metrics::Metrics::new(),
        active: AtomicUsize::new(0),
        draining: std::sync::atomic::AtomicBool::new(false),
        l7: l7::L7::new(cfg.allow_ambiguous_paths),
        hbone_tls: std::sync::Mutex::new(None),
        hard_stop: watch::channel(false).0,
        transparent: std::sync::atomic::AtomicBool::new(false),
    });

    let (stop_tx, stop) = watch::channel(false);
    // The capture and HBONE listeners, and the probes' ports, on IPv4 and (dual-stack) IPv6.
    let outbound = admin::bind_all(cfg.outbound, "outbound").await?;
    let plaintext = admin::bind_all(cfg.inbound_plaintext, "inbound plaintext").await?;
    let hbone = admin::bind_all(cfg.hbone, "HBONE").await?;
    let admin_l = admin::bind(cfg.admin, "admin").await?;
    let ready_l = admin::bind_all(cfg.readiness, "readiness").await?;
    let metrics_l = admin::bind_all(cfg.metrics, "metrics").await?;
    for l in outbound {
        tokio::spawn(outbound::serve(ctx.clone(), l, stop.clone()));
    }
    for l in plaintext {
        tokio::spawn(inbound::serve_plaintext(ctx.clone(), l, stop.clone()));
    }
    for l in hbone {
        tokio::spawn(inbound::serve_hbone(ctx.clone(), l, stop.clone()));
    }
    tokio::spawn(admin::serve(
        ctx.clone(),
        admin_l,
        admin::Port::Admin,
        stop.clone(),
    ));
    for l in ready_l {
        tokio::spawn(admin::serve(
            ctx.clone(),
            l,
            admin::Port::Readiness,
            stop.clone(),
        ));
    }
    for l in metrics_l {
        tokio::spawn(admin::serve(
            ctx.clone(),
            l,
            admin::Port::Metrics,
            stop.clone(),
        ));
    }
    tokio::spawn(on_config_change(ctx.clone(), cfg.clone()));
    let sweeper = ctx.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            sweeper.pool.sweep();
            sweeper.l7.sweep();
            memory::request_give_back();
        }
    });

    wait_for_signal().await;
    tracing::info!(drain_timeout = ?cfg.drain_timeout, live = ctx.active.load(Ordering::Relaxed), "stopping: no new connections; draining");
    ctx.draining.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
    while ctx.active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = ctx.active.load(Ordering::Relaxed);
    if left > 0 {
        tracing::info!(left, "drain timeout reached; closing remaining connections");
    }
    let _ = ctx.hard_stop.send(true);
    if cfg.redirect == redirect::Mode::Nftables {
        // The rules stay: until a proxy listens again, captured traffic is redirected to
        // ports nobody listens on and refused — never passed around the mesh. The next proxy
        // adopts the table; only `ward-proxy uninstall` removes it.
        tracing::info!("interception rules left in place: captured traffic is refused until a proxy runs again (`ward-proxy uninstall` removes them)");
    }
    // Give relays a moment to observe the stop and flush their access-log lines.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// On every accepted configuration: install interception (first time) or bring the captured
/// set up to date with this node's workloads, and re-authorize live connections.
async fn on_config_change(ctx: Arc<Ctx>, cfg: Config) {
    let mut changes = ctx.state.subscribe();
    let mut installed: Option<redirect::Capture> = None;
    loop {
        if let Some(snap) = ctx.state.snapshot() {
            if cfg.redirect == redirect::Mode::Nftables {
                let capture = redirect::Capture {
                    pods: snap.local_addresses(&ctx.state.node),
                    closed: snap.local_closed_to_non_tcp(&ctx.state.node),
                };
                if installed.as_ref() != Some(&capture) {
                    let result = match installed {
                        None => redirect::install(
                            &capture,
                            cfg.outbound.port(),
                            cfg.inbound_plaintext.port(),
                        ),
                        Some(_) => redirect::update(&capture),
                    };
                    match result {
                        Ok(()) => {
                            if installed.is_none() {
                                match redirect::install_return_route() {
                                    Ok(()) => ctx.transparent.store(true, Ordering::Relaxed),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "no return route for transparent connections: workloads see the node's address instead of their clients'")
                                    }
                                }
                            }
                            tracing::info!(
                                captured = capture.pods.len(),
                                closed_to_non_tcp = capture.closed.len(),
                                "interception rules up to date"
                            );
                            installed = Some(capture);
                        }
                        Err(e) => tracing::error!(error = %e, "installing interception rules"),
                    }
                }
            }
            let closed = ctx.conns.reevaluate(&snap);
            if closed > 0 {
                tracing::info!(
                    closed,
                    "closed live connections the new configuration no longer allows"
                );
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Accepts on `listener` until `stop`, handing every connection to its own task. Accept errors
/// (e.g. EMFILE) are logged and retried after a short pause rather than spun on.
pub(crate) async fn accept_loop<F, Fut>(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<Ctx>, tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::spawn(handle(ctx.clone(), tcp, peer));
    }
}

/// Resolves once the watched flag is true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // Drop the borrow guard here, so callers' futures stay `Send`.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests;
