//! Property tests: hostile input never panics, normalization is idempotent, and a policy that
//! does not apply to a workload never changes that workload's decisions.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use proptest::prelude::*;
use serde_json::{json, Value};
use ward_lib_policy::path::{normalize, Ambiguous};
use ward_lib_policy::request::{decide, EvalRequest};
use ward_lib_policy::{parse_documents, PolicySet, TrustConfig};

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("bar".to_string()),
        Just("foo".to_string()),
        Just("*".to_string()),
        Just("ba*".to_string()),
        Just("*ar".to_string()),
        Just("GET".to_string()),
        Just("/admin".to_string()),
        Just("/a/{*}".to_string()),
        Just("cluster.local/ns/bar/sa/client".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("8080".to_string()),
        "[a-z0-9/*.:{}%-]{0,12}",
    ]
}

fn field_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "ipBlocks",
        "notIpBlocks",
        "requestPrincipals",
        "remoteIpBlocks",
        "serviceAccounts",
    ])
}

fn op_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "hosts",
        "notHosts",
        "ports",
        "notPorts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
    ])
}

fn key_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "source.ip",
        "source.namespace",
        "source.principal",
        "destination.port",
        "connection.sni",
        "request.headers[x-a]",
        "request.auth.claims[groups]",
        "time.window",
        "remote.ip",
        "bogus",
    ])
}

fn rule() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(
            prop::collection::btree_map(field_name(), prop::collection::vec(word(), 0..3), 0..3),
            0..3,
        )),
        prop::option::of(prop::collection::vec(
            prop::collection::btree_map(op_name(), prop::collection::vec(word(), 0..3), 0..3),
            0..3,
        )),
        prop::option::of(prop::collection::vec(
            (
                key_name(),
                prop::collection::vec(word(), 0..2),
                prop::collection::vec(word(), 0..2),
            ),
            0..2,
        )),
    )
        .prop_map(|(from, to, when)| {
            let mut r = serde_json::Map::new();
            if let Some(f) = from {
                r.insert(
                    "from".into(),
                    f.into_iter().map(|s| json!({"source": s})).collect(),
                );
            }
            if let Some(t) = to {
                r.insert(
                    "to".into(),
                    t.into_iter().map(|o| json!({"operation": o})).collect(),
                );
            }
            if let Some(w) = when {
                r.insert(
                    "when".into(),
                    w.into_iter()
                        .map(|(k, v, nv)| json!({"key": k, "values": v, "notValues": nv}))
                        .collect(),
                );
            }
            Value::Object(r)
        })
}

fn policy(
    namespace: &'static str,
    selector: Option<(&'static str, &'static str)>,
) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["ALLOW", "DENY", "AUDIT", "CUSTOM", "allow"]),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        "[a-z]{1,8}",
        any::<bool>(),
    )
        .prop_map(move |(action, rules, name, dry)| {
            let mut spec = json!({"action": action});
            if let Some(r) = rules {
                spec["rules"] = Value::Array(r);
            }
            if let Some((k, v)) = selector {
                spec["selector"] = json!({"matchLabels": {k: v}});
            }
            let mut meta = json!({"name": name, "namespace": namespace});
            if dry {
                meta["annotations"] = json!({"istio.io/dry-run": "true"});
            }
            json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec})
        })
}

/// Values that are valid for the field, so most generated policies are accepted.
fn valid_values(field: &str) -> Vec<&'static str> {
    match field {
        "principals" | "notPrincipals" => vec![
            "cluster.local/ns/bar/sa/client",
            "cluster.local/ns/foo/*",
            "*",
        ],
        "namespaces" | "notNamespaces" => vec!["bar", "fo*", "*"],
        "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" => {
            vec!["10.0.0.0/8", "2001:db8::/32", "10.9.9.9"]
        }
        "requestPrincipals" => vec!["i/s", "*"],
        "hosts" | "notHosts" => vec!["web.foo", "*.foo"],
        "ports" | "notPorts" => vec!["80", "8080"],
        "methods" | "notMethods" => vec!["GET", "POST"],
        "paths" | "notPaths" => vec!["/admin", "/a*", "/{*}"],
        "source.ip" | "remote.ip" => vec!["10.0.0.0/8"],
        "destination.port" => vec!["8080"],
        "time.window" => vec!["Mon-Fri 09:00-17:00 Europe/Berlin"],
        _ => vec!["bar", "web.foo.svc"],
    }
}

fn valid_field(
    names: Vec<&'static str>,
) -> impl Strategy<Value = (&'static str, Vec<&'static str>)> {
    prop::sample::select(names).prop_flat_map(|f| {
        (
            Just(f),
            prop::collection::vec(prop::sample::select(valid_values(f)), 1..3),
        )
    })
}

