//! `ward-proxy`: the node proxy. Parses flags into a [`Config`](ward_proxy::Config), then hands
//! over to [`ward_proxy::run`]; everything else lives in the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// mimalloc instead of glibc's malloc: glibc trims its per-thread arenas back to the kernel
/// and faults the pages in again on the next large allocation (HTTP/2 frames, relay buffers);
/// profiles of bulk transfers showed those page faults as ~10 % of the proxy's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ward-proxy", version, about = "ward node proxy")]
struct Args {
    /// This node's name, as in the mesh configuration.
    #[arg(long)]
    node: String,
    /// Address of the control component (xDS stream and CA, port 15012): `IP:PORT`, or
    /// `HOST:PORT` (in Kubernetes its Service's DNS name, resolved once at start: a
    /// ClusterIP does not change while the Service exists).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    control: Option<String>,
    /// The control component's identity (namespace/service-account).
    #[arg(long, default_value = "ward-system/ward-control")]
    control_identity: String,
    /// PEM roots trusted to verify the control component until it sends the mesh's bundle
    /// (in Kubernetes, the `ward-root-ca` ConfigMap the control component publishes).
    #[arg(long, required_unless_present = "config")]
    trust_bundle: Option<PathBuf>,
    /// Trust domain of the control component's identity.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Local mode without a control component: a mesh configuration file (re-read on change;
    /// an invalid update is refused).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the issuing CA (default: the control component's).
    #[arg(long, required_unless_present = "control")]
    ca_address: Option<SocketAddr>,
    /// The CA's identity (default: the control component's, or `ward-system/ward-ca` with
    /// `--config`).
    #[arg(long)]
    ca_identity: Option<String>,
    /// File holding this node's credential for the control component and the CA: a
    /// projected service-account token or a local bootstrap token (re-read on every use).
    #[arg(long)]
    token_file: PathBuf,
    /// Requested workload certificate lifetime (the CA may clamp it).
    #[arg(long, value_parser = humantime::parse_duration)]
    cert_ttl: Option<Duration>,
    /// Install and remove nftables redirection rules in this network namespace.
    #[arg(long, value_enum, default_value = "nftables")]
    redirect: ward_proxy::redirect::Mode,
    /// Address the outbound capture listener binds (port 15001 by convention).
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound: SocketAddr,
    /// Inbound plaintext capture listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound_plaintext: SocketAddr,
    /// HBONE (HTTP/2 CONNECT over mTLS) listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone: SocketAddr,
    /// Admin endpoint (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Readiness endpoint.
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness: SocketAddr,
    /// Metrics endpoint (`/metrics`, OpenMetrics).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics: SocketAddr,
    /// Access logs: `stdout` (JSON lines) or `off`.
    #[arg(long, default_value = "stdout", value_parser = ["stdout", "off"])]
    access_log: String,
    /// How long SIGTERM waits for live connections before closing them.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// On HTTP ports, let paths whose meaning differs between servers (encoded `/` or `\`,
    /// `;` parameters) through instead of answering 400.
    #[arg(long)]
    allow_ambiguous_paths: bool,
    /// Runtime worker threads (default: the CPUs this process may run on). With one, the
    /// proxy runs a single-threaded runtime (no work-stealing bookkeeping at all).
    #[arg(long)]
    worker_threads: Option<std::num::NonZeroUsize>,
    /// Give every tunnel its own HBONE (mTLS) connection instead of sharing pooled ones — for
    /// measuring handshake cost; never needed in production.
    #[arg(long)]
    no_tunnel_pool: bool,
}

/// The control-stream source from the flags: the bootstrap bundle read and checked now, so a
/// wrong path or a file without certificates is an error at start, not a silent wait.
fn control_source(args: &Args, address: SocketAddr) -> anyhow::Result<ward_proxy::Source> {
    let td = ward_lib_identity::TrustDomain::parse(&args.trust_domain)
        .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", args.trust_domain))?;
    let path = args
        .trust_bundle
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--trust-bundle is required with --control"))?;
    let pem = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--trust-bundle {}: {e}", path.display()))?;
    let mut bundle = ward_lib_identity::TrustBundle::new();
    bundle
        .add_pem(&td, &pem)
        .map_err(|e| anyhow::anyhow!("--trust-bundle {}: {e}", path.display()))?;
    Ok(ward_proxy::Source::Control {
        settings: ward_proxy::control::ControlSettings {
            address,
            identity: args.control_identity.clone(),
            trust_domain: td,
            token_file: args.token_file.clone(),
        },
        bootstrap_bundle: bundle,
    })
}

