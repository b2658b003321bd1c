//! YAML/JSON documents → validated, compiled policies.
//!
//! Validation rejects what Istio rejects (and a little more, where accepting would be a trap),
//! and every error names the document, the policy and the field path, e.g.
//! `policies.yaml[doc 2]: policy foo/allow-web: rules[0].from[0].source.ipBlocks[1]: "10.0.0.0/33" is not an IP address or CIDR`.
//! All errors of a document are reported, not just the first.

use std::collections::BTreeMap;

use crate::matcher::{parse_cidr, parse_port, PathMatch, StringMatch};
use crate::model::*;
use crate::raw::*;
use crate::timewindow::TimeWindow;

/// The trust-domain facts principals are interpreted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    pub trust_domain: String,
    pub aliases: Vec<String>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            aliases: Vec::new(),
        }
    }
}

/// Annotations that make a policy dry-run (shadow) only.
pub const DRY_RUN_ANNOTATIONS: [&str; 2] = ["istio.io/dry-run", "security.ward.dev/dry-run"];
/// Maximum `serviceAccounts` entries per source (Istio's limit).
pub const MAX_SERVICE_ACCOUNTS: usize = 16;

/// One validation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{path}: {message}", policy.as_ref().map(|p| format!("policy {p}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// File (and document index) the error is in.
    pub origin: String,
    /// `namespace/name`, when known.
    pub policy: Option<String>,
    /// Field path, e.g. `rules[0].from[0].source.ipBlocks[1]`.
    pub path: String,
    pub message: String,
}

/// A parsed document.
#[derive(Debug, Clone)]
pub enum Document {
    Authorization(Policy),
    PeerAuthentication(PeerAuthentication),
}

/// Parses every document of a YAML (or JSON) text. Empty documents are skipped; a `kind: List`
/// is unpacked. Returns all documents, or every error found.
pub fn parse_documents(
    text: &str,
    origin: &str,
    trust: &TrustConfig,
) -> Result<Vec<Document>, Vec<PolicyError>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    // One JSON object (what the control stream carries): read with the JSON parser, several
    // times faster than the YAML one, into the same value the YAML path produces.
    if text.trim_start().starts_with('{') {
        if let Ok(value) = serde_json::from_str::<serde_yaml::Value>(text) {
            parse_value(
                value,
                &format!("{origin}[doc 1]"),
                trust,
                &mut docs,
                &mut errors,
            );
            return if errors.is_empty() {
                Ok(docs)
            } else {
                Err(errors)
            };
        }
    }
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{origin}[doc {}]", i + 1);
        let value = match serde_path_to_error::deserialize::<_, serde_yaml::Value>(de) {
            Ok(v) => v,
            Err(e) => {
                errors.push(PolicyError {
                    origin: where_,
                    policy: None,
                    path: String::new(),
                    message: format!("not valid YAML: {}", e.inner()),
                });
                // The stream cannot continue after a syntax error.
                break;
            }
        };
        parse_value(value, &where_, trust, &mut docs, &mut errors);
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

