//! Workload certificates for the workloads on this node.
//!
//! For each local identity the proxy generates a key in memory, sends a CSR to the CA
//! (authenticated as the node), and renews at half of the remaining validity (minus up to 10 %
//! jitter so a node's renewals spread out). A failed request retries with jittered exponential backoff (0.5 s
//! doubling to 30 s) and the old certificate keeps being served until a new one arrives; the
//! swap is an `Arc` replacement, so live connections are not disturbed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio::time::Instant;
use ward_lib_api::ca_client::CaClient;
use ward_lib_identity::{SpiffeId, TrustDomain};

use crate::state::State;

/// How to reach the CA.
#[derive(Debug, Clone)]
pub struct CaSettings {
    pub address: SocketAddr,
    /// `namespace/service-account` of the CA.
    pub identity: String,
    pub token_file: PathBuf,
    pub ttl: Option<Duration>,
}

struct Entry {
    key: Arc<CertifiedKey>,
    not_after: i64,
    renew_at: Instant,
}

#[derive(Default)]
struct Attempts {
    failures: u32,
    next: Option<Instant>,
}

/// Public summary of one certificate (admin endpoint, metrics).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub identity: String,
    pub not_after: i64,
    pub renewals: u64,
}

pub struct CertManager {
    settings: CaSettings,
    state: Arc<State>,
    certs: RwLock<HashMap<SpiffeId, Entry>>,
    renewals: RwLock<HashMap<SpiffeId, u64>>,
    ready: watch::Sender<bool>,
}

impl CertManager {
    pub fn new(settings: CaSettings, state: Arc<State>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state,
            certs: RwLock::new(HashMap::new()),
            renewals: RwLock::new(HashMap::new()),
            ready: watch::channel(false).0,
        })
    }

    /// The current certificate of a local identity.
    pub fn get(&self, id: &SpiffeId) -> Option<Arc<CertifiedKey>> {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|e| e.key.clone())
    }

    /// True once every local workload has a certificate.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn summaries(&self) -> Vec<CertSummary> {
        let renewals = self.renewals.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<CertSummary> = self
            .certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, e)| CertSummary {
                identity: id.to_string(),
                not_after: e.not_after,
                renewals: renewals.get(id).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// Keeps certificates fresh forever (spawn it).
    pub async fn run(self: Arc<Self>) {
        let mut attempts: HashMap<SpiffeId, Attempts> = HashMap::new();
        loop {
            self.tick(&mut attempts).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn tick(&self, attempts: &mut HashMap<SpiffeId, Attempts>) {
        let Some(snap) = self.state.snapshot() else {
            return;
        };
        let mut desired: Vec<(SpiffeId, String, String)> = snap
            .local_workloads(&self.state.node)
            .map(|w| {
                (
                    w.identity.clone(),
                    w.namespace.clone(),
                    w.service_account.clone(),
                )
            })
            .collect();
        desired.sort();
        desired.dedup();
        // Forget identities no longer scheduled here.
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| desired.iter().any(|(d, _, _)| d == id));
        let now = Instant::now();
        for (id, ns, sa) in &desired {
            let due = match self.certs.read().unwrap_or_else(|p| p.into_inner()).get(id) {
                None => true,
                Some(e) => now >= e.renew_at,
            };
            let a = attempts.entry(id.clone()).or_default();
            if !due || a.next.is_some_and(|t| now < t) {
                continue;
            }
            match self.request(&snap.trust_domain, &snap.bundle, ns, sa).await {
                Ok((key, _not_before, not_after)) => {
                    // Half of the validity left now (notBefore is backdated by the CA, so it is
                    // not the issuance time), minus up to 10 % jitter.
                    let remaining = (not_after as f64 - unix_now()).max(2.0);
                    let jitter = 1.0 - rand::random::<f64>() * 0.1;
                    let renew_in = (remaining / 2.0 * jitter).max(1.0);
                    let renewed = self
                        .certs
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            id.clone(),
                            Entry {
                                key,
                                not_after,
                                renew_at: now + Duration::from_secs_f64(renew_in),
                            },
                        )
                        .is_some();
                    if renewed {
                        *self
                            .renewals
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.clone())
                            .or_default() += 1;
                    }
                    *a = Attempts::default();
                    tracing::info!(identity = %id, not_after, renew_in_s = renew_in as u64, renewed, "certificate obtained");
                }
                Err(e) => {
                    a.failures += 1;
                    let base = (0.5 * 2f64.powi(a.failures.min(10) as i32)).min(30.0);
                    let wait = base * (0.5 + rand::random::<f64>());
                    a.next = Some(now + Duration::from_secs_f64(wait));
                    tracing::warn!(identity = %id, failures = a.failures, retry_in_s = format!("{wait:.1}"), error = %e, "certificate request failed; still serving the previous certificate if any");
                }
            }
        }
        let all = desired.iter().all(|(id, _, _)| self.get(id).is_some());
        self.ready
            .send_if_modified(|r| std::mem::replace(r, all) != all);
    }

    async fn request(
        &self,
        td: &TrustDomain,
        bundle: &ward_lib_identity::TrustBundle,
        ns: &str,
        sa: &str,
    ) -> anyhow::Result<(Arc<CertifiedKey>, i64, i64)> {
        let token = std::fs::read_to_string(&self.settings.token_file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.settings.token_file.display()))?;
        let (ca_ns, ca_sa) = self
            .settings
            .identity
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("CA identity must be namespace/service-account"))?;
        let ca_id = SpiffeId::for_service_account(td, ca_ns, ca_sa)?;
        let mut client = CaClient::new(
            self.settings.address,
            ward_lib_identity::bundle::shared(bundle.clone()),
            ca_id,
            token.trim(),
            Duration::from_secs(5),
        )?;
        let svid = client.issue(ns, sa, self.settings.ttl).await?;
        let provider = ward_lib_identity::tls::provider();
        let key = ward_lib_identity::tls::certified_key(svid.chain.clone(), svid.key, &provider)?;
        let verified = ward_lib_identity::svid::verify_svid(
            &svid.chain,
            bundle,
            rustls::pki_types::UnixTime::now(),
            ward_lib_identity::PeerRole::Client,
        )?;
        Ok((key, verified.not_before, verified.not_after))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
