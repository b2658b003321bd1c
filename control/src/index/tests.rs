//! The index fed with plain objects — no API server, no files: objects in, views and deltas
//! out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prost::Message;
use serde_json::json;
use ward_lib_api::control as pb;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn mesh() -> MeshSettings {
    MeshSettings {
        trust_domain: "cluster.local".into(),
        aliases: vec![],
        root_namespace: "ward-system".into(),
        roots_pem: String::new(),
    }
}

/// An index with two nodes and an enrolled namespace `shop`, synced.
fn index() -> Index {
    let mut ix = Index::new(Kind::ALL);
    ix.set_mesh(mesh());
    for (n, a) in [("node-1", "10.0.0.1"), ("node-2", "10.0.0.2")] {
        ix.apply_node(NodeInfo {
            name: n.into(),
            address: Some(ip(a)),
        });
    }
    for (ns, enrolled) in [("shop", true), ("legacy", false), ("ward-system", true)] {
        ix.apply_namespace(NamespaceInfo {
            name: ns.into(),
            enrolled,
            allow_non_tcp: false,
        });
    }
    for k in Kind::ALL {
        ix.mark_synced(k);
    }
    ix
}

fn pod(ns: &str, name: &str, node: &str, addr: &str, labels: &[(&str, &str)]) -> PodInfo {
    PodInfo {
        key: Key::new(ns, name),
        node: Some(node.into()),
        service_account: name.split('-').next().unwrap_or(name).into(),
        ips: vec![ip(addr)],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        opted_out: false,
        terminated: false,
        declared_ports: vec![],
        allow_non_tcp: false,
    }
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> PolicyObject {
    PolicyObject {
        kind: PolicyKind::AuthorizationPolicy,
        key: Key::new(ns, name),
        generation: 1,
        origin: format!("test {ns}/{name}"),
        document: json!({
            "apiVersion": "security.ward.dev/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": spec,
        }),
        uid: None,
        status: None,
    }
}

fn commit(ix: &mut Index) -> View {
    ix.commit();
    ix.view().clone()
}

fn names(r: &Resources) -> Vec<String> {
    let mut v: Vec<String> = r.keys().map(|k| k.to_string()).collect();
    v.sort();
    v
}

fn policy_names(v: &View, node: &str) -> Vec<String> {
    v.policies_of(node).keys().map(|k| k.to_string()).collect()
}

fn decode_workload(v: &View, name: &str) -> pb::Workload {
    let e = v
        .workloads
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not published"));
    pb::Workload::decode(e.bytes.clone()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn only_enrolled_scheduled_addressed_live_pods_are_published() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[]));
    ix.apply_pod(pod("legacy", "old-1", "node-1", "10.1.0.3", &[]));
    let mut opted = pod("shop", "batch-1", "node-1", "10.1.0.4", &[]);
    opted.opted_out = true;
    ix.apply_pod(opted);
    let mut unscheduled = pod("shop", "pending-1", "node-1", "10.1.0.5", &[]);
    unscheduled.node = None;
    ix.apply_pod(unscheduled);
    let mut unaddressed = pod("shop", "new-1", "node-1", "10.1.0.6", &[]);
    unaddressed.ips.clear();
    ix.apply_pod(unaddressed);
    let mut done = pod("shop", "job-1", "node-1", "10.1.0.7", &[]);
    done.terminated = true;
    ix.apply_pod(done);
    ix.apply_pod(pod("shop", "lost-1", "node-9", "10.1.0.8", &[]));
    let v = commit(&mut ix);
    assert_eq!(names(&v.workloads), ["shop/web-1"]);
    let w = decode_workload(&v, "shop/web-1");
    assert_eq!(w.node_address, vec![10, 0, 0, 1]);
    assert_eq!(w.service_account, "web");
}

