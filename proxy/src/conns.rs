//! Live inbound connections, so a policy change can close the ones it no longer allows.
//!
//! Every authorized inbound connection registers what its decision depended on (peer identity,
//! source, target). When a new configuration is installed, [`Registry::reevaluate`] runs the
//! decision again with the new policies and cancels the connections that are now denied (or
//! whose workload is gone, or that are plaintext to a now-STRICT workload).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use ward_lib_api::config::Snapshot;
use ward_lib_policy::{Attributes, MtlsMode, PeerIdentity};

pub struct LiveConn {
    pub id: u64,
    pub peer: Option<PeerIdentity>,
    pub source_ip: IpAddr,
    pub target: SocketAddr,
    /// HTTP-aware: every request is authorized on its own, so a policy change applies to the
    /// next request instead of closing the connection.
    pub l7: bool,
    pub opened_unix: i64,
    cancel: Mutex<Option<oneshot::Sender<&'static str>>>,
}

impl LiveConn {
    fn cancel(&self, why: &'static str) {
        if let Some(tx) = self.cancel.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(why);
        }
    }
}

#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<LiveConn>>>,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// Registers a connection; the receiver fires (with a reason) when it must close.
    pub fn register(
        self: &Arc<Self>,
        peer: Option<PeerIdentity>,
        source_ip: IpAddr,
        target: SocketAddr,
        l7: bool,
    ) -> (Registration, oneshot::Receiver<&'static str>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let conn = Arc::new(LiveConn {
            id,
            peer,
            source_ip,
            target,
            l7,
            opened_unix: jiff::Timestamp::now().as_second(),
            cancel: Mutex::new(Some(tx)),
        });
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, conn);
        (
            Registration {
                registry: self.clone(),
                id,
            },
            rx,
        )
    }

    pub fn snapshot(&self) -> Vec<Arc<LiveConn>> {
        let mut v: Vec<_> = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-decides every live connection under `snap`; returns how many were closed.
    pub fn reevaluate(&self, snap: &Snapshot) -> usize {
        let now = jiff::Timestamp::now();
        let mut closed = 0;
        for c in self.snapshot() {
            let Some(w) = snap.by_ip.get(&c.target.ip()) else {
                c.cancel("destination workload no longer exists");
                closed += 1;
                continue;
            };
            if c.peer.is_none() && w.mtls == MtlsMode::Strict {
                c.cancel("plaintext no longer permitted (STRICT)");
                closed += 1;
                continue;
            }
            if c.l7 {
                continue;
            }
            let attrs = Attributes::tcp(c.peer.as_ref(), c.source_ip, c.target, now);
            if !w.policies.evaluate(&attrs).allowed {
                c.cancel("no longer allowed by policy");
                closed += 1;
            }
        }
        closed
    }

    /// Closes everything (end of drain).
    pub fn cancel_all(&self, why: &'static str) {
        for c in self.snapshot() {
            c.cancel(why);
        }
    }
}
