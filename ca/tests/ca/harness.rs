//! Starts a CA (root, node directory, bootstrap tokens, gRPC server) on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use ward_ca::auth::{Authenticator, BootstrapTokens};
use ward_ca::authority::Authority;
use ward_ca::clock::{Clock, SystemClock};
use ward_ca::directory::{FileDirectory, WorkloadDirectory};
use ward_ca::ratelimit::RateLimit;
use ward_ca::server::{self, ServerOptions, ServingCert};
use ward_ca::service::{IssuePolicy, IssuerService, MemoryAudit};
use ward_lib_api::ca_client::CaClient;
use ward_lib_identity::bundle::shared;
use ward_lib_identity::{SharedBundle, SpiffeId, TrustDomain};

pub const NODES: &str = "
nodes:
  - name: node-1
    workloads:
      - namespace: default
        serviceAccount: web
  - name: node-2
    workloads:
      - namespace: default
        serviceAccount: db
";

pub struct Ca {
    pub addr: SocketAddr,
    pub authority: Arc<Authority>,
    pub bundle: SharedBundle,
    pub ca_id: SpiffeId,
    pub key: [u8; 32],
    pub audit: Arc<MemoryAudit>,
    pub dir: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Options {
    pub rate_limit: RateLimit,
    pub server: ServerOptions,
    pub authn: Option<Arc<dyn Authenticator>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate_limit: RateLimit::default(),
            server: ServerOptions {
                handshake_timeout: Duration::from_millis(500),
                request_timeout: Duration::from_millis(800),
                ..ServerOptions::default()
            },
            authn: None,
        }
    }
}

pub async fn start(opts: Options) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.yaml");
    std::fs::write(&nodes, NODES).unwrap();
    let td = TrustDomain::parse("cluster.local").unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (authority, _) =
        Authority::init_root(&td, clock.now(), Duration::from_secs(365 * 86_400)).unwrap();
    let authority = Arc::new(authority);
    let directory: Arc<dyn WorkloadDirectory> = Arc::new(FileDirectory::load(&nodes).unwrap());
    let key: [u8; 32] = rand::random();
    let authn = opts
        .authn
        .unwrap_or_else(|| Arc::new(BootstrapTokens::new(key, directory.clone(), clock.clone())));
    let audit = Arc::new(MemoryAudit::default());
    let service = IssuerService::new(
        authority.clone(),
        authn,
        directory,
        audit.clone(),
        clock.clone(),
        IssuePolicy {
            rate_limit: opts.rate_limit,
            ..IssuePolicy::default()
        },
    );
    let ca_id = SpiffeId::for_service_account(&td, "ward-system", "ward-ca").unwrap();
    let serving = ServingCert::issue(
        &authority,
        &ca_id,
        Duration::from_secs(3600),
        clock.as_ref(),
    )
    .unwrap();
    let tls = server::tls_config(serving).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server::serve(
        listener,
        tls,
        service,
        opts.server,
        std::future::pending(),
    ));
    Ca {
        addr,
        bundle: shared(authority.bundle()),
        authority,
        ca_id,
        key,
        audit,
        dir,
        task,
    }
}

impl Ca {
    pub fn token(&self, node: &str) -> String {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        BootstrapTokens::mint(&self.key, node, exp).unwrap()
    }

    pub fn client(&self, token: &str) -> CaClient {
        CaClient::new(
            self.addr,
            self.bundle.clone(),
            self.ca_id.clone(),
            token,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    pub fn audit_lines(&self) -> Vec<ward_ca::service::AuditRecord> {
        self.audit.0.lock().unwrap().clone()
    }
}
