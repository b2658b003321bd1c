//! Applying pushes: all of a push or nothing.

use ward_lib_api::control as pb;
use ward_lib_api::resources::{ip_to_bytes, Encoded};
use ward_lib_api::xds::{DeltaDiscoveryResponse, Resource};
use ward_lib_api::Any;

use super::*;

/// A throwaway self-signed CA certificate (only its being a CA matters here).
fn root_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("{e}"))
        .pem()
}

fn response(
    type_url: &str,
    resources: Vec<(String, Vec<u8>)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: "1".into(),
        type_url: type_url.into(),
        nonce: format!("n-{type_url}"),
        resources: resources
            .into_iter()
            .map(|(name, bytes)| Resource {
                version: ward_lib_api::resources::content_version(&bytes),
                name,
                resource: Some(Any {
                    type_url: type_url.into(),
                    value: bytes.into(),
                }),
            })
            .collect(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn enc(msg: &impl Message) -> Vec<u8> {
    Encoded::new("x", WORKLOAD, msg).bytes.to_vec()
}

fn workload(name: &str, node: &str, ip: [u8; 4]) -> (String, Vec<u8>) {
    (
        format!("shop/{name}"),
        enc(&pb::Workload {
            namespace: "shop".into(),
            name: name.into(),
            service_account: name.into(),
            node: node.into(),
            ips: vec![ip.to_vec()],
            node_address: ip_to_bytes("10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))),
            labels: [("app".to_string(), name.to_string())].into(),
            ports: vec![],
            allow_non_tcp: false,
        }),
    )
}

fn deny(name: &str) -> (String, Vec<u8>) {
    let doc = format!(
        r#"{{"apiVersion":"security.ward.dev/v1","kind":"AuthorizationPolicy","metadata":{{"namespace":"shop","name":"{name}"}},"spec":{{"action":"DENY","rules":[{{"to":[{{"operation":{{"ports":["22"]}}}}]}}]}}}}"#
    );
    (
        format!("AuthorizationPolicy/shop/{name}"),
        enc(&pb::Policy { document: doc }),
    )
}

fn initial() -> Vec<DeltaDiscoveryResponse> {
    vec![
        response(
            MESH_CONFIG,
            vec![(
                MESH_NAME.into(),
                enc(&pb::MeshConfig {
                    trust_domain: "cluster.local".into(),
                    trust_domain_aliases: vec![],
                    root_namespace: "ward-system".into(),
                    roots_pem: root_pem(),
                }),
            )],
            &[],
        ),
        response(
            WORKLOAD,
            vec![
                workload("a", "node-1", [10, 1, 0, 2]),
                workload("b", "node-2", [10, 2, 0, 2]),
            ],
            &[],
        ),
        response(SERVICE, vec![], &[]),
        response(POLICY, vec![deny("no-ssh")], &[]),
    ]
}

fn local_policies(s: &Snapshot) -> Vec<String> {
    s.local_workloads("node-1")
        .flat_map(|w| w.policies.policies().iter().map(|p| p.id.to_string()))
        .collect()
}

#[test]
fn a_valid_push_becomes_a_snapshot() {
    let mut store = Store::default();
    let snap = store
        .apply("node-1", &initial(), "1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.by_ip.len(), 2);
    assert_eq!(local_policies(&snap), ["shop/no-ssh"]);
    assert_eq!(store.held(WORKLOAD).len(), 2);
}

#[test]
fn a_push_with_any_bad_part_is_refused_whole_and_changes_nothing() {
    let mut store = Store::default();
    let first = store
        .apply("node-1", &initial(), "1")
        .unwrap_or_else(|e| panic!("{e}"));
    let held: Vec<_> = TYPES.iter().map(|t| store.held(t)).collect();
    let bad_policy = (
        "AuthorizationPolicy/shop/broken".to_string(),
        enc(&pb::Policy { document: r#"{"apiVersion":"security.ward.dev/v1","kind":"AuthorizationPolicy","metadata":{"namespace":"shop","name":"broken"},"spec":{"action":"DENY"}}"#.into() }),
    );
    let cases: Vec<(&str, Vec<DeltaDiscoveryResponse>, &str)> = vec![
        (
            "an address of the wrong length",
            vec![
                response(
                    WORKLOAD,
                    vec![workload("c", "node-1", [10, 1, 0, 3]), {
                        let (n, _) = workload("d", "node-1", [0; 4]);
                        (
                            n,
                            enc(&pb::Workload {
                                namespace: "shop".into(),
                                name: "d".into(),
                                service_account: "d".into(),
                                node: "node-1".into(),
                                ips: vec![vec![1, 2, 3]],
                                node_address: vec![10, 0, 0, 1],
                                ..Default::default()
                            }),
                        )
                    }],
                    &[],
                ),
                response(POLICY, vec![], &["AuthorizationPolicy/shop/no-ssh"]),
            ],
            "ips[0]: 3 bytes is not an IP address",
        ),
        (
            "a policy that does not validate",
            vec![
                response(WORKLOAD, vec![workload("c", "node-1", [10, 1, 0, 3])], &[]),
                response(POLICY, vec![bad_policy], &[]),
            ],
            "a DENY policy needs at least one rule",
        ),
        (
            "an address used twice",
            vec![
                response(WORKLOAD, vec![workload("c", "node-1", [10, 2, 0, 2])], &[]),
                response(POLICY, vec![], &[]),
            ],
            "address 10.2.0.2 is also",
        ),
        (
            "an undecodable payload",
            vec![
                response(
                    WORKLOAD,
                    vec![("shop/e".into(), vec![0xff, 0xff, 0xff])],
                    &[],
                ),
                response(POLICY, vec![], &[]),
            ],
            "Workload shop/e: undecodable",
        ),
        (
            "no mesh configuration",
            vec![
                response(MESH_CONFIG, vec![], &[MESH_NAME]),
                response(POLICY, vec![], &[]),
            ],
            "no MeshConfig",
        ),
    ];
    for (what, push, want) in cases {
        let e = store
            .apply("node-1", &push, "2")
            .err()
            .unwrap_or_else(|| panic!("accepted {what}"));
        assert!(e.contains(want), "{what}: {e}");
        let now: Vec<_> = TYPES.iter().map(|t| store.held(t)).collect();
        assert_eq!(now, held, "{what}: the refused push changed what is held");
    }
    // After all those refusals, a valid delta applies on top of the first push.
    let next = store
        .apply(
            "node-1",
            &[
                response(WORKLOAD, vec![workload("c", "node-1", [10, 1, 0, 3])], &[]),
                response(POLICY, vec![], &[]),
            ],
            "3",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.by_ip.len(), first.by_ip.len() + 1);
    assert_eq!(local_policies(&next), ["shop/no-ssh", "shop/no-ssh"]);
}