fn valid_rule() -> impl Strategy<Value = Value> {
    let src = vec![
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "ipBlocks",
        "notIpBlocks",
        "requestPrincipals",
        "remoteIpBlocks",
    ];
    let ops = vec![
        "hosts",
        "notHosts",
        "ports",
        "notPorts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
    ];
    let keys = vec![
        "source.ip",
        "source.namespace",
        "destination.port",
        "connection.sni",
        "request.headers[x-a]",
        "time.window",
        "remote.ip",
    ];
    (
        prop::option::of(prop::collection::vec(
            prop::collection::btree_map(
                valid_field(src.clone()).prop_map(|(k, _)| k),
                Just(()),
                1..3,
            ),
            1..3,
        )),
        prop::option::of(prop::collection::vec(valid_field(ops), 1..3)),
        prop::option::of(prop::collection::vec(valid_field(keys), 1..2)),
    )
        .prop_map(|(from, to, when)| {
            let mut r = serde_json::Map::new();
            if let Some(f) = from {
                r.insert(
                    "from".into(),
                    f.into_iter()
                        .map(|fields| {
                            let src: serde_json::Map<String, Value> = fields
                                .into_keys()
                                .map(|k| (k.to_string(), json!(valid_values(k)[..1])))
                                .collect();
                            json!({"source": src})
                        })
                        .collect(),
                );
            }
            if let Some(t) = to {
                r.insert(
                    "to".into(),
                    t.into_iter()
                        .map(|(k, v)| json!({"operation": {k: v}}))
                        .collect(),
                );
            }
            if let Some(w) = when {
                r.insert(
                    "when".into(),
                    w.into_iter()
                        .map(|(k, v)| json!({"key": k, "values": v}))
                        .collect(),
                );
            }
            Value::Object(r)
        })
}

fn valid_policy(
    namespace: &'static str,
    selector: Option<(&'static str, &'static str)>,
) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["ALLOW", "DENY", "AUDIT"]),
        prop::collection::vec(valid_rule(), 1..3),
        "[a-z]{1,8}",
        prop::bool::weighted(0.2),
    )
        .prop_map(move |(action, rules, name, dry)| {
            let mut spec = json!({"action": action, "rules": rules});
            if let Some((k, v)) = selector {
                spec["selector"] = json!({"matchLabels": {k: v}});
            }
            let mut meta = json!({"name": name, "namespace": namespace});
            if dry {
                meta["annotations"] = json!({"istio.io/dry-run": "true"});
            }
            json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec})
        })
}

fn request() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["tcp", "http"]),
        prop::option::of(prop::sample::select(vec![
            "spiffe://cluster.local/ns/bar/sa/client",
            "spiffe://cluster.local/ns/foo/sa/web",
            "spiffe://other.org/ns/bar/sa/x",
        ])),
        prop::sample::select(vec!["10.0.0.9", "10.9.9.9", "2001:db8::1"]),
        prop::sample::select(vec![80u16, 8080, 15000]),
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        word(),
    )
        .prop_map(|(proto, principal, ip, port, method, path)| {
            json!({
                "destination": {"namespace": "foo", "labels": {"app": "web"}, "ip": "10.0.0.5", "port": port, "protocol": proto},
                "source": {"principal": principal, "ip": ip, "remote_ip": "203.0.113.1"},
                "connection": {"sni": "web.foo.svc"},
                "request": {"method": method, "path": format!("/{path}"), "host": "web.foo",
                            "headers": {"x-a": "bar"}, "jwt_claims": {"iss": "i", "sub": "s", "groups": ["bar"]}},
                "time": "2026-11-23T10:00:00Z"
            })
        })
}

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}") {
        let _ = parse_documents(&s, "fuzz", &TrustConfig::default());
        let _ = EvalRequest::from_json(&s);
        let _ = normalize(&s, Ambiguous::Reject);
        let _ = normalize(&s, Ambiguous::Allow);
    }

    #[test]
    fn generated_policies_parse_or_fail_cleanly_and_evaluate(
        ps in prop::collection::vec(policy("foo", None), 1..4),
        reqs in prop::collection::vec(request(), 1..4),
    ) {
        let text = yaml(&ps);
        if let Ok(set) = PolicySet::parse("ward-system", TrustConfig::default(), [("g", text.as_str())]) {
            for r in reqs {
                let req = EvalRequest::from_json(&r.to_string()).unwrap();
                let p = req.prepare("2026-11-23T10:00:00Z".parse().unwrap()).unwrap();
                let v = decide(&set, &p);
                prop_assert!(v.decision == "allow" || v.decision == "deny");
            }
        }
    }

    #[test]
    fn unrelated_policies_never_change_decisions(
        ps in prop::collection::vec(valid_policy("foo", None), 1..4),
        other_ns in valid_policy("elsewhere", None),
        other_sel in valid_policy("foo", Some(("app", "not-web"))),
        root_other_sel in valid_policy("ward-system", Some(("tier", "db"))),
        reqs in prop::collection::vec(request(), 1..6),
    ) {
        let base = yaml(&ps);
        // Generated policies are valid by construction; a parse failure is a bug.
        let set = PolicySet::parse("ward-system", TrustConfig::default(), [("b", base.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e:?}\n{base}")))?;

        let mut more = ps.clone();
        for (i, mut p) in [other_ns, other_sel, root_other_sel].into_iter().enumerate() {
            // Distinct names, so an unrelated policy never replaces a related one.
            p["metadata"]["name"] = json!(format!("unrelated-{i}"));
            more.push(p);
        }
        let extended = yaml(&more);
        let bigger = PolicySet::parse("ward-system", TrustConfig::default(), [("e", extended.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        for r in reqs {
            let req = EvalRequest::from_json(&r.to_string()).unwrap();
            let p = req.prepare("2026-11-23T10:00:00Z".parse().unwrap()).unwrap();
            prop_assert_eq!(decide(&set, &p), decide(&bigger, &p));
        }
    }

    #[test]
    fn normalization_is_idempotent(s in "/[a-zA-Z0-9./%_~-]{0,40}") {
        if let Ok(n) = normalize(&s, Ambiguous::Reject) {
            prop_assert_eq!(normalize(&n, Ambiguous::Reject), Ok(n.clone()));
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"));
            prop_assert!(!n.split('/').any(|seg| seg == "." || seg == ".."));
        }
    }
}