fn parse_value(
    value: serde_yaml::Value,
    origin: &str,
    trust: &TrustConfig,
    docs: &mut Vec<Document>,
    errors: &mut Vec<PolicyError>,
) {
    if value.is_null() {
        return;
    }
    let err = |path: &str, message: String| PolicyError {
        origin: origin.to_owned(),
        policy: None,
        path: path.to_owned(),
        message,
    };
    let Some(map) = value.as_mapping() else {
        errors.push(err(
            "",
            "a document must be a mapping with apiVersion and kind".into(),
        ));
        return;
    };
    let get = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = get("kind").unwrap_or_default();
    if kind == "List" {
        let items = map
            .get("items")
            .and_then(|v| v.as_sequence())
            .cloned()
            .unwrap_or_default();
        for (j, item) in items.into_iter().enumerate() {
            parse_value(item, &format!("{origin}.items[{j}]"), trust, docs, errors);
        }
        return;
    }
    let api_version = get("apiVersion").unwrap_or_default();
    if !API_VERSIONS.contains(&api_version.as_str()) {
        errors.push(err(
            "apiVersion",
            format!(
                "{api_version:?} is not supported; use one of {}",
                API_VERSIONS.join(", ")
            ),
        ));
        return;
    }
    let meta: RawMeta = match map.get("metadata") {
        Some(m) => match serde_path_to_error::deserialize(m.clone()) {
            Ok(m) => m,
            Err(e) => {
                errors.push(err(
                    &format!("metadata.{}", e.path()),
                    e.inner().to_string(),
                ));
                return;
            }
        },
        None => RawMeta::default(),
    };
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        errors.push(err("metadata.name", "is required".into()));
        return;
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let id = PolicyRef { namespace, name };
    let spec = map.get("spec").cloned().unwrap_or(serde_yaml::Value::Null);
    let spec = if spec.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        spec
    };
    let mut cx = Cx {
        origin,
        policy: id.to_string(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    if meta.namespace.is_none() {
        cx.warnings
            .push("metadata.namespace is not set; assuming \"default\"".into());
    }
    match kind.as_str() {
        "AuthorizationPolicy" => {
            if let Some(raw) = deserialize_all::<RawAuthzSpec>(&mut cx, spec) {
                if let Some(p) = compile_authz(&mut cx, id, &meta, raw, trust) {
                    docs.push(Document::Authorization(p));
                }
            }
        }
        "PeerAuthentication" => {
            if let Some(raw) = deserialize_all::<RawPeerAuthSpec>(&mut cx, spec) {
                if let Some(p) = compile_peer_auth(&mut cx, id, raw) {
                    docs.push(Document::PeerAuthentication(p));
                }
            }
        }
        "" => cx.err("kind", "is required".into()),
        other => cx.err(
            "kind",
            format!("{other:?} is not supported (AuthorizationPolicy, PeerAuthentication)"),
        ),
    }
    errors.append(&mut cx.errors);
}

/// Deserializes a spec, reporting *every* structural error (unknown field, wrong type), not
/// only the first: each error's node is recorded, removed, and deserialization retried, so the
/// rest of the policy is still checked field by field. Returns the spec with the bad nodes
/// removed (which is then never enforced: the policy is invalid), or `None` if it cannot be
/// read at all.
fn deserialize_all<T: serde::de::DeserializeOwned>(
    cx: &mut Cx<'_>,
    mut spec: serde_yaml::Value,
) -> Option<T> {
    // Each round removes one node, so this ends; the bound guards against a value that keeps
    // failing at a path that cannot be removed.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(spec.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let path = e.path().to_string();
                cx.err(&path, e.inner().to_string());
                if !remove_path(&mut spec, e.path()) {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the node at `path` (from `serde_path_to_error`); whether something was removed.
fn remove_path(value: &mut serde_yaml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        node = match (seg, node) {
            (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => {
                match m.get_mut(key.as_str()) {
                    Some(n) => n,
                    None => return false,
                }
            }
            (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) => match v.get_mut(*index) {
                Some(n) => n,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, serde_yaml::Value::Sequence(v)) if *index < v.len() => {
            v.remove(*index);
            true
        }
        _ => false,
    }
}

struct Cx<'a> {
    origin: &'a str,
    policy: String,
    errors: Vec<PolicyError>,
    warnings: Vec<String>,
}

impl Cx<'_> {
    fn err(&mut self, path: &str, message: String) {
        self.errors.push(PolicyError {
            origin: self.origin.to_owned(),
            policy: Some(self.policy.clone()),
            path: path.to_owned(),
            message,
        });
    }
}

fn compile_authz(
    cx: &mut Cx<'_>,
    id: PolicyRef,
    meta: &RawMeta,
    raw: RawAuthzSpec,
    trust: &TrustConfig,
) -> Option<Policy> {
    let errors_before = cx.errors.len();
    let action = match raw.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => {
            cx.err(
                "action",
                "CUSTOM (external authorization) is not supported by ward; use ALLOW, DENY or AUDIT"
                    .into(),
            );
            return None;
        }
        other => {
            cx.err(
                "action",
                format!("{other:?} is not a valid action (ALLOW, DENY, AUDIT)"),
            );
            return None;
        }
    };
    if raw.provider.is_some() {
        cx.err(
            "provider",
            "is only meaningful with action CUSTOM, which ward does not support".into(),
        );
    }
    let dry_run = dry_run(cx, meta);
    let targets =
        raw.target_ref.is_some() || raw.target_refs.as_ref().is_some_and(|t| !t.is_empty());
    if targets && raw.selector.is_some() {
        cx.err(
            "selector",
            "cannot be combined with targetRef/targetRefs".into(),
        );
    }
    if targets {
        cx.warnings.push(
            "targetRef(s) attach this policy to gateways or waypoints; ward has neither, so it applies to no workload"
                .into(),
        );
    }
    let selector = compile_selector(cx, raw.selector.as_ref());
    let raw_rules = raw.rules.unwrap_or_default();
    if raw_rules.is_empty() && action == Action::Deny {
        cx.err(
            "rules",
            "a DENY policy needs at least one rule (use `rules: [{}]` to deny everything)".into(),
        );
    }
    let mut rules = Vec::with_capacity(raw_rules.len());
    for (i, r) in raw_rules.iter().enumerate() {
        rules.push(compile_rule(
            cx,
            &format!("rules[{i}]"),
            r,
            &id.namespace,
            trust,
        ));
    }
    let tcp_rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| tcp_variant(cx, i, r, action))
        .collect();
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(Policy {
        id,
        action,
        dry_run,
        selector,
        targets_only: targets,
        rules,
        tcp_rules,
        warnings: std::mem::take(&mut cx.warnings),
    })
}

