//! The control component end to end: Kubernetes mode on the fake API server, and local mode
//! driven by file edits; both with real proxies and real interception.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_tests::{Cluster, PodSpec, SERIAL};
use ward_tests_fake_apiserver::{FakeApiServer, TokenInfo};

/// Polls `curl from → url` until it answers `want`; returns how long that took.
fn until_code(c: &Cluster, from: &str, url: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (code, _) = c.curl(from, url, &["--max-time", "1"]);
        if code == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{from} → {url}: {code}, not {want}, after {:?}\ncontrol log:\n{}\nproxy-2 log (tail):\n{}",
            start.elapsed(),
            c.log_of("control"),
            tail(&c.log_of("proxy-2"), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

const DENY_CLIENT: &str = "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]\n";

#[test]
fn local_mode_reports_a_bad_file_and_every_other_change_still_applies() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &crate::two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let url = format!("http://{}:8080/", c.pod("web-2").ip);
    assert_eq!(c.curl("client-1", &url, &[]).0, "200");

    // A policy file that is not YAML, and one with an invalid field: each reported with its
    // file (and field), neither stops the next edit of another file from applying.
    c.write_policy("broken.yaml", "kind: [unclosed\n");
    c.write_policy(
        "bad-port.yaml",
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad-port, namespace: other}\nspec:\n  action: ALLOW\n  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n",
    );
    c.write_policy("deny.yaml", DENY_CLIENT);
    let took = until_code(&c, "client-1", &url, "000", Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "the DENY took {took:?}");
    let log = c.log_of("control");
    assert!(
        log.contains("policies/broken.yaml[doc 1]: not valid YAML"),
        "{log}"
    );
    assert!(log.contains("policies/bad-port.yaml[doc 1]: policy other/bad-port: rules[0].to[0].operation.ports[0]"), "{log}");

    // Removing the DENY file (while the broken files stay) lets traffic through again.
    c.remove_policy("deny.yaml");
    let took = until_code(&c, "client-1", &url, "200", Duration::from_secs(3));
    assert!(
        took < Duration::from_secs(1),
        "removing the DENY took {took:?}"
    );
}

