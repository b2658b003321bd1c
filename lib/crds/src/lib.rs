//! ward's custom resources, `security.ward.dev/v1`: `AuthorizationPolicy` (Istio's schema,
//! field for field) and `PeerAuthentication`, as Rust types from which the CRDs are generated
//! (`ward crds`; the copy in the Helm chart, `deploy/helm/ward/crds/`, linked from `deploy/crds/`, is checked equal by a test).
//!
//! The schemas are precise enough that the API server itself refuses most malformed policies
//! before anything of ward sees them: enums for actions and modes, patterns for ports and
//! wildcard forms, CEL rules (`x-kubernetes-validations`) for CIDRs, principals, DENY without
//! rules, empty sources and operations, and bounds on every list (which also keeps the CEL
//! rules within the API server's cost budget). What a schema cannot say (the meaning of a
//! `when` key's values, time windows, fail-closed rewrites) is judged by the admission webhook
//! and the control component with `lib/policy`, the same code as `ward policy validate`.
//!
//! These types describe the API; they are not what ward evaluates (`lib/policy` parses the
//! objects itself, so both API groups and files read the same way).

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Longest list of values in any field (Istio sets none; ward bounds them so CEL rules stay
/// within the API server's cost budget and a single object stays reasonable).
pub const MAX_VALUES: u32 = 256;
/// Longest list of rules, sources, operations or conditions.
pub const MAX_ENTRIES: u32 = 64;

/// `security.ward.dev/v1` `AuthorizationPolicy`: who may call what, when and from where.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "security.ward.dev",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "wap",
    category = "ward",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action","description":"ALLOW (default), DENY or AUDIT"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.action) || self.action != 'DENY' || (has(self.rules) && size(self.rules) > 0)").message("a DENY policy needs at least one rule (use rules: [{}] to deny everything)"))]
#[x_kube(validation = Rule::new("!(has(self.targetRef) && has(self.targetRefs))").message("set targetRef or targetRefs, not both"))]
#[x_kube(validation = Rule::new("!((has(self.targetRef) || has(self.targetRefs)) && has(self.selector))").message("set a selector or target references, not both"))]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The workloads (in the policy's namespace, or mesh-wide in the root namespace) the policy
    /// applies to; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Attaches the policy to a gateway, waypoint or service: ward has none, so such a policy
    /// applies to no workload (its status says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub target_refs: Option<Vec<TargetRef>>,
    /// ALLOW (default), DENY or AUDIT. CUSTOM (an external authorizer) is not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Istio's CUSTOM provider; accepted in the schema so Istio policies read, refused by
    /// validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// Rules, ORed. Absent or empty: the policy matches nothing (an ALLOW policy without rules
    /// turns on default-deny for its scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rules: Option<Vec<PolicyRule>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub match_labels: Option<BTreeMap<String, String>>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
}

/// One rule: `from` AND `to` AND every `when`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PolicyRule {
    /// Sources, ORed; absent: any source. Present, it must list at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub from: Option<Vec<RuleFrom>>,
    /// Operations, ORed; absent: any operation. Present, it must list at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub to: Option<Vec<RuleTo>>,
    /// Conditions, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub when: Option<Vec<Condition>>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.source)").message("a from entry needs a source"))]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.operation)").message("a to entry needs an operation"))]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// A source: every field set must match (a field and its `not*` form both hold).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self) > 0").message("a source must set at least one field"))]
