//! Policy objects → what proxies enforce, and what the object's status says.
//!
//! Each object is validated on its own with the same parser the proxies use (`lib/policy`),
//! so one bad object never affects another. What is enforced for an object:
//! - valid: the object as written;
//! - invalid, but an earlier version was valid: that version stays in force (the last good
//!   configuration stays in force), and the status says so;
//! - invalid and never valid: a fail-closed stand-in for the object's scope — an ALLOW policy
//!   becomes allow-nothing (its scope becomes default-deny, as an ALLOW policy would have
//!   made it), a DENY (or CUSTOM, or unreadable action) becomes deny-all, a
//!   PeerAuthentication becomes STRICT; an AUDIT policy changes no verdict and is dropped.
//!   Skipping an invalid object instead would fail open: the workload it was written to
//!   protect would fall back to allow-all.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use ward_lib_api::control as pb;
use ward_lib_api::resources::Encoded;
use ward_lib_policy::{Document, TrustConfig};

use crate::model::PolicyObject;

/// What a policy's status reports about the object as last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted {
        /// Fail-closed rewrites and other notes from validation.
        warnings: Vec<String>,
    },
    Invalid {
        /// Every error, each naming the field.
        errors: Vec<String>,
    },
}

/// Where the enforced form of an object comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnforcedFrom {
    /// The object as written.
    Current,
    /// The last valid version (its generation).
    LastGood { generation: i64 },
    /// A fail-closed stand-in (`allow-nothing`, `deny-all`, `STRICT`).
    FailClosed { what: &'static str },
}

/// The form proxies enforce, with what the index needs to route it to nodes.
#[derive(Debug, Clone)]
pub struct Enforced {
    pub from: EnforcedFrom,
    pub namespace: String,
    /// `None`: every workload of the namespace (or of the mesh, in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// Attached to gateways/waypoints only: applies to no workload.
    pub targets_only: bool,
    /// Dry-run (annotation): evaluated and reported, never enforced.
    pub dry_run: bool,
    /// The document that was enforced (kept to recompile when the trust domain changes).
    pub document: Value,
    pub resource: Encoded,
}

/// One policy object and its outcome.
#[derive(Debug, Clone)]
pub struct PolicyState {
    pub object: PolicyObject,
    pub verdict: Verdict,
    pub enforced: Option<Enforced>,
}

impl PolicyState {
    /// Validates `object`; `previous` is the state of the same object before this change.
    pub fn compile(
        object: PolicyObject,
        previous: Option<&PolicyState>,
        trust: &TrustConfig,
    ) -> PolicyState {
        match compile_document(&object.document, &object.origin, trust) {
            Ok((doc, warnings)) => {
                let enforced = enforced(
                    &object,
                    &doc,
                    object.document.clone(),
                    EnforcedFrom::Current,
                );
                PolicyState {
                    object,
                    verdict: Verdict::Accepted { warnings },
                    enforced: Some(enforced),
                }
            }
            Err(errors) => {
                let last_good = previous.and_then(|p| match (&p.verdict, &p.enforced) {
                    (Verdict::Accepted { .. }, Some(e)) => Some(Enforced {
                        from: EnforcedFrom::LastGood {
                            generation: p.object.generation,
                        },
                        ..e.clone()
                    }),
                    (Verdict::Invalid { .. }, Some(e)) => Some(e.clone()),
                    _ => None,
                });
                let enforced = last_good.or_else(|| stand_in(&object, trust));
                PolicyState {
                    object,
                    verdict: Verdict::Invalid { errors },
                    enforced,
                }
            }
        }
    }

    /// Recompiles the enforced form under a new trust configuration (aliases change how
    /// principals are matched); the verdict is recomputed for the object as written.
    pub fn recompile(&self, trust: &TrustConfig) -> PolicyState {
        let mut next = PolicyState::compile(self.object.clone(), None, trust);
        if matches!(next.verdict, Verdict::Invalid { .. }) {
            if let Some(e) = &self.enforced {
                if let Ok((doc, _)) = compile_document(&e.document, &self.object.origin, trust) {
                    next.enforced = Some(enforced(
                        &self.object,
                        &doc,
                        e.document.clone(),
                        e.from.clone(),
                    ));
                }
            }
        }
        next
    }
}

/// Compiles one document; the errors are the messages `ward policy validate` prints.
fn compile_document(
    document: &Value,
    origin: &str,
    trust: &TrustConfig,
) -> Result<(Document, Vec<String>), Vec<String>> {
    let text = document.to_string();
    match ward_lib_policy::parse_documents(&text, origin, trust) {
        Ok(mut docs) if docs.len() == 1 => {
            let doc = docs.remove(0);
            let warnings = match &doc {
                Document::Authorization(p) => p.warnings.clone(),
                Document::PeerAuthentication(_) => Vec::new(),
            };
            Ok((doc, warnings))
        }
        Ok(docs) => Err(vec![format!(
            "{origin}: expected one policy, found {}",
            docs.len()
        )]),
        // The object's origin already says which document it is.
        Err(errors) => Err(errors
            .into_iter()
            .map(|mut e| {
                e.origin = origin.to_owned();
                e.to_string()
            })
            .collect()),
    }
}

fn enforced(
    object: &PolicyObject,
    doc: &Document,
    document: Value,
    from: EnforcedFrom,
) -> Enforced {
    let (selector, targets_only, dry_run) = match doc {
        Document::Authorization(p) => (p.selector.clone(), p.targets_only, p.dry_run),
        Document::PeerAuthentication(p) => (p.selector.clone(), false, false),
    };
    let name = format!("{}/{}", object.kind.resource_prefix(), object.key);
    let resource = Encoded::new(
        name,
        ward_lib_api::resources::POLICY,
        &pb::Policy {
            document: document.to_string(),
        },
    );
    Enforced {
        from,
        namespace: object.key.namespace.to_string(),
        selector,
        targets_only,
        dry_run,
        document,
        resource,
    }
}

