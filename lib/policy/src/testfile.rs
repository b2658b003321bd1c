//! The `ward policy test` file format: policies plus named cases with expected decisions, so
//! platform teams can unit-test policies in CI.
//!
//! ```yaml
//! rootNamespace: ward-system          # default ward-system
//! trustDomain: cluster.local          # default cluster.local
//! trustDomainAliases: []
//! policies: [./policies/]             # files or directories, relative to this file
//! documents: []                       # and/or policy documents inline
//! defaults:                           # merged into every case's request (deep merge;
//!                                     # an empty mapping in a case replaces instead)
//!   destination: {namespace: shop, ip: 10.0.0.5, port: 8080, protocol: http}
//!   source: {ip: 10.0.0.9}
//! cases:
//!   - name: frontend may read products
//!     request:                        # the `ward policy eval` request schema
//!       source: {principal: spiffe://cluster.local/ns/shop/sa/frontend}
//!       request: {method: GET, path: /products}
//!     expect: allow                   # allow | deny
//!     policy: shop/allow-frontend     # optional: the deciding policy (null: none)
//!     rule: 0                         # optional
//!     audit: []                       # optional: AUDIT policies that must match
//! ```
//! Reading the files named in `policies` is the caller's job; this module only parses and runs.

use jiff::Timestamp;
use serde::Deserialize;

use crate::compile::TrustConfig;
use crate::index::{PolicySet, DEFAULT_ROOT_NAMESPACE};
use crate::request::{decide, EvalRequest, Verdict};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestFile {
    #[serde(default)]
    pub root_namespace: Option<String>,
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub documents: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub defaults: Option<serde_json::Value>,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub request: serde_json::Value,
    pub expect: Expected,
    /// `Some(None)`: expects no deciding policy.
    #[serde(default, deserialize_with = "explicit_null")]
    pub policy: Option<Option<String>>,
    #[serde(default)]
    pub rule: Option<usize>,
    #[serde(default)]
    pub audit: Option<Vec<String>>,
}

fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    Allow,
    Deny,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    /// `None`: passed. Otherwise what differed.
    pub failure: Option<String>,
    pub verdict: Option<Verdict>,
}

impl TestFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    pub fn trust(&self) -> TrustConfig {
        TrustConfig {
            trust_domain: self
                .trust_domain
                .clone()
                .unwrap_or_else(|| TrustConfig::default().trust_domain),
            aliases: self.trust_domain_aliases.clone(),
        }
    }

    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .unwrap_or(DEFAULT_ROOT_NAMESPACE)
    }

    /// The inline documents as one YAML text (for [`PolicySet::parse`]).
    pub fn inline_documents(&self) -> Result<String, String> {
        let mut text = String::new();
        for d in &self.documents {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d).map_err(|e| e.to_string())?);
        }
        Ok(text)
    }

    /// Runs every case against `set`. Requests without `time` are evaluated at `now`.
    pub fn run(&self, set: &PolicySet, now: Timestamp) -> Vec<CaseResult> {
        self.cases
            .iter()
            .map(|c| {
                let mut req = self.defaults.clone().unwrap_or(serde_json::Value::Null);
                // `request: {}` means "the defaults as they are".
                if c.request.as_object().is_none_or(|o| !o.is_empty()) {
                    merge(&mut req, &c.request);
                }
                let prepared = serde_json::from_value::<EvalRequest>(req)
                    .map_err(|e| format!("request: {e}"))
                    .and_then(|r| r.prepare(now).map_err(|e| e.to_string()));
                match prepared {
                    Err(e) => CaseResult {
                        name: c.name.clone(),
                        failure: Some(e),
                        verdict: None,
                    },
                    Ok(p) => {
                        let v = decide(set, &p);
                        CaseResult {
                            name: c.name.clone(),
                            failure: compare(c, &v),
                            verdict: Some(v),
                        }
                    }
                }
            })
            .collect()
    }
}

fn compare(c: &TestCase, v: &Verdict) -> Option<String> {
    let want = match c.expect {
        Expected::Allow => "allow",
        Expected::Deny => "deny",
    };
    let mut diffs = Vec::new();
    if v.decision != want {
        diffs.push(format!("expected {want}, got {}", v.decision));
    }
    if let Some(p) = &c.policy {
        if &v.policy != p {
            diffs.push(format!(
                "expected deciding policy {}, got {}",
                p.as_deref().unwrap_or("none"),
                v.policy.as_deref().unwrap_or("none")
            ));
        }
    }
    if let Some(r) = c.rule {
        if v.rule != Some(r) {
            diffs.push(format!("expected rule {r}, got {:?}", v.rule));
        }
    }
    if let Some(a) = &c.audit {
        if &v.audit != a {
            diffs.push(format!("expected audit {a:?}, got {:?}", v.audit));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        Some(format!("{} ({})", diffs.join("; "), v.reason))
    }
}

/// Deep-merges `patch` into `base`: objects merge key by key, except that an empty object
/// replaces (so a case can say "no headers"); anything else replaces.
pub fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) if !p.is_empty() => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}
