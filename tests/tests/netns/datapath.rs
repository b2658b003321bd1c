//! Pod to pod across nodes and through a Service VIP, bulk transfers intact with half-close,
//! only TLS on the wire, identity attribution, wrong-identity refusal, STRICT/PERMISSIVE
//! plaintext.

use std::process::Command;
use std::time::Duration;

use ward_tests::{must, Cluster, SERIAL};

use crate::two_by_two;

fn cluster() -> Cluster {
    let mut c = Cluster::new(2, &two_by_two());
    c.start_mesh(&["web-1", "web-2"]);
    c
}

/// 64 MiB of random bytes to an echo server on the other node and back: the client half-closes
/// after sending, so both FINs have to travel through both proxies (TCP FIN → END_STREAM →
/// FIN, and back) for the transfer to end; flow control has to move a payload many windows
/// large; every byte has to arrive, in order.
#[test]
fn bulk_transfer_arrives_intact_both_ways_with_half_close() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster();
    c.serve_echo("web-2");
    let input = c.path("bulk.in");
    let output = c.path("bulk.out");
    must(
        Command::new("head")
            .args(["-c", "67108864", "/dev/urandom"])
            .stdout(std::fs::File::create(&input).unwrap()),
    );
    let web2 = c.pod("web-2").ip.clone();
    // Echo servers may take a moment to listen.
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let o = ward_tests::run(
        ward_tests::in_ns(&c.pod("client-1").netns, "timeout").args([
            "60",
            "socat",
            "-t",
            "30",
            &format!(
                "OPEN:{},rdonly!!CREATE:{}",
                input.display(),
                output.display()
            ),
            &format!("TCP:{web2}:9000"),
        ]),
    );
    assert!(
        o.status.success(),
        "transfer failed ({}): {}\nproxy-1:\n{}\nproxy-2:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        c.log_of("proxy-1"),
        c.log_of("proxy-2")
    );
    let sums = must(Command::new("sha256sum").arg(&input).arg(&output));
    let sums: Vec<&str> = sums
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        std::fs::metadata(&output).unwrap().len(),
        64 << 20,
        "echoed size"
    );
    assert_eq!(sums[0], sums[1], "echoed bytes differ from the bytes sent");
    eprintln!("64 MiB echoed in {:?}", started.elapsed());
    // Both proxies saw one connection that carried it all, and it ended cleanly.
    std::thread::sleep(Duration::from_millis(300));
    for node in [1, 2] {
        let rec = c
            .access_log(node)
            .into_iter()
            .find(|r| r["dst"] == format!("{web2}:9000"))
            .unwrap_or_else(|| panic!("no access record for the transfer on node-{node}"));
        assert_eq!(rec["bytes_sent"], 64 << 20, "node-{node}: {rec}");
        assert_eq!(rec["bytes_received"], 64 << 20, "node-{node}: {rec}");
        assert!(
            !rec["reason"].as_str().unwrap_or("").contains("closed:"),
            "node-{node} ended the relay abnormally: {rec}"
        );
    }
}

