//! Dual-stack: IPv6 pods are intercepted like IPv4 ones. Pod-to-pod over IPv6 crosses nodes
//! only inside the mTLS tunnel (between IPv6 node addresses), an IPv6 `ipBlocks` DENY holds,
//! and plaintext TCP or UDP over IPv6 from outside the mesh does not reach a STRICT pod.

use std::path::Path;
use std::time::Duration;

use ward_tests::{in_ns, must, Cluster, SERIAL};

use crate::two_by_two;

fn cluster() -> Cluster {
    let mut c = Cluster::new_dual_stack(2, &two_by_two());
    c.start_mesh(&["web-1", "web-2"]);
    c
}

fn v6(c: &Cluster, pod: &str) -> String {
    c.pod(pod)
        .ip6
        .clone()
        .unwrap_or_else(|| panic!("{pod} has no IPv6 address"))
}

#[test]
fn ipv6_pod_to_pod_crosses_nodes_only_inside_the_tunnel() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster();
    let web2 = v6(&c, "web-2");
    let client1 = v6(&c, "client-1");
    let marker = "WARD-V6-MARKER-2b91e0-never-in-clear";
    let pcap = c.start_capture(1, "ip6 and tcp", "link6.pcap");
    let body = format!("secret={marker}");
    let (code, out) = c.curl(
        "client-1",
        &format!("http://[{web2}]:8080/upload"),
        &["-g", "--data-binary", &body],
    );
    assert_eq!(code, "200", "IPv6 pod to pod across nodes failed: {out}");
    assert_eq!(out.trim(), format!("web-2 POST /upload {}", body.len()));
    let text = c.stop_capture(&pcap, marker);
    // The tunnel ran between the nodes' IPv6 addresses, to the HBONE port.
    assert!(
        text.contains("fd77::1.") && text.contains("fd77::2.15008"),
        "no HBONE traffic between the nodes' IPv6 addresses in the capture:\n{text}"
    );
    // The destination proxy attributed the request to the client's identity and address.
    let rec = c
        .access_log(2)
        .into_iter()
        .find(|r| r["direction"] == "inbound" && r["dst"] == format!("[{web2}]:8080"))
        .unwrap_or_else(|| panic!("no inbound record for web-2's IPv6 address"));
    assert_eq!(
        rec["src_identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "{rec}"
    );
    assert_eq!(rec["src"], client1, "{rec}");
    // And the workload saw its client's own IPv6 address (a transparent IPv6 connection).
    let seen = c.seen_by("web-2");
    assert!(
        seen.contains(&format!("POST /upload from {client1}\n")),
        "{seen}"
    );
    // IPv4 keeps working beside it.
    let web2_v4 = c.pod("web-2").ip.clone();
    let (code, _) = c.curl("client-1", &format!("http://{web2_v4}:8080/v4"), &[]);
    assert_eq!(code, "200");
}

#[test]
fn an_ipv6_ip_blocks_deny_holds() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = v6(&c, "web-2");
    let client1 = v6(&c, "client-1");
    let url = format!("http://[{web2}]:8080/");
    let (code, _) = c.curl("client-1", &url, &["-g"]);
    assert_eq!(code, "200", "allowed before the policy");
    c.write_policy(
        "deny-v6-client.yaml",
        &format!(
            "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-v6-client, namespace: shop}}\nspec:\n  action: DENY\n  selector: {{matchLabels: {{app: web}}}}\n  rules: [{{from: [{{source: {{ipBlocks: ['{client1}/128']}}}}]}}]\n"
        ),
    );
    c.curl_in_until(
        &c.pod("client-1").netns.clone(),
        &url,
        &["-g"],
        "000",
        "the IPv6 ipBlocks DENY did not take effect",
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.access_log(2).iter().any(|r| r["direction"] == "inbound"
            && r["decision"] == "deny"
            && r["policy"] == "shop/deny-v6-client"),
        "{:?}",
        c.access_log(2)
    );
    // The block is the client's IPv6 address: its IPv4 address still gets through, and so
    // does the other node's client over IPv6.
    let web2_v4 = c.pod("web-2").ip.clone();
    let (code, _) = c.curl("client-1", &format!("http://{web2_v4}:8080/"), &[]);
    assert_eq!(code, "200", "the IPv6 block also blocked IPv4");
    let (code, _) = c.curl("client-2", &url, &["-g"]);
    assert_eq!(code, "200", "the IPv6 block blocked another address");
}

#[test]
fn plaintext_ipv6_to_a_strict_pod_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster();
    let web2 = v6(&c, "web-2");
    // From node-1's own namespace (a host outside the mesh), around the proxies: node-2
    // captures it as plaintext, and STRICT refuses.
    let n1 = c.ns("n1");
    let url = format!("http://[{web2}]:8080/bypass-v6");
    let (code, _) = c.curl_in(&n1, &url, &["-g"]);
    assert_eq!(
        code, "000",
        "plaintext IPv6 from a node reached a STRICT pod"
    );
    assert!(
        !c.seen_by("web-2").contains("/bypass-v6"),
        "{}",
        c.seen_by("web-2")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.access_log(2)
            .iter()
            .any(|r| r["direction"] == "inbound-plaintext"
                && r["dst"] == format!("[{web2}]:8080")
                && r["reason"].as_str().unwrap_or("").contains("STRICT")),
        "{:?}",
        c.access_log(2)
    );
    // UDP over IPv6 does not arrive either.
    let received = c.path("udp6-received.txt").display().to_string();
    let web2_ns = c.pod("web-2").netns.clone();
    c.spawn(
        "udp6-web-2",
        &web2_ns,
        Path::new("socat"),
        &[
            "-u",
            "UDP6-RECV:7000",
            &format!("OPEN:{received},creat,append"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    for ns in [&n1, &c.pod("client-1").netns.clone()] {
        must(in_ns(ns, "sh").args([
            "-c",
            &format!("echo udp6-strict | socat -u - UDP6-SENDTO:[{web2}]:7000"),
        ]));
    }
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !std::fs::read_to_string(&received)
            .unwrap_or_default()
            .contains("udp6-strict"),
        "UDP over IPv6 reached a STRICT pod"
    );
    // PERMISSIVE lets plaintext IPv6 through as it does IPv4: the refusal above was the
    // mesh's, not a broken path.
    c.write_policy(
        "permissive.yaml",
        "apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    c.curl_in_until(
        &n1,
        &url,
        &["-g"],
        "200",
        "plaintext IPv6 stayed refused under PERMISSIVE",
    );
}
