//! The destination workload sees its client's own address — across nodes, on the same node,
//! through a Service VIP, on L4 and L7 ports, and for PERMISSIVE plaintext — while a client
//! cannot make the mesh attribute its traffic to an address it does not own (a `Forwarded`
//! header in its HTTP request, or on its HBONE CONNECT naming another identity's pod).

use std::time::{Duration, Instant};

use ward_tests::{Cluster, SERIAL};

use crate::hostile::{h2_status, issue};
use crate::two_by_two;

/// Sends `path` from `from` to `url` and returns the address the server recorded for it.
fn seen_from(c: &Cluster, from: &str, url: &str, path: &str, extra: &[&str]) -> String {
    let (code, body) = c.curl(from, &format!("{url}{path}"), extra);
    assert_eq!(code, "200", "{from} → {url}{path}: {body}");
    let seen = c.seen_by("web-1") + &c.seen_by("web-2");
    seen.lines()
        .find_map(|l| l.strip_prefix(&format!("GET {path} from ")))
        .unwrap_or_else(|| panic!("{path} never reached a workload:\n{seen}"))
        .to_owned()
}

/// Every way in, on the current port protocol; `tag` keeps the paths of the rounds apart.
fn every_way_in(c: &Cluster, tag: &str) {
    let web1 = format!("http://{}:8080", c.pod("web-1").ip);
    let web2 = format!("http://{}:8080", c.pod("web-2").ip);
    let client1 = c.pod("client-1").ip.clone();
    let client2 = c.pod("client-2").ip.clone();
    for (from, url, want, what) in [
        ("client-1", &web2, &client1, "across nodes"),
        ("client-1", &web1, &client1, "on the same node"),
        ("client-2", &web1, &client2, "across nodes, the other way"),
    ] {
        let path = format!("/{tag}-{}", what.replace([' ', ','], "-"));
        assert_eq!(
            &seen_from(c, from, url, &path, &[]),
            want,
            "{tag}: {what}: the workload saw another address than its client's"
        );
    }
    // Through the Service VIP (either endpoint).
    let path = format!("/{tag}-vip");
    assert_eq!(
        seen_from(c, "client-2", "http://10.96.0.10:80", &path, &[]),
        client2,
        "{tag}: via the Service VIP"
    );
    // HTTP headers claiming another client change nothing: the address is the connection's.
    let path = format!("/{tag}-spoofed");
    let spoofed = seen_from(
        c,
        "client-2",
        &web1,
        &path,
        &[
            "-H",
            &format!("Forwarded: for=\"{client1}\""),
            "-H",
            &format!("X-Forwarded-For: {client1}"),
        ],
    );
    assert_eq!(
        spoofed, client2,
        "{tag}: a Forwarded header moved the client"
    );
    // And the mesh attributes client-2's connections to client-2's address, every one.
    std::thread::sleep(Duration::from_millis(300));
    let log = c.access_log(1);
    let tool: Vec<_> = log
        .iter()
        .filter(|r| {
            r["direction"] == "inbound"
                && r["src_identity"] == "spiffe://cluster.local/ns/other/sa/tool"
        })
        .collect();
    assert!(
        !tool.is_empty(),
        "{tag}: no inbound record of client-2 on node-1"
    );
    for r in tool {
        assert_eq!(r["src"], client2.as_str(), "{tag}: {r}");
    }
}

#[test]
fn the_workload_sees_its_clients_own_address() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_mesh(&["web-1", "web-2"]);

    // L4 port (the tunnel's bytes go to the workload as they are).
    every_way_in(&c, "l4");

    // PERMISSIVE plaintext: the workload sees the plaintext client (node-1's own address).
    c.write_policy(
        "permissive.yaml",
        "apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    let n1 = c.ns("n1");
    let web2 = c.pod("web-2").ip.clone();
    let plain = format!("http://{web2}:8080/plain");
    c.curl_in_until(&n1, &plain, &[], "200", "PERMISSIVE did not take effect");
    let seen = c.seen_by("web-2");
    assert!(
        seen.contains("GET /plain from 10.77.0.1\n"),
        "the workload did not see the plaintext client's address:\n{seen}"
    );
    c.remove_policy("permissive.yaml");

    // L7 port: requests are served by the proxy and forwarded over its own connections to
    // the workload — made from each caller's address, never shared between callers.
    c.web_protocol = "http";
    c.write_mesh("");
    let web1 = c.pod("web-1").ip.clone();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let l7 = c
            .access_log(1)
            .iter()
            .any(|r| r["reason"].as_str().unwrap_or("").contains("HTTP port"));
        if l7 {
            break;
        }
        c.curl("client-2", &format!("http://{web1}:8080/probe"), &[]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "port 8080 did not become an HTTP port"
        );
    }
    every_way_in(&c, "l7");
}

/// An HBONE peer holding `shop/client`'s certificate names, in its CONNECT's `Forwarded`
/// header, the address of a pod of another identity: ignored — the connection is attributed
/// to (and made from) the peer's own address. Naming a pod that does run as `shop/client` is
/// believed: that is how a node proxy passes its client's address along.
#[test]
fn a_tunnel_cannot_claim_another_identitys_address() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_mesh(&["web-2"]);
    issue(
        &c,
        "ca",
        "spiffe://cluster.local/ns/shop/sa/client",
        "client",
    );
    let web2 = c.pod("web-2").ip.clone();
    let client1 = c.pod("client-1").ip.clone(); // runs as shop/client
    let client2 = c.pod("client-2").ip.clone(); // runs as other/tool
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for claimed in [&client2, &client1] {
        let status = rt.block_on(h2_status(
            &c,
            http::Method::CONNECT,
            &format!("{web2}:8080"),
            Some(("forwarded", format!("for=\"{claimed}\""))),
        ));
        assert_eq!(status, Ok(200));
    }
    // Closes the tunnels (their connection tasks live on this runtime): records are written
    // when a connection ends.
    drop(rt);
    std::thread::sleep(Duration::from_millis(500));
    let srcs: Vec<String> = c
        .access_log(2)
        .iter()
        .filter(|r| r["direction"] == "inbound" && r["dst"] == format!("{web2}:8080"))
        .map(|r| r["src"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        srcs,
        vec!["10.77.0.200".to_owned(), client1],
        "the claimed addresses were not judged by the peer's identity"
    );
}
