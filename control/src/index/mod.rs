//! The index: every source's objects in, per-node views out, computed incrementally.
//!
//! Sources call `apply_*` / `delete_*` / `reset_*` per kind (a reset replaces every object of a
//! kind, as after a watch re-list, deleting what is no longer there). Each call only marks
//! what it touched as dirty; [`Index::commit`] then recomputes just those outputs — the
//! workloads of changed pods (and of pods whose namespace, node or endpoint slices changed),
//! the services whose slices changed, the policy sets of nodes whose workloads or policies
//! changed — and publishes a new immutable [`View`] with a log of which names changed, so the
//! xDS server sends each proxy a delta, not the world.
//!
//! Invariants:
//! - a workload is published only if its pod is scheduled on a node with an address, has an
//!   address, is not terminated, is in an enrolled namespace and has not opted out;
//! - no address is published twice (the first pod by name keeps it; the other is withheld
//!   and logged), and no VIP belongs to two services — a proxy would have to refuse the whole
//!   update otherwise;
//! - the policies of node N are exactly those enforced for some published workload on N.
//!
//! Never: block on I/O (sources and the server do that), or publish before every source has
//! delivered its initial state (a half-synced view would delete proxies' configuration).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use ward_lib_api::control::{self as pb, PortProtocol};
use ward_lib_api::resources::{ip_to_bytes, Encoded, MESH_NAME};
use ward_lib_policy::TrustConfig;

use crate::model::*;
use crate::policies::PolicyState;

/// How many commits' change lists a view keeps; a stream further behind diffs in full.
const LOG_LEN: usize = 64;

/// Mesh-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    pub trust_domain: String,
    pub aliases: Vec<String>,
    pub root_namespace: String,
    /// PEM of every root of the trust domain.
    pub roots_pem: String,
}

impl MeshSettings {
    fn trust(&self) -> TrustConfig {
        TrustConfig {
            trust_domain: self.trust_domain.clone(),
            aliases: self.aliases.clone(),
        }
    }
}

/// The kinds of input a source delivers; the view is published once every expected kind has
/// delivered its initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Mesh,
    Nodes,
    Namespaces,
    Pods,
    Services,
    Slices,
    AuthorizationPolicies,
    PeerAuthentications,
    IstioAuthorizationPolicies,
    IstioPeerAuthentications,
}

impl Kind {
    /// The kinds of a policy kind's watch.
    pub fn of_policies(kind: PolicyKind) -> Kind {
        match kind {
            PolicyKind::AuthorizationPolicy => Kind::AuthorizationPolicies,
            PolicyKind::PeerAuthentication => Kind::PeerAuthentications,
            PolicyKind::IstioAuthorizationPolicy => Kind::IstioAuthorizationPolicies,
            PolicyKind::IstioPeerAuthentication => Kind::IstioPeerAuthentications,
        }
    }

    pub const ALL: [Kind; 10] = [
        Kind::Mesh,
        Kind::Nodes,
        Kind::Namespaces,
        Kind::Pods,
        Kind::Services,
        Kind::Slices,
        Kind::AuthorizationPolicies,
        Kind::PeerAuthentications,
        Kind::IstioAuthorizationPolicies,
        Kind::IstioPeerAuthentications,
    ];
}

/// Names changed by one commit.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub seq: u64,
    pub workloads: Vec<Arc<str>>,
    pub services: Vec<Arc<str>>,
}

/// Resources by name.
pub type Resources = HashMap<Arc<str>, Encoded>;
/// A node's policies by resource name (ordered, so equal sets compare cheaply).
pub type NodePolicies = BTreeMap<Arc<str>, Encoded>;
/// Changed names: (workloads, services).
pub type Changed = (BTreeSet<Arc<str>>, BTreeSet<Arc<str>>);

/// One immutable published state. Cheap to clone (everything is behind `Arc`s shared with
/// the previous view where unchanged).
#[derive(Debug, Clone, Default)]
pub struct View {
    pub seq: u64,
    /// Every expected source has delivered its initial state.
    pub synced: bool,
    pub mesh: Option<Encoded>,
    pub workloads: Arc<Resources>,
    pub services: Arc<Resources>,
    /// node → the policies enforced for its workloads.
    pub node_policies: Arc<HashMap<String, Arc<NodePolicies>>>,
    /// The last commits' changed names, oldest first.
    pub log: Arc<VecDeque<Changes>>,
    /// node → `(namespace, service account)` of its published workloads: what the CA may
    /// issue to that node.
    pub bindings: Arc<HashMap<String, BTreeSet<(String, String)>>>,
    /// Known nodes.
    pub nodes: Arc<BTreeSet<String>>,
}

