//! ward's control-stream resources: type URLs, names, content-hash versions, and the checked
//! conversions from wire messages into the data path's types.
//!
//! The control component encodes each resource once and sends the same bytes to every proxy
//! that needs it; the version is a hash of those bytes, so every replica (and a restarted one)
//! names the same content with the same version. Conversions never trust the wire: an
//! address of the wrong length, an identity that is not a valid SPIFFE path, a port out of
//! range — each is an error naming the resource and the field, which the proxy NACKs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use ward_lib_identity::{SpiffeId, TrustDomain};
use ward_lib_policy::PolicySet;

use crate::config::{ServiceBackend, Workload, HBONE_PORT};
use crate::control::{self as pb, PortProtocol};

/// `type.googleapis.com/ward.control.v1.MeshConfig`
pub const MESH_CONFIG: &str = "type.googleapis.com/ward.control.v1.MeshConfig";
/// `type.googleapis.com/ward.control.v1.Workload`
pub const WORKLOAD: &str = "type.googleapis.com/ward.control.v1.Workload";
/// `type.googleapis.com/ward.control.v1.Service`
pub const SERVICE: &str = "type.googleapis.com/ward.control.v1.Service";
/// `type.googleapis.com/ward.control.v1.Policy`
pub const POLICY: &str = "type.googleapis.com/ward.control.v1.Policy";

/// Every type a proxy subscribes to, in the order a control component sends initial state
/// (the mesh first: its trust domain is needed to read everything else).
pub const TYPES: [&str; 4] = [MESH_CONFIG, WORKLOAD, SERVICE, POLICY];

/// The name of the one MeshConfig resource.
pub const MESH_NAME: &str = "mesh";

/// The short name of a type URL (`Workload` for `…ward.control.v1.Workload`), for logs and
/// metrics labels.
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// An encoded resource: its name, version, the message bytes (the `Any` value), and the whole
/// xDS `Resource` message as sent (encoded once, shared by every stream that sends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub bytes: bytes::Bytes,
    pub wire: bytes::Bytes,
}

impl Encoded {
    /// Encodes `msg` (of type `type_url`) and versions it by content.
    pub fn new(name: impl Into<Arc<str>>, type_url: &str, msg: &impl Message) -> Self {
        let name: Arc<str> = name.into();
        let bytes = bytes::Bytes::from(msg.encode_to_vec());
        let version = content_version(&bytes);
        let wire = crate::xds::Resource {
            version: version.clone(),
            name: name.to_string(),
            resource: Some(crate::Any {
                type_url: type_url.to_owned(),
                value: bytes.clone(),
            }),
        }
        .encode_to_vec()
        .into();
        Self {
            name,
            version: version.into(),
            bytes,
            wire,
        }
    }
}

/// The version of a resource: the first 16 hex digits of the SHA-256 of its encoding.
pub fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(16);
    for b in &digest[..8] {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Why a resource could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_name} {name}: {message}")]
pub struct ResourceError {
    pub type_name: &'static str,
    pub name: String,
    pub message: String,
}

fn res_err(type_name: &'static str, name: &str, message: String) -> ResourceError {
    ResourceError {
        type_name,
        name: name.to_owned(),
        message,
    }
}

/// An IP address from its 4- or 16-byte wire form.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// The wire form of an IP address.
pub fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn port(name: &str, type_name: &'static str, field: &str, p: u32) -> Result<u16, ResourceError> {
    u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
        res_err(
            type_name,
            name,
            format!("{field}: {p} is not a port (1-65535)"),
        )
    })
}

/// The mesh settings a snapshot is built with, checked.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub trust_domain: TrustDomain,
    pub aliases: Vec<String>,
    pub root_namespace: String,
    pub bundle: ward_lib_identity::TrustBundle,
}

impl Mesh {
    pub fn from_pb(m: &pb::MeshConfig) -> Result<Self, ResourceError> {
        let err = |m: String| res_err("MeshConfig", MESH_NAME, m);
        let trust_domain =
            TrustDomain::parse(&m.trust_domain).map_err(|e| err(format!("trustDomain: {e}")))?;
        for (i, a) in m.trust_domain_aliases.iter().enumerate() {
            TrustDomain::parse(a).map_err(|e| err(format!("trustDomainAliases[{i}]: {e}")))?;
        }
        if !ward_lib_identity::spiffe_id::is_dns1123_label(&m.root_namespace) {
            return Err(err(format!(
                "rootNamespace: {:?} is not a namespace name",
                m.root_namespace
            )));
        }
        let mut bundle = ward_lib_identity::TrustBundle::new();
        bundle
            .add_pem(&trust_domain, &m.roots_pem)
            .map_err(|e| err(format!("rootsPem: {e}")))?;
        Ok(Self {
            trust_domain,
            aliases: m.trust_domain_aliases.clone(),
            root_namespace: m.root_namespace.clone(),
            bundle,
        })
    }

