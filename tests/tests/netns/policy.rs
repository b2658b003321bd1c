//! L4 policy changes take effect for new connections within a second and close now-denied
//! live connections within a second.

use std::time::{Duration, Instant};

use ward_tests::{Cluster, SERIAL};

use crate::two_by_two;

#[test]
fn policy_changes_apply_to_new_and_live_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    // A long-lived echo server on web-2 (socat) and the HTTP server.
    c.serve_echo("web-2");
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    let web2 = c.pod("web-2").ip.clone();
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );

    // A live connection from client-1 to the echo server.
    let mut live = c.echo_conn("client-1", "web-2");
    live.ping("before the change");

    // Deny shop/client → shop/web.
    let changed = Instant::now();
    c.write_policy(
        "deny.yaml",
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]\n",
    );
    // The live connection is closed: socat sees EOF.
    live.wait_closed();
    let closed_after = changed.elapsed();
    assert!(
        closed_after < Duration::from_millis(1500),
        "live connection closed after {closed_after:?}"
    );
    drop(live);
    // New connections are refused.
    let (code, _) = c.curl("client-1", &format!("http://{web2}:8080/"), &[]);
    assert_eq!(code, "000");
    // Another client (other/tool on node-2) is still allowed.
    assert_eq!(
        c.curl("client-2", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );

    // Remove the DENY; switch to an ALLOW that only admits namespace other.
    c.remove_policy("deny.yaml");
    c.write_policy(
        "allow.yaml",
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-other, namespace: shop}\nspec:\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n",
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        c.curl("client-1", &format!("http://{web2}:8080/"), &[]).0,
        "000"
    );
    assert_eq!(
        c.curl("client-2", &format!("http://{web2}:8080/"), &[]).0,
        "200"
    );
    let denied = c
        .access_log(2)
        .into_iter()
        .filter(|r| r["decision"] == "deny" && r["policy"] == "shop/deny-client")
        .count();
    assert!(denied >= 1, "{:?}", c.access_log(2));
}