/// `--control` as a socket address: an `IP:PORT` as it is; a `HOST:PORT` looked up, retried
/// every 2 s while DNS has no answer (at node boot the cluster DNS may not run yet; until the
/// proxy has a configuration its node stays closed, so waiting is safe).
fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    let (host, port) = address
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| anyhow::anyhow!("--control {address:?}: expected IP:PORT or HOST:PORT"))?;
    loop {
        match (host, port.parse::<u16>().unwrap_or(15012)).to_socket_addrs() {
            Ok(mut addrs) => {
                if let Some(a) = addrs.next() {
                    tracing::info!(control = address, resolved = %a, "control component address");
                    return Ok(a);
                }
                tracing::warn!(
                    control = address,
                    "no address for the control component yet; retrying in 2 s"
                );
            }
            Err(e) => {
                tracing::warn!(control = address, error = %e, "cannot resolve the control component yet; retrying in 2 s");
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn main() -> ExitCode {
    // `ward-proxy uninstall`: the explicit removal of the interception rules (a stopping proxy
    // leaves them, so its node stays closed until the next proxy runs).
    if std::env::args().nth(1).as_deref() == Some("uninstall") {
        return match ward_proxy::redirect::remove() {
            Ok(()) => {
                println!("ward-proxy: interception rules removed (nftables table inet ward, the return route of fwmark 0x53a)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ward-proxy uninstall: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let initial = std::env::var("WARD_LOG").unwrap_or_else(|_| "info".into());
        let filter = tracing_subscriber::EnvFilter::try_new(&initial)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Reloadable, so the admin endpoint `/logging` can change the level at runtime.
        let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
        ward_proxy::admin::set_log_filter(
            initial,
            Box::new(move |spec: &str| {
                let f = tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            }),
        );
    }
    let source = match (&args.config, &args.control) {
        (Some(path), _) => ward_proxy::Source::File(path.clone()),
        (None, Some(address)) => match resolve(address).and_then(|a| control_source(&args, a)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ward-proxy: {e:#}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("ward-proxy: one of --control or --config is required");
            return ExitCode::from(2);
        }
    };
    let (ca_address, ca_identity) = match (&source, args.ca_address) {
        (_, Some(a)) => (
            a,
            args.ca_identity.clone().unwrap_or_else(|| match &source {
                ward_proxy::Source::File(_) => "ward-system/ward-ca".into(),
                ward_proxy::Source::Control { .. } => args.control_identity.clone(),
            }),
        ),
        (ward_proxy::Source::Control { settings, .. }, None) => (
            settings.address,
            args.ca_identity
                .clone()
                .unwrap_or_else(|| args.control_identity.clone()),
        ),
        (ward_proxy::Source::File(_), None) => {
            eprintln!("ward-proxy: --ca-address is required with --config");
            return ExitCode::from(2);
        }
    };
    let cfg = ward_proxy::Config {
        node: args.node,
        source,
        ca_address,
        ca_identity,
        token_file: args.token_file,
        cert_ttl: args.cert_ttl,
        redirect: args.redirect,
        outbound: args.outbound,
        inbound_plaintext: args.inbound_plaintext,
        hbone: args.hbone,
        admin: args.admin,
        readiness: args.readiness,
        metrics: args.metrics,
        drain_timeout: args.drain_timeout,
        allow_ambiguous_paths: args.allow_ambiguous_paths,
        tunnel_pooling: !args.no_tunnel_pool,
        access_log: args.access_log == "stdout",
    };
    // `available_parallelism` honours the CPU affinity mask (taskset, cpusets) and cgroup quotas.
    let workers = args
        .worker_threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, usize::from);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    tracing::info!(workers, "runtime");
    // An idle worker gives freed memory back when asked (`ward_proxy::memory`).
    builder.on_thread_park(ward_proxy::memory::on_thread_park);
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(ward_proxy::run(cfg));
    // The access-log writer may be blocked on a stalled stdout; it must not keep a stopped
    // proxy alive (dropping the runtime would wait for it).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