    /// How principals in policies are interpreted under this mesh.
    pub fn trust(&self) -> ward_lib_policy::TrustConfig {
        ward_lib_policy::TrustConfig {
            trust_domain: self.trust_domain.as_str().to_owned(),
            aliases: self.aliases.clone(),
        }
    }
}

/// A pb workload, checked and resolved (its strings moved, not copied). Policies and the
/// peer-authentication mode are computed only for workloads on `local_node` (the only ones
/// this proxy authorizes for).
pub fn workload_from_pb(
    name: &str,
    w: pb::Workload,
    td: &TrustDomain,
    policies: &PolicySet,
    local_node: &str,
) -> Result<Workload, ResourceError> {
    const T: &str = "Workload";
    let identity = SpiffeId::for_service_account(td, &w.namespace, &w.service_account)
        .map_err(|e| res_err(T, name, format!("namespace/serviceAccount: {e}")))?;
    if !ward_lib_identity::spiffe_id::is_dns1123_subdomain(&w.node) {
        return Err(res_err(
            T,
            name,
            format!("node: {:?} is not a node name", w.node),
        ));
    }
    let mut ips = Vec::with_capacity(w.ips.len());
    for (i, b) in w.ips.iter().enumerate() {
        ips.push(ip_from_bytes(b).ok_or_else(|| {
            res_err(
                T,
                name,
                format!("ips[{i}]: {} bytes is not an IP address", b.len()),
            )
        })?);
    }
    let Some(&ip) = ips.first() else {
        return Err(res_err(T, name, "ips: a workload needs an address".into()));
    };
    let node_ip = ip_from_bytes(&w.node_address).ok_or_else(|| {
        res_err(
            T,
            name,
            format!(
                "nodeAddress: {} bytes is not an IP address",
                w.node_address.len()
            ),
        )
    })?;
    let mut http_ports = Vec::new();
    let mut h2_ports = Vec::new();
    for (i, p) in w.ports.iter().enumerate() {
        let n = port(name, T, &format!("ports[{i}].port"), p.port)?;
        match PortProtocol::try_from(p.protocol) {
            Ok(PortProtocol::Tcp) => {}
            Ok(PortProtocol::Http) => http_ports.push(n),
            Ok(PortProtocol::Http2) => {
                http_ports.push(n);
                h2_ports.push(n);
            }
            Err(_) => {
                return Err(res_err(
                    T,
                    name,
                    format!("ports[{i}].protocol: unknown protocol {}", p.protocol),
                ))
            }
        }
    }
    let labels: BTreeMap<String, String> = w.labels;
    let local = w.node == local_node;
    let (wp, mtls) = if local {
        (
            policies.for_workload(&w.namespace, &labels),
            policies.mtls_mode(&w.namespace, &labels),
        )
    } else {
        (
            ward_lib_policy::WorkloadPolicies::default(),
            ward_lib_policy::MtlsMode::Strict,
        )
    };
    Ok(Workload {
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account,
        identity,
        node: w.node,
        ip,
        ips,
        labels,
        http_ports,
        h2_ports,
        hbone: SocketAddr::new(node_ip, HBONE_PORT),
        policies: wp,
        mtls,
        allow_non_tcp: w.allow_non_tcp,
    })
}

/// A pb service, checked: one backend per VIP:port.
pub fn service_from_pb(
    name: &str,
    s: &pb::Service,
) -> Result<Vec<(SocketAddr, ServiceBackend)>, ResourceError> {
    const T: &str = "Service";
    let mut vips = Vec::with_capacity(s.vips.len());
    for (i, b) in s.vips.iter().enumerate() {
        vips.push(ip_from_bytes(b).ok_or_else(|| {
            res_err(
                T,
                name,
                format!("vips[{i}]: {} bytes is not an IP address", b.len()),
            )
        })?);
    }
    let mut out = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let svc_port = port(name, T, &format!("ports[{i}].port"), p.port)?;
        let mut endpoints = Vec::with_capacity(p.endpoints.len());
        for (j, e) in p.endpoints.iter().enumerate() {
            let ip = ip_from_bytes(&e.ip).ok_or_else(|| {
                res_err(
                    T,
                    name,
                    format!(
                        "ports[{i}].endpoints[{j}].ip: {} bytes is not an IP address",
                        e.ip.len()
                    ),
                )
            })?;
            let target = port(name, T, &format!("ports[{i}].endpoints[{j}].port"), e.port)?;
            endpoints.push(SocketAddr::new(ip, target));
        }
        for vip in &vips {
            // A VIP reaches the endpoints of its own family, as Kubernetes keeps one
            // EndpointSlice per family (so the workload sees its caller's address in the
            // family it was called in); all of them if it has none of its own.
            let own: Vec<SocketAddr> = endpoints
                .iter()
                .copied()
                .filter(|e| e.is_ipv4() == vip.is_ipv4())
                .collect();
            out.push((
                SocketAddr::new(*vip, svc_port),
                ServiceBackend {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    endpoints: if own.is_empty() {
                        endpoints.clone()
                    } else {
                        own
                    },
                },
            ));
        }
    }
    Ok(out)
}

