//! Metrics, as operators read them: a real Prometheus scrapes both proxies and the control
//! component; after a known traffic pattern, PromQL through its HTTP API returns exactly the
//! numbers of that pattern. Every `/metrics` output also parses with the Python
//! prometheus-client OpenMetrics parser and passes `promtool check metrics`.

use std::path::Path;
use std::time::{Duration, Instant};

use ward_tests::{in_ns, must, run, Cluster, SERIAL};

use crate::two_by_two;

const POLICIES: &str = r#"apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-tool, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{source: {namespaces: ["other"]}}]
      to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    # Scoped to the HTTP port: on a TCP port a DENY rule's HTTP attributes are dropped and the
    # rest enforced (fail closed), which would deny all of port 9000.
    - to: [{operation: {ports: ["8080"], paths: ["/admin"]}}]
"#;

fn prometheus() -> &'static str {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if Path::new(p).is_file() {
            return p;
        }
    }
    panic!("prometheus not found: apt-get install -y prometheus (.ci/run installs it)");
}

/// Runs a PromQL instant query in the control namespace: Prometheus's JSON answer.
fn prom(c: &Cluster, promql: &str) -> Result<serde_json::Value, String> {
    let o = run(in_ns(&c.ns("ctl"), "curl").args([
        "-s",
        "--max-time",
        "3",
        "--data-urlencode",
        &format!("query={promql}"),
        "http://127.0.0.1:9090/api/v1/query",
    ]));
    serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// The value of a query's single result.
fn query(c: &Cluster, promql: &str) -> Option<f64> {
    let v = prom(c, promql).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// `Err` with Prometheus's error if `promql` does not evaluate.
fn evaluates(c: &Cluster, promql: &str) -> Result<(), String> {
    let v = prom(c, promql)?;
    if v["status"] == "success" {
        Ok(())
    } else {
        Err(v["error"].to_string())
    }
}

/// The sample names a scrape can contain, from its `# TYPE` lines (a counter's samples end in
/// `_total`, a histogram's in `_bucket`, `_sum`, `_count`).
fn sample_names(openmetrics: &str, into: &mut std::collections::BTreeSet<String>) {
    for line in openmetrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((name, kind)) = rest.split_once(' ') else {
            continue;
        };
        match kind {
            "counter" => {
                into.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    into.insert(format!("{name}{s}"));
                }
            }
            _ => {
                into.insert(name.to_owned());
            }
        }
    }
}