#[x_kube(validation = Rule::new("!(has(self.serviceAccounts) || has(self.notServiceAccounts)) || !(has(self.principals) || has(self.notPrincipals) || has(self.namespaces) || has(self.notNamespaces))").message("serviceAccounts cannot be combined with principals or namespaces in the same source"))]
pub struct Source {
    /// Peer identities without `spiffe://`: `td/ns/NS/sa/SA`; exact, `prefix*`, `*suffix` or `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    #[x_kube(validation = Rule::new("self.all(p, !p.startsWith('spiffe://'))").message("principals are written without 'spiffe://' (e.g. cluster.local/ns/default/sa/web)"))]
    pub principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    #[x_kube(validation = Rule::new("self.all(p, !p.startsWith('spiffe://'))").message("principals are written without 'spiffe://' (e.g. cluster.local/ns/default/sa/web)"))]
    pub not_principals: Option<Vec<String>>,
    /// `iss/sub` of a validated JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub request_principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 512),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub not_request_principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub not_namespaces: Option<Vec<String>>,
    /// `NS/SA`, or `SA` in the policy's namespace; exact, at most 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 317),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
        )
    )]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 317),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
        )
    )]
    pub not_service_accounts: Option<Vec<String>>,
    /// The TCP peer's address: IPs or CIDRs, v4 or v6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("every ipBlocks entry must be an IP address or a CIDR"))]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("every notIpBlocks entry must be an IP address or a CIDR"))]
    pub not_ip_blocks: Option<Vec<String>>,
    /// The original client address (X-Forwarded-For, PROXY protocol): HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("every remoteIpBlocks entry must be an IP address or a CIDR"))]
    pub remote_ip_blocks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || isCIDR(c))").message("every notRemoteIpBlocks entry must be an IP address or a CIDR"))]
    pub not_remote_ip_blocks: Option<Vec<String>>,
    /// The trust domain of the verified peer identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 255),
            regex(pattern = r"^(\*|\*?[^*/]+|[^*/]+\*)$")
        )
    )]
    pub trust_domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 255),
            regex(pattern = r"^(\*|\*?[^*/]+|[^*/]+\*)$")
        )
    )]
    pub not_trust_domains: Option<Vec<String>>,
}

/// An operation: every field set must match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self) > 0").message("an operation must set at least one field"))]
pub struct Operation {
    /// Host or `:authority`, case-insensitive: HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 255),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 256),
        inner(
            length(min = 1, max = 255),
            regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$")
        )
    )]
    pub not_hosts: Option<Vec<String>>,
    /// Destination workload ports (0-65535), as strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(regex(pattern = r"^[0-9]{1,5}$")))]
    #[x_kube(validation = Rule::new("self.all(p, int(p) <= 65535)").message("ports must be 0-65535"))]
    pub ports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(regex(pattern = r"^[0-9]{1,5}$")))]
    #[x_kube(validation = Rule::new("self.all(p, int(p) <= 65535)").message("notPorts must be 0-65535"))]
    pub not_ports: Option<Vec<String>>,
    /// HTTP methods, case-sensitive (gRPC: POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 64), regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$"))
    )]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 64), regex(pattern = r"^(\*|\*?[^*]+|[^*]+\*)$"))
    )]
    pub not_methods: Option<Vec<String>>,
    /// Normalized paths; exact, `prefix*`, `*suffix`, `*`, or a URI template with `{*}` and
    /// `{**}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub not_paths: Option<Vec<String>>,
}

/// A `when` condition: `key` against `values` and/or `notValues` (both parts must hold).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.values) || has(self.notValues)").message("a condition needs values or notValues"))]
pub struct Condition {
    /// `source.ip`, `request.headers[NAME]`, `time.window`, … (the full list is in the
    /// README); checked by validation.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[a-z][a-zA-Z.]*(\[[^\]]+\])*$")
    )]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 1024)))]
    pub not_values: Option<Vec<String>>,
}

/// `security.ward.dev/v1` `PeerAuthentication`: whether plaintext may reach workloads.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "security.ward.dev",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "PolicyStatus",
    shortname = "wpa",
    category = "ward",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Mtls {
    /// STRICT (plaintext refused), PERMISSIVE (plaintext evaluated without identity) or UNSET
    /// (inherit). DISABLE is not supported: ward never turns mTLS off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum MtlsMode {
    #[serde(rename = "UNSET")]
    Unset,
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

/// What the control component reports on a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<PolicyCondition>,
}

/// A condition, as `metav1.Condition`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    /// `Accepted` or `Enforced`.
    #[schemars(length(max = 316))]
    pub r#type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
    #[schemars(length(max = 1024))]
    pub reason: String,
    #[schemars(length(max = 32768))]
    pub message: String,
}

/// Both CRDs, as YAML documents (what `ward crds` prints and `deploy/crds/` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [AuthorizationPolicy::crd(), PeerAuthentication::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