/// The same workload with its policies computed again (the policy set changed).
pub fn with_policies(w: &Workload, policies: &PolicySet, local_node: &str) -> Workload {
    let (wp, mtls) = if w.node == local_node {
        (
            policies.for_workload(&w.namespace, &w.labels),
            policies.mtls_mode(&w.namespace, &w.labels),
        )
    } else {
        (
            ward_lib_policy::WorkloadPolicies::default(),
            ward_lib_policy::MtlsMode::Strict,
        )
    };
    Workload {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        identity: w.identity.clone(),
        node: w.node.clone(),
        ip: w.ip,
        ips: w.ips.clone(),
        labels: w.labels.clone(),
        http_ports: w.http_ports.clone(),
        h2_ports: w.h2_ports.clone(),
        hbone: w.hbone,
        policies: wp,
        mtls,
        allow_non_tcp: w.allow_non_tcp,
    }
}

/// The wire protocol of a port declared by name / protocol / appProtocol.
pub fn port_protocol(
    name: Option<&str>,
    protocol: Option<&str>,
    app_protocol: Option<&str>,
) -> PortProtocol {
    if crate::config::is_h2(name, protocol, app_protocol) {
        PortProtocol::Http2
    } else if crate::config::is_http(name, protocol, app_protocol) {
        PortProtocol::Http
    } else {
        PortProtocol::Tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_content_only() {
        let a = pb::Workload {
            namespace: "shop".into(),
            name: "web-1".into(),
            labels: [("b".into(), "2".into()), ("a".into(), "1".into())].into(),
            ..Default::default()
        };
        let b = a.clone();
        assert_eq!(
            Encoded::new("x", WORKLOAD, &a).version,
            Encoded::new("y", WORKLOAD, &b).version
        );
        let mut c = a.clone();
        c.service_account = "other".into();
        assert_ne!(
            Encoded::new("x", WORKLOAD, &a).version,
            Encoded::new("x", WORKLOAD, &c).version
        );
    }

    #[test]
    fn each_vip_is_balanced_over_endpoints_of_its_own_family() {
        let ip = |s: &str| ip_to_bytes(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")));
        let ep = |s: &str| pb::Endpoint {
            ip: ip(s),
            port: 8080,
        };
        let both = pb::Service {
            namespace: "shop".into(),
            name: "web".into(),
            vips: vec![ip("10.96.0.10"), ip("fd96::10")],
            ports: vec![pb::ServicePort {
                port: 80,
                endpoints: vec![ep("10.1.0.2"), ep("fd01::2")],
                ..Default::default()
            }],
        };
        let v4_only = pb::Service {
            vips: vec![ip("fd96::11")],
            ports: vec![pb::ServicePort {
                port: 80,
                endpoints: vec![ep("10.1.0.3")],
                ..Default::default()
            }],
            ..both.clone()
        };
        let backends = |s: &pb::Service| -> Vec<(String, Vec<String>)> {
            service_from_pb("shop/web", s)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|(vip, b)| {
                    let eps = b.endpoints.iter().map(ToString::to_string).collect();
                    (vip.to_string(), eps)
                })
                .collect()
        };
        assert_eq!(
            backends(&both),
            vec![
                ("10.96.0.10:80".into(), vec!["10.1.0.2:8080".into()]),
                ("[fd96::10]:80".into(), vec!["[fd01::2]:8080".into()]),
            ]
        );
        // No endpoint of the VIP's family: every endpoint, rather than none.
        assert_eq!(
            backends(&v4_only),
            vec![("[fd96::11]:80".into(), vec!["10.1.0.3:8080".into()])]
        );
    }

    #[test]
    fn addresses_of_the_wrong_length_are_refused_with_the_field() {
        let w = pb::Workload {
            namespace: "shop".into(),
            name: "web-1".into(),
            service_account: "web".into(),
            node: "node-1".into(),
            ips: vec![vec![10, 0, 0]],
            node_address: vec![10, 0, 0, 1],
            ..Default::default()
        };
        let td = TrustDomain::parse("cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let set = PolicySet::new("ward-system", Default::default());
        let e = workload_from_pb("shop/web-1", w, &td, &set, "node-1")
            .err()
            .unwrap_or_else(|| panic!("accepted a 3-byte address"));
        assert_eq!(
            e.to_string(),
            "Workload shop/web-1: ips[0]: 3 bytes is not an IP address"
        );
    }
}