/// Every `ward_…` metric name in `text`.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("ward_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip identifiers that merely contain `ward_` (none today) and label values.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Waits until `promql` evaluates to `want` (scrapes run every second).
fn expect(c: &Cluster, promql: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = query(c, promql);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{promql} = {got:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `/metrics` as OpenMetrics (what Prometheus asks for) and as the classic text format (what
/// a scraper that does not ask gets).
fn scrape(ns: &str, url: &str) -> (String, String) {
    let om = must(in_ns(ns, "curl").args([
        "-s",
        "--max-time",
        "3",
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        url,
    ]));
    let classic = must(in_ns(ns, "curl").args(["-s", "--max-time", "3", url]));
    (om, classic)
}

#[test]
fn prometheus_sees_exactly_the_traffic() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let prometheus = prometheus();
    let mut c = Cluster::new(2, &two_by_two());
    c.web_protocol = "http";
    c.start_ca();
    c.write_mesh("");
    c.write_policy("policies.yaml", POLICIES);
    c.serve_http("web-2");
    c.serve_echo("web-2");
    ward_tests::wait_listening(&c.pod("web-2").netns.clone(), 9000, Duration::from_secs(10));
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);

    let config = c.path("prometheus.yml");
    std::fs::write(
        &config,
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
         scrape_configs:\n\
         - job_name: ward-proxy\n  static_configs: [{targets: ['10.77.0.1:15020', '10.77.0.2:15020']}]\n\
         - job_name: ward-control\n  static_configs: [{targets: ['10.77.0.100:15014']}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ctl = c.ns("ctl");
    let tsdb = c.path("tsdb").display().to_string();
    c.spawn(
        "prometheus",
        &ctl,
        Path::new(prometheus),
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={tsdb}"),
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    expect(&c, "sum(up)", 3.0);

    // The pattern. TCP port 9000 (echo): 3 connections from client-1 (node-1 → node-2),
    // each sending 6 bytes and getting them back; 2 from client-2 (namespace other), denied.
    let web2 = c.pod("web-2").ip.clone();
    for _ in 0..3 {
        let o = run(in_ns(&c.pod("client-1").netns, "sh").args([
            "-c",
            &format!("printf 'hello\\n' | socat -t 2 - TCP:{web2}:9000"),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "hello\n",
            "{}\naccess log 1: {:?}\naccess log 2: {:?}\nproxy-1: {}",
            String::from_utf8_lossy(&o.stderr),
            {
                std::thread::sleep(Duration::from_millis(500));
                c.access_log(1)
            },
            c.access_log(2),
            c.log_of("proxy-1")
        );
    }
    for _ in 0..2 {
        let o = run(in_ns(&c.pod("client-2").netns, "sh").args([
            "-c",
            &format!("printf 'hello\\n' | socat -t 2 - TCP:{web2}:9000"),
        ]));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "",
            "denied traffic echoed"
        );
    }
    // HTTP port 8080: from client-2, 4 requests answered 200 (one a POST of 5 bytes) and 2
    // denied (403).
    for (path, extra) in [
        ("/a", &[][..]),
        ("/b", &[]),
        ("/admin", &[]),
        ("/c", &[]),
        ("/admin", &[]),
        ("/d", &["--data-binary", "hello"]),
    ] {
        let want = if path == "/admin" { "403" } else { "200" };
        assert_eq!(
            c.curl("client-2", &format!("http://{web2}:8080{path}"), extra)
                .0,
            want
        );
    }
    // Each request has its access-log line, with both bodies' bytes and its duration.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<serde_json::Value> = c
        .access_log(2)
        .into_iter()
        .filter(|r| r["direction"] == "inbound-http")
        .collect();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for r in &lines {
        let reason = r["reason"].as_str().unwrap_or("");
        // 403 bodies are "RBAC: access denied\n"; the server answers "web-2 GET /a 0\n" etc.
        let (sent, received) = if r["decision"] == "deny" {
            (20, 0)
        } else if reason.starts_with("POST") {
            ("web-2 POST /d 5\n".len() as u64, 5)
        } else {
            ("web-2 GET /a 0\n".len() as u64, 0)
        };
        assert_eq!(r["bytes_sent"].as_u64(), Some(sent), "{r}");
        assert_eq!(r["bytes_received"].as_u64(), Some(received), "{r}");
        assert!(r["duration_ms"].is_u64(), "{r}");
    }

    // The admin API: the log filter changes at runtime; a bad one is refused; the config dump
    // holds no key material.
    let n2 = c.ns("n2");
    let admin = |method: &str, query: &str| {
        let o = run(in_ns(&n2, "curl").args([
            "-s",
            "-X",
            method,
            "-w",
            " %{http_code}",
            &format!("http://127.0.0.1:15000/logging{query}"),
        ]));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(admin("GET", ""), "info,ward_proxy=debug\n 200");
    assert_eq!(
        admin("POST", "?level=warn%2Cward_proxy%3Dinfo"),
        "warn,ward_proxy=info\n 200"
    );
    assert_eq!(admin("GET", ""), "warn,ward_proxy=info\n 200");
    assert!(admin("POST", "?level=ward_proxy%3Dloud").ends_with(" 400"));
    assert_eq!(admin("GET", ""), "warn,ward_proxy=info\n 200");
    assert!(c.log_of("proxy-2").contains("log filter changed"));
    let dump = must(in_ns(&n2, "curl").args(["-s", "http://127.0.0.1:15000/config_dump"]));
    assert!(dump.contains("\"certificates\""), "{dump}");
    for secret in ["PRIVATE KEY", "BEGIN", "token"] {
        assert!(!dump.contains(secret), "config_dump contains {secret:?}");
    }

    // Two failed handshakes at node-2's HBONE port: a client naming no identity (no SNI), and
    // one naming shop/web but presenting no certificate.
    for extra in [&[][..], &["--resolve", "shop.web.ward:15008:10.77.0.2"][..]] {
        let url = if extra.is_empty() {
            "https://10.77.0.2:15008/"
        } else {
            "https://shop.web.ward:15008/"
        };
        let o = run(in_ns(&ctl, "curl")
            .args(["-sk", "--max-time", "3"])
            .args(extra)
            .arg(url));
        assert!(!o.status.success());
    }
    expect(
        &c,
        r#"sum(ward_tls_handshake_failures_total{instance="10.77.0.2:15020",direction="inbound"})"#,
        2.0,
    );
    let reasons = prom(&c, "ward_tls_handshake_failures_total")
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    assert!(
        reasons.contains(r#""reason":"no_client_certificate""#),
        "{reasons}"
    );
    assert!(reasons.contains(r#""reason":"unknown_sni""#), "{reasons}");

    let dst = r#"reporter="destination",destination_workload="web-2",destination_workload_namespace="shop""#;
    let tcp = format!(
        r#"{dst},source_workload="client-1",source_workload_namespace="shop",source_principal="spiffe://cluster.local/ns/shop/sa/client",destination_principal="spiffe://cluster.local/ns/shop/sa/web",connection_security_policy="mutual_tls""#
    );
    expect(
        &c,
        &format!("sum(ward_tcp_connections_opened_total{{{tcp}}})"),
        3.0,
    );
    expect(
        &c,
        &format!("sum(ward_tcp_connections_closed_total{{{tcp}}})"),
        3.0,
    );
    expect(&c, &format!("sum(ward_tcp_connections_open{{{tcp}}})"), 0.0);
    expect(
        &c,
        &format!("sum(ward_tcp_received_bytes_total{{{tcp}}})"),
        18.0,
    );
    expect(
        &c,
        &format!("sum(ward_tcp_sent_bytes_total{{{tcp}}})"),
        18.0,
    );
    // The source's proxy reports the same connections.
    expect(
        &c,
        r#"sum(ward_tcp_connections_opened_total{reporter="source",source_workload="client-1",destination_workload="web-2"})"#,
        3.0,
    );
    expect(
        &c,
        r#"sum(ward_tcp_received_bytes_total{reporter="source",source_workload="client-1",destination_workload="web-2"})"#,
        18.0,
    );
    // Decisions: 2 TCP connections denied by DENY policy shop/deny-tool, 2 requests by
    // shop/deny-admin; 3 TCP connections and 4 requests allowed (no policy decided).
    expect(
        &c,
        &format!(
            r#"sum(ward_authz_decisions_total{{{dst},decision="deny",policy="shop/deny-tool",action="DENY"}})"#
        ),
        2.0,
    );
    expect(
        &c,
        &format!(
            r#"sum(ward_authz_decisions_total{{{dst},decision="deny",policy="shop/deny-admin",action="DENY"}})"#
        ),
        2.0,
    );
    expect(
        &c,
        &format!(r#"sum(ward_authz_decisions_total{{{dst},decision="allow",policy="none"}})"#),
        7.0,
    );
    let http = format!(r#"{dst},source_workload="client-2",source_workload_namespace="other""#);
    expect(
        &c,
        &format!(r#"sum(ward_http_requests_total{{{http},response_code="200"}})"#),
        4.0,
    );
    expect(
        &c,
        &format!(r#"sum(ward_http_requests_total{{{http},response_code="403"}})"#),
        2.0,
    );
    expect(
        &c,
        &format!(r#"sum(ward_http_request_duration_seconds_count{{{http}}})"#),
        6.0,
    );
    expect(
        &c,
        &format!(r#"sum(ward_tcp_connections_opened_total{{{http}}})"#),
        6.0,
    );
    // Identity and control-plane health.
    expect(
        &c,
        "count(ward_certificate_expiration_timestamp_seconds)",
        4.0,
    );
    expect(
        &c,
        "count(ward_certificate_expiration_timestamp_seconds > time() + 3600)",
        4.0,
    );
    expect(&c, "sum(ward_control_stream_connected)", 2.0);
    expect(&c, "count(ward_config_info == 1)", 2.0);
    expect(&c, "ward_control_proxies_connected", 2.0);
    expect(&c, "sum(ward_access_log_dropped_total)", 0.0);

    expect(&c, "sum(ward_ca_certificates_issued_total)", 4.0);
    expect(
        &c,
        "count(ward_control_push_latency_seconds_count > 0)",
        1.0,
    );

    // Every exposition parses as OpenMetrics and passes promtool.
    let mut names = std::collections::BTreeSet::new();
    for (ns, url) in [
        (c.ns("n1"), "http://127.0.0.1:15020/metrics".to_owned()),
        (c.ns("n2"), "http://127.0.0.1:15020/metrics".to_owned()),
        (c.ns("n2"), "http://127.0.0.1:15000/metrics".to_owned()),
        (ctl.clone(), "http://10.77.0.100:15014/metrics".to_owned()),
    ] {
        let (text, classic) = scrape(&ns, &url);
        assert!(text.ends_with("# EOF\n"), "{url}: not OpenMetrics:\n{text}");
        sample_names(&text, &mut names);
        let file = c.path("scrape.txt");
        std::fs::write(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        let classic_file = c.path("scrape-classic.txt");
        std::fs::write(&classic_file, &classic).unwrap_or_else(|e| panic!("{e}"));
        let parsed = run(std::process::Command::new("python3").args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
             n = sum(1 for _ in text_string_to_metric_families(open(sys.argv[1]).read()))\nprint(n)",
            &file.display().to_string(),
        ]));
        assert!(
            parsed.status.success(),
            "{url}: the OpenMetrics parser refused it: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
        let checked = run(std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&classic_file).unwrap_or_else(|e| panic!("{e}"))));
        assert!(
            checked.status.success(),
            "{url}: promtool check metrics: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    // The dashboard and the alert rules name only metrics that exist, and every dashboard
    // query evaluates against this data.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "deploy/grafana/ward-dashboard.json",
        "deploy/prometheus/ward-alerts.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{e}"));
        for name in names_in(&text) {
            assert!(
                names.contains(&name),
                "{file} names {name}, which no component exposes"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/ward-dashboard.json"))
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$namespace", ".*");
            if let Err(e) = evaluates(&c, &promql) {
                panic!("dashboard panel {:?}: {promql}: {e}", panel["title"]);
            }
        }
    }
}