impl View {
    /// The policies for `node` (empty if it has no workloads).
    pub fn policies_of(&self, node: &str) -> Arc<NodePolicies> {
        self.node_policies.get(node).cloned().unwrap_or_default()
    }

    /// The names changed after `since` up to this view, if the log still covers that range.
    pub fn changes_since(&self, since: u64) -> Option<Changed> {
        if since >= self.seq {
            return Some(Default::default());
        }
        let first = self.log.front()?.seq;
        if first > since + 1 {
            return None;
        }
        let mut w = BTreeSet::new();
        let mut s = BTreeSet::new();
        for c in self.log.iter().filter(|c| c.seq > since) {
            w.extend(c.workloads.iter().cloned());
            s.extend(c.services.iter().cloned());
        }
        Some((w, s))
    }
}

/// A published workload and what it was computed from.
#[derive(Debug, Clone)]
struct Published {
    node: String,
    ips: Vec<IpAddr>,
    service_account: String,
}

/// The index (owned by one task; see the module docs).
#[derive(Debug)]
pub struct Index {
    expected: BTreeSet<Kind>,
    synced: BTreeSet<Kind>,
    settings: Option<MeshSettings>,
    nodes: HashMap<String, NodeInfo>,
    namespaces: HashMap<String, NamespaceInfo>,
    pods: HashMap<Key, PodInfo>,
    pods_by_ns: HashMap<Arc<str>, BTreeSet<Key>>,
    pods_by_node: HashMap<String, BTreeSet<Key>>,
    /// Usually one pod per address: a small vector, not a B-tree node (10 000 of them).
    pods_by_ip: HashMap<IpAddr, Vec<Key>>,
    services: HashMap<Key, ServiceInfo>,
    slices: HashMap<Key, SliceInfo>,
    slices_by_service: HashMap<Key, BTreeSet<Key>>,
    slices_by_ip: HashMap<IpAddr, Vec<Key>>,
    policies: HashMap<PolicyId, PolicyState>,
    policies_by_ns: HashMap<Arc<str>, BTreeSet<PolicyId>>,

    published: HashMap<Key, Published>,
    ip_owner: HashMap<IpAddr, Key>,
    vip_owner: HashMap<IpAddr, Key>,
    node_workloads: HashMap<String, BTreeSet<Key>>,

    view: View,

    dirty_pods: BTreeSet<Key>,
    dirty_services: BTreeSet<Key>,
    dirty_nodes: BTreeSet<String>,
    all_nodes_dirty: bool,
    mesh_dirty: bool,
}

