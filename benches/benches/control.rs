//! The proxy's side of the control stream, in memory: what applying a push costs a proxy.
//!
//! - `control/initial push (N workloads)`: the whole address table (N workloads on 100
//!   nodes, N/10 services, 100 policies for this node), decoded, checked and installed;
//! - `control/one pod change (N workloads held)`: a one-workload delta on top of it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use prost::Message;
use ward_lib_api::control as pb;
use ward_lib_api::resources::{Encoded, MESH_CONFIG, MESH_NAME, POLICY, SERVICE, WORKLOAD};
use ward_lib_api::xds::DeltaDiscoveryResponse;
use ward_proxy::control::Store;

/// The proxy binary's allocator, so the figures are the proxy's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn response(type_url: &str, resources: &[Encoded]) -> DeltaDiscoveryResponse {
    // Decode what the server sends (pre-encoded Resource messages) as the proxy receives it.
    let wire = ward_lib_api::xds_server::DeltaDiscoveryResponse {
        system_version_info: "1".into(),
        resources: resources.iter().map(|r| r.wire.clone()).collect(),
        type_url: type_url.into(),
        nonce: "n".into(),
        removed_resources: vec![],
    }
    .encode_to_vec();
    DeltaDiscoveryResponse::decode(wire.as_slice()).unwrap_or_else(|e| panic!("{e}"))
}

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

fn workload(i: usize, rev: usize) -> Encoded {
    let ip = [
        10,
        100 + (i / 65_000) as u8,
        ((i / 250) % 256) as u8,
        (i % 250 + 1) as u8,
    ];
    let w = pb::Workload {
        namespace: format!("ns-{}", i % 100),
        name: format!("pod-{i}"),
        service_account: format!("sa-{}", i % 10),
        node: format!("node-{}", i % 100),
        ips: vec![ip.to_vec()],
        node_address: vec![10, 0, 0, (i % 100) as u8 + 1],
        labels: [
            ("app".to_string(), format!("app-{}", i % 10)),
            ("rev".to_string(), rev.to_string()),
        ]
        .into(),
        ports: vec![pb::WorkloadPort {
            port: 8080,
            protocol: pb::PortProtocol::Http as i32,
        }],
        allow_non_tcp: false,
    };
    Encoded::new(format!("ns-{}/pod-{i}", i % 100), WORKLOAD, &w)
}

fn push(n: usize) -> Vec<DeltaDiscoveryResponse> {
    let mesh = Encoded::new(
        MESH_NAME,
        MESH_CONFIG,
        &pb::MeshConfig {
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: vec![],
            root_namespace: "ward-system".into(),
            roots_pem: root_pem(),
        },
    );
    let workloads: Vec<Encoded> = (0..n).map(|i| workload(i, 0)).collect();
    let services: Vec<Encoded> = (0..n / 10)
        .map(|s| {
            let svc = pb::Service {
                namespace: format!("ns-{}", s % 100),
                name: format!("svc-{s}"),
                vips: vec![vec![10, 96, (s / 250) as u8, (s % 250 + 1) as u8]],
                ports: vec![pb::ServicePort {
                    port: 80,
                    protocol: pb::PortProtocol::Http as i32,
                    endpoints: (0..10)
                        .map(|k| pb::Endpoint {
                            ip: vec![10, 100, 0, (k + 1) as u8],
                            port: 8080,
                        })
                        .collect(),
                }],
            };
            Encoded::new(format!("ns-{}/svc-{s}", s % 100), SERVICE, &svc)
        })
        .collect();
    let policies: Vec<Encoded> = (0..100)
        .map(|ns| {
            let doc = format!(
                r#"{{"apiVersion":"security.ward.dev/v1","kind":"AuthorizationPolicy","metadata":{{"namespace":"ns-{ns}","name":"allow"}},"spec":{{"selector":{{"matchLabels":{{"app":"app-7"}}}},"rules":[{{"from":[{{"source":{{"namespaces":["ns-{ns}"]}}}}],"to":[{{"operation":{{"ports":["8080"]}}}}]}}]}}}}"#
            );
            Encoded::new(format!("AuthorizationPolicy/ns-{ns}/allow"), POLICY, &pb::Policy { document: doc })
        })
        .collect();
    vec![
        response(MESH_CONFIG, &[mesh]),
        response(WORKLOAD, &workloads),
        response(SERVICE, &services),
        response(POLICY, &policies),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("control");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        let initial = push(n);
        g.bench_with_input(
            BenchmarkId::new("initial push", format!("{n} workloads")),
            &initial,
            |b, p| {
                b.iter(|| {
                    let mut store = Store::default();
                    store
                        .apply("node-7", p, "1")
                        .unwrap_or_else(|e| panic!("{e}"))
                })
            },
        );
        let mut store = Store::default();
        store
            .apply("node-7", &initial, "1")
            .unwrap_or_else(|e| panic!("{e}"));
        let change = vec![response(WORKLOAD, &[workload(7, 1)]), response(POLICY, &[])];
        g.bench_with_input(
            BenchmarkId::new("one pod change", format!("{n} workloads held")),
            &change,
            |b, p| {
                b.iter(|| {
                    store
                        .apply("node-7", p, "2")
                        .unwrap_or_else(|e| panic!("{e}"))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
