//! Wiring: flags → sources → index → CA + control stream server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use ward_ca::auth::{Authenticator, BootstrapTokens};
use ward_ca::authority::Authority;
use ward_ca::clock::{Clock, SystemClock};
use ward_ca::directory::WorkloadDirectory;
use ward_ca::service::{IssuePolicy, IssuerService, JsonLinesAudit};
use ward_lib_identity::{SpiffeId, TrustDomain};
use ward_lib_policy::TrustConfig;

use crate::ca::ViewDirectory;
use crate::index::{Event, Index, Kind, MeshSettings, View};
use crate::metrics::Metrics;
use crate::xds::XdsServer;

/// `ward-control` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ward-control", version, about = "ward control component")]
pub struct Args {
    /// Address for the CA and the control stream (TLS, gRPC).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Address for `/metrics` (OpenMetrics, plain HTTP).
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub metrics: SocketAddr,
    /// The control component's own identity (namespace/service-account); proxies require it.
    #[arg(long, default_value = "ward-system/ward-control")]
    pub identity: String,
    /// Default workload certificate lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,

    /// Local mode: the mesh file (nodes, workloads, services, trust bundle, policy paths),
    /// watched. Without it, the control component runs against the Kubernetes API.
    #[arg(long)]
    pub local_mesh: Option<PathBuf>,
    /// Local mode: the CA directory (`ward ca init`); proxies authenticate with its bootstrap
    /// tokens.
    #[arg(long, requires = "local_mesh")]
    pub local_ca: Option<PathBuf>,

    /// Kubernetes: ward's namespace (the CA Secret and the root ConfigMap live there).
    #[arg(long, env = "WARD_NAMESPACE", default_value = "ward-system")]
    pub namespace: String,
    /// Kubernetes: the Secret holding the CA root (created if absent).
    #[arg(long, default_value = "ward-ca")]
    pub ca_secret: String,
    /// Kubernetes: the ConfigMap the trust bundle is published in (proxies mount it).
    #[arg(long, default_value = "ward-root-ca")]
    pub root_configmap: String,
    /// Kubernetes: the trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Kubernetes: trust-domain aliases principals also match.
    #[arg(long)]
    pub trust_domain_alias: Vec<String>,
    /// Kubernetes: policies in this namespace apply mesh-wide.
    #[arg(long, default_value = "ward-system")]
    pub root_namespace: String,
    /// Kubernetes: the audience proxies' projected tokens are minted for.
    #[arg(long, default_value = "ward-control")]
    pub token_audience: String,
    /// Kubernetes: service accounts (namespace/name) whose tokens proxies use.
    #[arg(long, default_value = "ward-system/ward-proxy")]
    pub proxy_service_account: Vec<String>,
    /// Kubernetes: also read Istio's `security.istio.io/v1` AuthorizationPolicy and
    /// PeerAuthentication objects.
    #[arg(long)]
    pub istio_policies: bool,
    /// Kubernetes: validity of a newly created root.
    #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
    pub root_validity: Duration,
    /// Kubernetes: this replica's name in the leader-election Lease (the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// Kubernetes: the Lease that elects the one replica writing policy status and Events.
    #[arg(long, default_value = "ward-control")]
    pub lease: String,
    /// Kubernetes: how long a leader's Lease lasts without renewal (a dead leader is replaced
    /// within this), in seconds.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Kubernetes: address of the validating admission webhook (HTTPS).
    #[arg(long, default_value = "0.0.0.0:15017")]
    pub webhook: SocketAddr,
    /// Kubernetes: the Service the API server reaches the webhook through (its DNS names are
    /// in the webhook's certificate).
    #[arg(long, default_value = "ward-control")]
    pub webhook_service: String,
    /// Kubernetes: the ValidatingWebhookConfiguration whose `caBundle` is kept current.
    #[arg(long, default_value = "ward-policy-validation")]
    pub webhook_configuration: String,
}

