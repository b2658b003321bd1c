//! Interception rules are removed cleanly, a second start works, and an invalid configuration
//! update keeps the last good one.

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
    }
    out
}

#[test]
fn rules_are_removed_and_a_restart_works() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.serve_http("web-2");
    let before = rulesets(&c);
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let during = must(in_ns(&c.ns("n1"), "nft").args(["list", "table", "ip", "ward"]));
    assert!(during.contains("redirect to :15001"), "{during}");
    let web2 = c.pod("web-2").ip.clone();
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
    assert!(c.stop_proxy(1).success());
    assert!(c.stop_proxy(2).success());
    assert_eq!(
        rulesets(&c),
        before,
        "rules left behind after the proxies stopped"
    );
    // A second start works.
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
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
}