fn dry_run(cx: &mut Cx<'_>, meta: &RawMeta) -> bool {
    let mut on = false;
    for key in DRY_RUN_ANNOTATIONS {
        match meta.annotations.get(key).map(String::as_str) {
            None | Some("false") => {}
            Some("true") => on = true,
            Some(other) => cx.err(
                &format!("metadata.annotations[{key}]"),
                format!("{other:?} must be \"true\" or \"false\""),
            ),
        }
    }
    on
}

fn compile_selector(
    cx: &mut Cx<'_>,
    sel: Option<&RawSelector>,
) -> Option<BTreeMap<String, String>> {
    let sel = sel?;
    if sel.match_labels.is_empty() {
        return None;
    }
    for (k, v) in &sel.match_labels {
        if k.is_empty() {
            cx.err(
                "selector.matchLabels",
                "a label key must not be empty".into(),
            );
        }
        if v.contains('*') {
            cx.err(
                &format!("selector.matchLabels[{k}]"),
                format!("{v:?}: label values are exact; wildcards are not supported"),
            );
        }
    }
    Some(sel.match_labels.clone())
}

fn compile_rule(
    cx: &mut Cx<'_>,
    path: &str,
    r: &RawRule,
    policy_ns: &str,
    trust: &TrustConfig,
) -> Rule {
    let from = r.from.as_ref().map(|list| {
        if list.is_empty() {
            cx.err(
                &format!("{path}.from"),
                "must not be an empty list (omit it to match any source)".into(),
            );
        }
        list.iter()
            .enumerate()
            .map(|(j, f)| {
                let p = format!("{path}.from[{j}].source");
                match &f.source {
                    Some(s) => compile_source(cx, &p, s, policy_ns, trust),
                    None => {
                        cx.err(&p, "is required".into());
                        Source::default()
                    }
                }
            })
            .collect()
    });
    let to = r.to.as_ref().map(|list| {
        if list.is_empty() {
            cx.err(
                &format!("{path}.to"),
                "must not be an empty list (omit it to match any operation)".into(),
            );
        }
        list.iter()
            .enumerate()
            .map(|(j, t)| {
                let p = format!("{path}.to[{j}].operation");
                match &t.operation {
                    Some(o) => compile_operation(cx, &p, o),
                    None => {
                        cx.err(&p, "is required".into());
                        Operation::default()
                    }
                }
            })
            .collect()
    });
    let when = r
        .when
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(j, c)| compile_condition(cx, &format!("{path}.when[{j}]"), c, trust))
        .collect();
    Rule { from, to, when }
}

