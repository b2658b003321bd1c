//! The control stream's messages as the proxy receives them: pushes of xDS delta responses —
//! resources as arbitrary bytes, or as arbitrary field values encoded — applied to the
//! proxy's store, first alone, then after a valid initial push. No panic; a push is applied
//! whole or refused with a reason, and a refused push changes nothing held.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::collections::BTreeMap;
use ward_lib_api::control as pb;
use ward_lib_api::resources::{content_version, MESH_CONFIG, MESH_NAME, POLICY, SERVICE, WORKLOAD};
use ward_lib_api::xds::{DeltaDiscoveryResponse, Resource};
use ward_lib_api::Any;
use ward_proxy::control::Store;

const TYPES: [&str; 5] = [
    MESH_CONFIG,
    WORKLOAD,
    SERVICE,
    POLICY,
    "type.googleapis.com/x.Unknown",
];

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Workload {
        namespace: String,
        name: String,
        service_account: String,
        node: String,
        ips: Vec<Vec<u8>>,
        node_address: Vec<u8>,
        labels: BTreeMap<String, String>,
        ports: Vec<(u32, i32)>,
        allow_non_tcp: bool,
    },
    Service {
        namespace: String,
        name: String,
        vips: Vec<Vec<u8>>,
        ports: Vec<(u32, i32, Vec<(Vec<u8>, u32)>)>,
    },
    Mesh {
        trust_domain: String,
        aliases: Vec<String>,
        root_namespace: String,
        valid_roots: bool,
    },
    Policy(String),
}

#[derive(Arbitrary, Debug)]
struct Response {
    type_index: u8,
    resources: Vec<(String, Payload)>,
    removed: Vec<String>,
}

fn encode(p: Payload) -> Vec<u8> {
    match p {
        Payload::Raw(b) => b,
        Payload::Workload {
            namespace,
            name,
            service_account,
            node,
            ips,
            node_address,
            labels,
            ports,
            allow_non_tcp,
        } => pb::Workload {
            namespace,
            name,
            service_account,
            node,
            ips,
            node_address,
            labels: labels.into_iter().collect(),
            ports: ports
                .into_iter()
                .map(|(port, protocol)| pb::WorkloadPort { port, protocol })
                .collect(),
            allow_non_tcp,
        }
        .encode_to_vec(),
        Payload::Service {
            namespace,
            name,
            vips,
            ports,
        } => pb::Service {
            namespace,
            name,
            vips,
            ports: ports
                .into_iter()
                .map(|(port, protocol, endpoints)| pb::ServicePort {
                    port,
                    protocol,
                    endpoints: endpoints
                        .into_iter()
                        .map(|(ip, port)| pb::Endpoint { ip, port })
                        .collect(),
                })
                .collect(),
        }
        .encode_to_vec(),
        Payload::Mesh {
            trust_domain,
            aliases,
            root_namespace,
            valid_roots,
        } => pb::MeshConfig {
            trust_domain,
            trust_domain_aliases: aliases,
            root_namespace,
            roots_pem: if valid_roots {
                common::root_pem().to_owned()
            } else {
                String::new()
            },
        }
        .encode_to_vec(),
        Payload::Policy(document) => pb::Policy { document }.encode_to_vec(),
    }
}

fn response(
    type_url: &str,
    resources: Vec<(String, Vec<u8>)>,
    removed: Vec<String>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: "1".into(),
        type_url: type_url.into(),
        nonce: format!("n-{type_url}"),
        resources: resources
            .into_iter()
            .map(|(name, bytes)| Resource {
                version: content_version(&bytes),
                name,
                resource: Some(Any {
                    type_url: type_url.into(),
                    value: bytes.into(),
                }),
            })
            .collect(),
        removed_resources: removed,
    }
}

/// A valid first push: the mesh settings, two workloads, a policy.
fn initial() -> Vec<DeltaDiscoveryResponse> {
    let workload = |name: &str, node: &str, ip: [u8; 4]| {
        (
            format!("shop/{name}"),
            pb::Workload {
                namespace: "shop".into(),
                name: name.into(),
                service_account: name.into(),
                node: node.into(),
                ips: vec![ip.to_vec()],
                node_address: vec![10, 0, 0, 1],
                labels: [("app".to_string(), name.to_string())].into(),
                ports: vec![],
                allow_non_tcp: false,
            }
            .encode_to_vec(),
        )
    };
    let policy = r#"{"apiVersion":"security.ward.dev/v1","kind":"AuthorizationPolicy","metadata":{"namespace":"shop","name":"no-ssh"},"spec":{"action":"DENY","rules":[{"to":[{"operation":{"ports":["22"]}}]}]}}"#;
    vec![
        response(
            MESH_CONFIG,
            vec![(
                MESH_NAME.into(),
                pb::MeshConfig {
                    trust_domain: "cluster.local".into(),
                    trust_domain_aliases: vec![],
                    root_namespace: "ward-system".into(),
                    roots_pem: common::root_pem().to_owned(),
                }
                .encode_to_vec(),
            )],
            vec![],
        ),
        response(
            WORKLOAD,
            vec![
                workload("a", "node-1", [10, 1, 0, 2]),
                workload("b", "node-2", [10, 2, 0, 2]),
            ],
            vec![],
        ),
        response(SERVICE, vec![], vec![]),
        response(
            POLICY,
            vec![(
                "AuthorizationPolicy/shop/no-ssh".into(),
                pb::Policy {
                    document: policy.into(),
                }
                .encode_to_vec(),
            )],
            vec![],
        ),
    ]
}

fuzz_target!(|push: Vec<Response>| {
    let push: Vec<DeltaDiscoveryResponse> = push
        .into_iter()
        .take(8)
        .map(|r| {
            response(
                TYPES[usize::from(r.type_index) % TYPES.len()],
                r.resources
                    .into_iter()
                    .take(16)
                    .map(|(n, p)| (n, encode(p)))
                    .collect(),
                r.removed,
            )
        })
        .collect();
    let mut fresh = Store::default();
    let _ = fresh.apply("node-1", &push, "1");
    let mut store = Store::default();
    store
        .apply("node-1", &initial(), "1")
        .expect("the fixture push is valid");
    let before = store.held(WORKLOAD);
    if store.apply("node-1", &push, "2").is_err() {
        assert_eq!(
            store.held(WORKLOAD),
            before,
            "a refused push changed what is held"
        );
        assert!(store.held(MESH_CONFIG).contains_key(MESH_NAME));
    }
});