/// The fail-closed stand-in for an object that never validated, or `None` when it would
/// change no verdict (AUDIT, or attached to targets rather than workloads).
fn stand_in(object: &PolicyObject, trust: &TrustConfig) -> Option<Enforced> {
    let spec = object.document.get("spec");
    if spec
        .and_then(|s| s.get("targetRefs").or_else(|| s.get("targetRef")))
        .is_some()
    {
        return None;
    }
    // A selector that cannot be read scopes the stand-in to the whole namespace: wider, never
    // narrower, than what was meant.
    let selector = spec
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .filter(|m| m.values().all(Value::is_string))
        .cloned();
    let mut new_spec = serde_json::Map::new();
    if let Some(m) = selector {
        new_spec.insert("selector".into(), json!({ "matchLabels": m }));
    }
    let (api_version, what) = match object.kind {
        k if k.is_authorization() => {
            let action = spec
                .and_then(|s| s.get("action"))
                .map_or(Some("ALLOW"), Value::as_str);
            match action {
                Some("AUDIT") => return None,
                Some("ALLOW") => {
                    new_spec.insert("action".into(), json!("ALLOW"));
                    ("security.ward.dev/v1", "allow-nothing")
                }
                _ => {
                    new_spec.insert("action".into(), json!("DENY"));
                    new_spec.insert("rules".into(), json!([{}]));
                    ("security.ward.dev/v1", "deny-all")
                }
            }
        }
        _ => {
            new_spec.insert("mtls".into(), json!({ "mode": "STRICT" }));
            ("security.ward.dev/v1", "STRICT")
        }
    };
    let document = json!({
        "apiVersion": api_version,
        "kind": object.kind.as_str(),
        "metadata": { "namespace": &*object.key.namespace, "name": &*object.key.name },
        "spec": Value::Object(new_spec),
    });
    let (doc, _) = compile_document(&document, &object.origin, trust).ok()?;
    Some(enforced(
        object,
        &doc,
        document,
        EnforcedFrom::FailClosed { what },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Key, PolicyKind};

    fn object(spec: Value) -> PolicyObject {
        PolicyObject {
            kind: PolicyKind::AuthorizationPolicy,
            key: Key::new("shop", "p"),
            generation: 1,
            origin: "test".into(),
            document: json!({
                "apiVersion": "security.ward.dev/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"namespace": "shop", "name": "p"},
                "spec": spec,
            }),
            uid: None,
            status: None,
        }
    }

    fn compile(spec: Value, previous: Option<&PolicyState>) -> PolicyState {
        PolicyState::compile(object(spec), previous, &TrustConfig::default())
    }

    fn enforced_spec(s: &PolicyState) -> Value {
        s.enforced
            .as_ref()
            .map(|e| e.document["spec"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn a_valid_policy_is_enforced_as_written() {
        let s = compile(
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
            None,
        );
        assert!(matches!(s.verdict, Verdict::Accepted { .. }));
        assert_eq!(
            s.enforced.as_ref().map(|e| &e.from),
            Some(&EnforcedFrom::Current)
        );
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_version_in_force() {
        let good = compile(
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["22"]}}]}]}),
            None,
        );
        let mut bad_obj =
            object(json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["x"]}}]}]}));
        bad_obj.generation = 2;
        let bad = PolicyState::compile(bad_obj, Some(&good), &TrustConfig::default());
        let Verdict::Invalid { errors } = &bad.verdict else {
            panic!("accepted a non-numeric port")
        };
        assert!(errors[0].contains("ports[0]"), "{errors:?}");
        assert_eq!(
            bad.enforced.as_ref().map(|e| &e.from),
            Some(&EnforcedFrom::LastGood { generation: 1 })
        );
        assert_eq!(enforced_spec(&bad), enforced_spec(&good));
    }

    #[test]
    fn a_never_valid_policy_is_enforced_fail_closed() {
        let cases = [
            (
                json!({"action": "ALLOW", "selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}),
                Some("allow-nothing"),
                json!({"action": "ALLOW", "selector": {"matchLabels": {"app": "web"}}}),
            ),
            (
                json!({"rules": [{"from": []}]}),
                Some("allow-nothing"),
                json!({"action": "ALLOW"}),
            ),
            (
                json!({"action": "DENY"}),
                Some("deny-all"),
                json!({"action": "DENY", "rules": [{}]}),
            ),
            (
                json!({"action": "CUSTOM", "rules": [{}]}),
                Some("deny-all"),
                json!({"action": "DENY", "rules": [{}]}),
            ),
            (
                json!({"action": 7}),
                Some("deny-all"),
                json!({"action": "DENY", "rules": [{}]}),
            ),
            (
                json!({"action": "AUDIT", "rules": [{"from": []}]}),
                None,
                Value::Null,
            ),
        ];
        for (spec, what, want) in cases {
            let s = compile(spec.clone(), None);
            assert!(matches!(s.verdict, Verdict::Invalid { .. }), "{spec}");
            assert_eq!(
                s.enforced.as_ref().map(|e| e.from.clone()),
                what.map(|what| EnforcedFrom::FailClosed { what }),
                "{spec}"
            );
            assert_eq!(enforced_spec(&s), want, "{spec}");
        }
    }
}