impl Index {
    /// An index that publishes once every kind in `expected` has been marked synced.
    pub fn new(expected: impl IntoIterator<Item = Kind>) -> Self {
        Self {
            expected: expected.into_iter().collect(),
            synced: BTreeSet::new(),
            settings: None,
            nodes: HashMap::new(),
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            pods_by_ns: HashMap::new(),
            pods_by_node: HashMap::new(),
            pods_by_ip: HashMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            slices_by_ip: HashMap::new(),
            policies: HashMap::new(),
            policies_by_ns: HashMap::new(),
            published: HashMap::new(),
            ip_owner: HashMap::new(),
            vip_owner: HashMap::new(),
            node_workloads: HashMap::new(),
            view: View::default(),
            dirty_pods: BTreeSet::new(),
            dirty_services: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            all_nodes_dirty: false,
            mesh_dirty: false,
        }
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Records that a kind has delivered its initial state.
    pub fn mark_synced(&mut self, kind: Kind) {
        self.synced.insert(kind);
    }

    /// The state of every policy object (for status and diagnostics).
    pub fn policy_states(&self) -> impl Iterator<Item = &PolicyState> {
        self.policies.values()
    }

    // ---- mesh ----

    pub fn set_mesh(&mut self, settings: MeshSettings) {
        if self.settings.as_ref() == Some(&settings) {
            return;
        }
        let trust_changed =
            self.settings.as_ref().map(MeshSettings::trust) != Some(settings.trust());
        let root_changed = self
            .settings
            .as_ref()
            .is_some_and(|s| s.root_namespace != settings.root_namespace);
        self.settings = Some(settings);
        self.mesh_dirty = true;
        if trust_changed {
            let trust = self.trust();
            for state in self.policies.values_mut() {
                *state = state.recompile(&trust);
            }
        }
        if trust_changed || root_changed {
            self.all_nodes_dirty = true;
        }
    }

    fn trust(&self) -> TrustConfig {
        self.settings
            .as_ref()
            .map(MeshSettings::trust)
            .unwrap_or_default()
    }

    fn root_namespace(&self) -> &str {
        self.settings
            .as_ref()
            .map_or(ward_lib_policy::DEFAULT_ROOT_NAMESPACE, |s| {
                &s.root_namespace
            })
    }

    // ---- nodes ----

    pub fn apply_node(&mut self, node: NodeInfo) {
        if self.nodes.get(&node.name) == Some(&node) {
            return;
        }
        self.dirty_pods_of_node(&node.name);
        self.nodes.insert(node.name.clone(), node);
    }

    pub fn delete_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.dirty_pods_of_node(name);
        }
    }

    pub fn reset_nodes(&mut self, nodes: Vec<NodeInfo>) {
        let keep: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.delete_node(&n);
        }
        for n in nodes {
            self.apply_node(n);
        }
    }

    fn dirty_pods_of_node(&mut self, node: &str) {
        if let Some(pods) = self.pods_by_node.get(node) {
            self.dirty_pods.extend(pods.iter().cloned());
        }
    }

    // ---- namespaces ----

    pub fn apply_namespace(&mut self, ns: NamespaceInfo) {
        if self.namespaces.get(&ns.name) == Some(&ns) {
            return;
        }
        if let Some(pods) = self.pods_by_ns.get(ns.name.as_str()) {
            self.dirty_pods.extend(pods.iter().cloned());
        }
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            if let Some(pods) = self.pods_by_ns.get(name) {
                self.dirty_pods.extend(pods.iter().cloned());
            }
        }
    }

    pub fn reset_namespaces(&mut self, namespaces: Vec<NamespaceInfo>) {
        let keep: BTreeSet<String> = namespaces.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.delete_namespace(&n);
        }
        for n in namespaces {
            self.apply_namespace(n);
        }
    }

    // ---- pods ----

    pub fn apply_pod(&mut self, pod: PodInfo) {
        if self.pods.get(&pod.key) == Some(&pod) {
            return;
        }
        self.unlink_pod(&pod.key);
        self.pods_by_ns
            .entry(pod.key.namespace.clone())
            .or_default()
            .insert(pod.key.clone());
        if let Some(n) = &pod.node {
            self.pods_by_node
                .entry(n.clone())
                .or_default()
                .insert(pod.key.clone());
        }
        for ip in &pod.ips {
            add_to(&mut self.pods_by_ip, *ip, &pod.key);
        }
        self.dirty_pods.insert(pod.key.clone());
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn delete_pod(&mut self, key: &Key) {
        if self.unlink_pod(key) {
            self.pods.remove(key);
            self.dirty_pods.insert(key.clone());
        }
    }

    pub fn reset_pods(&mut self, pods: Vec<PodInfo>) {
        let keep: BTreeSet<Key> = pods.iter().map(|p| p.key.clone()).collect();
        let gone: Vec<Key> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_pod(&k);
        }
        for p in pods {
            self.apply_pod(p);
        }
    }

    /// Removes a pod from the secondary indexes; whether it existed.
    fn unlink_pod(&mut self, key: &Key) -> bool {
        let Some(old) = self.pods.get(key) else {
            return false;
        };
        remove_from(&mut self.pods_by_ns, &old.key.namespace, key);
        if let Some(n) = &old.node {
            remove_from(&mut self.pods_by_node, n, key);
        }
        for ip in &old.ips {
            remove_from_vec(&mut self.pods_by_ip, ip, key);
        }
        true
    }

    // ---- services and endpoint slices ----

    pub fn apply_service(&mut self, svc: ServiceInfo) {
        if self.services.get(&svc.key) == Some(&svc) {
            return;
        }
        self.dirty_services.insert(svc.key.clone());
        self.services.insert(svc.key.clone(), svc);
    }

    pub fn delete_service(&mut self, key: &Key) {
        if self.services.remove(key).is_some() {
            self.dirty_services.insert(key.clone());
        }
    }

    pub fn reset_services(&mut self, services: Vec<ServiceInfo>) {
        let keep: BTreeSet<Key> = services.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<Key> = self
            .services
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_service(&k);
        }
        for s in services {
            self.apply_service(s);
        }
    }

    pub fn apply_slice(&mut self, slice: SliceInfo) {
        if self.slices.get(&slice.key) == Some(&slice) {
            return;
        }
        self.unlink_slice(&slice.key);
        let svc = Key::new(&slice.key.namespace, &slice.service);
        self.slices_by_service
            .entry(svc.clone())
            .or_default()
            .insert(slice.key.clone());
        self.dirty_services.insert(svc);
        for ip in slice.endpoints.iter().flat_map(|e| &e.ips) {
            add_to(&mut self.slices_by_ip, *ip, &slice.key);
            if let Some(pods) = self.pods_by_ip.get(ip) {
                self.dirty_pods.extend(pods.iter().cloned());
            }
        }
        self.slices.insert(slice.key.clone(), slice);
    }

    pub fn delete_slice(&mut self, key: &Key) {
        if self.unlink_slice(key) {
            self.slices.remove(key);
        }
    }

    pub fn reset_slices(&mut self, slices: Vec<SliceInfo>) {
        let keep: BTreeSet<Key> = slices.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<Key> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_slice(&k);
        }
        for s in slices {
            self.apply_slice(s);
        }
    }

    /// Removes a slice from the secondary indexes, marking what depended on it; whether it
    /// existed.
    fn unlink_slice(&mut self, key: &Key) -> bool {
        let Some(old) = self.slices.get(key) else {
            return false;
        };
        let svc = Key::new(&old.key.namespace, &old.service);
        remove_from(&mut self.slices_by_service, &svc, key);
        self.dirty_services.insert(svc);
        let ips: Vec<IpAddr> = old
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        for ip in ips {
            remove_from_vec(&mut self.slices_by_ip, &ip, key);
            if let Some(pods) = self.pods_by_ip.get(&ip) {
                self.dirty_pods.extend(pods.iter().cloned());
            }
        }
        true
    }

    // ---- policies ----

    pub fn apply_policy(&mut self, object: PolicyObject) {
        let id = (object.kind, object.key.clone());
        if let Some(p) = self.policies.get_mut(&id) {
            if p.object.same_policy(&object) {
                // Only its status (or uid) changed: keep it for the status writer.
                p.object.status = object.status;
                p.object.uid = object.uid;
                return;
            }
        }
        let state = PolicyState::compile(object, self.policies.get(&id), &self.trust());
        match &state.verdict {
            crate::policies::Verdict::Invalid { errors } => tracing::warn!(
                policy = %id.1, kind = id.0.as_str(), errors = ?errors,
                enforced = ?state.enforced.as_ref().map(|e| &e.from),
                "policy is invalid"
            ),
            crate::policies::Verdict::Accepted { .. } => {
                tracing::debug!(policy = %id.1, kind = id.0.as_str(), "policy accepted")
            }
        }
        self.dirty_policy_nodes(&id);
        self.policies_by_ns
            .entry(id.1.namespace.clone())
            .or_default()
            .insert(id.clone());
        self.policies.insert(id.clone(), state);
        self.dirty_policy_nodes(&id);
    }

    pub fn delete_policy(&mut self, kind: PolicyKind, key: &Key) {
        let id = (kind, key.clone());
        if self.policies.contains_key(&id) {
            self.dirty_policy_nodes(&id);
            self.policies.remove(&id);
            if let Some(set) = self.policies_by_ns.get_mut(&key.namespace) {
                set.remove(&id);
                if set.is_empty() {
                    self.policies_by_ns.remove(&key.namespace);
                }
            }
        }
    }

    /// Replaces every policy of `kind`.
    pub fn reset_policies(&mut self, kind: PolicyKind, objects: Vec<PolicyObject>) {
        let keep: BTreeSet<Key> = objects.iter().map(|o| o.key.clone()).collect();
        let gone: Vec<Key> = self
            .policies
            .keys()
            .filter(|(k, key)| *k == kind && !keep.contains(key))
            .map(|(_, key)| key.clone())
            .collect();
        for key in gone {
            self.delete_policy(kind, &key);
        }
        for o in objects {
            self.apply_policy(o);
        }
    }

    /// Marks the nodes whose policy set may change with policy `id`: those with published
    /// workloads in its namespace (every node, for the root namespace).
    fn dirty_policy_nodes(&mut self, id: &PolicyId) {
        if *id.1.namespace == *self.root_namespace() {
            self.all_nodes_dirty = true;
            return;
        }
        if let Some(pods) = self.pods_by_ns.get(&id.1.namespace) {
            for k in pods {
                if let Some(p) = self.published.get(k) {
                    self.dirty_nodes.insert(p.node.clone());
                }
            }
        }
    }

    // ---- commit ----

    /// Recomputes what changed since the last commit and publishes a new view. Returns the
    /// view if it differs from the last one.
    pub fn commit(&mut self) -> Option<&View> {
        let synced = self.expected.is_subset(&self.synced);
        let mut next = self.view.clone();
        let mut changes = Changes::default();
        let mut changed = synced != self.view.synced;
        next.synced = synced;

        if std::mem::take(&mut self.mesh_dirty) {
            let mesh = self.settings.as_ref().map(|s| {
                Encoded::new(
                    MESH_NAME,
                    ward_lib_api::resources::MESH_CONFIG,
                    &pb::MeshConfig {
                        trust_domain: s.trust_domain.clone(),
                        trust_domain_aliases: s.aliases.clone(),
                        root_namespace: s.root_namespace.clone(),
                        roots_pem: s.roots_pem.clone(),
                    },
                )
            });
            if mesh != next.mesh {
                next.mesh = mesh;
                changed = true;
            }
        }

        // Workloads. A withdrawn workload frees its addresses for pods that wanted them.
        let mut bindings_dirty = BTreeSet::new();
        let mut pending: BTreeSet<Key> = std::mem::take(&mut self.dirty_pods);
        let mut workloads = None::<Resources>;
        while let Some(key) = pending.pop_first() {
            let before = self.published.get(&key).cloned();
            let resource = self.workload_resource(&key);
            let name: Arc<str> = key.to_string().into();
            let map = workloads.get_or_insert_with(|| (*next.workloads).clone());
            let old = map.get(&name).map(|e| e.version.clone());
            match resource {
                Some((w, published)) => {
                    if before.is_none() {
                        for ip in &published.ips {
                            self.ip_owner.insert(*ip, key.clone());
                        }
                    }
                    if let Some(b) = &before {
                        self.withdraw(&key, b, &mut pending, &mut bindings_dirty);
                        for ip in &published.ips {
                            self.ip_owner.insert(*ip, key.clone());
                        }
                    }
                    self.node_workloads
                        .entry(published.node.clone())
                        .or_default()
                        .insert(key.clone());
                    bindings_dirty.insert(published.node.clone());
                    self.dirty_nodes.insert(published.node.clone());
                    self.published.insert(key.clone(), published);
                    let enc = Encoded::new(name.clone(), ward_lib_api::resources::WORKLOAD, &w);
                    if old.as_ref() != Some(&enc.version) {
                        map.insert(name.clone(), enc);
                        changes.workloads.push(name);
                    }
                }
                None => {
                    if let Some(b) = before {
                        self.withdraw(&key, &b, &mut pending, &mut bindings_dirty);
                        self.published.remove(&key);
                    }
                    if map.remove(&name).is_some() {
                        changes.workloads.push(name);
                    }
                }
            }
        }
        if let Some(w) = workloads {
            next.workloads = Arc::new(w);
        }

        // Services.
        let dirty_services = std::mem::take(&mut self.dirty_services);
        if !dirty_services.is_empty() {
            let mut map = (*next.services).clone();
            for key in dirty_services {
                let name: Arc<str> = key.to_string().into();
                let resource = self.service_resource(&key);
                let old = map.get(&name).map(|e| e.version.clone());
                match resource {
                    Some(s) => {
                        let enc = Encoded::new(name.clone(), ward_lib_api::resources::SERVICE, &s);
                        if old.as_ref() != Some(&enc.version) {
                            map.insert(name.clone(), enc);
                            changes.services.push(name);
                        }
                    }
                    None => {
                        if map.remove(&name).is_some() {
                            changes.services.push(name);
                        }
                    }
                }
            }
            next.services = Arc::new(map);
        }

        // Per-node policies.
        let nodes: Vec<String> = if std::mem::take(&mut self.all_nodes_dirty) {
            self.dirty_nodes.clear();
            let mut all: BTreeSet<String> = self.node_workloads.keys().cloned().collect();
            all.extend(next.node_policies.keys().cloned());
            all.into_iter().collect()
        } else {
            std::mem::take(&mut self.dirty_nodes).into_iter().collect()
        };
        if !nodes.is_empty() {
            let mut map = (*next.node_policies).clone();
            for node in nodes {
                let set = self.node_policy_set(&node);
                let same = map.get(&node).is_some_and(|old| {
                    old.len() == set.len()
                        && old
                            .iter()
                            .zip(&set)
                            .all(|((a, x), (b, y))| a == b && x.version == y.version)
                });
                if same {
                    continue;
                }
                changed = true;
                if set.is_empty() {
                    map.remove(&node);
                } else {
                    map.insert(node, Arc::new(set));
                }
            }
            next.node_policies = Arc::new(map);
        }

        // What the CA may issue, per node.
        if !bindings_dirty.is_empty() {
            let mut map = (*next.bindings).clone();
            for node in bindings_dirty {
                let set: BTreeSet<(String, String)> = self
                    .node_workloads
                    .get(&node)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| {
                        self.published
                            .get(k)
                            .map(|p| (k.namespace.to_string(), p.service_account.clone()))
                    })
                    .collect();
                if set.is_empty() {
                    map.remove(&node);
                } else {
                    map.insert(node, set);
                }
            }
            next.bindings = Arc::new(map);
            changed = true;
        }
        let nodes: BTreeSet<String> = self.nodes.keys().cloned().collect();
        if *next.nodes != nodes {
            next.nodes = Arc::new(nodes);
            changed = true;
        }

        if !changes.workloads.is_empty() || !changes.services.is_empty() {
            changed = true;
        }
        if !changed {
            return None;
        }
        next.seq = self.view.seq + 1;
        changes.seq = next.seq;
        let mut log = (*next.log).clone();
        log.push_back(changes);
        while log.len() > LOG_LEN {
            log.pop_front();
        }
        next.log = Arc::new(log);
        self.view = next;
        Some(&self.view)
    }

    /// Takes a published workload out of the secondary outputs (it is about to be replaced
    /// or removed); pods waiting for its addresses get another look.
    fn withdraw(
        &mut self,
        key: &Key,
        before: &Published,
        pending: &mut BTreeSet<Key>,
        bindings_dirty: &mut BTreeSet<String>,
    ) {
        for ip in &before.ips {
            if self.ip_owner.get(ip) == Some(key) {
                self.ip_owner.remove(ip);
                if let Some(others) = self.pods_by_ip.get(ip) {
                    pending.extend(others.iter().filter(|k| *k != key).cloned());
                }
            }
        }
        remove_from(&mut self.node_workloads, &before.node, key);
        bindings_dirty.insert(before.node.clone());
        self.dirty_nodes.insert(before.node.clone());
    }

    /// The workload resource of a pod, if it is published (see the module invariants).
    fn workload_resource(&self, key: &Key) -> Option<(pb::Workload, Published)> {
        let pod = self.pods.get(key)?;
        if pod.terminated || pod.opted_out || pod.ips.is_empty() {
            return None;
        }
        let ns = self.namespaces.get(&*key.namespace)?;
        if !ns.enrolled {
            return None;
        }
        let allow_non_tcp = pod.allow_non_tcp || ns.allow_non_tcp;
        let node_name = pod.node.as_ref()?;
        let address = self.nodes.get(node_name)?.address?;
        if let Some((ip, owner)) = pod
            .ips
            .iter()
            .find_map(|ip| self.ip_owner.get(ip).filter(|o| *o != key).map(|o| (ip, o)))
        {
            tracing::warn!(pod = %key, %ip, owner = %owner, "address already belongs to another mesh workload; this pod is withheld until it is free");
            return None;
        }
        let mut ports: BTreeMap<u16, PortProtocol> = BTreeMap::new();
        for (p, proto) in &pod.declared_ports {
            merge_protocol(&mut ports, *p, *proto);
        }
        for ip in &pod.ips {
            for sk in self.slices_by_ip.get(ip).into_iter().flatten() {
                if let Some(slice) = self.slices.get(sk) {
                    for sp in &slice.ports {
                        merge_protocol(&mut ports, sp.port, sp.protocol);
                    }
                }
            }
        }
        let w = pb::Workload {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            service_account: pod.service_account.clone(),
            node: node_name.clone(),
            ips: pod.ips.iter().map(|ip| ip_to_bytes(*ip)).collect(),
            node_address: ip_to_bytes(address),
            labels: pod.labels.clone(),
            ports: ports
                .into_iter()
                .filter(|(_, p)| *p != PortProtocol::Tcp)
                .map(|(port, p)| pb::WorkloadPort {
                    port: u32::from(port),
                    protocol: p as i32,
                })
                .collect(),
            allow_non_tcp,
        };
        let published = Published {
            node: node_name.clone(),
            ips: pod.ips.clone(),
            service_account: pod.service_account.clone(),
        };
        Some((w, published))
    }

    /// The service resource, if the service has a cluster IP of its own.
    fn service_resource(&mut self, key: &Key) -> Option<pb::Service> {
        let Some(svc) = self.services.get(key) else {
            self.vip_owner.retain(|_, k| k != key);
            return None;
        };
        let mut vips = Vec::new();
        for vip in &svc.vips {
            match self.vip_owner.get(vip) {
                Some(owner) if owner != key => {
                    tracing::warn!(service = %key, %vip, owner = %owner, "cluster IP already belongs to another service; not published for this one");
                }
                _ => vips.push(*vip),
            }
        }
        let svc = svc.clone();
        self.vip_owner.retain(|ip, k| k != key || vips.contains(ip));
        for vip in &vips {
            self.vip_owner.insert(*vip, key.clone());
        }
        if vips.is_empty() {
            return None;
        }
        let slices: Vec<&SliceInfo> = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect();
        let ports = svc
            .ports
            .iter()
            .map(|sp| {
                let mut endpoints: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
                for slice in &slices {
                    let Some(target) = slice.ports.iter().find(|p| p.name == sp.name) else {
                        continue;
                    };
                    for e in slice.endpoints.iter().filter(|e| e.ready) {
                        endpoints.extend(e.ips.iter().map(|ip| (*ip, target.port)));
                    }
                }
                pb::ServicePort {
                    port: u32::from(sp.port),
                    protocol: sp.protocol as i32,
                    endpoints: endpoints
                        .into_iter()
                        .map(|(ip, port)| pb::Endpoint {
                            ip: ip_to_bytes(ip),
                            port: u32::from(port),
                        })
                        .collect(),
                }
            })
            .collect();
        Some(pb::Service {
            namespace: key.namespace.to_string(),
            name: key.name.to_string(),
            vips: vips.iter().map(|ip| ip_to_bytes(*ip)).collect(),
            ports,
        })
    }

    /// The policies enforced for the published workloads of `node`.
    fn node_policy_set(&self, node: &str) -> NodePolicies {
        let root = self.root_namespace();
        let mut out = BTreeMap::new();
        for key in self.node_workloads.get(node).into_iter().flatten() {
            let Some(pod) = self.pods.get(key) else {
                continue;
            };
            let namespaces = [root, &*key.namespace];
            for id in namespaces
                .iter()
                .take(if &*key.namespace == root { 1 } else { 2 })
                .filter_map(|ns| self.policies_by_ns.get(*ns))
                .flatten()
            {
                let Some(e) = self.policies.get(id).and_then(|s| s.enforced.as_ref()) else {
                    continue;
                };
                if e.targets_only || out.contains_key(&e.resource.name) {
                    continue;
                }
                let selected = e
                    .selector
                    .as_ref()
                    .is_none_or(|sel| sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)));
                if selected {
                    out.insert(e.resource.name.clone(), e.resource.clone());
                }
            }
        }
        out
    }
}

