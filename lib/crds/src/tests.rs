//! The generated CRDs: equal to the committed copies; every example policy valid against them;
//! malformed policies refused, each by the schema (checked with `check-jsonschema`, the tool
//! TOOLS.md names) or by a named CEL rule (evaluated with kube-cel, the Kubernetes CEL library
//! kube-rs ships).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn schema_of(kind: &str) -> Value {
    let crd = match kind {
        "AuthorizationPolicy" => AuthorizationPolicy::crd(),
        _ => PeerAuthentication::crd(),
    };
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("no schema"));
    serde_json::to_value(schema).unwrap_or_else(|e| panic!("{e}"))
}

/// `check-jsonschema` on `object` against the kind's schema: `Err(output)` when refused.
fn schema_check(dir: &Path, name: &str, object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or("AuthorizationPolicy");
    let schema = dir.join(format!("{kind}.schema.json"));
    if !schema.exists() {
        std::fs::write(&schema, schema_of(kind).to_string()).unwrap_or_else(|e| panic!("{e}"));
    }
    let file = dir.join(format!("{}.json", name.replace(['/', ' ', ':'], "_")));
    std::fs::write(&file, object.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(&schema)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("check-jsonschema is missing ({e}): pip install check-jsonschema (.ci/run installs it)")
        });
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The CEL rules of the kind's schema on `object`: `Err(messages)` when refused.
fn cel_check(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or("AuthorizationPolicy");
    kube::core::cel::Validator::new()
        .validate(&schema_of(kind), object, None)
        .map_err(|e| e.to_string())
}

#[test]
fn generated_crds_equal_the_committed_copies() {
    let path = root().join("deploy/crds/ward-crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crds_yaml().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        committed == generated,
        "{} is not what `ward crds` generates; regenerate it: cargo run -p ward-cli -- crds > deploy/helm/ward/crds/ward-crds.yaml (deploy/crds/ links to it)",
        path.display()
    );
}

