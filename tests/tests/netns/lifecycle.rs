//! Interception outlives the proxy (a stopped node stays closed, a restart adopts the rules,
//! only `ward-proxy uninstall` removes them, cleanly), a drain lets live connections finish,
//! and an invalid configuration update keeps the last good one.

use std::process::Command;
use std::time::Duration;

use ward_tests::{in_ns, must, Cluster, SERIAL};

use crate::two_by_two;

fn rulesets(c: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for ns in ["n1", "n2", "n1p0", "n1p1", "n2p2", "n2p3"] {
        let ns = c.ns(ns);
        out.push(must(in_ns(&ns, "nft").args(["list", "ruleset"])));
        out.push(must(&mut in_ns(&ns, "iptables-save")));
        // The return route of transparent connections (policy rule + table) goes too.
        out.push(must(in_ns(&ns, "ip").args(["-4", "rule", "show"])));
        out.push(must(in_ns(&ns, "ip").args(["-6", "rule", "show"])));
        out.push(must(
            in_ns(&ns, "ip").args(["-4", "route", "show", "table", "all"]),
        ));
    }
    out
}

fn uninstall(c: &Cluster, node: usize) {
    let proxy = ward_tests::built("ward-proxy", false);
    let out =
        must(in_ns(&c.ns(&format!("n{node}")), &proxy.display().to_string()).arg("uninstall"));
    assert!(out.contains("interception rules removed"), "{out}");
}

#[test]
fn rules_outlive_the_proxy_until_uninstalled_and_a_restart_adopts_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    let before = rulesets(&c);
    // node-1 was run by an earlier release, whose IPv4-only table was `ip ward`: the new
    // proxy replaces it (IPv4 and IPv6 in `inet ward`) in the same transaction.
    must(in_ns(&c.ns("n1"), "nft").args(["add", "table", "ip", "ward"]));
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let during = must(in_ns(&c.ns("n1"), "nft").args(["list", "table", "inet", "ward"]));
    assert!(during.contains("redirect to :15001"), "{during}");
    assert!(
        during.contains("ip6 saddr @pods6"),
        "IPv6 is not intercepted: {during}"
    );
    let legacy = ward_tests::run(in_ns(&c.ns("n1"), "nft").args(["list", "table", "ip", "ward"]));
    assert!(
        !legacy.status.success(),
        "the earlier release's table was left beside the new one"
    );
    let web2 = c.pod("web-2").ip.clone();
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
    assert!(c.stop_proxy(1).success());
    assert!(c.stop_proxy(2).success());
    // Stopped: the rules stay (the node stays closed; see the next test).
    let after_stop = must(in_ns(&c.ns("n1"), "nft").args(["list", "table", "inet", "ward"]));
    assert!(after_stop.contains("redirect to :15001"), "{after_stop}");
    // A restart adopts them and works.
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
    // Uninstall (proxies stopped) leaves the ruleset exactly as it was before ward.
    assert!(c.stop_proxy(1).success());
    assert!(c.stop_proxy(2).success());
    uninstall(&c, 1);
    uninstall(&c, 2);
    assert_eq!(rulesets(&c), before, "rules left behind after uninstall");
    // And a start after an uninstall works as a first start.
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
}

/// A stopped proxy (SIGTERM: a rolling upgrade's first half) must not open its node: while it
/// is down, plaintext to a STRICT pod and a request its L7 policy denies are both refused;
/// started again, allowed traffic flows and the policy holds.
#[test]
fn a_stopped_proxy_keeps_its_node_closed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.web_protocol = "http";
    c.start_ca();
    c.write_mesh("");
    c.write_policy(
        "deny-admin.yaml",
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{to: [{operation: {paths: [\"/admin\"]}}]}]\n",
    );
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let web2 = c.pod("web-2").ip.clone();
    let n1 = c.ns("n1");
    let check = |c: &Cluster, what: &str| {
        // From node-1's own namespace (outside the mesh): plaintext to a STRICT pod.
        let plain = c
            .curl_in(&n1, &format!("http://{web2}:8080/plain-{what}"), &[])
            .0;
        // From a pod on web-2's own node, and from one on the other node: /admin is denied.
        let same_node = c
            .curl("client-2", &format!("http://{web2}:8080/admin"), &[])
            .0;
        let other_node = c
            .curl("client-1", &format!("http://{web2}:8080/admin"), &[])
            .0;
        let allowed = c
            .curl("client-1", &format!("http://{web2}:8080/ok-{what}"), &[])
            .0;
        (plain, same_node, other_node, allowed)
    };
    assert_eq!(
        check(&c, "up"),
        ("000".into(), "403".into(), "403".into(), "200".into())
    );
    assert!(c.stop_proxy(2).success());
    let (plain, same_node, other_node, allowed) = check(&c, "down");
    assert_eq!(
        plain, "000",
        "plaintext reached a STRICT pod while its proxy was down"
    );
    assert_eq!(
        same_node, "000",
        "a denied request got through while the proxy was down"
    );
    assert_eq!(
        other_node, "000",
        "a denied request got through while the proxy was down"
    );
    assert_eq!(
        allowed, "000",
        "nothing is forwarded while the proxy is down"
    );
    let seen = c.seen_by("web-2");
    assert!(
        !seen.contains("/plain-") && !seen.contains("/admin") && !seen.contains("/ok-down"),
        "the workload received traffic while its proxy was down:\n{seen}"
    );
    c.start_proxy(2, &[]);
    assert_eq!(
        check(&c, "again"),
        ("000".into(), "403".into(), "403".into(), "200".into())
    );
}

/// The proxy's own file mode (without a control component): an invalid file is refused as a
/// whole. (Through the control component, each object is judged on its own: `control.rs`.)
#[test]
fn invalid_configuration_update_keeps_the_last_good_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.source = ward_tests::ProxySource::File;
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let web2 = c.pod("web-2").ip.clone();
    c.write_policy("broken.yaml", "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: shop}\nspec: {action: DENY}\n");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
    assert!(
        c.log_of("proxy-2")
            .contains("a DENY policy needs at least one rule"),
        "{}",
        c.log_of("proxy-2")
    );
    let dump = c.admin(2, "/config_dump");
    assert_eq!(dump["ready"], true);
}

#[test]
fn sigterm_stops_accepting_drains_live_connections_then_closes_them() {
    use std::time::Instant;

    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_echo("web-2");
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let web2 = c.pod("web-2").ip.clone();
    let mut live = c.echo_conn("client-1", "web-2");
    let mut ping = |tag: &str| live.ping(tag);
    ping("before");
    // SIGTERM node-2's proxy (drain timeout 2 s in the harness).
    let pid = c.proxy_pid(2);
    let sent = Instant::now();
    must(Command::new("kill").args(["-TERM", &pid.to_string()]));
    std::thread::sleep(Duration::from_millis(500));
    // The live connection still works while draining; new connections are refused.
    ping("draining");
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/new"), &[])
            .0,
        "000"
    );
    // After the drain timeout the live connection is closed and the proxy exits cleanly.
    live.wait_closed();
    let closed = sent.elapsed();
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_secs(6),
        "closed after {closed:?}"
    );
    assert!(c.stop_proxy(2).success());
    // The upgrade's second half: the new proxy adopts the rules, and connections flow again
    // (the closed one is the client's to re-open, as ARCHITECTURE says).
    c.start_proxy(2, &[]);
    assert_eq!(
        c.curl(
            "client-1",
            &format!("http://{web2}:8080/after-upgrade"),
            &[]
        )
        .0,
        "200"
    );
    let mut again = c.echo_conn("client-1", "web-2");
    again.ping("after-upgrade");
}
