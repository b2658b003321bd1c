//! The mesh configuration a node proxy runs on: nodes, workloads, services, policies, trust
//! bundle. Local mode reads it from a YAML file (hot-reloaded); the control component will
//! serve the same model over its stream.
//!
//! ```yaml
//! trustDomain: cluster.local
//! rootNamespace: ward-system
//! trustBundle: /etc/ward/root.pem        # PEM file (relative to this file) of the roots
//! nodes:
//!   - {name: node-1, address: 10.77.0.1, podCidr: 10.77.1.0/24}
//! workloads:
//!   - name: web-1
//!     namespace: shop
//!     serviceAccount: web
//!     node: node-1
//!     ip: 10.77.1.2
//!     labels: {app: web}
//!     ports: [{port: 80, protocol: http}]
//! services:
//!   - {name: web, namespace: shop, vip: 10.96.0.10, selector: {app: web},
//!      ports: [{port: 80, targetPort: 80, protocol: http}]}
//! policies: [./policies/]                # AuthorizationPolicy / PeerAuthentication files
//! ```
//! [`Snapshot::build`] validates everything and produces the immutable, indexed view the data
//! path reads; an invalid file never replaces a good snapshot.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;
use ward_lib_identity::{SpiffeId, TrustBundle, TrustDomain};
use ward_lib_policy::{MtlsMode, PolicySet, TrustConfig, WorkloadPolicies};

/// HBONE port on every node.
pub const HBONE_PORT: u16 = 15008;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFile {
    #[serde(default = "default_td")]
    pub trust_domain: String,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default = "default_root_ns")]
    pub root_namespace: String,
    /// PEM file of the trust domain's roots.
    pub trust_bundle: PathBuf,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Policy files or directories.
    #[serde(default)]
    pub policies: Vec<PathBuf>,
}

fn default_td() -> String {
    "cluster.local".into()
}

fn default_root_ns() -> String {
    ward_lib_policy::DEFAULT_ROOT_NAMESPACE.into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    pub name: String,
    /// The address other proxies reach this node's HBONE port on.
    pub address: IpAddr,
    pub pod_cidr: IpNet,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    pub port: u16,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    pub port: u16,
    pub target_port: Option<u16>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// Whether a port is HTTP: `appProtocol` http/http2/grpc, a name prefixed `http-`, `http2-`
/// or `grpc-`, or `protocol: http|http2|grpc` in the local configuration.
pub fn is_http(name: Option<&str>, protocol: Option<&str>, app_protocol: Option<&str>) -> bool {
    declared(name, protocol, app_protocol, &["http", "http2", "grpc"])
}

/// Whether an HTTP port's server speaks HTTP/2: `http2` or `grpc` (protocol or appProtocol),
/// or a name prefixed `http2-` / `grpc-`.
pub fn is_h2(name: Option<&str>, protocol: Option<&str>, app_protocol: Option<&str>) -> bool {
    declared(name, protocol, app_protocol, &["http2", "grpc"])
}

/// A port declares one of `protocols` by appProtocol, protocol, or a `<protocol>-` name prefix.
fn declared(
    name: Option<&str>,
    protocol: Option<&str>,
    app_protocol: Option<&str>,
    protocols: &[&str],
) -> bool {
    let named = |p: &str| protocols.iter().any(|x| p.eq_ignore_ascii_case(x));
    app_protocol.is_some_and(named)
        || protocol.is_some_and(named)
        || name.is_some_and(|n| {
            let n = n.to_ascii_lowercase();
            protocols.iter().any(|x| n.starts_with(&format!("{x}-")))
        })
}

/// One workload, resolved.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub identity: SpiffeId,
    pub node: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    /// Ports declared HTTP.
    pub http_ports: Vec<u16>,
    /// The HTTP ports whose server speaks HTTP/2 (`http2`, `grpc`): forwarded as HTTP/2.
    pub h2_ports: Vec<u16>,
    /// The node proxy's HBONE address.
    pub hbone: SocketAddr,
    /// Policies applying to this workload (computed once per snapshot).
    pub policies: WorkloadPolicies,
    pub mtls: MtlsMode,
}