#[test]
fn pod_to_pod_across_nodes_and_via_service() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let (code, body) = c.curl("client-1", &format!("http://{web2}:8080/hello"), &[]);
    assert_eq!(
        code,
        "200",
        "cross-node request failed: {body}\n{}",
        c.log_of("proxy-1")
    );
    assert_eq!(body.trim(), "web-2 GET /hello 0");
    // Through the Service VIP: both endpoints eventually answer.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (code, body) = c.curl("client-1", "http://10.96.0.10:80/svc", &[]);
        assert_eq!(code, "200", "{body}");
        seen.insert(
            body.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(
        seen.len(),
        2,
        "the VIP should balance over both endpoints: {seen:?}"
    );
    // The destination proxy attributes the connection to the client's SPIFFE ID.
    std::thread::sleep(Duration::from_millis(300));
    let log = c.access_log(2);
    let inbound: Vec<_> = log.iter().filter(|r| r["direction"] == "inbound").collect();
    assert!(!inbound.is_empty(), "no inbound access log on node-2");
    assert!(
        inbound
            .iter()
            .all(|r| r["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"),
        "{inbound:?}"
    );
    assert!(
        inbound
            .iter()
            .any(|r| r["src"] == c.pod("client-1").ip.as_str()),
        "source IP: {inbound:?}"
    );
    assert!(inbound.iter().all(|r| r["decision"] == "allow"));
}

#[test]
fn same_node_traffic_also_goes_through_identity() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web1 = c.pod("web-1").ip.clone();
    let (code, body) = c.curl("client-1", &format!("http://{web1}:8080/local"), &[]);
    assert_eq!(code, "200", "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let log = c.access_log(1);
    assert!(
        log.iter().any(|r| r["direction"] == "inbound"
            && r["src_identity"] == "spiffe://cluster.local/ns/shop/sa/client"
            && r["dst"] == format!("{web1}:8080")),
        "{log:?}"
    );
}

#[test]
fn only_tls_crosses_the_link_between_nodes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster();
    let marker = "WARD-MARKER-7f3a9c-never-in-clear";
    let pcap = c.start_capture(1, "tcp", "link.pcap");
    let web2 = c.pod("web-2").ip.clone();
    let body = format!("secret={marker}");
    let (code, out) = c.curl(
        "client-1",
        &format!("http://{web2}:8080/upload"),
        &["--data-binary", &body],
    );
    assert_eq!(code, "200", "{out}");
    assert_eq!(out.trim(), format!("web-2 POST /upload {}", body.len()));
    let text = c.stop_capture(&pcap, marker);
    // And the tunnel port is what was on the wire.
    assert!(
        text.contains(".15008"),
        "no HBONE traffic in the capture:\n{text}"
    );
    // And the tunnel's keys came from the hybrid post-quantum exchange.
    let log = c.log_of("proxy-2");
    let handshake = log
        .lines()
        .find(|l| l.contains("HBONE handshake"))
        .unwrap_or_else(|| panic!("no HBONE handshake logged:\n{log}"));
    assert!(
        handshake.contains(r#""key_exchange":"Some(X25519MLKEM768)""#),
        "the ward-to-ward tunnel did not use X25519MLKEM768: {handshake}"
    );
}

#[test]
fn plaintext_is_refused_for_strict_and_accepted_for_permissive() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    // From node-1's own namespace (not a captured pod) straight to a pod on node-2: around the
    // proxies. node-2 captures it as plaintext; STRICT (the default) refuses.
    let n1 = c.ns("n1");
    let (code, _) = c.curl_in(&n1, &format!("http://{web2}:8080/bypass"), &[]);
    assert_eq!(
        code, "000",
        "plaintext to a STRICT workload must be refused"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.access_log(2)
            .iter()
            .any(|r| r["direction"] == "inbound-plaintext"
                && r["reason"].as_str().unwrap_or("").contains("STRICT")),
        "{:?}",
        c.access_log(2)
    );
    // PERMISSIVE for shop: accepted as "no identity".
    c.write_policy(
        "peer.yaml",
        "apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (code, body) = c.curl_in(&n1, &format!("http://{web2}:8080/plain"), &[]);
    assert_eq!(
        code,
        "200",
        "PERMISSIVE must accept plaintext: {body}\n{}",
        c.log_of("proxy-2")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(c
        .access_log(2)
        .iter()
        .any(|r| r["direction"] == "inbound-plaintext"
            && r["decision"] == "allow"
            && r["src_identity"].is_null()));
}

#[test]
fn a_server_with_another_identity_is_refused_by_the_client_proxy() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new(2, &two_by_two());
    c.start_ca();
    c.write_mesh("");
    c.start_proxy(1, &[]);
    // node-2's HBONE port is taken by an impostor: a TLS server holding a perfectly valid
    // certificate from the same CA, but for shop/db, not shop/web.
    let ward = ward_tests::binary("ward");
    must(
        Command::new(&ward)
            .args([
                "ca",
                "issue",
                "--spiffe-id",
                "spiffe://cluster.local/ns/shop/sa/db",
                "--ca",
            ])
            .arg(c.path("ca"))
            .arg("--out")
            .arg(c.path("impostor")),
    );
    let n2 = c.ns("n2");
    let openssl = std::path::PathBuf::from("openssl");
    let cert = c.path("impostor/chain.pem").display().to_string();
    let key = c.path("impostor/key.pem").display().to_string();
    c.spawn(
        "impostor",
        &n2,
        &openssl,
        &[
            "s_server", "-accept", "15008", "-tls1_3", "-cert", &cert, "-key", &key, "-alpn", "h2",
            "-quiet",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let web2 = c.pod("web-2").ip.clone();
    let (code, _) = c.curl("client-1", &format!("http://{web2}:8080/x"), &[]);
    assert_eq!(code, "000");
    std::thread::sleep(Duration::from_millis(300));
    let refused = c
        .access_log(1)
        .into_iter()
        .find(|r| r["direction"] == "outbound" && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("{:?}", c.access_log(1)));
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("spiffe://cluster.local/ns/shop/sa/db")
            && reason.contains("expected spiffe://cluster.local/ns/shop/sa/web"),
        "{reason}"
    );
}

/// Non-TCP traffic cannot go through the proxy, so it cannot be authenticated: UDP to a STRICT
/// pod — from a pod on another node, or from a host outside the mesh — is dropped by the
/// node. The pod's own UDP exchanges (a DNS query and its answer) still work. Allowing non-TCP
/// for the workload, or PERMISSIVE peer authentication, lets it arrive — the same datagrams
/// the drop stopped (so the test bites).
#[test]
fn udp_to_a_strict_pod_is_dropped_unless_allowed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = cluster();
    let web2 = c.pod("web-2").clone();
    let received = c.path("udp-received.txt").display().to_string();
    c.spawn(
        "udp-web-2",
        &web2.netns,
        std::path::Path::new("socat"),
        &[
            "-u",
            "UDP-RECV:7000",
            &format!("OPEN:{received},creat,append"),
        ],
    );
    // A "resolver" outside the mesh (node-1's own namespace) that echoes datagrams back.
    let n1 = c.ns("n1");
    c.spawn(
        "udp-resolver",
        &n1,
        std::path::Path::new("socat"),
        &["UDP-RECVFROM:5300,fork", "EXEC:cat"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let send = |from_ns: &str, tag: &str| {
        must(ward_tests::in_ns(from_ns, "sh").args([
            "-c",
            &format!("echo {tag} | socat -u - UDP-SENDTO:{}:7000", web2.ip),
        ]));
    };
    let arrived = |tag: &str| {
        std::thread::sleep(Duration::from_millis(700));
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .contains(tag)
    };
    let client1 = c.pod("client-1").netns.clone();

    send(&client1, "strict-from-pod");
    send(&n1, "strict-from-host");
    assert!(
        !arrived("strict-from-pod"),
        "UDP from another node's pod reached a STRICT pod"
    );
    assert!(
        !arrived("strict-from-host"),
        "UDP from outside the mesh reached a STRICT pod"
    );
    // The STRICT pod's own query gets its answer (conntrack lets replies in).
    let answer = must(
        ward_tests::in_ns(&web2.netns, "sh")
            .args(["-c", "echo query-1 | socat -t 2 - UDP:10.77.0.1:5300"]),
    );
    assert_eq!(
        answer.trim(),
        "query-1",
        "a STRICT pod's DNS-like exchange broke"
    );

    // The operator allows non-TCP for web-2 (mesh file `allowNonTcp`; in Kubernetes the
    // annotation ward.dev/allow-non-tcp: "true").
    let mesh = std::fs::read_to_string(c.path("mesh.yaml")).unwrap();
    let allowed = mesh.replace("{name: web-2, ", "{name: web-2, allowNonTcp: true, ");
    assert_ne!(mesh, allowed);
    std::fs::write(c.path("mesh.yaml.tmp"), &allowed).unwrap();
    std::fs::rename(c.path("mesh.yaml.tmp"), c.path("mesh.yaml")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    send(&client1, "allowed-from-pod");
    send(&n1, "allowed-from-host");
    assert!(
        arrived("allowed-from-pod"),
        "allowance set, yet the UDP did not arrive"
    );
    assert!(arrived("allowed-from-host"));

    // Without the allowance but PERMISSIVE: non-TCP passes as plaintext TCP does.
    std::fs::write(c.path("mesh.yaml.tmp"), &mesh).unwrap();
    std::fs::rename(c.path("mesh.yaml.tmp"), c.path("mesh.yaml")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    send(&client1, "strict-again");
    assert!(
        !arrived("strict-again"),
        "the allowance was withdrawn, yet UDP arrived"
    );
    c.write_policy(
        "peer.yaml",
        "apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}}\n",
    );
    std::thread::sleep(Duration::from_millis(1500));
    send(&client1, "permissive-from-pod");
    assert!(
        arrived("permissive-from-pod"),
        "PERMISSIVE must let UDP through"
    );
}