/// Compiles one list field and its `not*` twin with `parse`.
fn field<T>(
    cx: &mut Cx<'_>,
    path: &str,
    name: &str,
    not_name: &str,
    values: &Option<Vec<String>>,
    not_values: &Option<Vec<String>>,
    mut parse: impl FnMut(&str) -> Result<Vec<T>, String>,
) -> Field<T> {
    let mut one = |list: &Option<Vec<String>>, n: &str| -> Vec<T> {
        let mut out = Vec::new();
        for (i, v) in list.iter().flatten().enumerate() {
            match parse(v) {
                Ok(mut parsed) => out.append(&mut parsed),
                Err(m) => cx.err(&format!("{path}.{n}[{i}]"), m),
            }
        }
        out
    };
    Field {
        values: one(values, name),
        not_values: one(not_values, not_name),
    }
}

fn single<T>(r: Result<T, String>) -> Result<Vec<T>, String> {
    r.map(|v| vec![v])
}

fn compile_source(
    cx: &mut Cx<'_>,
    path: &str,
    s: &RawSource,
    policy_ns: &str,
    trust: &TrustConfig,
) -> Source {
    let principal = |v: &str| expand_principal(v, trust);
    let src = Source {
        principals: field(
            cx,
            path,
            "principals",
            "notPrincipals",
            &s.principals,
            &s.not_principals,
            principal,
        ),
        namespaces: field(
            cx,
            path,
            "namespaces",
            "notNamespaces",
            &s.namespaces,
            &s.not_namespaces,
            |v| single(StringMatch::parse(v, false)),
        ),
        service_accounts: field(
            cx,
            path,
            "serviceAccounts",
            "notServiceAccounts",
            &s.service_accounts,
            &s.not_service_accounts,
            |v| single(service_account(v, policy_ns)),
        ),
        ip_blocks: field(
            cx,
            path,
            "ipBlocks",
            "notIpBlocks",
            &s.ip_blocks,
            &s.not_ip_blocks,
            |v| single(parse_cidr(v)),
        ),
        remote_ip_blocks: field(
            cx,
            path,
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            |v| single(parse_cidr(v)),
        ),
        request_principals: field(
            cx,
            path,
            "requestPrincipals",
            "notRequestPrincipals",
            &s.request_principals,
            &s.not_request_principals,
            |v| single(StringMatch::parse(v, false)),
        ),
        trust_domains: field(
            cx,
            path,
            "trustDomains",
            "notTrustDomains",
            &s.trust_domains,
            &s.not_trust_domains,
            |v| expand_trust_domain(v, trust),
        ),
    };
    let sa_count = s.service_accounts.as_ref().map_or(0, Vec::len)
        + s.not_service_accounts.as_ref().map_or(0, Vec::len);
    if sa_count > 0 {
        if s.principals.is_some()
            || s.not_principals.is_some()
            || s.namespaces.is_some()
            || s.not_namespaces.is_some()
        {
            cx.err(
                &format!("{path}.serviceAccounts"),
                "cannot be combined with principals or namespaces in the same source".into(),
            );
        }
        if sa_count > MAX_SERVICE_ACCOUNTS {
            cx.err(
                &format!("{path}.serviceAccounts"),
                format!("{sa_count} entries; at most {MAX_SERVICE_ACCOUNTS} are allowed"),
            );
        }
    }
    let set = src.principals.is_set()
        || src.namespaces.is_set()
        || src.service_accounts.is_set()
        || src.ip_blocks.is_set()
        || src.remote_ip_blocks.is_set()
        || src.request_principals.is_set()
        || src.trust_domains.is_set();
    let written = [
        &s.principals,
        &s.not_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        &s.request_principals,
        &s.not_request_principals,
        &s.trust_domains,
        &s.not_trust_domains,
    ]
    .iter()
    .any(|f| f.as_ref().is_some_and(|v| !v.is_empty()));
    if !set && !written {
        cx.err(path, "sets no field; a source must set at least one".into());
    }
    src
}