#[test]
fn enrolling_a_namespace_publishes_its_pods_and_unenrolling_withdraws_them() {
    let mut ix = index();
    ix.apply_pod(pod("legacy", "old-1", "node-1", "10.1.0.3", &[]));
    assert!(commit(&mut ix).workloads.is_empty());
    ix.apply_namespace(NamespaceInfo {
        name: "legacy".into(),
        enrolled: true,
        allow_non_tcp: false,
    });
    let v = commit(&mut ix);
    assert_eq!(names(&v.workloads), ["legacy/old-1"]);
    assert!(v.bindings["node-1"].contains(&("legacy".into(), "old".into())));
    ix.apply_namespace(NamespaceInfo {
        name: "legacy".into(),
        enrolled: false,
        allow_non_tcp: false,
    });
    let v = commit(&mut ix);
    assert!(v.workloads.is_empty());
    assert!(
        !v.bindings.contains_key("node-1"),
        "the CA binding goes with the workload"
    );
}

#[test]
fn nothing_is_published_as_synced_until_every_source_has_delivered() {
    let mut ix = Index::new(Kind::ALL);
    ix.set_mesh(mesh());
    for k in Kind::ALL
        .iter()
        .filter(|k| **k != Kind::PeerAuthentications)
    {
        ix.mark_synced(*k);
    }
    assert!(!commit(&mut ix).synced);
    ix.mark_synced(Kind::PeerAuthentications);
    assert!(commit(&mut ix).synced);
}

#[test]
fn a_node_receives_exactly_the_policies_of_its_own_workloads() {
    let mut ix = index();
    ix.apply_pod(pod(
        "shop",
        "web-1",
        "node-1",
        "10.1.0.2",
        &[("app", "web")],
    ));
    ix.apply_pod(pod("shop", "db-1", "node-2", "10.2.0.2", &[("app", "db")]));
    ix.apply_policy(policy(
        "shop",
        "web-only",
        json!({"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}),
    ));
    ix.apply_policy(policy(
        "shop",
        "db-only",
        json!({"selector": {"matchLabels": {"app": "db"}}, "rules": [{}]}),
    ));
    ix.apply_policy(policy(
        "shop",
        "everyone",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
    ));
    ix.apply_policy(policy(
        "ward-system",
        "mesh-wide",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["23"]}}]}]}),
    ));
    ix.apply_policy(policy("other", "elsewhere", json!({"rules": [{}]})));
    let v = commit(&mut ix);
    assert_eq!(
        policy_names(&v, "node-1"),
        [
            "AuthorizationPolicy/shop/everyone",
            "AuthorizationPolicy/shop/web-only",
            "AuthorizationPolicy/ward-system/mesh-wide"
        ]
    );
    assert_eq!(
        policy_names(&v, "node-2"),
        [
            "AuthorizationPolicy/shop/db-only",
            "AuthorizationPolicy/shop/everyone",
            "AuthorizationPolicy/ward-system/mesh-wide"
        ]
    );

    // Relabelling web-1 moves policies with it; deleting a policy removes it everywhere.
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[("app", "db")]));
    ix.delete_policy(
        PolicyKind::AuthorizationPolicy,
        &Key::new("ward-system", "mesh-wide"),
    );
    let v = commit(&mut ix);
    assert_eq!(
        policy_names(&v, "node-1"),
        [
            "AuthorizationPolicy/shop/db-only",
            "AuthorizationPolicy/shop/everyone"
        ]
    );
    assert_eq!(
        policy_names(&v, "node-2"),
        [
            "AuthorizationPolicy/shop/db-only",
            "AuthorizationPolicy/shop/everyone"
        ]
    );

    // A node whose last workload leaves keeps no policies.
    ix.delete_pod(&Key::new("shop", "db-1"));
    let v = commit(&mut ix);
    assert!(policy_names(&v, "node-2").is_empty());
}

