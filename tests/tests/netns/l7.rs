//! L7: per-request authorization on HTTP ports, over HTTP/1.1 and HTTP/2, gRPC denials,
//! path-normalization bypass attempts, keep-alive, malformed HTTP.

use std::time::Duration;

use ward_tests::{in_ns, run, Cluster, SERIAL};

use crate::two_by_two;

const POLICY: &str = r#"apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-l7, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
    - to: [{operation: {methods: ["POST"], paths: ["/readonly*"]}}]
    - to: [{operation: {hosts: ["internal.example"]}}]
    - when: [{key: "request.headers[x-debug]", values: ["1"]}]
    - to: [{operation: {paths: ["/pkg.Admin/*"]}}]
"#;

fn cluster() -> Cluster {
    let mut c = Cluster::new(2, &two_by_two());
    c.web_protocol = "http";
    c.start_ca();
    c.write_mesh("");
    c.write_policy("l7.yaml", POLICY);
    c.serve_http("web-2");
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    c
}

#[test]
fn requests_are_authorized_one_by_one_over_http1_and_http2() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let base = format!("http://{web2}:8080");
    for (proto, extra) in [
        ("HTTP/1.1", vec![]),
        ("HTTP/2", vec!["--http2-prior-knowledge"]),
    ] {
        let code = |path: &str, more: &[&str]| {
            let mut args: Vec<&str> = extra.clone();
            args.extend_from_slice(more);
            c.curl("client-1", &format!("{base}{path}"), &args)
        };
        assert_eq!(code("/public", &[]).0, "200", "{proto}: /public");
        let (denied, body) = code("/admin", &[]);
        assert_eq!(denied, "403", "{proto}: /admin");
        assert!(
            !body.contains("web-l7") && !body.contains("shop"),
            "{proto}: the denial leaks policy internals: {body}"
        );
        assert_eq!(
            code("/readonly/x", &["-X", "POST", "-d", "x"]).0,
            "403",
            "{proto}: POST by methods rule"
        );
        assert_eq!(code("/readonly/x", &[]).0, "200", "{proto}: GET is fine");
        assert_eq!(
            code("/public", &["-H", "x-debug: 1"]).0,
            "403",
            "{proto}: header condition"
        );
        assert_eq!(
            code("/public", &["-H", "Host: internal.example"]).0,
            "403",
            "{proto}: host rule"
        );
        assert_eq!(
            code("/public", &["-H", "Host: INTERNAL.example"]).0,
            "403",
            "{proto}: hosts are case-insensitive"
        );
    }
    // gRPC: the denial is grpc-status 7.
    let ns = c.pod("client-1").netns.clone();
    let o = run(in_ns(&ns, "curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "@/dev/null",
        &format!("{base}/pkg.Admin/DeleteAll"),
    ]));
    let headers = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(headers.contains("grpc-status: 7"), "{headers}");
    let seen = c.seen_by("web-2");
    assert!(
        !seen.contains("/admin") && !seen.contains("pkg.Admin") && !seen.contains("POST /readonly"),
        "denied requests reached the workload:\n{seen}"
    );
    assert!(seen.contains("GET /public"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(c
        .access_log(2)
        .iter()
        .any(|r| r["direction"] == "inbound-http"
            && r["decision"] == "deny"
            && r["policy"] == "shop/web-l7"));
}

#[test]
fn normalization_bypasses_never_reach_the_workload() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let cases = [
        ("//admin", "403"),
        ("/./admin", "403"),
        ("/a/../admin", "403"),
        ("/%61dmin", "403"),
        ("/admin/", "403"),
        ("/admin/x", "403"),
        ("/admin?x=1", "403"),
        ("/admin#x", "403"),
        ("/admin;x", "400"),
        ("/admin%2f", "400"),
        ("/admin%5c", "400"),
        ("/Admin", "200"),
    ];
    for (path, want) in cases {
        let (code, _) = c.curl(
            "client-1",
            &format!("http://{web2}:8080{path}"),
            &["--path-as-is"],
        );
        assert_eq!(code, want, "{path}");
    }
    let seen = c.seen_by("web-2");
    let leaked: Vec<&str> = seen
        .lines()
        .filter(|l| l.to_lowercase().contains("dmin") && !l.contains("/Admin"))
        .collect();
    assert!(leaked.is_empty(), "reached the workload: {leaked:?}");
}