/// Principals are `td/ns/X/sa/Y` without `spiffe://`. One written with the current trust
/// domain, an alias, or `cluster.local` matches the current domain and every alias.
fn expand_principal(v: &str, trust: &TrustConfig) -> Result<Vec<StringMatch>, String> {
    if v.starts_with("spiffe://") {
        return Err(format!(
            "{v:?}: principals are written without 'spiffe://' (e.g. \"cluster.local/ns/default/sa/web\")"
        ));
    }
    let segments: Vec<&str> = v.split('/').collect();
    let local = segments.len() == 5
        && (segments[0] == trust.trust_domain
            || segments[0] == "cluster.local"
            || trust.aliases.iter().any(|a| a == segments[0]));
    if !local {
        return Ok(vec![StringMatch::parse(v, false)?]);
    }
    let rest = &v[segments[0].len()..];
    std::iter::once(&trust.trust_domain)
        .chain(trust.aliases.iter())
        .map(|td| StringMatch::parse(&format!("{td}{rest}"), false))
        .collect()
}

/// A `trustDomains` value. As for principals, the current trust domain, an alias, or the
/// literal `cluster.local` stands for the current domain and every alias; prefix, suffix and
/// presence forms, and other domains, are matched as written.
fn expand_trust_domain(v: &str, trust: &TrustConfig) -> Result<Vec<StringMatch>, String> {
    if v.contains('/') {
        return Err(format!(
            "{v:?}: a trust domain has no '/' (e.g. \"cluster.local\"; use principals for identities)"
        ));
    }
    let local =
        v == trust.trust_domain || v == "cluster.local" || trust.aliases.iter().any(|a| a == v);
    if !local {
        return Ok(vec![StringMatch::parse(v, false)?]);
    }
    std::iter::once(&trust.trust_domain)
        .chain(trust.aliases.iter())
        .map(|td| StringMatch::parse(td, false))
        .collect()
}

fn service_account(v: &str, policy_ns: &str) -> Result<String, String> {
    if v.contains('*') {
        return Err(format!(
            "{v:?}: service accounts are exact; wildcards are not allowed"
        ));
    }
    let (ns, sa) = match v.split_once('/') {
        Some((ns, sa)) => (ns, sa),
        None => (policy_ns, v),
    };
    if !ward_lib_identity::spiffe_id::is_dns1123_label(ns)
        || !ward_lib_identity::spiffe_id::is_dns1123_subdomain(sa)
    {
        return Err(format!(
            "{v:?} is not a service account (\"name\" or \"namespace/name\")"
        ));
    }
    Ok(format!("{ns}/{sa}"))
}

