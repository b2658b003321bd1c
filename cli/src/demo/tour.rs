//! The scripted tour: calls between the demo's pods, each shown with the outcome the caller
//! saw and the decision the destination's proxy recorded (its access log), a live policy
//! change, and a summary of the proxies' metrics. Then, unless `--once`, the mesh stays up and
//! the tour's calls are repeated, printing any outcome that changes (edit a policy file to see
//! one).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::netns::{self, Cluster};
use super::{interrupted, Binaries};

/// A request file (`ward policy explain --request`) for dev/tool's call to the storefront.
pub const EXPLAIN_REQUEST: &str = "explain-tool-products.json";

/// The `storefront` Service's virtual IP.
pub const STOREFRONT_VIP: &str = "10.96.0.10";

/// One scripted call.
struct Call {
    /// Calling pod, or `outside` (a host that is not part of the mesh).
    from: &'static str,
    /// Destination pod.
    to: &'static str,
    /// Call the `storefront` Service's VIP instead of the pod.
    via_service: bool,
    port: u16,
    kind: &'static str,
    method: &'static str,
    path: &'static str,
    expect_allowed: bool,
    /// The deciding policy the proxy should report (`None`: none decided).
    expect_policy: Option<&'static str>,
    why: &'static str,
}

const fn http(
    from: &'static str,
    to: &'static str,
    method: &'static str,
    path: &'static str,
) -> Call {
    Call {
        from,
        to,
        via_service: false,
        port: 8080,
        kind: "http",
        method,
        path,
        expect_allowed: true,
        expect_policy: None,
        why: "",
    }
}

const fn tcp(from: &'static str, to: &'static str) -> Call {
    Call {
        kind: "tcp",
        port: 5432,
        ..http(from, to, "", "")
    }
}

impl Call {
    const fn allowed(self, policy: &'static str, why: &'static str) -> Call {
        Call {
            expect_allowed: true,
            expect_policy: Some(policy),
            why,
            ..self
        }
    }
    const fn denied(self, policy: Option<&'static str>, why: &'static str) -> Call {
        Call {
            expect_allowed: false,
            expect_policy: policy,
            why,
            ..self
        }
    }
    const fn via_service(self) -> Call {
        Call {
            via_service: true,
            ..self
        }
    }
}

const TOUR: &[Call] = &[
    http("frontend", "storefront", "GET", "/products").allowed(
        "shop/namespace-isolation",
        "callers from namespace shop are allowed (across nodes, over an mTLS HBONE tunnel)",
    ),
    http("frontend", "storefront", "GET", "/products")
        .via_service()
        .allowed(
            "shop/namespace-isolation",
            "the same through the storefront Service's VIP",
        ),
    http("frontend", "storefront", "GET", "/admin/users").denied(
        Some("shop/deny-admin"),
        "a DENY policy for /admin wins over every ALLOW",
    ),
    http("checkout", "payments", "POST", "/v1/charges").allowed(
        "shop/namespace-isolation",
        "same node, still mutual TLS and still authorized",
    ),
    http("tool", "storefront", "GET", "/products").denied(
        None,
        "namespace dev is not allowed: ALLOW policies apply, none matches",
    ),
    tcp("checkout", "orders-db").allowed(
        "shop/namespace-isolation",
        "a TCP port: the connection is authorized as a whole",
    ),
    tcp("tool", "orders-db").denied(
        None,
        "the connection is refused: no ALLOW policy matches dev/tool",
    ),
    http("outside", "storefront", "GET", "/products").denied(
        None,
        "plaintext from outside the mesh: PeerAuthentication is STRICT",
    ),
];

