//! The configuration the data path reads: one immutable [`Snapshot`] swapped atomically when
//! the control stream delivers a push, or (local file mode) when the mesh file or anything it
//! names changes. Readers take a cheap `Arc` snapshot per
//! connection; an invalid update is logged and the last good snapshot stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use ward_lib_api::config::{Inputs, Snapshot};
use ward_lib_identity::{SharedBundle, TrustBundle};

/// What the control stream has done (admin endpoint, metrics, benchmarks).
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Whether a control stream is open.
    pub connected: std::sync::atomic::AtomicBool,
    /// Pushes applied (and ACKed).
    pub applied: std::sync::atomic::AtomicU64,
    /// Pushes refused (NACKed).
    pub rejected: std::sync::atomic::AtomicU64,
    /// Resource payload bytes of the last push applied.
    pub last_push_bytes: std::sync::atomic::AtomicU64,
}

/// Shared configuration state.
pub struct State {
    pub node: String,
    pub control: ControlStats,
    current: ArcSwapOption<Snapshot>,
    /// The trust bundle of the current snapshot, read by every handshake (so a bundle change
    /// applies to the next handshake without rebuilding TLS configs).
    pub bundle: SharedBundle,
    /// Bumped on every accepted update (data-path tasks watch it).
    changed: watch::Sender<u64>,
}

impl State {
    pub fn new(node: String) -> Arc<Self> {
        Arc::new(Self {
            node,
            control: ControlStats::default(),
            current: ArcSwapOption::empty(),
            bundle: ward_lib_identity::bundle::shared(TrustBundle::new()),
            changed: watch::channel(0).0,
        })
    }

    /// The current snapshot, if any configuration was ever accepted.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Trusts `bundle` until a configuration brings the mesh's own (a proxy fed by the
    /// control component needs roots to verify it before it has any configuration).
    pub fn seed_bundle(&self, bundle: TrustBundle) {
        if self.current.load().is_none() {
            self.bundle.store(Arc::new(bundle));
        }
    }

    /// Installs a snapshot (tests, the file watcher and the control stream).
    pub fn install(&self, snap: Snapshot) {
        let version = snap.version.clone();
        self.bundle.store(Arc::new(snap.bundle.clone()));
        self.current.store(Some(Arc::new(snap)));
        self.changed.send_modify(|v| *v += 1);
        tracing::info!(%version, "configuration installed");
    }

    /// Polls the mesh file every `period`; rebuilds only when the inputs' fingerprint changes.
    pub async fn watch_file(self: Arc<Self>, path: PathBuf, period: Duration) {
        let mut last_seen = String::new();
        loop {
            // Reading and parsing files blocks; keep it off the data path's worker threads.
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || Inputs::read(&p))
                .await
                .unwrap_or_else(|e| {
                    Err(ward_lib_api::config::ConfigError(format!(
                        "reading {}: {e}",
                        path.display()
                    )))
                });
            match read {
                Ok(inputs) if inputs.version != last_seen => {
                    last_seen = inputs.version.clone();
                    let version = inputs.version.clone();
                    match Snapshot::build(
                        inputs.file,
                        &inputs.bundle_pem,
                        &inputs.policy_texts,
                        inputs.version,
                    ) {
                        Ok(snap) => self.install(snap),
                        Err(e) => tracing::error!(
                            %version,
                            error = %e,
                            "configuration update rejected; the last good configuration stays in force"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Only log once per distinct error, not on every poll.
                    let key = format!("error:{e}");
                    if key != last_seen {
                        tracing::error!(error = %e, "reading the configuration failed; keeping the last good one");
                        last_seen = key;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}
