//! The policy set, indexed by the workloads policies apply to.
//!
//! Policies are grouped by namespace; within a namespace, those without a selector apply to
//! every workload, and those with a selector are filed under one of their `key=value` labels.
//! Finding the policies of a workload therefore looks only at its namespace, the root
//! namespace, and the buckets of its own labels — the cost does not grow with policies
//! elsewhere in the mesh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compile::{parse_documents, Document, PolicyError, TrustConfig};
use crate::eval::{evaluate, Attributes, Decision, NoTrace, Tracer};
use crate::model::{MtlsMode, PeerAuthentication, Policy};

/// Default root namespace: policies there apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "ward-system";

#[derive(Debug, Default, Clone)]
struct NsIndex {
    unselected: Vec<Arc<Policy>>,
    /// label key → label value → policies whose selector includes that pair.
    by_label: HashMap<String, HashMap<String, Vec<Arc<Policy>>>>,
}

/// An immutable, indexed set of policies (swap a whole new one in on change).
#[derive(Debug, Clone)]
pub struct PolicySet {
    root_namespace: String,
    trust: TrustConfig,
    by_ns: HashMap<String, NsIndex>,
    peer_auth: Vec<PeerAuthentication>,
    all: Vec<Arc<Policy>>,
}

impl PolicySet {
    pub fn new(root_namespace: &str, trust: TrustConfig) -> Self {
        Self {
            root_namespace: root_namespace.to_owned(),
            trust,
            by_ns: HashMap::new(),
            peer_auth: Vec::new(),
            all: Vec::new(),
        }
    }

    /// Builds a set from parsed documents. Two policies with the same namespace/name: the later
    /// one replaces the earlier (as a Kubernetes apply would).
    pub fn from_documents(
        root_namespace: &str,
        trust: TrustConfig,
        docs: impl IntoIterator<Item = Document>,
    ) -> Self {
        let mut authz: BTreeMap<_, Policy> = BTreeMap::new();
        let mut peer: BTreeMap<_, PeerAuthentication> = BTreeMap::new();
        for d in docs {
            match d {
                Document::Authorization(p) => {
                    authz.insert(p.id.clone(), p);
                }
                Document::PeerAuthentication(p) => {
                    peer.insert(p.id.clone(), p);
                }
            }
        }
        let mut set = Self::new(root_namespace, trust);
        for p in authz.into_values() {
            set.insert(Arc::new(p));
        }
        set.peer_auth = peer.into_values().collect();
        set
    }

    /// Parses YAML texts `(origin, text)` and builds a set; all errors of all texts are returned.
    pub fn parse<'a>(
        root_namespace: &str,
        trust: TrustConfig,
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<PolicyError>> {
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for (origin, text) in texts {
            match parse_documents(text, origin, &trust) {
                Ok(mut d) => docs.append(&mut d),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(Self::from_documents(root_namespace, trust, docs))
        } else {
            Err(errors)
        }
    }

    fn insert(&mut self, p: Arc<Policy>) {
        self.all.push(p.clone());
        if p.targets_only {
            return;
        }
        let ns = self.by_ns.entry(p.id.namespace.clone()).or_default();
        match p.selector.as_ref().and_then(|s| s.iter().next()) {
            None => ns.unselected.push(p),
            Some((k, v)) => ns
                .by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .push(p),
        }
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    pub fn trust(&self) -> &TrustConfig {
        &self.trust
    }

    /// Every policy, including ones that apply to no workload.
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.all
    }

    /// The policies that apply to a workload, in a stable order (root namespace first, then
    /// by namespace/name). Compute once per workload and reuse for every connection.
    pub fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkloadPolicies {
        let mut out: Vec<Arc<Policy>> = Vec::new();
        let mut scan = |ns: &str| {
            if let Some(idx) = self.by_ns.get(ns) {
                out.extend(idx.unselected.iter().cloned());
                for (k, v) in labels {
                    if let Some(bucket) = idx.by_label.get(k).and_then(|m| m.get(v)) {
                        out.extend(bucket.iter().filter(|p| p.selects(labels)).cloned());
                    }
                }
            }
        };
        scan(&self.root_namespace);
        if namespace != self.root_namespace {
            scan(namespace);
        }
        let root = &self.root_namespace;
        out.sort_by(|a, b| (a.id.namespace != *root, &a.id).cmp(&(b.id.namespace != *root, &b.id)));
        WorkloadPolicies { policies: out }
    }

    /// Whether any PeerAuthentication was loaded.
    pub fn has_peer_authentication(&self) -> bool {
        !self.peer_auth.is_empty()
    }

    /// The peer-authentication mode of a workload: a selecting policy in its namespace, else
    /// its namespace's policy, else the root namespace's, else STRICT.
    pub fn mtls_mode(&self, namespace: &str, labels: &BTreeMap<String, String>) -> MtlsMode {
        let pick = |ns: &str, selected: bool| {
            self.peer_auth
                .iter()
                .filter(|p| p.id.namespace == ns && p.selector.is_some() == selected)
                .filter(|p| {
                    p.selector
                        .as_ref()
                        .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
                })
                .find_map(|p| p.mode)
        };
        pick(namespace, true)
            .or_else(|| pick(namespace, false))
            .or_else(|| pick(&self.root_namespace, false))
            .unwrap_or(MtlsMode::Strict)
    }
}

/// The policies of one workload, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct WorkloadPolicies {
    policies: Vec<Arc<Policy>>,
}

impl WorkloadPolicies {
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    pub fn evaluate(&self, a: &Attributes<'_>) -> Decision<'_> {
        evaluate(self.policies.iter().map(|p| &**p), a, &mut NoTrace)
    }

    pub fn evaluate_traced<T: Tracer>(&self, a: &Attributes<'_>, t: &mut T) -> Decision<'_> {
        evaluate(self.policies.iter().map(|p| &**p), a, t)
    }
}