#[test]
fn one_pod_change_is_one_named_change_whatever_the_mesh_size() {
    let mut ix = index();
    for i in 0..2000u32 {
        let node = if i % 2 == 0 { "node-1" } else { "node-2" };
        let addr = format!("10.{}.{}.{}", 1 + i % 2, i / 250, i % 250 + 1);
        ix.apply_pod(pod(
            "shop",
            &format!("web-{i}"),
            node,
            &addr,
            &[("app", "web")],
        ));
    }
    let before = commit(&mut ix);
    assert_eq!(before.workloads.len(), 2000);
    ix.apply_pod(pod(
        "shop",
        "web-7",
        "node-2",
        "10.2.0.8",
        &[("app", "web"), ("v", "2")],
    ));
    let after = commit(&mut ix);
    let (w, s) = after
        .changes_since(before.seq)
        .unwrap_or_else(|| panic!("log does not cover one commit"));
    assert_eq!(
        w.into_iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["shop/web-7"]
    );
    assert!(s.is_empty());
    let changed: Vec<&Arc<str>> = after
        .workloads
        .iter()
        .filter(|(n, e)| before.workloads.get(*n).map(|b| &b.version) != Some(&e.version))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed.len(), 1);
    // An apply that changes nothing commits nothing.
    ix.apply_pod(pod(
        "shop",
        "web-7",
        "node-2",
        "10.2.0.8",
        &[("app", "web"), ("v", "2")],
    ));
    assert!(ix.commit().is_none());
}

#[test]
fn services_resolve_target_ports_by_name_and_keep_ready_endpoints_only() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[]));
    ix.apply_pod(pod("shop", "web-2", "node-2", "10.2.0.2", &[]));
    ix.apply_service(ServiceInfo {
        key: Key::new("shop", "web"),
        vips: vec![ip("10.96.0.10")],
        ports: vec![
            ServicePortInfo {
                port: 80,
                name: "http-web".into(),
                protocol: PortProtocol::Http,
            },
            ServicePortInfo {
                port: 9000,
                name: "raw".into(),
                protocol: PortProtocol::Tcp,
            },
        ],
    });
    ix.apply_slice(SliceInfo {
        key: Key::new("shop", "web-abc"),
        service: "web".into(),
        ports: vec![
            SlicePort {
                name: "http-web".into(),
                port: 8080,
                protocol: PortProtocol::Http,
            },
            SlicePort {
                name: "raw".into(),
                port: 9000,
                protocol: PortProtocol::Tcp,
            },
        ],
        endpoints: vec![
            SliceEndpoint {
                ips: vec![ip("10.1.0.2")],
                ready: true,
            },
            SliceEndpoint {
                ips: vec![ip("10.2.0.2")],
                ready: false,
            },
        ],
    });
    let v = commit(&mut ix);
    let s =
        pb::Service::decode(v.services["shop/web"].bytes.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.ports[0].port, 80);
    assert_eq!(
        s.ports[0].endpoints,
        vec![pb::Endpoint {
            ip: vec![10, 1, 0, 2],
            port: 8080
        }]
    );
    assert_eq!(
        s.ports[1].endpoints,
        vec![pb::Endpoint {
            ip: vec![10, 1, 0, 2],
            port: 9000
        }]
    );
    // The slice declares 8080 HTTP for every endpoint it lists, ready or not.
    for name in ["shop/web-1", "shop/web-2"] {
        let w = decode_workload(&v, name);
        assert_eq!(
            w.ports,
            vec![pb::WorkloadPort {
                port: 8080,
                protocol: PortProtocol::Http as i32
            }],
            "{name}"
        );
    }
    // Deleting the slice empties the service and undeclares the port.
    ix.delete_slice(&Key::new("shop", "web-abc"));
    let v = commit(&mut ix);
    let s =
        pb::Service::decode(v.services["shop/web"].bytes.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.ports.iter().all(|p| p.endpoints.is_empty()));
    assert!(decode_workload(&v, "shop/web-1").ports.is_empty());
}

#[test]
fn an_address_is_never_published_twice() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "a-1", "node-1", "10.1.0.2", &[]));
    ix.apply_pod(pod("shop", "b-1", "node-1", "10.1.0.2", &[]));
    let v = commit(&mut ix);
    assert_eq!(names(&v.workloads), ["shop/a-1"]);
    ix.delete_pod(&Key::new("shop", "a-1"));
    let v = commit(&mut ix);
    assert_eq!(
        names(&v.workloads),
        ["shop/b-1"],
        "the waiting pod takes the freed address"
    );
}

