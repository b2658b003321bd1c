//! Fixtures shared by ward's benchmarks: synthetic meshes of realistic policies.
//!
//! Benchmarks measure; they never assert timings (DESIGN.md: quality bars are measured by
//! benchmarks, not by timed tests).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use ward_lib_policy::request::{EvalRequest, Prepared};
use ward_lib_policy::{PolicySet, TrustConfig};

/// A mesh of `namespaces × per_namespace` policies, plus `target` policies on the workload
/// `app=web` in namespace `target` (a mix of ALLOW/DENY/AUDIT with sources, operations and
/// conditions), and two mesh-wide policies in the root namespace.
pub fn mesh(namespaces: usize, per_namespace: usize, target: usize) -> PolicySet {
    let mut y = String::new();
    for n in 0..namespaces {
        for i in 0..per_namespace {
            let _ = write!(
                y,
                "---\napiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: ns{n}}}\nspec:\n  selector: {{matchLabels: {{app: svc{i}}}}}\n  rules:\n  - from: [{{source: {{namespaces: [ns{n}, monitoring], principals: [\"cluster.local/ns/ns{n}/sa/client{i}\"]}}}}]\n    to: [{{operation: {{methods: [GET, POST], paths: [\"/api/v{i}/*\"]}}}}]\n"
            );
        }
    }
    for i in 0..target {
        let (action, extra) = match i % 4 {
            0 => (
                "DENY",
                "    when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]\n",
            ),
            1 => ("AUDIT", ""),
            _ => (
                "ALLOW",
                "    when: [{key: source.ip, values: [\"10.0.0.0/8\"]}]\n",
            ),
        };
        let _ = write!(
            y,
            "---\napiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: t{i}, namespace: target}}\nspec:\n  action: {action}\n  selector: {{matchLabels: {{app: web}}}}\n  rules:\n  - from: [{{source: {{namespaces: [caller{i}, \"team-*\"]}}}}, {{source: {{principals: [\"cluster.local/ns/other/sa/x{i}\"]}}}}]\n    to: [{{operation: {{methods: [GET], paths: [\"/v1/items/{{*}}\", \"/health\"], ports: [\"8080\"]}}}}]\n{extra}"
        );
    }
    y.push_str("---\napiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-quarantine, namespace: ward-system}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [quarantine]}}]}]\n");
    y.push_str("---\napiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: audit-deletes, namespace: ward-system}\nspec:\n  action: AUDIT\n  rules: [{to: [{operation: {methods: [DELETE]}}]}]\n");
    match PolicySet::parse(
        "ward-system",
        TrustConfig::default(),
        [("bench", y.as_str())],
    ) {
        Ok(s) => s,
        Err(e) => panic!("benchmark fixture is invalid: {e:?}"),
    }
}

/// An HTTP request to the target workload that the target policies allow (the last ALLOW
/// rule matches, so every policy is evaluated: the worst case for a matching request).
pub fn request() -> Prepared {
    let json = r#"{"destination": {"namespace": "target", "labels": {"app": "web", "version": "v1", "team": "shop"}, "ip": "10.1.0.5", "port": 8080, "protocol": "http"},
      "source": {"principal": "spiffe://cluster.local/ns/team-x/sa/client", "ip": "10.1.0.9"},
      "request": {"method": "GET", "path": "/v1/items/42", "host": "web.target"},
      "time": "2026-11-23T10:00:00Z"}"#;
    match EvalRequest::from_json(json).and_then(|r| r.prepare(jiff::Timestamp::UNIX_EPOCH)) {
        Ok(p) => p,
        Err(e) => panic!("benchmark request is invalid: {e}"),
    }
}

/// p50 and p99 of `f`'s duration in ns: 200 000 individually timed calls after a warm-up,
/// with the cost of reading the clock subtracted.
pub fn percentiles(mut f: impl FnMut()) -> (f64, f64) {
    const N: usize = 200_000;
    for _ in 0..10_000 {
        f();
    }
    let mut overhead: Vec<u128> = (0..10_000)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos()
        })
        .collect();
    overhead.sort_unstable();
    let base = overhead[overhead.len() / 2];
    let mut samples: Vec<u128> = (0..N)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos().saturating_sub(base)
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((N as f64) * q) as usize] as f64;
    (at(0.50), at(0.99))
}