fn compile_operation(cx: &mut Cx<'_>, path: &str, o: &RawOperation) -> Operation {
    let op = Operation {
        hosts: field(cx, path, "hosts", "notHosts", &o.hosts, &o.not_hosts, |v| {
            single(StringMatch::parse(v, true))
        }),
        ports: field(cx, path, "ports", "notPorts", &o.ports, &o.not_ports, |v| {
            single(parse_port(v))
        }),
        methods: field(
            cx,
            path,
            "methods",
            "notMethods",
            &o.methods,
            &o.not_methods,
            |v| single(StringMatch::parse(v, false)),
        ),
        paths: field(cx, path, "paths", "notPaths", &o.paths, &o.not_paths, |v| {
            single(PathMatch::parse(v))
        }),
    };
    let written = [
        &o.hosts,
        &o.not_hosts,
        &o.ports,
        &o.not_ports,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ]
    .iter()
    .any(|f| f.as_ref().is_some_and(|v| !v.is_empty()));
    if !written {
        cx.err(
            path,
            "sets no field; an operation must set at least one".into(),
        );
    }
    op
}

fn compile_condition(
    cx: &mut Cx<'_>,
    path: &str,
    c: &RawCondition,
    trust: &TrustConfig,
) -> Option<Condition> {
    let key = match parse_key(&c.key) {
        Ok(k) => k,
        Err(m) => {
            cx.err(&format!("{path}.key"), m);
            return None;
        }
    };
    let values = c.values.clone().unwrap_or_default();
    let not_values = c.not_values.clone().unwrap_or_default();
    if values.is_empty() && not_values.is_empty() {
        cx.err(path, "needs values or notValues".into());
        return None;
    }
    let mut parse_all = |list: &[String], name: &str| -> Vec<CondValue> {
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let p = format!("{path}.{name}[{i}]");
            if v.is_empty() {
                cx.err(&p, "empty string is not a valid value".into());
                continue;
            }
            match cond_value(&key, v, trust) {
                Ok(mut vs) => out.append(&mut vs),
                Err(m) => cx.err(&p, m),
            }
        }
        out
    };
    let values = parse_all(&values, "values");
    let not_values = parse_all(&not_values, "notValues");
    Some(Condition {
        key,
        values,
        not_values,
    })
}

fn cond_value(key: &Key, v: &str, trust: &TrustConfig) -> Result<Vec<CondValue>, String> {
    Ok(match key {
        Key::SourceIp | Key::DestinationIp | Key::RemoteIp => vec![CondValue::Cidr(parse_cidr(v)?)],
        Key::DestinationPort => vec![CondValue::Port(parse_port(v)?)],
        Key::TimeWindow => vec![CondValue::Window(TimeWindow::parse(v)?)],
        Key::SourcePrincipal => expand_principal(v, trust)?
            .into_iter()
            .map(CondValue::Str)
            .collect(),
        Key::ConnectionSni => vec![CondValue::Str(StringMatch::parse(v, true)?)],
        _ => vec![CondValue::Str(StringMatch::parse(v, false)?)],
    })
}

/// Parses a `when` key.
pub fn parse_key(k: &str) -> Result<Key, String> {
    Ok(match k {
        "source.ip" => Key::SourceIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "source.serviceAccount" => Key::SourceServiceAccount,
        "source.trustDomain" => Key::SourceTrustDomain,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::ConnectionSni,
        "remote.ip" => Key::RemoteIp,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        "time.window" => Key::TimeWindow,
        _ => {
            if let Some(name) = bracketed(k, "request.headers") {
                let name = name
                    .first()
                    .filter(|_| name.len() == 1)
                    .ok_or_else(|| format!("{k:?}: expected request.headers[NAME]"))?;
                return Ok(Key::RequestHeader(name.to_ascii_lowercase()));
            }
            if let Some(path) = bracketed(k, "request.auth.claims") {
                if path.is_empty() {
                    return Err(format!("{k:?}: expected request.auth.claims[NAME]…"));
                }
                return Ok(Key::AuthClaims(path));
            }
            return Err(format!(
                "{k:?} is not a supported key (source.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, destination.ip, destination.port, connection.sni, remote.ip, request.headers[NAME], request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], time.window)"
            ));
        }
    })
}