#[test]
fn a_reset_deletes_what_is_gone_and_duplicates_nothing() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[]));
    ix.apply_pod(pod("shop", "web-2", "node-1", "10.1.0.3", &[]));
    commit(&mut ix);
    ix.reset_pods(vec![
        pod("shop", "web-2", "node-1", "10.1.0.3", &[]),
        pod("shop", "web-3", "node-2", "10.2.0.3", &[]),
    ]);
    let v = commit(&mut ix);
    assert_eq!(names(&v.workloads), ["shop/web-2", "shop/web-3"]);
    assert_eq!(v.bindings["node-1"].len(), 1);
}

#[test]
fn an_invalid_edit_keeps_the_last_good_policy_in_force_on_the_node() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[]));
    ix.apply_policy(policy(
        "shop",
        "deny-ssh",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
    ));
    let good = commit(&mut ix);
    let good_version = good.policies_of("node-1")["AuthorizationPolicy/shop/deny-ssh"]
        .version
        .clone();
    let mut bad = policy(
        "shop",
        "deny-ssh",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["ssh"]}}]}]}),
    );
    bad.generation = 2;
    ix.apply_policy(bad);
    // A second, unrelated and valid policy still takes effect.
    ix.apply_policy(policy(
        "shop",
        "deny-telnet",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["23"]}}]}]}),
    ));
    let v = commit(&mut ix);
    let p = v.policies_of("node-1");
    assert_eq!(p["AuthorizationPolicy/shop/deny-ssh"].version, good_version);
    assert!(p.contains_key("AuthorizationPolicy/shop/deny-telnet"));
    let state = ix
        .policy_states()
        .find(|s| &*s.object.key.name == "deny-ssh")
        .unwrap_or_else(|| panic!("state"));
    assert!(matches!(
        state.verdict,
        crate::policies::Verdict::Invalid { .. }
    ));
}

#[test]
fn labels_select_policies_by_subset_like_the_proxy() {
    let mut ix = index();
    let labels: BTreeMap<&str, &str> = [("app", "web"), ("tier", "front")].into();
    let l: Vec<(&str, &str)> = labels.into_iter().collect();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &l));
    ix.apply_policy(policy(
        "shop",
        "subset",
        json!({"selector": {"matchLabels": {"app": "web"}}}),
    ));
    ix.apply_policy(policy(
        "shop",
        "superset",
        json!({"selector": {"matchLabels": {"app": "web", "v": "2"}}}),
    ));
    let v = commit(&mut ix);
    assert_eq!(
        policy_names(&v, "node-1"),
        ["AuthorizationPolicy/shop/subset"]
    );
}

#[test]
fn the_non_tcp_allowance_of_a_pod_or_its_namespace_reaches_the_workload() {
    let mut ix = index();
    ix.apply_pod(pod("shop", "web-1", "node-1", "10.1.0.2", &[]));
    let mut allowed = pod("shop", "web-2", "node-1", "10.1.0.3", &[]);
    allowed.allow_non_tcp = true;
    ix.apply_pod(allowed);
    let v = commit(&mut ix);
    assert!(!decode_workload(&v, "shop/web-1").allow_non_tcp);
    assert!(decode_workload(&v, "shop/web-2").allow_non_tcp);
    // The namespace's annotation covers every pod in it, and withdrawing it withdraws that.
    for ns_allows in [true, false] {
        ix.apply_namespace(NamespaceInfo {
            name: "shop".into(),
            enrolled: true,
            allow_non_tcp: ns_allows,
        });
        let v = commit(&mut ix);
        assert_eq!(decode_workload(&v, "shop/web-1").allow_non_tcp, ns_allows);
        assert!(decode_workload(&v, "shop/web-2").allow_non_tcp);
    }
}
