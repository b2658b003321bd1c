//! The wire form of policies: YAML/JSON documents exactly as users write them, before
//! validation. Accepted API groups: `security.ward.dev/v1`, and Istio's `security.istio.io/v1`
//! and `v1beta1` so existing policies work unchanged.
//!
//! Unknown fields are errors (a typo such as `principal:` must not silently widen a policy), and
//! every error carries the field path where it happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// API versions accepted as input.
pub const API_VERSIONS: [&str; 3] = [
    "security.ward.dev/v1",
    "security.istio.io/v1",
    "security.istio.io/v1beta1",
];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    // Other metadata (labels, uid, resourceVersion, …) is accepted and ignored.
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAuthzSpec {
    pub selector: Option<RawSelector>,
    pub target_ref: Option<serde_yaml::Value>,
    pub target_refs: Option<Vec<serde_yaml::Value>>,
    pub action: Option<String>,
    pub provider: Option<serde_yaml::Value>,
    pub rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRule {
    pub from: Option<Vec<RawFrom>>,
    pub to: Option<Vec<RawTo>>,
    pub when: Option<Vec<RawCondition>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrom {
    pub source: Option<RawSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTo {
    pub operation: Option<RawOperation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSource {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub service_accounts: Option<Vec<String>>,
    pub not_service_accounts: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
    pub trust_domains: Option<Vec<String>>,
    pub not_trust_domains: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawOperation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_number_list")]
    pub ports: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_number_list")]
    pub not_ports: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCondition {
    pub key: String,
    #[serde(default, deserialize_with = "string_or_number_list")]
    pub values: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_number_list")]
    pub not_values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPeerAuthSpec {
    pub selector: Option<RawSelector>,
    pub mtls: Option<RawMtls>,
    pub port_level_mtls: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    pub mode: Option<String>,
}

/// Istio writes ports as strings; YAML authors often write numbers. Accept both.
fn string_or_number_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        S(String),
        N(i64),
    }
    let v: Option<Vec<Item>> = Option::deserialize(d)?;
    Ok(v.map(|items| {
        items
            .into_iter()
            .map(|i| match i {
                Item::S(s) => s,
                Item::N(n) => n.to_string(),
            })
            .collect()
    }))
}
