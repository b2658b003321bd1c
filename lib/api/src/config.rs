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
//!     ip: 10.77.1.2                      # or, dual-stack: ips: [10.77.1.2, fd77:1::2]
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
use ward_lib_policy::{MtlsMode, PolicySet, WorkloadPolicies};

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
    /// Informational: interception captures the addresses of the node's workloads, not a CIDR.
    #[serde(default)]
    pub pod_cidr: Option<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    /// The workload's address; a dual-stack workload gives `ips` instead (one per family, as
    /// Kubernetes' `status.podIPs`).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Let non-TCP traffic (UDP, ICMP, …) reach this workload although its peer
    /// authentication is STRICT (otherwise the node drops it: it cannot be authenticated).
    #[serde(default)]
    pub allow_non_tcp: bool,
}

impl WorkloadSpec {
    /// Every address of the workload: `ip`, or `ips`. Errors name the field.
    pub fn addresses(&self, i: usize) -> Result<Vec<IpAddr>, ConfigError> {
        match (self.ip, self.ips.as_slice()) {
            (Some(ip), []) => Ok(vec![ip]),
            (None, []) => Err(ConfigError(format!(
                "workloads[{i}]: needs an address (`ip`, or `ips` for a dual-stack workload)"
            ))),
            (Some(_), _) => Err(ConfigError(format!(
                "workloads[{i}]: give either `ip` or `ips`, not both"
            ))),
            (None, ips) => Ok(ips.to_vec()),
        }
    }
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
    /// The first of `ips`.
    pub ip: IpAddr,
    /// Every address of the workload (dual-stack pods have two).
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Ports declared HTTP.
    pub http_ports: Vec<u16>,
    /// The HTTP ports whose server speaks HTTP/2 (`http2`, `grpc`): forwarded as HTTP/2.
    pub h2_ports: Vec<u16>,
    /// The node proxy's HBONE address.
    pub hbone: SocketAddr,
    /// Policies applying to this workload (computed once per snapshot, for local workloads).
    pub policies: WorkloadPolicies,
    pub mtls: MtlsMode,
    /// Non-TCP traffic may reach it even when `mtls` is STRICT (the operator allowed it).
    pub allow_non_tcp: bool,
}

impl Workload {
    pub fn is_http_port(&self, port: u16) -> bool {
        self.http_ports.contains(&port)
    }
}

/// A service port → the endpoints behind it (address and target port). An endpoint that is a
/// mesh workload (found in the address table when a connection is routed) is reached through
/// its node's tunnel; any other is passed through.
#[derive(Debug, Clone)]
pub struct ServiceBackend {
    pub namespace: String,
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
}

/// Workloads by address. foldhash, not SipHash: keys come from the configuration, lookups are
/// per connection, and a proxy builds this map for every workload of the mesh.
pub type ByIp = HashMap<IpAddr, Arc<Workload>, foldhash::fast::RandomState>;
/// Service backends by VIP:port.
pub type ByAddr = HashMap<SocketAddr, Arc<ServiceBackend>, foldhash::fast::RandomState>;

/// The immutable, validated view a proxy runs on.
#[derive(Debug)]
pub struct Snapshot {
    pub trust_domain: TrustDomain,
    pub bundle: TrustBundle,
    pub by_ip: ByIp,
    pub services: ByAddr,
    pub policies: Arc<PolicySet>,
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
        let file = MeshFile::parse(&text, &path.display().to_string())?;
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

impl MeshFile {
    /// Parses a mesh file; errors name the file and the field path.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| ConfigError(format!("{origin}: {}: {}", e.path(), e.inner())))
    }

    /// The mesh settings (trust domain, aliases, root namespace) with the bundle's PEM.
    pub fn mesh_config(&self, bundle_pem: &str) -> crate::control::MeshConfig {
        crate::control::MeshConfig {
            trust_domain: self.trust_domain.clone(),
            trust_domain_aliases: self.trust_domain_aliases.clone(),
            root_namespace: self.root_namespace.clone(),
            roots_pem: bundle_pem.to_owned(),
        }
    }