/// Runs the control component until SIGTERM / Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    tracing::info!(config = ?args, "ward-control starting");
    let client = if args.local_mesh.is_some() {
        None
    } else {
        Some(kube::Client::try_default().await.map_err(|e| {
            anyhow::anyhow!("connecting to the Kubernetes API (in-cluster or KUBECONFIG): {e}")
        })?)
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", args.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics)
        .await
        .map_err(|e| anyhow::anyhow!("binding --metrics {}: {e}", args.metrics))?;
    let webhook_listener = if client.is_some() {
        Some(
            tokio::net::TcpListener::bind(args.webhook)
                .await
                .map_err(|e| anyhow::anyhow!("binding --webhook {}: {e}", args.webhook))?,
        )
    } else {
        None
    };
    let running = start(args, client).await?;
    if let (Some(listener), Some(webhook)) = (webhook_listener, running.webhook.clone()) {
        tracing::info!(listen = ?listener.local_addr().ok(), "serving the admission webhook");
        tokio::spawn(webhook.serve(listener, std::future::pending()));
    }
    tokio::spawn(crate::metrics::serve(
        metrics_listener,
        running.metrics.clone(),
        running.views.clone(),
        running.policies.clone(),
    ));
    running.serve(listener, shutdown_signal()).await
}

/// A started control component: sources, index and services, not yet listening.
pub struct Running {
    /// Whether this replica holds the Lease (Kubernetes mode).
    pub leader: Option<watch::Receiver<bool>>,
    /// The admission webhook (Kubernetes mode).
    pub webhook: Option<Webhook>,
    pub views: watch::Receiver<Arc<View>>,
    pub metrics: Metrics,
    /// Every policy object's state (status, metrics).
    pub policies: watch::Receiver<Arc<Vec<crate::policies::PolicyState>>>,
    pub identity: SpiffeId,
    cert: Arc<ward_ca::server::ServingCert>,
    issuer: IssuerService,
    xds: XdsServer,
}

/// The admission webhook's TLS configuration and validator.
#[derive(Clone)]
pub struct Webhook {
    pub tls: Arc<rustls::ServerConfig>,
    pub validator: crate::webhook::Validator,
}

impl Webhook {
    /// Serves the webhook on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        crate::webhook::serve(listener, self.tls, self.validator, shutdown).await
    }
}

impl Running {
    /// Serves the CA and the control stream on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tracing::info!(listen = ?listener.local_addr().ok(), identity = %self.identity, "serving the CA and the control stream");
        crate::server::serve(listener, self.cert, self.issuer, self.xds, shutdown).await
    }
}