/// Records a port's protocol; an HTTP declaration wins over TCP, HTTP/2 over HTTP.
fn merge_protocol(ports: &mut BTreeMap<u16, PortProtocol>, port: u16, p: PortProtocol) {
    let rank = |p: PortProtocol| match p {
        PortProtocol::Tcp => 0,
        PortProtocol::Http => 1,
        PortProtocol::Http2 => 2,
    };
    let e = ports.entry(port).or_insert(p);
    if rank(p) > rank(*e) {
        *e = p;
    }
}

fn add_to(map: &mut HashMap<IpAddr, Vec<Key>>, ip: IpAddr, key: &Key) {
    let v = map.entry(ip).or_default();
    if !v.contains(key) {
        v.push(key.clone());
    }
}

fn remove_from_vec(map: &mut HashMap<IpAddr, Vec<Key>>, ip: &IpAddr, key: &Key) {
    if let Some(v) = map.get_mut(ip) {
        v.retain(|k| k != key);
        if v.is_empty() {
            map.remove(ip);
        }
    }
}

fn remove_from<K, V>(map: &mut HashMap<K, BTreeSet<V>>, k: &K, v: &V)
where
    K: std::hash::Hash + Eq,
    V: Ord,
{
    if let Some(set) = map.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

/// A change delivered by a source.
#[derive(Debug)]
pub enum Event {
    Mesh(MeshSettings),
    ApplyNode(NodeInfo),
    DeleteNode(String),
    ResetNodes(Vec<NodeInfo>),
    ApplyNamespace(NamespaceInfo),
    DeleteNamespace(String),
    ResetNamespaces(Vec<NamespaceInfo>),
    ApplyPod(PodInfo),
    DeletePod(Key),
    ResetPods(Vec<PodInfo>),
    ApplyService(ServiceInfo),
    DeleteService(Key),
    ResetServices(Vec<ServiceInfo>),
    ApplySlice(SliceInfo),
    DeleteSlice(Key),
    ResetSlices(Vec<SliceInfo>),
    ApplyPolicy(PolicyObject),
    DeletePolicy(PolicyKind, Key),
    ResetPolicies(PolicyKind, Vec<PolicyObject>),
    /// A kind has delivered its initial state.
    Synced(Kind),
}

impl Index {
    /// Applies one source event.
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::Mesh(m) => self.set_mesh(m),
            Event::ApplyNode(n) => self.apply_node(n),
            Event::DeleteNode(n) => self.delete_node(&n),
            Event::ResetNodes(v) => self.reset_nodes(v),
            Event::ApplyNamespace(n) => self.apply_namespace(n),
            Event::DeleteNamespace(n) => self.delete_namespace(&n),
            Event::ResetNamespaces(v) => self.reset_namespaces(v),
            Event::ApplyPod(p) => self.apply_pod(p),
            Event::DeletePod(k) => self.delete_pod(&k),
            Event::ResetPods(v) => self.reset_pods(v),
            Event::ApplyService(s) => self.apply_service(s),
            Event::DeleteService(k) => self.delete_service(&k),
            Event::ResetServices(v) => self.reset_services(v),
            Event::ApplySlice(s) => self.apply_slice(s),
            Event::DeleteSlice(k) => self.delete_slice(&k),
            Event::ResetSlices(v) => self.reset_slices(v),
            Event::ApplyPolicy(p) => self.apply_policy(p),
            Event::DeletePolicy(k, key) => self.delete_policy(k, &key),
            Event::ResetPolicies(k, v) => self.reset_policies(k, v),
            Event::Synced(k) => self.mark_synced(k),
        }
    }
}