#[test]
fn losing_the_control_keeps_traffic_and_a_restart_resynchronizes_without_dropping_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &crate::two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    c.serve_echo("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let url = format!("http://{}:8080/", c.pod("web-2").ip);
    let mut live = c.echo_conn("client-1", "web-2");
    live.ping("before");

    c.stop("control");
    std::thread::sleep(Duration::from_millis(500));
    live.ping("control down");
    assert_eq!(
        c.curl("client-1", &url, &[]).0,
        "200",
        "new connections under the last configuration"
    );
    assert!(ward_tests::listening(&c.ns("n1"), 15001));

    // Back: the proxies resume (sending the versions they hold), nothing is torn down, and
    // changes flow again.
    c.serve_control();
    let start = Instant::now();
    while !c
        .log_of("proxy-1")
        .matches("control stream open")
        .count()
        .ge(&2)
    {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "proxy-1 did not reconnect:\n{}",
            tail(&c.log_of("proxy-1"), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.ping("after the restart");
    c.write_policy("deny.yaml", DENY_CLIENT);
    live.wait_closed();
    until_code(&c, "client-1", &url, "000", Duration::from_secs(3));
}

fn cluster_pods() -> Vec<PodSpec> {
    let mut pods = crate::two_by_two();
    pods.push(PodSpec {
        name: "legacy-1",
        node: 1,
        namespace: "legacy",
        service_account: "old",
        labels: &[("app", "old")],
    });
    pods.push(PodSpec {
        name: "legacy-2",
        node: 2,
        namespace: "legacy",
        service_account: "old",
        labels: &[("app", "old")],
    });
    pods
}

fn pod_object(c: &Cluster, name: &str) -> Value {
    let p = c.pod(name);
    let labels: serde_json::Map<String, Value> = p
        .spec
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": p.spec.namespace, "name": name, "labels": labels},
        "spec": {"nodeName": format!("node-{}", p.spec.node), "serviceAccountName": p.spec.service_account,
                 "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}]}})
}

#[test]
fn kubernetes_mode_drives_every_proxy_from_the_api_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &cluster_pods());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt
        .block_on(FakeApiServer::start("10.77.0.200:0".parse().unwrap()))
        .unwrap();
    let kubeconfig = c.path("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    for ns in ["shop", "other", "ward-system"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"ward.dev/mesh": "enabled"}}}));
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}}));
    for i in 1..=2 {
        api.apply(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("10.77.0.{i}")}]}}),
        );
        let token = format!("node-{i}-projected-token");
        api.add_token(
            &token,
            TokenInfo {
                username: "system:serviceaccount:ward-system:ward-proxy".into(),
                audiences: vec!["ward-control".into()],
                node: Some(format!("node-{i}")),
                expired: false,
            },
        );
        std::fs::write(c.path(&format!("token-{i}")), &token).unwrap();
    }
    // The mesh pods exist before the control starts; the rest arrive later.
    for name in ["client-1", "client-2", "web-2", "legacy-1", "legacy-2"] {
        api.apply(pod_object(&c, name));
    }
    c.serve_control_kubernetes(&kubeconfig);
    // The proxies' bootstrap bundle is the ConfigMap the control component publishes.
    let start = Instant::now();
    let root = loop {
        if let Some(cm) = api.get("v1", "ConfigMap", "ward-system", "ward-root-ca") {
            break cm["data"]["root.pem"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no root ConfigMap:\n{}",
            c.log_of("control")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        api.list("v1", "Secret").len(),
        1,
        "the CA root Secret was created"
    );
    std::fs::create_dir_all(c.path("ca")).unwrap();
    std::fs::write(c.path("ca/root.pem"), root).unwrap();
    for pod in ["web-2", "legacy-2"] {
        c.serve_http(pod);
    }
    c.serve_echo("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let web2 = format!("http://{}:8080/", c.pod("web-2").ip);
    let legacy2 = format!("http://{}:8080/", c.pod("legacy-2").ip);
    until_code(&c, "client-1", &web2, "200", Duration::from_secs(5));

    // A policy created through the API denies within a second; deleting it reverses that.
    let created = Instant::now();
    api.apply(json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "deny-client"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}));
    until_code(&c, "client-1", &web2, "000", Duration::from_secs(3));
    assert!(
        created.elapsed() < Duration::from_secs(1),
        "the DENY took {:?}",
        created.elapsed()
    );
    let deleted = Instant::now();
    api.delete(
        "security.ward.dev/v1",
        "AuthorizationPolicy",
        "shop",
        "deny-client",
    );
    until_code(&c, "client-1", &web2, "200", Duration::from_secs(3));
    assert!(
        deleted.elapsed() < Duration::from_secs(1),
        "the delete took {:?}",
        deleted.elapsed()
    );

    // A pod created through the API joins the mesh: web-1 gets its certificate and is reached
    // through the tunnel.
    c.serve_http("web-1");
    let web1 = format!("http://{}:8080/", c.pod("web-1").ip);
    let created = Instant::now();
    api.apply(pod_object(&c, "web-1"));
    // Through the tunnel, not passed through as to a destination outside the mesh.
    loop {
        let (code, _) = c.curl("client-2", &web1, &["--max-time", "1"]);
        let tunnelled = c.access_log(2).iter().any(|r| {
            r["dst_workload"].as_str() == Some("shop/web-1")
                && r["decision"].as_str() == Some("allow")
        });
        if code == "200" && tunnelled {
            break;
        }
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "web-1 never reached through the mesh"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        created.elapsed() < Duration::from_secs(1),
        "a new pod took {:?} to be reachable through the mesh",
        created.elapsed()
    );

    // Pods of a namespace without the label are not captured: legacy ↔ legacy is untouched
    // (plaintext, no proxy), while plaintext from legacy to a STRICT mesh pod is refused.
    assert_eq!(c.curl("legacy-1", &legacy2, &[]).0, "200");
    assert_eq!(c.curl("legacy-1", &web2, &[]).0, "000");
    let legacy_ip = c.pod("legacy-1").ip.clone();
    assert!(
        !c.access_log(1)
            .iter()
            .any(|r| r["src"].as_str() == Some(legacy_ip.as_str())),
        "node-1's proxy saw traffic of an unenrolled pod"
    );
    let set = ward_tests::must(
        ward_tests::in_ns(&c.ns("n1"), "nft").args(["list", "set", "inet", "ward", "pods4"]),
    );
    assert!(
        !set.contains(&legacy_ip) && set.contains(&c.pod("client-1").ip),
        "{set}"
    );

    // Losing the control component keeps traffic flowing; a restart resynchronizes every
    // proxy without dropping live connections.
    let mut live = c.echo_conn("client-1", "web-2");
    live.ping("before");
    c.stop("control");
    live.ping("control down");
    assert_eq!(c.curl("client-1", &web2, &[]).0, "200");
    c.serve_control_kubernetes(&kubeconfig);
    let start = Instant::now();
    while c.log_of("proxy-2").matches("control stream open").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "proxy-2 did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    live.ping("after the restart");
    api.apply(json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": "shop", "name": "deny-client"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY",
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}));
    live.wait_closed();
    drop(api);
    drop(rt);
}