#[test]
fn every_example_policy_is_valid_against_the_crds() {
    let dir = tempfile_dir();
    let mut checked = 0;
    let examples = root().join("examples/policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("{}: {e}", examples.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && !p.to_string_lossy().ends_with(".test.yaml")
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{e}"));
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(de).unwrap_or_else(|e| panic!("{e}"));
            if v.is_null() {
                continue;
            }
            let name = format!(
                "{}-{i}",
                f.file_name().unwrap_or_default().to_string_lossy()
            );
            // Both API groups read; the CRD is ward's own group.
            let mut v = v;
            v["apiVersion"] = json!("security.ward.dev/v1");
            schema_check(&dir, &name, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
            cel_check(&v).unwrap_or_else(|e| panic!("{name}: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} example policies found");
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ward-crds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

fn authz(spec: Value) -> Value {
    json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
           "metadata": {"name": "p", "namespace": "shop"}, "spec": spec})
}

/// Who must refuse a malformed policy.
enum By {
    /// The OpenAPI schema (type, enum, pattern, bounds); the text is in check-jsonschema's
    /// report.
    Schema(&'static str),
    /// A CEL rule; the text is in its message.
    Cel(&'static str),
}

#[test]
fn malformed_policies_are_refused_by_the_schema_or_by_cel() {
    let dir = tempfile_dir();
    let src = |s: Value| json!({"rules": [{"from": [{"source": s}]}]});
    let op = |o: Value| json!({"rules": [{"to": [{"operation": o}]}]});
    let sas: Vec<String> = (0..17).map(|i| format!("sa-{i}")).collect();
    let cases: Vec<(&str, Value, By)> = vec![
        (
            "unknown action",
            json!({"action": "REJECT"}),
            By::Schema("REJECT"),
        ),
        (
            "CUSTOM is not supported",
            json!({"action": "CUSTOM", "provider": {"name": "ext"}}),
            By::Schema("CUSTOM"),
        ),
        (
            "DENY without rules",
            json!({"action": "DENY"}),
            By::Cel("a DENY policy needs at least one rule"),
        ),
        (
            "DENY with an empty rule list",
            json!({"action": "DENY", "rules": []}),
            By::Cel("a DENY policy needs at least one rule"),
        ),
        (
            "from: []",
            json!({"rules": [{"from": []}]}),
            By::Schema("should be non-empty"),
        ),
        (
            "to: []",
            json!({"rules": [{"to": []}]}),
            By::Schema("should be non-empty"),
        ),
        (
            "a from entry without a source",
            json!({"rules": [{"from": [{}]}]}),
            By::Cel("a from entry needs a source"),
        ),
        (
            "a source with no field",
            src(json!({})),
            By::Cel("a source must set at least one field"),
        ),
        (
            "an operation with no field",
            op(json!({})),
            By::Cel("an operation must set at least one field"),
        ),
        (
            "a malformed CIDR",
            src(json!({"ipBlocks": ["10.0.0.0/33"]})),
            By::Cel("must be an IP address or a CIDR"),
        ),
        (
            "not an address at all",
            src(json!({"notIpBlocks": ["office"]})),
            By::Cel("must be an IP address or a CIDR"),
        ),
        (
            "a principal with spiffe://",
            src(json!({"principals": ["spiffe://cluster.local/ns/a/sa/b"]})),
            By::Cel("written without 'spiffe://'"),
        ),
        (
            "a '*' in the middle of a principal",
            src(json!({"principals": ["cluster.local/*/sa/b"]})),
            By::Schema("does not match"),
        ),
        (
            "an empty namespace value",
            src(json!({"namespaces": [""]})),
            By::Schema("should be non-empty"),
        ),
        (
            "serviceAccounts with a wildcard",
            src(json!({"serviceAccounts": ["shop/*"]})),
            By::Schema("does not match"),
        ),
        (
            "more than 16 serviceAccounts",
            src(json!({"serviceAccounts": sas})),
            By::Schema("is too long"),
        ),
        (
            "serviceAccounts with principals",
            src(json!({"serviceAccounts": ["web"], "principals": ["*"]})),
            By::Cel("cannot be combined"),
        ),
        (
            "a trust domain with a path",
            src(json!({"trustDomains": ["cluster.local/ns/a"]})),
            By::Schema("does not match"),
        ),
        (
            "a non-numeric port",
            op(json!({"ports": ["http"]})),
            By::Schema("does not match"),
        ),
        (
            "a port out of range",
            op(json!({"ports": ["70000"]})),
            By::Cel("ports must be 0-65535"),
        ),
        (
            "a port written as a number",
            op(json!({"ports": [8080]})),
            By::Schema("is not of type 'string'"),
        ),
        (
            "a when entry without values",
            json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
            By::Cel("needs values or notValues"),
        ),
        (
            "an empty when value",
            json!({"rules": [{"when": [{"key": "source.ip", "values": [""]}]}]}),
            By::Schema("should be non-empty"),
        ),
        (
            "a when key that is not a key",
            json!({"rules": [{"when": [{"key": "Source IP!", "values": ["x"]}]}]}),
            By::Schema("does not match"),
        ),
        (
            "a rule list that is not a list",
            json!({"rules": {"from": []}}),
            By::Schema("is not of type 'array'"),
        ),
        (
            "targetRef and targetRefs",
            json!({"targetRef": {"kind": "Gateway", "name": "g"}, "targetRefs": [{"kind": "Gateway", "name": "g"}]}),
            By::Cel("not both"),
        ),
        (
            "a selector with target references",
            json!({"selector": {"matchLabels": {"a": "b"}}, "targetRef": {"kind": "Gateway", "name": "g"}}),
            By::Cel("a selector or target references"),
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, by) in cases {
        let object = authz(spec);
        let schema = schema_check(&dir, name, &object);
        let cel = cel_check(&object);
        match (&by, &schema, &cel) {
            (By::Schema(want), Err(out), _) if out.contains(want) => {}
            (By::Cel(want), Ok(()), Err(msg)) if msg.contains(want) => {}
            _ => failures.push(format!(
                "{name}: expected refusal by {}, got schema {schema:?}, CEL {cel:?}",
                match by {
                    By::Schema(w) => format!("the schema ({w:?})"),
                    By::Cel(w) => format!("CEL ({w:?})"),
                }
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // PeerAuthentication: modes are an enum without DISABLE.
    let pa = json!({"apiVersion": "security.ward.dev/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": "p", "namespace": "shop"}, "spec": {"mtls": {"mode": "DISABLE"}}});
    let out = schema_check(&dir, "pa-disable", &pa)
        .err()
        .unwrap_or_else(|| panic!("DISABLE accepted"));
    assert!(out.contains("DISABLE"), "{out}");
    let ok = json!({"apiVersion": "security.ward.dev/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": "p", "namespace": "shop"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}});
    schema_check(&dir, "pa-ok", &ok).unwrap_or_else(|e| panic!("{e}"));
}