/// `prefix[a][b]` → `["a", "b"]`; `None` if `k` does not start with `prefix[`.
fn bracketed(k: &str, prefix: &str) -> Option<Vec<String>> {
    let mut rest = k.strip_prefix(prefix)?;
    if !rest.starts_with('[') {
        return None;
    }
    let mut out = Vec::new();
    while let Some(r) = rest.strip_prefix('[') {
        let end = r.find(']')?;
        let part = &r[..end];
        if part.is_empty() {
            return Some(Vec::new());
        }
        out.push(part.to_owned());
        rest = &r[end + 1..];
    }
    if rest.is_empty() {
        Some(out)
    } else {
        Some(Vec::new())
    }
}

/// The rule as enforced on a port that is not HTTP (see POLICY-SEMANTICS: fail closed).
fn tcp_variant(cx: &mut Cx<'_>, i: usize, r: &Rule, action: Action) -> Option<Rule> {
    let http_fields = http_only_fields(r);
    if http_fields.is_empty() {
        return Some(r.clone());
    }
    let list = http_fields.join(", ");
    match action {
        Action::Allow | Action::Audit => {
            cx.warnings.push(format!(
                "rules[{i}] uses HTTP-only attributes ({list}); on ports that are not HTTP this {action} rule never matches"
            ));
            None
        }
        Action::Deny => {
            cx.warnings.push(format!(
                "rules[{i}] uses HTTP-only attributes ({list}); on ports that are not HTTP they are dropped and the rest of the rule is enforced, so it denies more"
            ));
            let mut t = r.clone();
            for s in t.from.iter_mut().flatten() {
                s.remote_ip_blocks = Field::default();
                s.request_principals = Field::default();
            }
            for o in t.to.iter_mut().flatten() {
                o.hosts = Field::default();
                o.methods = Field::default();
                o.paths = Field::default();
            }
            t.when.retain(|c| !c.key.is_http_only());
            Some(t)
        }
    }
}

fn http_only_fields(r: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for (j, s) in r.from.iter().flatten().enumerate() {
        if s.remote_ip_blocks.is_set() {
            out.push(format!("from[{j}].source.remoteIpBlocks"));
        }
        if s.request_principals.is_set() {
            out.push(format!("from[{j}].source.requestPrincipals"));
        }
    }
    for (j, o) in r.to.iter().flatten().enumerate() {
        for (set, name) in [
            (o.hosts.is_set(), "hosts"),
            (o.methods.is_set(), "methods"),
            (o.paths.is_set(), "paths"),
        ] {
            if set {
                out.push(format!("to[{j}].operation.{name}"));
            }
        }
    }
    for (j, c) in r.when.iter().enumerate() {
        if c.key.is_http_only() {
            out.push(format!("when[{j}]"));
        }
    }
    out
}

fn compile_peer_auth(
    cx: &mut Cx<'_>,
    id: PolicyRef,
    raw: RawPeerAuthSpec,
) -> Option<PeerAuthentication> {
    let before = cx.errors.len();
    if raw.port_level_mtls.is_some() {
        cx.err(
            "portLevelMtls",
            "is not supported by ward yet; set the mode per workload".into(),
        );
    }
    let mode = match raw.mtls.and_then(|m| m.mode).as_deref() {
        None | Some("UNSET") => None,
        Some("STRICT") => Some(MtlsMode::Strict),
        Some("PERMISSIVE") => Some(MtlsMode::Permissive),
        Some("DISABLE") => {
            cx.err(
                "mtls.mode",
                "DISABLE is not supported: ward never turns mTLS off; use PERMISSIVE to also accept plaintext".into(),
            );
            None
        }
        Some(other) => {
            cx.err(
                "mtls.mode",
                format!("{other:?} is not a mode (STRICT, PERMISSIVE, UNSET)"),
            );
            None
        }
    };
    let selector = compile_selector(cx, raw.selector.as_ref());
    (cx.errors.len() == before).then_some(PeerAuthentication { id, selector, mode })
}
