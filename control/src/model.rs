//! The protocol-neutral inputs of the index: what ward needs to know of nodes, namespaces,
//! pods, services, endpoint slices and policies, and nothing more.
//!
//! Both sources produce these — the Kubernetes source from API objects (keeping only the
//! fields used, so 10 000 pods cost little memory), the local source from the mesh file — and
//! everything downstream is shared. No Kubernetes types here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ward_lib_api::control::PortProtocol;

/// `namespace/name` of a namespaced object. The index files each key under several indexes
/// (by namespace, node, address…); shared strings make those copies reference counts, not
/// allocations (10 000 pods).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl Key {
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: namespace.as_ref().into(),
            name: name.as_ref().into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A node: where its proxy's HBONE port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// The node's internal address; a node without one cannot host mesh workloads yet.
    pub address: Option<IpAddr>,
}

/// A namespace: whether its pods are enrolled (`ward.dev/mesh: enabled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub enrolled: bool,
    /// `ward.dev/allow-non-tcp: "true"`: non-TCP traffic may reach its STRICT workloads.
    pub allow_non_tcp: bool,
}

/// A pod, reduced to what the mesh needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub key: Key,
    /// `spec.nodeName`; `None` until scheduled.
    pub node: Option<String>,
    pub service_account: String,
    /// `status.podIPs`; empty until the pod has an address.
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// The pod asked to stay out of the mesh (`ward.dev/mesh: disabled`), or shares its
    /// node's network (`hostNetwork`), which cannot be captured per pod.
    pub opted_out: bool,
    /// Phase `Succeeded` or `Failed`: its containers are gone and its address may be reused.
    pub terminated: bool,
    /// Port protocols declared on the pod itself (local mode); Kubernetes declares them on
    /// Services (`appProtocol`, port names), which reach the pod through endpoint slices.
    pub declared_ports: Vec<(u16, PortProtocol)>,
    /// `ward.dev/allow-non-tcp: "true"` on the pod (or, locally, `allowNonTcp` in the mesh
    /// file): non-TCP traffic may reach it even when STRICT.
    pub allow_non_tcp: bool,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub port: u16,
    /// Matches the endpoint-slice port of the same name (`""` when unnamed).
    pub name: String,
    pub protocol: PortProtocol,
}

/// A Service with its cluster IPs (`None`/headless services have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: Key,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
}

/// A port of an endpoint slice: the target port the service port of the same name maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: PortProtocol,
}

/// An endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ips: Vec<IpAddr>,
    /// `conditions.ready` (absent counts as ready, as the API documents).
    pub ready: bool,
}

/// An EndpointSlice of a service (`kubernetes.io/service-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub key: Key,
    /// The service's name, in the slice's namespace.
    pub service: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// The policy kinds ward reads: its own (`security.ward.dev`) and, when asked, Istio's
/// (`security.istio.io`), kept apart so a policy of each with the same name are two objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    AuthorizationPolicy,
    PeerAuthentication,
    IstioAuthorizationPolicy,
    IstioPeerAuthentication,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::AuthorizationPolicy,
        PolicyKind::PeerAuthentication,
        PolicyKind::IstioAuthorizationPolicy,
        PolicyKind::IstioPeerAuthentication,
    ];

    /// The Kubernetes kind.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy | PolicyKind::IstioAuthorizationPolicy => {
                "AuthorizationPolicy"
            }
            PolicyKind::PeerAuthentication | PolicyKind::IstioPeerAuthentication => {
                "PeerAuthentication"
            }
        }
    }

    /// The prefix of its resource names on the control stream.
    pub fn resource_prefix(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::PeerAuthentication => "PeerAuthentication",
            PolicyKind::IstioAuthorizationPolicy => "istio.AuthorizationPolicy",
            PolicyKind::IstioPeerAuthentication => "istio.PeerAuthentication",
        }
    }

    /// The kind of a document by its `apiVersion` group and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        let istio = api_version.starts_with("security.istio.io/");
        match (kind, istio) {
            ("AuthorizationPolicy", false) => Some(PolicyKind::AuthorizationPolicy),
            ("PeerAuthentication", false) => Some(PolicyKind::PeerAuthentication),
            ("AuthorizationPolicy", true) => Some(PolicyKind::IstioAuthorizationPolicy),
            ("PeerAuthentication", true) => Some(PolicyKind::IstioPeerAuthentication),
            _ => None,
        }
    }

    pub fn is_authorization(self) -> bool {
        matches!(
            self,
            PolicyKind::AuthorizationPolicy | PolicyKind::IstioAuthorizationPolicy
        )
    }
}

/// A policy object as stored: identity, generation and the whole document (apiVersion, kind,
/// metadata, spec), validated by the index.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyObject {
    pub kind: PolicyKind,
    pub key: Key,
    /// `metadata.generation` (0 where there is none, e.g. files).
    pub generation: i64,
    /// Where it came from, for messages (`file policies/deny.yaml[doc 2]`, `kubernetes`).
    pub origin: String,
    pub document: serde_json::Value,
    /// The API object's uid and current `.status` (Kubernetes only): what the status writer
    /// compares against, and the Events' subject. Not part of what is enforced.
    pub uid: Option<String>,
    pub status: Option<serde_json::Value>,
}

impl PolicyObject {
    /// Whether `other` is the same policy as written (status and uid aside).
    pub fn same_policy(&self, other: &PolicyObject) -> bool {
        self.kind == other.kind
            && self.key == other.key
            && self.generation == other.generation
            && self.origin == other.origin
            && self.document == other.document
    }
}

/// `(kind, namespace/name)` of a policy.
pub type PolicyId = (PolicyKind, Key);
