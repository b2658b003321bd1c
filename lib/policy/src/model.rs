//! Validated, compiled policies: what the evaluator runs. Built only by [`crate::compile`], so
//! every value here has already passed validation.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::matcher::{PathMatch, StringMatch};
use crate::timewindow::TimeWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        })
    }
}

/// `namespace/name` of a policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A compiled AuthorizationPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: PolicyRef,
    pub action: Action,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
    /// `None`: every workload in scope.
    pub selector: Option<BTreeMap<String, String>>,
    /// Attached to gateways/waypoints via targetRef(s): never applies to workloads.
    pub targets_only: bool,
    /// Rules as written (used on HTTP ports).
    pub rules: Vec<Rule>,
    /// Rules as enforced on ports that are not HTTP (fail-closed rewrites applied), index-aligned
    /// with `rules`; `None` means the rule can never match there.
    pub tcp_rules: Vec<Option<Rule>>,
    pub warnings: Vec<String>,
}

impl Policy {
    /// Whether this policy's selector selects a workload with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.selector {
            None => true,
            Some(sel) => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// `None`: any source.
    pub from: Option<Vec<Source>>,
    /// `None`: any operation.
    pub to: Option<Vec<Operation>>,
    pub when: Vec<Condition>,
}

/// A field and its `not*` form.
#[derive(Debug, Clone, PartialEq)]
pub struct Field<T> {
    pub values: Vec<T>,
    pub not_values: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    pub fn is_set(&self) -> bool {
        !self.values.is_empty() || !self.not_values.is_empty()
    }

    /// `(values empty or any matches) and (not_values empty or none matches)`, where `attr` is
    /// `None` when the attribute is absent (e.g. no peer identity): then no value matches, so
    /// positive forms fail and `not*` forms pass.
    pub fn check<A: Copy>(&self, attr: Option<A>, m: impl Fn(&T, A) -> bool) -> bool {
        let any = |vs: &[T]| attr.is_some_and(|a| vs.iter().any(|v| m(v, a)));
        (self.values.is_empty() || any(&self.values))
            && (self.not_values.is_empty() || !any(&self.not_values))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Source {
    pub principals: Field<StringMatch>,
    pub namespaces: Field<StringMatch>,
    /// `ns/sa`, exact.
    pub service_accounts: Field<String>,
    pub ip_blocks: Field<IpNet>,
    pub remote_ip_blocks: Field<IpNet>,
    pub request_principals: Field<StringMatch>,
    /// The trust domain of the verified peer identity.
    pub trust_domains: Field<StringMatch>,
}

#[derive(Debug, Clone, Default)]
pub struct Operation {
    /// Lower-cased; matched case-insensitively.
    pub hosts: Field<StringMatch>,
    pub ports: Field<u16>,
    pub methods: Field<StringMatch>,
    pub paths: Field<PathMatch>,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub key: Key,
    pub values: Vec<CondValue>,
    pub not_values: Vec<CondValue>,
}

/// `when` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    RemoteIp,
    /// Lower-cased header name.
    RequestHeader(String),
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    /// Path into the claims object.
    AuthClaims(Vec<String>),
    /// ward: `time.window`.
    TimeWindow,
}

impl Key {
    /// Whether evaluating this key needs an HTTP request.
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            Key::RemoteIp
                | Key::RequestHeader(_)
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaims(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CondValue {
    Str(StringMatch),
    Cidr(IpNet),
    Port(u16),
    Window(TimeWindow),
}

/// Peer-authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MtlsMode {
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

/// A compiled PeerAuthentication.
#[derive(Debug, Clone)]
pub struct PeerAuthentication {
    pub id: PolicyRef,
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: UNSET, inherit from the wider scope.
    pub mode: Option<MtlsMode>,
}