    /// The file's workloads and services as control-stream resources (`(name, message)`):
    /// node addresses resolved, services' selectors resolved to endpoints, port protocols
    /// declared. Errors name the entry and field.
    #[allow(clippy::type_complexity)] // reason: two plain lists of (name, message)
    pub fn resources(
        &self,
    ) -> Result<
        (
            Vec<(String, crate::control::Workload)>,
            Vec<(String, crate::control::Service)>,
        ),
        ConfigError,
    > {
        use crate::control as pb;
        use crate::resources::{ip_to_bytes, port_protocol};
        let err = |m: String| ConfigError(m);
        let mut nodes = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if nodes.insert(n.name.as_str(), n).is_some() {
                return Err(err(format!("nodes[{i}].name: duplicate node {:?}", n.name)));
            }
        }
        let mut seen_ips = HashMap::new();
        let mut workloads = Vec::with_capacity(self.workloads.len());
        let mut addresses = Vec::with_capacity(self.workloads.len());
        for (i, w) in self.workloads.iter().enumerate() {
            let node = nodes
                .get(w.node.as_str())
                .ok_or_else(|| err(format!("workloads[{i}].node: unknown node {:?}", w.node)))?;
            let ips = w.addresses(i)?;
            for ip in &ips {
                if let Some(other) = seen_ips.insert(*ip, i) {
                    return Err(err(format!(
                        "workloads[{i}]: address {ip} is used by workloads[{other}] too"
                    )));
                }
            }
            let ports = w
                .ports
                .iter()
                .map(|p| pb::WorkloadPort {
                    port: u32::from(p.port),
                    protocol: port_protocol(
                        p.name.as_deref(),
                        p.protocol.as_deref(),
                        p.app_protocol.as_deref(),
                    ) as i32,
                })
                .collect();
            workloads.push((
                format!("{}/{}", w.namespace, w.name),
                pb::Workload {
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    service_account: w.service_account.clone(),
                    node: w.node.clone(),
                    ips: ips.iter().copied().map(ip_to_bytes).collect(),
                    node_address: ip_to_bytes(node.address),
                    labels: w.labels.clone(),
                    ports,
                    allow_non_tcp: w.allow_non_tcp,
                },
            ));
            addresses.push(ips);
        }
        let mut services = Vec::with_capacity(self.services.len());
        for s in &self.services {
            // A service's endpoints are the selected workloads' addresses in its VIP's family
            // (as Kubernetes keeps one EndpointSlice per family).
            let mut selected: Vec<IpAddr> = self
                .workloads
                .iter()
                .zip(&addresses)
                .filter(|(w, _)| {
                    w.namespace == s.namespace
                        && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .filter_map(|(_, ips)| {
                    ips.iter()
                        .copied()
                        .find(|ip| ip.is_ipv4() == s.vip.is_ipv4())
                })
                .collect();
            selected.sort();
            let ports = s
                .ports
                .iter()
                .map(|p| pb::ServicePort {
                    port: u32::from(p.port),
                    protocol: port_protocol(
                        p.name.as_deref(),
                        p.protocol.as_deref(),
                        p.app_protocol.as_deref(),
                    ) as i32,
                    endpoints: selected
                        .iter()
                        .map(|ip| pb::Endpoint {
                            ip: ip_to_bytes(*ip),
                            port: u32::from(p.target_port.unwrap_or(p.port)),
                        })
                        .collect(),
                })
                .collect();
            services.push((
                format!("{}/{}", s.namespace, s.name),
                pb::Service {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    vips: vec![ip_to_bytes(s.vip)],
                    ports,
                },
            ));
        }
        Ok((workloads, services))
    }
}

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