/// Starts the sources and the index, and prepares the services (Kubernetes mode uses
/// `client`; local mode needs none).
pub async fn start(args: Args, client: Option<kube::Client>) -> anyhow::Result<Running> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (events_tx, events_rx) = mpsc::channel::<Event>(4096);
    let (views_tx, views_rx) = watch::channel(Arc::new(View::default()));
    let metrics = Metrics::default();
    let directory: Arc<dyn WorkloadDirectory> = Arc::new(ViewDirectory::new(views_rx.clone()));

    let mut leader_client = None;
    let (authority, authn, expected): (Arc<ArcSwap<Authority>>, Arc<dyn Authenticator>, Vec<Kind>) =
        match (&args.local_mesh, &args.local_ca) {
            (Some(mesh), Some(ca_dir)) => {
                let authority = Authority::load_dir(ca_dir)
                    .map_err(|e| anyhow::anyhow!("--local-ca {}: {e}", ca_dir.display()))?;
                let key =
                    ward_ca::auth::read_bootstrap_key(ca_dir).map_err(|e| anyhow::anyhow!(e))?;
                let authn = Arc::new(BootstrapTokens::new(key, directory.clone(), clock.clone()));
                tokio::spawn(
                    crate::local::LocalSource::new(
                        mesh.clone(),
                        Duration::from_millis(250),
                        events_tx.clone(),
                        metrics.rejected_files.clone(),
                    )
                    .run(),
                );
                (
                    Arc::new(ArcSwap::from_pointee(authority)),
                    authn,
                    Kind::ALL.to_vec(),
                )
            }
            (Some(_), None) => anyhow::bail!("--local-mesh needs --local-ca (the CA directory)"),
            _ => {
                let client =
                    client.ok_or_else(|| anyhow::anyhow!("Kubernetes mode needs an API client"))?;
                let td = TrustDomain::parse(&args.trust_domain)
                    .map_err(|e| anyhow::anyhow!("--trust-domain {:?}: {e}", args.trust_domain))?;
                let (authority, pem) = crate::ca::load_or_create_root(
                    client.clone(),
                    &args.namespace,
                    &args.ca_secret,
                    &td,
                    args.root_validity,
                )
                .await?;
                let authority = Arc::new(ArcSwap::from_pointee(authority));
                let settings = MeshSettings {
                    trust_domain: td.as_str().to_owned(),
                    aliases: args.trust_domain_alias.clone(),
                    root_namespace: args.root_namespace.clone(),
                    roots_pem: pem.root.clone(),
                };
                crate::k8s::spawn_root_watch(
                    client.clone(),
                    crate::k8s::RootWatch {
                        namespace: args.namespace.clone(),
                        secret: args.ca_secret.clone(),
                        configmap: args.root_configmap.clone(),
                        settings,
                    },
                    authority.clone(),
                    events_tx.clone(),
                );
                crate::k8s::spawn_watchers(
                    client.clone(),
                    events_tx.clone(),
                    args.istio_policies,
                    metrics.clone(),
                );
                leader_client = Some(client.clone());
                let authn = Arc::new(
                    crate::ca::KubeTokenReview::new(
                        client,
                        args.token_audience.clone(),
                        &args.proxy_service_account,
                    )
                    .map_err(|e| anyhow::anyhow!("--proxy-service-account: {e}"))?,
                );
                (
                    authority,
                    authn,
                    crate::k8s::expected_kinds(args.istio_policies),
                )
            }
        };
    drop(events_tx);
    let (policies_tx, policies_rx) = watch::channel(Arc::new(Vec::new()));
    tokio::spawn(crate::index::run(
        Index::new(expected),
        events_rx,
        views_tx,
        Some(policies_tx),
    ));
    let leader = match &leader_client {
        Some(client) => {
            Some(spawn_status_writer(&args, client.clone(), policies_rx.clone()).await?)
        }
        None => None,
    };

    let td = authority.load().trust_domain().clone();
    let (ns, sa) = args
        .identity
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--identity must be namespace/service-account"))?;
    let id = SpiffeId::for_service_account(&td, ns, sa)
        .map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
    let cert =
        crate::server::serving_cert(authority.clone(), id.clone(), Vec::new(), clock.clone())?;
    let webhook = match (&leader_client, &leader) {
        (Some(client), Some(leader)) => {
            let names = crate::webhook::dns_names(&args.webhook_service, &args.namespace);
            let cert =
                crate::server::serving_cert(authority.clone(), id.clone(), names, clock.clone())?;
            crate::webhook::spawn_ca_bundle_sync(
                client.clone(),
                args.webhook_configuration.clone(),
                authority.clone(),
                leader.clone(),
            );
            let trust = TrustConfig {
                trust_domain: td.as_str().to_owned(),
                aliases: args.trust_domain_alias.clone(),
            };
            Some(Webhook {
                tls: crate::webhook::tls_config(cert)?,
                validator: crate::webhook::Validator::new(trust, args.istio_policies),
            })
        }
        _ => None,
    };
    let issuer = IssuerService::with_shared_authority(
        authority,
        authn.clone(),
        directory,
        Arc::new(crate::metrics::CountingAudit::new(
            JsonLinesAudit::new(std::io::stdout()),
            metrics.clone(),
        )),
        clock,
        IssuePolicy {
            default_ttl: args.cert_ttl,
            ..IssuePolicy::default()
        },
    );
    let xds = XdsServer::new(views_rx.clone(), authn, metrics.clone());
    Ok(Running {
        leader,
        webhook,
        views: views_rx,
        metrics,
        policies: policies_rx,
        identity: id,
        cert,
        issuer,
        xds,
    })
}

/// Elects one writer among the replicas (a Lease, kube-lease-manager) and runs the status
/// writer, which writes only while this replica leads.
async fn spawn_status_writer(
    args: &Args,
    client: kube::Client,
    policies: watch::Receiver<Arc<Vec<crate::policies::PolicyState>>>,
) -> anyhow::Result<watch::Receiver<bool>> {
    let instance = args.instance.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "ward-control".into()),
            std::process::id()
        )
    });
    let duration = args.lease_duration.max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease)
        .with_namespace(&args.namespace)
        .with_identity(&instance)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("Lease {}/{}: {e}", args.namespace, args.lease))?;
    let (leader, task) = manager.watch().await;
    tokio::spawn(async move {
        if let Ok(Err(e)) = task.await {
            tracing::error!(error = %e, "leader election stopped");
        }
    });
    let mut changes = leader.clone();
    let who = instance.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let leads = *changes.borrow_and_update();
            tracing::info!(instance = %who, leads, "leadership changed");
        }
    });
    tokio::spawn(
        crate::status::StatusWriter::new(client, leader.clone(), policies, instance).run(),
    );
    Ok(leader)
}

async fn shutdown_signal() {
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
    tracing::info!("stopping");
}
