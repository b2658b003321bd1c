//! Every rejected form, with the field path its error must name; and the warnings for
//! fail-closed rewrites.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use ward_lib_policy::{parse_documents, Document, TrustConfig};

fn authz(spec: &str) -> String {
    format!(
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
    )
}

fn errors(text: &str) -> Vec<String> {
    match parse_documents(text, "t.yaml", &TrustConfig::default()) {
        Ok(_) => Vec::new(),
        Err(es) => es.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn rejected_forms_name_their_field() {
    let sa17: Vec<String> = (0..17).map(|i| format!("sa{i}")).collect();
    let cases: Vec<(String, &str, &str)> = vec![
        (authz("  action: MAYBE"), "action", "not a valid action"),
        (authz("  action: CUSTOM\n  provider: {name: ext}"), "action", "CUSTOM"),
        (authz("  action: DENY"), "rules", "needs at least one rule"),
        (authz("  action: DENY\n  rules: []"), "rules", "needs at least one rule"),
        (authz("  rules: [{from: []}]"), "rules[0].from", "must not be an empty list"),
        (authz("  rules: [{to: []}]"), "rules[0].to", "must not be an empty list"),
        (authz("  rules: [{from: [{}]}]"), "rules[0].from[0].source", "is required"),
        (authz("  rules: [{from: [{source: {}}]}]"), "rules[0].from[0].source", "sets no field"),
        (authz("  rules: [{to: [{operation: {}}]}]"), "rules[0].to[0].operation", "sets no field"),
        (authz("  rules: [{to: [{operation: {methods: []}}]}]"), "rules[0].to[0].operation", "sets no field"),
        (authz("  rules: [{from: [{source: {ipBlocks: [10.0.0.1, 10.0.0.0/33]}}]}]"), "rules[0].from[0].source.ipBlocks[1]", "not an IP address or CIDR"),
        (authz("  rules: [{from: [{source: {notIpBlocks: [nope]}}]}]"), "rules[0].from[0].source.notIpBlocks[0]", "not an IP address or CIDR"),
        (authz("  rules: [{from: [{source: {remoteIpBlocks: [\"2001:db8::/129\"]}}]}]"), "rules[0].from[0].source.remoteIpBlocks[0]", "not an IP address or CIDR"),
        (authz("  rules: [{to: [{operation: {ports: [\"70000\"]}}]}]"), "rules[0].to[0].operation.ports[0]", "outside the port range"),
        (authz("  rules: [{to: [{operation: {notPorts: [http]}}]}]"), "rules[0].to[0].operation.notPorts[0]", "not a port number"),
        (authz("  rules: [{to: [{operation: {ports: [-1]}}]}]"), "rules[0].to[0].operation.ports[0]", "not a port number"),
        (authz("  rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}}]}]"), "rules[0].from[0].source.principals[0]", "without 'spiffe://'"),
        (authz("  rules: [{from: [{source: {principals: [\"\"]}}]}]"), "rules[0].from[0].source.principals[0]", "empty string"),
        (authz("  rules: [{from: [{source: {principals: [\"cluster.local/ns/*/sa/b\"]}}]}]"), "rules[0].from[0].source.principals[0]", "'*' is allowed only"),
        (authz("  rules: [{to: [{operation: {hosts: [\"a.*.com\"]}}]}]"), "rules[0].to[0].operation.hosts[0]", "'*' is allowed only"),
        (authz("  rules: [{to: [{operation: {paths: [\"/a/*/b\"]}}]}]"), "rules[0].to[0].operation.paths[0]", "'*' is allowed only"),
        (authz("  rules: [{to: [{operation: {paths: [\"/a/{**}/{*}\"]}}]}]"), "rules[0].to[0].operation.paths[0]", "must be the last operator"),
        (authz("  rules: [{from: [{source: {trustDomains: [\"cluster.local/ns/a\"]}}]}]"), "rules[0].from[0].source.trustDomains[0]", "a trust domain has no '/'"),
        (authz("  rules: [{to: [{operation: {notPaths: [\"/a/x{*}\"]}}]}]"), "rules[0].to[0].operation.notPaths[0]", "mixes literal text"),
        (authz("  rules: [{from: [{source: {serviceAccounts: [\"ns/*\"]}}]}]"), "rules[0].from[0].source.serviceAccounts[0]", "wildcards are not allowed"),
        (authz("  rules: [{from: [{source: {serviceAccounts: [a], principals: [x]}}]}]"), "rules[0].from[0].source.serviceAccounts", "cannot be combined"),
        (authz("  rules: [{from: [{source: {serviceAccounts: [a], notNamespaces: [x]}}]}]"), "rules[0].from[0].source.serviceAccounts", "cannot be combined"),
        (authz(&format!("  rules: [{{from: [{{source: {{serviceAccounts: {sa17:?}}}}}]}}]")), "rules[0].from[0].source.serviceAccounts", "at most 16"),
        (authz("  rules: [{from: [{source: {serviceAccounts: [\"Bad_Name\"]}}]}]"), "rules[0].from[0].source.serviceAccounts[0]", "is not a service account"),
        (authz("  rules: [{when: [{key: source.ip}]}]"), "rules[0].when[0]", "needs values or notValues"),
        (authz("  rules: [{when: [{key: source.ip, values: []}]}]"), "rules[0].when[0]", "needs values or notValues"),
        (authz("  rules: [{when: [{key: \"request.headers[x]\", values: [\"\"]}]}]"), "rules[0].when[0].values[0]", "empty string"),
        (authz("  rules: [{when: [{key: source.nope, values: [x]}]}]"), "rules[0].when[0].key", "not a supported key"),
        (authz("  rules: [{when: [{key: \"request.headers[]\", values: [x]}]}]"), "rules[0].when[0].key", "expected request.headers[NAME]"),
        (authz("  rules: [{when: [{key: source.ip, values: [10.0.0.0/99]}]}]"), "rules[0].when[0].values[0]", "not an IP address or CIDR"),
        (authz("  rules: [{when: [{key: destination.port, notValues: [\"99999\"]}]}]"), "rules[0].when[0].notValues[0]", "outside the port range"),
        (authz("  rules: [{when: [{key: time.window, values: [\"Mon-Fri 9-5\"]}]}]"), "rules[0].when[0].values[0]", "expected '[DAYS] HH:MM-HH:MM ZONE'"),
        (authz("  rules: [{when: [{key: time.window, values: [\"Mon 09:00-17:00 Moon/Base\"]}]}]"), "rules[0].when[0].values[0]", "not a known IANA time zone"),
        (authz("  rules: [{from: [{source: {principal: [x]}}]}]"), "rules[0].from[0].source.principal", "unknown field `principal`"),
        (authz("  rulez: []"), "rulez", "unknown field `rulez`"),
        (authz("  selector: {matchLabels: {app: web}}\n  targetRefs: [{kind: Gateway, name: gw}]"), "selector", "cannot be combined with targetRef"),
        (authz("  selector: {matchLabels: {app: \"w*\"}}"), "selector.matchLabels[app]", "label values are exact"),
        ("apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n".into(), "apiVersion", "is not supported"),
        ("apiVersion: security.ward.dev/v1\nkind: Gateway\nmetadata: {name: p, namespace: ns}\n".into(), "kind", "is not supported"),
        ("apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: ns}\n".into(), "metadata.name", "is required"),
        ("apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: \"yes\"}}\nspec: {}\n".into(), "metadata.annotations[istio.io/dry-run]", "must be \"true\" or \"false\""),
        ("apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\nspec: {mtls: {mode: DISABLE}}\n".into(), "mtls.mode", "DISABLE is not supported"),
        ("apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\nspec: {mtls: {mode: LOOSE}}\n".into(), "mtls.mode", "not a mode"),
        ("apiVersion: security.ward.dev/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: ns}\nspec: {portLevelMtls: {\"80\": {mode: PERMISSIVE}}}\n".into(), "portLevelMtls", "not supported"),
        ("apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec: {rules: [\n".into(), "", "not valid YAML"),
    ];
    for (text, path, fragment) in &cases {
        let errs = errors(text);
        assert!(
            errs.iter().any(
                |e| e.contains(&format!(": {path}: ")) && e.contains(fragment)
                    || path.is_empty() && e.contains(fragment)
            ),
            "expected an error at {path:?} containing {fragment:?}; got {errs:#?}\nfor:\n{text}"
        );
        assert!(
            errs.iter().all(|e| e.starts_with("t.yaml[doc 1]")),
            "{errs:?}"
        );
    }
}

#[test]
fn errors_name_the_policy_and_all_errors_are_reported() {
    let errs = errors(&authz(
        "  rules:\n    - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n    - to: [{operation: {ports: [\"x\"]}}]",
    ));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(
        errs[0],
        "t.yaml[doc 1]: policy ns/p: rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR"
    );
    assert!(errs[1].contains("rules[1].to[0].operation.ports[0]"));
}

#[test]
fn structural_errors_do_not_hide_the_others() {
    // An unknown field, a wrong type and two invalid values in one policy: all four reported.
    let errs = errors(&authz(
        "  rules:
    - from: [{source: {principal: [a], ipBlocks: [10.0.0.0/33]}}]
      to: [{operation: {ports: \"8080\", methods: [GET]}}, {operation: {ports: [\"99999\"]}}]",
    ));
    let paths: Vec<&str> = errs
        .iter()
        .map(|e| e.split(": ").nth(2).unwrap_or(""))
        .collect();
    for want in [
        "rules[0].from[0].source.principal",
        "rules[0].to[0].operation.ports",
        "rules[0].from[0].source.ipBlocks[0]",
        "rules[0].to[1].operation.ports[0]",
    ] {
        assert!(paths.contains(&want), "{want} not reported in {errs:#?}");
    }
}

#[test]
fn what_kubectl_get_prints_is_read() {
    // Server-set metadata, status, and a List of them.
    let object = "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: ns\n  uid: 6c1f0e8e-0000-4000-8000-000000000001\n  resourceVersion: \"4711\"\n  generation: 3\n  creationTimestamp: \"2026-12-01T10:00:00Z\"\n  managedFields: [{manager: kubectl, operation: Apply}]\n  annotations: {kubectl.kubernetes.io/last-applied-configuration: \"{}\"}\nspec:\n  rules: [{}]\nstatus:\n  observedGeneration: 3\n  conditions: [{type: Accepted, status: \"True\", reason: Accepted, message: ok, lastTransitionTime: \"2026-12-01T10:00:01Z\"}]\n";
    let list = format!(
        "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: \"\"}}\nitems:\n{}",
        object
            .lines()
            .enumerate()
            .map(|(i, l)| if i == 0 {
                format!("- {l}\n")
            } else {
                format!("  {l}\n")
            })
            .collect::<String>()
    );
    for text in [object.to_string(), list] {
        let docs = parse_documents(&text, "get.yaml", &TrustConfig::default())
            .unwrap_or_else(|e| panic!("{e:#?}\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
    }
}

#[test]
fn accepted_forms() {
    let ok = [
        authz("  {}"),
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\nspec: {}\n".to_string(),
        authz("  action: AUDIT"),
        authz("  rules: [{}]"),
        authz("  action: DENY\n  rules: [{}]"),
        authz("  rules: [{to: [{operation: {ports: [80, \"8080\"]}}]}]"),
        authz("  rules: [{to: [{operation: {paths: [\"/api/{*}/x/{**}\"]}}]}]"),
        authz("  rules: [{when: [{key: \"request.auth.claims[realm_access][roles]\", values: [admin]}]}]"),
        // Several documents, an empty one, and a List.
        format!("{}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: security.ward.dev/v1\n  kind: AuthorizationPolicy\n  metadata: {{name: q, namespace: ns}}\n  spec: {{}}\n", authz("  {}")),
    ];
    for text in ok {
        let docs = parse_documents(&text, "t.yaml", &TrustConfig::default())
            .unwrap_or_else(|e| panic!("{e:#?}\n{text}"));
        assert!(!docs.is_empty());
    }
}

#[test]
fn fail_closed_rewrites_are_warned() {
    let text = authz(
        "  action: DENY\n  rules:\n    - from: [{source: {namespaces: [evil]}}]\n      to: [{operation: {methods: [POST], paths: [/x]}}]",
    );
    let docs = parse_documents(&text, "t.yaml", &TrustConfig::default()).unwrap();
    let Document::Authorization(p) = &docs[0] else {
        panic!()
    };
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("to[0].operation.methods, to[0].operation.paths"));
    assert!(p.warnings[0].contains("denies more"));
    let text = authz("  rules:\n    - when: [{key: \"request.headers[x]\", values: [a]}]");
    let docs = parse_documents(&text, "t.yaml", &TrustConfig::default()).unwrap();
    let Document::Authorization(p) = &docs[0] else {
        panic!()
    };
    assert!(
        p.warnings[0].contains("this ALLOW rule never matches"),
        "{:?}",
        p.warnings
    );
    assert!(p.tcp_rules[0].is_none());
}
