//! The address table a snapshot is cut from, changed in transactions.
//!
//! A proxy receives the cluster-wide address table (10 000 workloads and more) and then one
//! small change after another. Rebuilding the table per change would cost every proxy
//! milliseconds per pod change; instead the table is kept and changed in place, inside a
//! transaction that checks the invariants (no address or service address claimed twice) and
//! either commits or restores exactly what was there. A snapshot is then a cheap copy of the
//! two maps (reference-counted entries).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::config::{ByAddr, ByIp, ConfigError, ServiceBackend, Workload};

/// Workloads by name and address; services by name and address. Names are shared
/// (`Arc<str>`) with whoever holds them (the proxy's record of versions), and the maps hash
/// with foldhash: their keys come from the configuration, not from the network, and these
/// maps are what a proxy rebuilds for every workload of the mesh.
#[derive(Debug, Default, Clone)]
pub struct AddressTable {
    workloads: HashMap<Arc<str>, Arc<Workload>, RandomState>,
    by_ip: ByIp,
    services: HashMap<Arc<str>, Vec<SocketAddr>, RandomState>,
    by_addr: ByAddr,
}

enum Undo {
    Workload(Arc<str>, Option<Arc<Workload>>),
    Ip(IpAddr, Option<Arc<Workload>>),
    Service(Arc<str>, Option<Vec<SocketAddr>>),
    Addr(SocketAddr, Option<Arc<ServiceBackend>>),
}

/// A change in progress; dropped without [`Txn::commit`], it restores the table.
pub struct Txn<'a> {
    table: &'a mut AddressTable,
    undo: Vec<Undo>,
}

impl AddressTable {
    pub fn begin(&mut self) -> Txn<'_> {
        Txn {
            table: self,
            undo: Vec::new(),
        }
    }

    pub fn workload(&self, name: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(name)
    }

    pub fn workloads(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Workload>)> {
        self.workloads.iter()
    }

    /// Copies of the two maps a snapshot reads.
    pub fn cut(&self) -> (ByIp, ByAddr) {
        (self.by_ip.clone(), self.by_addr.clone())
    }
}

impl Txn<'_> {
    /// Room for `n` more changes (a first push puts the whole table).
    pub fn reserve(&mut self, n: usize) {
        self.undo.reserve(2 * n);
        self.table.workloads.reserve(n);
        self.table.by_ip.reserve(n);
    }

    /// Puts (or replaces) workload `name`. An address another workload holds is an error.
    pub fn put_workload(&mut self, name: &Arc<str>, w: Arc<Workload>) -> Result<(), ConfigError> {
        self.remove_workload(name);
        for ip in &w.ips {
            if let Some(other) = self.table.by_ip.get(ip) {
                return Err(ConfigError(format!(
                    "Workload {}/{}: address {ip} is also {}/{}'s",
                    w.namespace, w.name, other.namespace, other.name
                )));
            }
            let old = self.table.by_ip.insert(*ip, w.clone());
            self.undo.push(Undo::Ip(*ip, old));
        }
        let old = self.table.workloads.insert(name.clone(), w);
        self.undo.push(Undo::Workload(name.clone(), old));
        Ok(())
    }

    pub fn remove_workload(&mut self, name: &Arc<str>) {
        let Some(old) = self.table.workloads.remove(name) else {
            return;
        };
        for ip in &old.ips {
            if self
                .table
                .by_ip
                .get(ip)
                .is_some_and(|w| Arc::ptr_eq(w, &old))
            {
                let prev = self.table.by_ip.remove(ip);
                self.undo.push(Undo::Ip(*ip, prev));
            }
        }
        self.undo.push(Undo::Workload(name.clone(), Some(old)));
    }

    /// Puts (or replaces) service `name` with its addresses. An address another service
    /// holds is an error.
    pub fn put_service(
        &mut self,
        name: &Arc<str>,
        addrs: Vec<(SocketAddr, ServiceBackend)>,
    ) -> Result<(), ConfigError> {
        self.remove_service(name);
        let mut mine = Vec::with_capacity(addrs.len());
        for (addr, backend) in addrs {
            if let Some(other) = self.table.by_addr.get(&addr) {
                return Err(ConfigError(format!(
                    "Service {name}: {addr} is also declared by {}/{}",
                    other.namespace, other.name
                )));
            }
            let old = self.table.by_addr.insert(addr, Arc::new(backend));
            self.undo.push(Undo::Addr(addr, old));
            mine.push(addr);
        }
        let old = self.table.services.insert(name.clone(), mine);
        self.undo.push(Undo::Service(name.clone(), old));
        Ok(())
    }

    pub fn remove_service(&mut self, name: &Arc<str>) {
        let Some(old) = self.table.services.remove(name) else {
            return;
        };
        for addr in &old {
            let prev = self.table.by_addr.remove(addr);
            self.undo.push(Undo::Addr(*addr, prev));
        }
        self.undo.push(Undo::Service(name.clone(), Some(old)));
    }

    /// The workloads as the transaction has them so far.
    pub fn workloads(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Workload>)> {
        self.table.workloads.iter()
    }

    /// Keeps the changes.
    pub fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Workload(n, old) => restore(&mut self.table.workloads, n, old),
                Undo::Ip(ip, old) => restore(&mut self.table.by_ip, ip, old),
                Undo::Service(n, old) => restore(&mut self.table.services, n, old),
                Undo::Addr(a, old) => restore(&mut self.table.by_addr, a, old),
            }
        }
    }
}

fn restore<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
    k: K,
    old: Option<V>,
) {
    match old {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}
