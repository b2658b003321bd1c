//! `ward ca …`: create a CA, issue certificates by hand, mint node bootstrap tokens, and run
//! the issuing service.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use ward_ca::auth::{Authenticator, BootstrapTokens};
use ward_ca::authority::{self, Authority};
use ward_ca::clock::{Clock, SystemClock};
use ward_ca::directory::{FileDirectory, WorkloadDirectory};
use ward_ca::server::{self, ServerOptions, ServingCert};
use ward_ca::service::{IssuePolicy, IssuerService, JsonLinesAudit};
use ward_ca::tokenreview::{TokenReview, TokenReviewConfig};
use ward_lib_identity::{SpiffeId, TrustDomain};

/// File in the CA directory holding the HMAC key for node bootstrap tokens.
const BOOTSTRAP_KEY: &str = ward_ca::auth::BOOTSTRAP_KEY_FILE;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a new self-signed root CA in a directory.
    Init {
        /// Trust domain, e.g. cluster.local.
        #[arg(long)]
        trust_domain: String,
        /// Directory to create (must not already hold a CA key).
        #[arg(long)]
        out: PathBuf,
        /// Root certificate lifetime.
        #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// Issue a workload certificate directly from a CA directory (operators and tests).
    Issue {
        /// CA directory created by `ward ca init`.
        #[arg(long)]
        ca: PathBuf,
        /// SPIFFE ID to certify; must be in the CA's trust domain.
        #[arg(long)]
        spiffe_id: String,
        /// Output directory for key.pem, cert.pem, chain.pem and root.pem.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime (clamped to the CA's notAfter).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Mint a bootstrap token that lets a node's proxy request certificates (local mode).
    BootstrapToken {
        #[arg(long)]
        ca: PathBuf,
        /// Node name as declared in the nodes file.
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Run the certificate-issuing service.
    Serve(ServeArgs),
    /// Request a certificate from a running issuing service, as a node proxy does: the key is
    /// generated here and only a CSR is sent.
    Request(RequestArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AuthMode {
    /// Node bootstrap tokens minted by `ward ca bootstrap-token` (local mode).
    Bootstrap,
    /// Projected service-account tokens validated with the Kubernetes TokenReview API.
    Tokenreview,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    ca: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// YAML file of nodes and the service accounts scheduled on each (re-read on change).
    #[arg(long)]
    nodes: PathBuf,
    #[arg(long, value_enum, default_value = "bootstrap")]
    auth: AuthMode,
    /// The CA's own identity (namespace/service-account) for its serving certificate.
    #[arg(long, default_value = "ward-system/ward-ca")]
    identity: String,
    /// Kubernetes API server URL (tokenreview mode).
    #[arg(long, default_value = "https://kubernetes.default.svc")]
    api_server: String,
    /// PEM file with the API server's CA (tokenreview mode).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    api_ca_file: PathBuf,
    /// The CA's own API credential, re-read on every review (tokenreview mode).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    api_token_file: PathBuf,
    /// Audience proxy tokens must be minted for (tokenreview mode).
    #[arg(long, default_value = "ward-ca")]
    audience: String,
    /// Service accounts (namespace/name) allowed to request certificates (tokenreview mode).
    #[arg(long, default_value = "ward-system/ward-proxy")]
    proxy_service_account: Vec<String>,
    /// Default workload certificate lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    default_ttl: Duration,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            trust_domain,
            out,
            validity,
        } => init(&trust_domain, &out, validity),
        CaCommand::Issue {
            ca,
            spiffe_id,
            out,
            ttl,
        } => issue(&ca, &spiffe_id, &out, ttl),
        CaCommand::BootstrapToken { ca, node, ttl } => {
            let key = read_bootstrap_key(&ca)?;
            let exp = SystemClock.now().unix_timestamp()
                + i64::try_from(ttl.as_secs()).context("--ttl is too long")?;
            let token = BootstrapTokens::mint(&key, &node, exp)
                .map_err(|e| anyhow::anyhow!("--node: {e}"))?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Serve(args) => serve(args),
        CaCommand::Request(args) => request(args),
    }
}

fn init(trust_domain: &str, out: &Path, validity: Duration) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::parse(trust_domain)
        .map_err(|e| anyhow::anyhow!("--trust-domain {trust_domain:?}: {e}"))?;
    let (_, pem) = Authority::init_root(&td, SystemClock.now(), validity)?;
    authority::write_dir(out, &pem)?;
    let key: [u8; 32] = rand::random();
    authority::write_private(&out.join(BOOTSTRAP_KEY), STANDARD.encode(key).as_bytes())
        .with_context(|| format!("writing {}", out.join(BOOTSTRAP_KEY).display()))?;
    println!(
        "created CA for trust domain {td} in {} (root.pem is the trust bundle; keep ca-key.pem and {BOOTSTRAP_KEY} secret)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(ca_dir: &Path, spiffe_id: &str, out: &Path, ttl: Duration) -> anyhow::Result<ExitCode> {
    let ca = Authority::load_dir(ca_dir)
        .with_context(|| format!("loading CA from {}", ca_dir.display()))?;
    let id = SpiffeId::parse(spiffe_id)
        .map_err(|e| anyhow::anyhow!("--spiffe-id {spiffe_id:?}: {e}"))?;
    if id.trust_domain_str() != ca.trust_domain().as_str() {
        bail!(
            "--spiffe-id {spiffe_id:?} is in trust domain {:?}, but this CA signs for {:?}",
            id.trust_domain_str(),
            ca.trust_domain().as_str()
        );
    }
    let (key, csr) = ward_lib_api::ca_client::new_key_and_csr()?;
    let verified = ward_ca::csr::verify_csr(&csr)?;
    let issued = ca.sign(&verified, &id, ttl, SystemClock.now())?;
    let now = u64::try_from(SystemClock.now().unix_timestamp()).unwrap_or(0);
    authority::self_check(&ca, &issued, now)
        .map_err(|e| anyhow::anyhow!("issued certificate failed its own check: {e}"))?;

    write_svid_files(out, &key, &issued.chain, ca.roots())?;
    println!(
        "issued {id} serial {} notAfter {} into {} (key.pem, cert.pem, chain.pem = leaf + intermediates, root.pem)",
        issued.serial,
        rfc3339(issued.not_after),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes key.pem (0600), cert.pem (leaf), chain.pem (leaf + intermediates) and root.pem.
fn write_svid_files(
    out: &Path,
    key: &rustls::pki_types::PrivateKeyDer<'_>,
    chain: &[rustls::pki_types::CertificateDer<'_>],
    roots: &[rustls::pki_types::CertificateDer<'_>],
) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let to_pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
    let key_der = match key {
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
        _ => bail!("unexpected key encoding"),
    };
    let key_path = out.join("key.pem");
    authority::write_private(&key_path, to_pem("PRIVATE KEY", key_der).as_bytes())
        .with_context(|| format!("writing {}", key_path.display()))?;
    let leaf = chain.first().context("empty certificate chain")?;
    let leaf = to_pem("CERTIFICATE", leaf);
    let chain: String = chain.iter().map(|c| to_pem("CERTIFICATE", c)).collect();
    let roots: String = roots.iter().map(|c| to_pem("CERTIFICATE", c)).collect();
    for (name, text) in [
        ("cert.pem", &leaf),
        ("chain.pem", &chain),
        ("root.pem", &roots),
    ] {
        let p = out.join(name);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0)),
    )
    .to_string()
}

#[derive(Args)]
pub struct RequestArgs {
    /// Address of `ward ca serve`.
    #[arg(long, default_value = "127.0.0.1:15012")]
    server: SocketAddr,
    /// PEM roots of the trust domain (root.pem), to verify the CA.
    #[arg(long)]
    bundle: PathBuf,
    /// The CA's identity (namespace/service-account).
    #[arg(long, default_value = "ward-system/ward-ca")]
    ca_identity: String,
    /// Node credential (bootstrap token or projected service-account token).
    #[arg(long, env = "WARD_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long)]
    namespace: String,
    #[arg(long)]
    service_account: String,
    #[arg(long)]
    out: PathBuf,
    /// Requested lifetime (the CA clamps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
}

fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let pem = fs::read_to_string(&args.bundle)
        .with_context(|| format!("reading --bundle {}", args.bundle.display()))?;
    let roots = ward_lib_identity::bundle::parse_pem_certs(&pem)
        .with_context(|| format!("--bundle {}", args.bundle.display()))?;
    // ward roots carry their trust-domain ID (spiffe://<td>) as a URI SAN.
    let td = trust_domain_of_root(&roots[0]).with_context(|| {
        format!(
            "--bundle {}: cannot tell its trust domain",
            args.bundle.display()
        )
    })?;
    let mut bundle = ward_lib_identity::TrustBundle::new();
    bundle.add_pem(&td, &pem)?;
    let (ns, sa) = args
        .ca_identity
        .split_once('/')
        .context("--ca-identity must be namespace/service-account")?;
    let ca_id = SpiffeId::for_service_account(&td, ns, sa)
        .map_err(|e| anyhow::anyhow!("--ca-identity: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let issued = runtime.block_on(async {
        let mut client = ward_lib_api::ca_client::CaClient::new(
            args.server,
            ward_lib_identity::bundle::shared(bundle),
            ca_id,
            &args.token,
            Duration::from_secs(10),
        )?;
        client
            .issue(&args.namespace, &args.service_account, args.ttl)
            .await
    })?;
    write_svid_files(&args.out, &issued.key, &issued.chain, &issued.roots)?;
    println!(
        "received {} notAfter {} into {}",
        issued.id,
        rfc3339(issued.not_after_unix),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn trust_domain_of_root(
    root: &rustls::pki_types::CertificateDer<'_>,
) -> anyhow::Result<TrustDomain> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(root).map_err(|e| anyhow::anyhow!("{e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("the root has no subjectAltName")?;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Ok(td) = TrustDomain::parse(uri) {
                return Ok(td);
            }
        }
    }
    bail!("the root has no spiffe://<trust-domain> URI SAN")
}

fn read_bootstrap_key(ca_dir: &Path) -> anyhow::Result<[u8; 32]> {
    ward_ca::auth::read_bootstrap_key(ca_dir).map_err(|e| anyhow::anyhow!(e))
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let authority = Arc::new(
        Authority::load_dir(&args.ca)
            .with_context(|| format!("loading CA from {}", args.ca.display()))?,
    );
    let directory: Arc<dyn WorkloadDirectory> = Arc::new(
        FileDirectory::load(&args.nodes)
            .with_context(|| format!("loading nodes from {}", args.nodes.display()))?,
    );
    let authn: Arc<dyn Authenticator> = match args.auth {
        AuthMode::Bootstrap => Arc::new(BootstrapTokens::new(
            read_bootstrap_key(&args.ca)?,
            directory.clone(),
            clock.clone(),
        )),
        AuthMode::Tokenreview => {
            let ca_pem = fs::read_to_string(&args.api_ca_file)
                .with_context(|| format!("--api-ca-file {}", args.api_ca_file.display()))?;
            Arc::new(
                TokenReview::new(TokenReviewConfig {
                    api_server: args.api_server.clone(),
                    ca_pem: Some(ca_pem),
                    credential_path: Some(args.api_token_file.clone()),
                    audience: args.audience.clone(),
                    allowed_service_accounts: args.proxy_service_account.clone(),
                    timeout: Duration::from_secs(5),
                })
                .map_err(|e| anyhow::anyhow!("TokenReview configuration: {e}"))?,
            )
        }
    };
    let (ns, sa) = args
        .identity
        .split_once('/')
        .context("--identity must be namespace/service-account")?;
    let ca_id = SpiffeId::for_service_account(authority.trust_domain(), ns, sa)
        .map_err(|e| anyhow::anyhow!("--identity: {e}"))?;
    let serving_ttl = Duration::from_secs(24 * 3600);
    let serving = ServingCert::issue(&authority, &ca_id, serving_ttl, clock.as_ref())
        .map_err(|e| anyhow::anyhow!("issuing the CA's serving certificate: {e}"))?;
    let _renewal =
        serving.spawn_renewal(authority.clone(), ca_id.clone(), serving_ttl, clock.clone());
    let tls = server::tls_config(serving).map_err(|e| anyhow::anyhow!(e))?;
    let service = IssuerService::new(
        authority.clone(),
        authn,
        directory,
        Arc::new(JsonLinesAudit::new(std::io::stdout())),
        clock,
        IssuePolicy {
            default_ttl: args.default_ttl,
            ..IssuePolicy::default()
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %args.listen,
        trust_domain = %authority.trust_domain(),
        identity = %ca_id,
        auth = match args.auth { AuthMode::Bootstrap => "bootstrap", AuthMode::Tokenreview => "tokenreview" },
        default_ttl = ?args.default_ttl,
        "ward CA serving"
    );
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("shutting down");
    };
    server::serve(listener, tls, service, ServerOptions::default(), shutdown).await;
    Ok(ExitCode::SUCCESS)
}