impl Workload {
    pub fn is_http_port(&self, port: u16) -> bool {
        self.http_ports.contains(&port)
    }
}

/// A service port → the endpoints behind it.
#[derive(Debug)]
pub struct ServiceBackend {
    pub namespace: String,
    pub name: String,
    pub target_port: u16,
    pub endpoints: Vec<Arc<Workload>>,
}

/// The immutable, validated view a proxy runs on.
#[derive(Debug)]
pub struct Snapshot {
    pub trust_domain: TrustDomain,
    pub bundle: TrustBundle,
    pub nodes: BTreeMap<String, NodeSpec>,
    pub by_ip: HashMap<IpAddr, Arc<Workload>>,
    pub services: HashMap<SocketAddr, ServiceBackend>,
    pub policies: PolicySet,
    /// A fingerprint of the inputs, for `/config_dump` and logs.
    pub version: String,
}

/// Everything a snapshot is built from, read from disk, with a content fingerprint.
#[derive(Debug)]
pub struct Inputs {
    pub file: MeshFile,
    pub bundle_pem: String,
    pub policy_texts: Vec<(String, String)>,
    /// FNV-1a over every input's bytes: equal fingerprints mean an unchanged configuration.
    pub version: String,
}

impl Inputs {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let file: MeshFile = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(
            &text,
        ))
        .map_err(|e| ConfigError(format!("{}: {}: {}", path.display(), e.path(), e.inner())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let bundle_path = base.join(&file.trust_bundle);
        let bundle_pem = std::fs::read_to_string(&bundle_path)
            .map_err(|e| ConfigError(format!("trustBundle {}: {e}", bundle_path.display())))?;
        let mut policy_texts = Vec::new();
        for p in &file.policies {
            collect_policy_files(&base.join(p), &mut policy_texts)
                .map_err(|e| ConfigError(format!("policies {}: {e}", p.display())))?;
        }
        let mut hasher = Fnv::default();
        hasher.write(text.as_bytes());
        hasher.write(bundle_pem.as_bytes());
        for (name, t) in &policy_texts {
            hasher.write(name.as_bytes());
            hasher.write(t.as_bytes());
        }
        Ok(Self {
            file,
            bundle_pem,
            policy_texts,
            version: format!("{:016x}", hasher.0),
        })
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Snapshot {
    /// Reads and validates the mesh file and everything it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let inputs = Inputs::read(path)?;
        Self::build(
            inputs.file,
            &inputs.bundle_pem,
            &inputs.policy_texts,
            inputs.version,
        )
    }

    /// Validates a parsed mesh file with its bundle and policy texts.
    pub fn build(
        file: MeshFile,
        bundle_pem: &str,
        policy_texts: &[(String, String)],
        version: String,
    ) -> Result<Self, ConfigError> {
        let err = |m: String| ConfigError(m);
        let td =
            TrustDomain::parse(&file.trust_domain).map_err(|e| err(format!("trustDomain: {e}")))?;
        let mut bundle = TrustBundle::new();
        bundle
            .add_pem(&td, bundle_pem)
            .map_err(|e| err(format!("trustBundle: {e}")))?;
        let policies = PolicySet::parse(
            &file.root_namespace,
            TrustConfig {
                trust_domain: file.trust_domain.clone(),
                aliases: file.trust_domain_aliases.clone(),
            },
            policy_texts.iter().map(|(o, t)| (o.as_str(), t.as_str())),
        )
        .map_err(|es| {
            err(es
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        let mut nodes = BTreeMap::new();
        for (i, n) in file.nodes.into_iter().enumerate() {
            if nodes.contains_key(&n.name) {
                return Err(err(format!("nodes[{i}].name: duplicate node {:?}", n.name)));
            }
            nodes.insert(n.name.clone(), n);
        }
        let mut by_ip: HashMap<IpAddr, Arc<Workload>> = HashMap::new();
        for (i, w) in file.workloads.into_iter().enumerate() {
            let at = |f: &str| format!("workloads[{i}].{f}");
            let node = nodes
                .get(&w.node)
                .ok_or_else(|| err(format!("{}: unknown node {:?}", at("node"), w.node)))?;
            let identity = SpiffeId::for_service_account(&td, &w.namespace, &w.service_account)
                .map_err(|e| err(format!("{}: {e}", at("serviceAccount"))))?;
            if by_ip.contains_key(&w.ip) {
                return Err(err(format!(
                    "{}: {} is used by another workload",
                    at("ip"),
                    w.ip
                )));
            }
            let http_ports = w
                .ports
                .iter()
                .filter(|p| {
                    is_http(
                        p.name.as_deref(),
                        p.protocol.as_deref(),
                        p.app_protocol.as_deref(),
                    )
                })
                .map(|p| p.port)
                .collect();
            let h2_ports = w
                .ports
                .iter()
                .filter(|p| {
                    is_h2(
                        p.name.as_deref(),
                        p.protocol.as_deref(),
                        p.app_protocol.as_deref(),
                    )
                })
                .map(|p| p.port)
                .collect();
            let wp = policies.for_workload(&w.namespace, &w.labels);
            let mtls = policies.mtls_mode(&w.namespace, &w.labels);
            by_ip.insert(
                w.ip,
                Arc::new(Workload {
                    identity,
                    hbone: SocketAddr::new(node.address, HBONE_PORT),
                    node: w.node,
                    name: w.name,
                    namespace: w.namespace,
                    service_account: w.service_account,
                    ip: w.ip,
                    labels: w.labels,
                    http_ports,
                    h2_ports,
                    policies: wp,
                    mtls,
                }),
            );
        }
        let mut services = HashMap::new();
        for (i, s) in file.services.into_iter().enumerate() {
            let mut endpoints: Vec<Arc<Workload>> = by_ip
                .values()
                .filter(|w| {
                    w.namespace == s.namespace
                        && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .cloned()
                .collect();
            endpoints.sort_by_key(|w| w.ip);
            for (j, p) in s.ports.iter().enumerate() {
                let key = SocketAddr::new(s.vip, p.port);
                if services.contains_key(&key) {
                    return Err(err(format!(
                        "services[{i}].ports[{j}]: {key} is declared twice"
                    )));
                }
                services.insert(
                    key,
                    ServiceBackend {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        target_port: p.target_port.unwrap_or(p.port),
                        endpoints: endpoints.clone(),
                    },
                );
            }
        }
        Ok(Self {
            trust_domain: td,
            bundle,
            nodes,
            by_ip,
            services,
            policies,
            version,
        })
    }

    /// The workloads scheduled on `node`.
    pub fn local_workloads<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        self.by_ip.values().filter(move |w| w.node == node)
    }
}

/// Every policy file under `p`: a named file as is; a directory walked in sorted order for
/// `*.yaml`, `*.yml` and `*.json`, skipping `*.test.yaml` (`ward policy test` files).
pub fn policy_files(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let is_policy =
                (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
                    && !name.ends_with(".test.yaml")
                    && !name.ends_with(".test.yml");
            if e.is_dir() || is_policy {
                policy_files(&e, out)?;
            }
        }
    } else {
        // A named file is read whatever its extension; a missing one is an error.
        std::fs::metadata(p)?;
        out.push(p.to_owned());
    }
    Ok(())
}

fn collect_policy_files(p: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
    let mut files = Vec::new();
    policy_files(p, &mut files)?;
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        out.push((f.display().to_string(), text));
    }
    Ok(())
}

/// FNV-1a: a stable, dependency-free fingerprint for config versions (not for security).
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