    /// Validates a parsed mesh file with its bundle and policy texts. Policies are resolved
    /// for every workload (a mesh file may be shared by all nodes).
    pub fn build(
        file: MeshFile,
        bundle_pem: &str,
        policy_texts: &[(String, String)],
        version: String,
    ) -> Result<Self, ConfigError> {
        let mesh = crate::resources::Mesh::from_pb(&file.mesh_config(bundle_pem))
            .map_err(|e| ConfigError(e.message))?;
        let policies = PolicySet::parse(
            &mesh.root_namespace,
            mesh.trust(),
            policy_texts.iter().map(|(o, t)| (o.as_str(), t.as_str())),
        )
        .map_err(|es| {
            ConfigError(
                es.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let policies = Arc::new(policies);
        let (workloads, services) = file.resources()?;
        let mut table = crate::table::AddressTable::default();
        let mut txn = table.begin();
        for (name, w) in workloads {
            // Every node's view: this node's name is the workload's own.
            let node = w.node.clone();
            let resolved =
                crate::resources::workload_from_pb(&name, w, &mesh.trust_domain, &policies, &node)
                    .map_err(|e| ConfigError(e.to_string()))?;
            txn.put_workload(&name.as_str().into(), Arc::new(resolved))?;
        }
        for (name, s) in &services {
            let addrs = crate::resources::service_from_pb(name, s)
                .map_err(|e| ConfigError(e.to_string()))?;
            txn.put_service(&name.as_str().into(), addrs)?;
        }
        txn.commit();
        Ok(Self::cut(&mesh, policies, &table, version))
    }

    /// A snapshot of `table` under `mesh` and `policies`.
    pub fn cut(
        mesh: &crate::resources::Mesh,
        policies: Arc<PolicySet>,
        table: &crate::table::AddressTable,
        version: String,
    ) -> Self {
        let (by_ip, services) = table.cut();
        Self {
            trust_domain: mesh.trust_domain.clone(),
            bundle: mesh.bundle.clone(),
            by_ip,
            services,
            policies,
            version,
        }
    }

    /// The workloads scheduled on `node` (each once, however many addresses it has).
    pub fn local_workloads<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        self.by_ip
            .iter()
            .filter(move |(ip, w)| w.node == node && **ip == w.ip)
            .map(|(_, w)| w)
    }

    /// Every address of a workload on `node` that non-TCP traffic must not reach: STRICT, and
    /// the operator did not allow non-TCP (`allowNonTcp`, annotation `ward.dev/allow-non-tcp`).
    /// Non-TCP cannot go through the proxy, so it cannot be authenticated.
    pub fn local_closed_to_non_tcp(&self, node: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .by_ip
            .iter()
            .filter(|(_, w)| w.node == node && w.mtls == MtlsMode::Strict && !w.allow_non_tcp)
            .map(|(ip, _)| *ip)
            .collect();
        v.sort();
        v
    }

    /// Every address of a workload on `node`: what interception captures.
    pub fn local_addresses(&self, node: &str) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .by_ip
            .iter()
            .filter(|(_, w)| w.node == node)
            .map(|(ip, _)| *ip)
            .collect();
        v.sort();
        v
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(workloads: &str) -> MeshFile {
        let text = format!(
            "trustBundle: root.pem\nnodes:\n  - {{name: n1, address: 'fd77::1'}}\nworkloads:\n{workloads}services:\n  - {{name: web, namespace: shop, vip: 10.96.0.10, selector: {{app: web}}, ports: [{{port: 80}}]}}\n  - {{name: web6, namespace: shop, vip: 'fd96::10', selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
        );
        MeshFile::parse(&text, "mesh.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> Vec<u8> {
        crate::resources::ip_to_bytes(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn a_dual_stack_workload_carries_both_addresses_and_each_vip_its_own_family() {
        let f = file(
            "  - {name: a, namespace: shop, serviceAccount: a, node: n1, ips: [10.1.0.2, 'fd01::2'], labels: {app: web}}\n  - {name: b, namespace: shop, serviceAccount: b, node: n1, ip: 10.1.0.3, labels: {app: web}}\n",
        );
        let (workloads, services) = f.resources().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(workloads[0].1.ips, vec![ip("10.1.0.2"), ip("fd01::2")]);
        assert_eq!(workloads[1].1.ips, vec![ip("10.1.0.3")]);
        assert_eq!(workloads[0].1.node_address, ip("fd77::1"));
        let endpoints = |i: usize| -> Vec<Vec<u8>> {
            services[i].1.ports[0]
                .endpoints
                .iter()
                .map(|e| e.ip.clone())
                .collect()
        };
        assert_eq!(endpoints(0), vec![ip("10.1.0.2"), ip("10.1.0.3")]);
        assert_eq!(
            endpoints(1),
            vec![ip("fd01::2")],
            "IPv6 VIP, IPv6 endpoints only"
        );
    }

    #[test]
    fn workload_addresses_are_checked_with_the_field_named() {
        for (workloads, want) in [
            (
                "  - {name: a, namespace: shop, serviceAccount: a, node: n1}\n",
                "workloads[0]: needs an address",
            ),
            (
                "  - {name: a, namespace: shop, serviceAccount: a, node: n1, ip: 10.1.0.2, ips: ['fd01::2']}\n",
                "workloads[0]: give either `ip` or `ips`",
            ),
            (
                "  - {name: a, namespace: shop, serviceAccount: a, node: n1, ips: [10.1.0.2, 'fd01::2']}\n  - {name: b, namespace: shop, serviceAccount: b, node: n1, ip: 'fd01::2'}\n",
                "workloads[1]: address fd01::2 is used by workloads[0] too",
            ),
        ] {
            let err = match file(workloads).resources() {
                Ok(_) => panic!("accepted: {workloads}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