/// Runs the index: applies every event that has arrived, commits once, publishes the view
/// (so a burst — a relist of 10 000 pods — becomes one view, not 10 000). Returns when every
/// sender is gone.
pub async fn run(
    mut index: Index,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    views: tokio::sync::watch::Sender<Arc<View>>,
    statuses: Option<tokio::sync::watch::Sender<Arc<Vec<PolicyState>>>>,
) {
    while let Some(first) = events.recv().await {
        let mut policies_touched = is_policy_event(&first);
        index.apply(first);
        while let Ok(more) = events.try_recv() {
            policies_touched |= is_policy_event(&more);
            index.apply(more);
        }
        if let Some(v) = index.commit() {
            let v = Arc::new(v.clone());
            tracing::debug!(
                seq = v.seq,
                synced = v.synced,
                workloads = v.workloads.len(),
                services = v.services.len(),
                "view published"
            );
            views.send_replace(v);
        }
        if let (true, Some(tx)) = (policies_touched, &statuses) {
            tx.send_replace(Arc::new(index.policy_states().cloned().collect()));
        }
    }
}

fn is_policy_event(e: &Event) -> bool {
    matches!(
        e,
        Event::ApplyPolicy(_) | Event::DeletePolicy(..) | Event::ResetPolicies(..) | Event::Mesh(_)
    )
}

#[cfg(test)]
mod tests;