#[test]
fn keep_alive_connection_gets_200_then_403_and_stays_usable() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let ns = c.pod("client-1").netns.clone();
    let o = run(in_ns(&ns, "curl").args([
        "-s",
        "-w",
        "\nSTATUS %{http_code} %{num_connects}\n",
        &format!("http://{web2}:8080/public"),
        &format!("http://{web2}:8080/admin"),
        &format!("http://{web2}:8080/public"),
    ]));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .collect();
    assert_eq!(
        lines,
        vec!["200 1", "403 0", "200 0"],
        "one connection, 200 then 403 then 200"
    );
}

#[test]
fn malformed_http_gets_400_and_never_reaches_the_workload() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let ns = c.pod("client-1").netns.clone();
    let big = "a".repeat(100 * 1024);
    let cases = [
        ("bad request line", "GARBAGE LINE\r\n\r\n".to_string()),
        ("oversized header", format!("GET /oversized HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n")),
        ("invalid chunking", "POST /chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n".to_string()),
    ];
    for (name, raw) in cases {
        let file = c.path("raw.txt");
        std::fs::write(&file, raw).unwrap();
        let o = run(in_ns(&ns, "sh").args([
            "-c",
            &format!("socat -t 3 - TCP:{web2}:8080 < {}", file.display()),
        ]));
        let out = String::from_utf8_lossy(&o.stdout);
        let status = out.lines().next().unwrap_or_default();
        assert!(
            status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 431"),
            "{name}: {out:?}"
        );
    }
    let seen = c.seen_by("web-2");
    assert!(
        !seen.contains("oversized") && !seen.contains("chunky") && !seen.contains("GARBAGE"),
        "{seen}"
    );
}

/// A client that sends its request and then shuts its write side (socat on end of input,
/// `printf … | nc -N`) still gets its response, and each request has its access-log line
/// with bytes and duration.
#[test]
fn half_closed_http1_clients_get_their_responses_and_log_lines() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = cluster();
    let web2 = c.pod("web-2").ip.clone();
    let ns = c.pod("client-1").netns.clone();
    for i in 1..=3 {
        let file = c.path("half.txt");
        std::fs::write(
            &file,
            format!("GET /half-{i} HTTP/1.1\r\nHost: web\r\nUser-Agent: half-close\r\n\r\n"),
        )
        .unwrap();
        // socat shuts its write side at the end of its input, then waits up to 3 s for the
        // response.
        let o = run(in_ns(&ns, "sh").args([
            "-c",
            &format!("socat -t 3 - TCP:{web2}:8080 < {}", file.display()),
        ]));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "request {i}: no response to a half-closed client: {out:?}"
        );
        assert!(out.contains(&format!("web-2 GET /half-{i} 0")), "{out:?}");
    }
    // Each request's line, with the response's bytes, written when its response ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let records: Vec<_> = c
            .access_log(2)
            .into_iter()
            .filter(|r| {
                r["direction"] == "inbound-http"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("GET /half-"))
            })
            .collect();
        if records.len() == 3 {
            for r in &records {
                assert_eq!(r["decision"], "allow", "{r}");
                assert!(r["reason"].as_str().unwrap().ends_with("-> 200"), "{r}");
                assert!(r["bytes_sent"].as_u64().unwrap() > 0, "no bytes: {r}");
                assert!(r.get("duration_ms").is_some(), "{r}");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected 3 access-log lines, got {records:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connections' own lines carry their requests' bytes too (they used to say 0).
    let conns: Vec<_> = c
        .access_log(2)
        .into_iter()
        .filter(|r| {
            r["direction"] == "inbound"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("HTTP port"))
        })
        .collect();
    assert!(conns.len() >= 3, "{conns:?}");
    for r in &conns {
        assert!(r["bytes_sent"].as_u64().unwrap() > 0, "no bytes: {r}");
    }
}