/// The policy added live, and the calls that show its effect.
const LIVE_POLICY: (&str, &str) = (
    "dev-reads-products.yaml",
    "# Added live by the demo: dev/tool may read the storefront's products, nothing else.
apiVersion: security.ward.dev/v1
kind: AuthorizationPolicy
metadata:
  name: dev-reads-products
  namespace: shop
spec:
  selector:
    matchLabels:
      app: storefront
  action: ALLOW
  rules:
    - from:
        - source:
            principals: [\"cluster.local/ns/dev/sa/tool\"]
      to:
        - operation:
            methods: [\"GET\"]
            paths: [\"/products\", \"/products/*\"]
",
);

const AFTER_CHANGE: &[Call] = &[
    http("tool", "storefront", "GET", "/products")
        .allowed("shop/dev-reads-products", "allowed now, by the new policy"),
    http("tool", "storefront", "POST", "/products").denied(None, "only GET was allowed"),
    http("tool", "storefront", "GET", "/admin/users")
        .denied(Some("shop/deny-admin"), "and the DENY policy still wins"),
];

/// What happened to one call.
#[derive(PartialEq)]
struct Outcome {
    /// What the caller saw: `200`, `403`, `hello`, `reset`, `timeout`…
    seen: String,
    allowed: bool,
    /// From the destination proxy's access-log record.
    decision: Option<String>,
    policy: Option<String>,
    reason: Option<String>,
}

/// Plays the tour; `Ok(false)` if any call ended other than scripted.
pub fn play(c: &mut Cluster, bins: &Binaries) -> anyhow::Result<bool> {
    let mut ok = true;
    println!("\n== the tour: each call is made from inside a pod; the decision is the destination proxy's");
    println!("   (policies in {})", c.dir.join("policies").display());
    let mut n = 0;
    for call in TOUR {
        n += 1;
        ok &= show(c, bins, n, call)?;
    }
    println!("\n== changing a policy live: {}", LIVE_POLICY.0);
    for line in LIVE_POLICY.1.lines().filter(|l| !l.starts_with('#')) {
        println!("   | {line}");
    }
    let path = c.dir.join("policies").join(LIVE_POLICY.0);
    let tmp = c.dir.join(format!("{}.tmp", LIVE_POLICY.0));
    std::fs::write(&tmp, LIVE_POLICY.1)?;
    std::fs::rename(&tmp, &path)?;
    let start = Instant::now();
    let first = &AFTER_CHANGE[0];
    let mut took = None;
    while start.elapsed() < Duration::from_secs(15) && !interrupted() {
        if make(c, bins, first)?.allowed {
            took = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match took {
        Some(t) => println!("   in force on every node after {:.1} s (the control component watched the file and pushed it)", t.as_secs_f64()),
        None => println!("   UNEXPECTED: the change was not in force after 15 s"),
    }
    ok &= took.is_some();
    for call in AFTER_CHANGE {
        n += 1;
        ok &= show(c, bins, n, call)?;
    }
    summary(c, bins)?;
    Ok(ok)
}

/// Makes one call and prints it; returns whether it ended as scripted.
fn show(c: &mut Cluster, bins: &Binaries, n: usize, call: &Call) -> anyhow::Result<bool> {
    let out = make(c, bins, call)?;
    let expected = out.allowed == call.expect_allowed
        && out.policy.as_deref() == call.expect_policy
        && out.decision.as_deref() == Some(if call.expect_allowed { "allow" } else { "deny" });
    println!(
        "{n:>3}. {:<5} {:<18} → {:<33} {:<20} {:<6} {}",
        if out.allowed { "ALLOW" } else { "DENY" },
        caller(c, call.from),
        target(c, call),
        request(call),
        out.seen,
        deciding(&out),
    );
    println!("       {}", call.why);
    if !expected {
        println!(
            "       UNEXPECTED: the script expected {} by {}; the proxy recorded {:?} by {:?} ({:?})",
            if call.expect_allowed { "allow" } else { "deny" },
            call.expect_policy.unwrap_or("no policy"),
            out.decision,
            out.policy,
            out.reason
        );
    }
    Ok(expected)
}

fn caller(c: &Cluster, from: &str) -> String {
    if from == "outside" {
        "(outside the mesh)".into()
    } else {
        let p = c.pod(from);
        format!("{}/{}", p.namespace, p.name)
    }
}

fn target(c: &Cluster, call: &Call) -> String {
    let p = c.pod(call.to);
    if call.via_service {
        format!("svc {}/{} {STOREFRONT_VIP}:80", p.namespace, p.name)
    } else {
        format!("{}/{} {}:{}", p.namespace, p.name, p.ip, call.port)
    }
}

fn request(call: &Call) -> String {
    if call.kind == "http" {
        format!("{} {}", call.method, call.path)
    } else {
        "TCP connection".into()
    }
}

fn deciding(out: &Outcome) -> String {
    match (&out.policy, &out.reason) {
        (Some(p), _) => format!("policy {p}"),
        (None, Some(r)) => {
            // L7 reasons read `GET /x: denied: <why> -> 403`; keep the why.
            let why = ["denied: ", "refused: "]
                .iter()
                .find_map(|k| r.split_once(k).map(|(_, w)| w))
                .unwrap_or(r);
            why.rsplit_once(" -> ").map_or(why, |(w, _)| w).to_owned()
        }
        (None, None) => "(no access-log record)".into(),
    }
}

/// Makes `call` and finds the destination proxy's record of it.
fn make(c: &mut Cluster, bins: &Binaries, call: &Call) -> anyhow::Result<Outcome> {
    if interrupted() {
        anyhow::bail!("interrupted");
    }
    c.check_children()?;
    let to = c.pod(call.to).clone();
    let pod_addr = format!("{}:{}", to.ip, call.port);
    let addr = if call.via_service {
        format!("{STOREFRONT_VIP}:80")
    } else {
        pod_addr.clone()
    };
    let ns = if call.from == "outside" {
        format!("{}outside", netns::PREFIX)
    } else {
        c.pod(call.from).netns.clone()
    };
    let log = c.dir.join(format!("access-node-{}.log", to.node));
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let line = call_in(&bins.ward, &ns, call.kind, &addr, call.method, call.path)?;
    let seen = line.split_once(' ').map(|(_, s)| s).unwrap_or(&line);
    let allowed = match call.kind {
        "http" => seen.starts_with('2'),
        _ => seen.ends_with("hello"),
    };
    let seen = seen.rsplit(' ').next().unwrap_or(seen).to_owned();
    let record = find_record(&log, offset, &pod_addr, call);
    Ok(Outcome {
        seen,
        allowed,
        decision: record
            .as_ref()
            .and_then(|r| r["decision"].as_str().map(str::to_owned)),
        policy: record
            .as_ref()
            .and_then(|r| r["policy"].as_str().map(str::to_owned)),
        reason: record
            .as_ref()
            .and_then(|r| r["reason"].as_str().map(str::to_owned)),
    })
}

/// The first record after `offset` in `log` for a connection or request to `dst`, waiting up
/// to 3 s (records are written in batches, and a TCP connection's when it closes).
fn find_record(log: &Path, offset: u64, dst: &str, call: &Call) -> Option<serde_json::Value> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let text = std::fs::read(log).unwrap_or_default();
        let fresh = text.get(offset as usize..).unwrap_or_default();
        let found = String::from_utf8_lossy(fresh).lines().find_map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).ok()?;
            let matches = r["dst"].as_str() == Some(dst)
                // An HTTP port's connection record ("requests authorized individually") is
                // not the decision; its request record is.
                && (call.kind != "http" || r["direction"] == "inbound-http" || r["decision"] == "deny");
            matches.then_some(r)
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Runs `ward demo-workload call` inside `ns`; returns its one line.
pub fn call_in(
    ward: &Path,
    ns: &str,
    kind: &str,
    to: &str,
    method: &str,
    path: &str,
) -> anyhow::Result<String> {
    let out = netns::command(Some(ns), ward)
        .args([
            "demo-workload",
            "call",
            "--kind",
            kind,
            "--to",
            to,
            "--method",
            method,
            "--path",
            path,
        ])
        .output()
        .context("running a demo call")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Sums the proxies' authorization and request metrics, read from their `/metrics`.
fn summary(c: &Cluster, bins: &Binaries) -> anyhow::Result<()> {
    println!("\n== what the proxies counted (Prometheus metrics on each node's :15020/metrics)");
    let mut decisions: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut codes: BTreeMap<String, f64> = BTreeMap::new();
    let mut opened = 0.0;
    let mut handshake_failures = 0.0;
    for node in &c.nodes {
        let out = netns::command(Some(&node.netns), &bins.ward)
            .args([
                "demo-workload",
                "get",
                "--to",
                "127.0.0.1:15020",
                "--path",
                "/metrics",
            ])
            .output()
            .context("reading a proxy's metrics")?;
        for sample in parse_metrics(&String::from_utf8_lossy(&out.stdout)) {
            let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
            match sample.name.as_str() {
                "ward_authz_decisions_total" => {
                    *decisions
                        .entry((label("decision"), label("action"), label("policy")))
                        .or_default() += sample.value;
                }
                "ward_http_requests_total" => {
                    *codes.entry(label("response_code")).or_default() += sample.value
                }
                "ward_tcp_connections_opened_total" => opened += sample.value,
                "ward_tls_handshake_failures_total" => handshake_failures += sample.value,
                _ => {}
            }
        }
    }
    println!("   authorization decisions (ward_authz_decisions_total), both nodes:");
    println!(
        "      {:<9} {:<8} {:<28} {:>5}",
        "decision", "action", "policy", "count"
    );
    for ((decision, action, policy), v) in &decisions {
        println!("      {decision:<9} {action:<8} {policy:<28} {v:>5}");
    }
    let codes: Vec<String> = codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "   HTTP requests by response code (ward_http_requests_total): {}",
        codes.join(", ")
    );
    println!(
        "   TCP connections opened to workloads (ward_tcp_connections_opened_total): {opened}"
    );
    println!(
        "   mTLS handshake failures (ward_tls_handshake_failures_total): {handshake_failures}"
    );
    Ok(())
}

/// One sample of the Prometheus text format.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the samples of a Prometheus/OpenMetrics text exposition (comments skipped; a line
/// that does not parse is skipped — the summary is informational).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices();
            let mut key = String::new();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '}' => {
                        end = Some(i + 1);
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        let mut value = String::new();
                        let _ = chars.next(); // the opening quote
                        while let Some((_, v)) = chars.next() {
                            match v {
                                '\\' => match chars.next().map(|(_, e)| e) {
                                    Some('n') => value.push('\n'),
                                    Some(e) => value.push(e),
                                    None => break,
                                },
                                '"' => break,
                                v => value.push(v),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    k => key.push(k),
                }
            }
            let Some(end) = end else { continue };
            rest = &body[end..];
        }
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// Stays up until Ctrl-C: prints where things are, then repeats the tour's calls every few
/// seconds and prints each change of outcome.
pub fn stay_up(c: &mut Cluster, bins: &Binaries) -> anyhow::Result<()> {
    let dir = c.dir.display().to_string();
    let storefront = c.pod("storefront").ip.clone();
    println!(
        "\n== the mesh stays up until Ctrl-C
   a shell in a pod:     sudo ip netns exec {p}tool bash     (pods: {pods})
     then for example:   curl -i http://{storefront}:8080/products      or the Service: curl http://{STOREFRONT_VIP}/products
   policy files:         {dir}/policies/   (edit, add or remove one: the change is shown below)
   explain a decision:   {ward} policy explain --policy {dir}/policies --request {dir}/{EXPLAIN_REQUEST}
   access logs (JSON):   {dir}/access-node-1.log  {dir}/access-node-2.log
   metrics:              sudo ip netns exec {p}node-1 curl -s localhost:15020/metrics   (the control component: {p}control, 10.88.0.100:15014)
   component logs:       {dir}/control.log  {dir}/proxy-node-1.log  {dir}/proxy-node-2.log
   watching the tour's calls every 3 s; a changed outcome is printed:",
        p = netns::PREFIX,
        pods = c.pods.iter().map(|p| format!("{}{}", netns::PREFIX, p.name)).collect::<Vec<_>>().join(" "),
        ward = bins.ward.display(),
    );
    // Each distinct call once (the tour repeats one before and after its policy change).
    let mut calls: Vec<&Call> = Vec::new();
    for call in TOUR.iter().chain(AFTER_CHANGE) {
        let key = |c: &Call| (c.from, c.to, c.via_service, c.kind, c.method, c.path);
        if !calls.iter().any(|seen| key(seen) == key(call)) {
            calls.push(call);
        }
    }
    let mut last: Vec<Option<(bool, Option<String>)>> = vec![None; calls.len()];
    while !interrupted() {
        for (i, call) in calls.iter().enumerate() {
            let out = match make(c, bins, call) {
                Ok(o) => o,
                Err(_) if interrupted() => return Ok(()),
                Err(e) => return Err(e),
            };
            let now = Some((out.allowed, out.policy.clone()));
            if last[i].is_some() && last[i] != now {
                println!(
                    "   changed: {} {} → {} {} is now {} ({})",
                    caller(c, call.from),
                    request(call),
                    target(c, call),
                    out.seen,
                    if out.allowed { "ALLOWED" } else { "DENIED" },
                    deciding(&out)
                );
            }
            last[i] = now;
        }
        for _ in 0..30 {
            if interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn metrics_samples_are_parsed_with_escaped_labels() {
        let text =
            "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 3\nplain 2.5\nbad{a=\"1\" \n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].labels["b"], "q\"u\\o");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].name, "plain");
        assert_eq!(s[1].value, 2.5);
    }
}
