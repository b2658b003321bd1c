//! The evaluator: the attributes of one connection (and, on HTTP ports, one request) against
//! the policies that apply to the destination workload.
//!
//! Order (POLICY-SEMANTICS): any matching DENY denies; else no ALLOW policy → allow; else some
//! matching ALLOW → allow; else deny. AUDIT and dry-run policies are evaluated and reported and
//! never change the verdict. The hot path allocates nothing unless an AUDIT or dry-run policy
//! matches; [`Tracer`] is a zero-cost hook that `ward policy explain` uses to see every field.

use std::fmt;
use std::net::IpAddr;

use jiff::Timestamp;

use crate::matcher::StringMatch;
use crate::model::*;

/// A verified peer identity, pre-split for matching (build it once per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Without `spiffe://`: `td/ns/X/sa/Y`.
    pub principal: String,
    pub trust_domain: String,
    pub namespace: Option<String>,
    /// `ns/sa`.
    pub service_account: Option<String>,
}

impl PeerIdentity {
    pub fn from_spiffe_id(id: &ward_lib_identity::SpiffeId) -> Self {
        Self {
            principal: id.principal().to_owned(),
            trust_domain: id.trust_domain_str().to_owned(),
            namespace: id.namespace().map(str::to_owned),
            service_account: id.service_account().map(|(ns, sa)| format!("{ns}/{sa}")),
        }
    }
}

/// Whether the destination port speaks HTTP (selects which form of each rule applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Http,
}

/// A validated JWT's facts (validation itself happens before policy).
#[derive(Debug, Clone, Default)]
pub struct Jwt {
    /// `iss/sub`.
    pub principal: Option<String>,
    pub audiences: Vec<String>,
    pub presenter: Option<String>,
    pub claims: serde_json::Value,
}

/// One HTTP request's attributes.
#[derive(Debug, Clone, Default)]
pub struct HttpAttributes {
    pub method: String,
    /// Already normalized (see [`crate::path`]).
    pub path: String,
    pub host: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Original client (from X-Forwarded-For); defaults to the source IP when absent.
    pub remote_ip: Option<IpAddr>,
    pub jwt: Option<Jwt>,
}

/// Everything a decision can look at.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub peer: Option<&'a PeerIdentity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// The workload (target) port.
    pub destination_port: u16,
    pub protocol: Protocol,
    pub sni: Option<&'a str>,
    pub http: Option<&'a HttpAttributes>,
    pub time: Timestamp,
}

impl<'a> Attributes<'a> {
    /// The attributes of a plain TCP connection (no SNI, no HTTP) to `destination`.
    pub fn tcp(
        peer: Option<&'a PeerIdentity>,
        source_ip: IpAddr,
        destination: std::net::SocketAddr,
        time: Timestamp,
    ) -> Self {
        Self {
            peer,
            source_ip,
            destination_ip: destination.ip(),
            destination_port: destination.port(),
            protocol: Protocol::Tcp,
            sni: None,
            http: None,
            time,
        }
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    DeniedByPolicy,
    AllowedByPolicy,
    NoAllowPolicy,
    NoAllowPolicyMatched,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone)]
pub struct Decision<'p> {
    pub allowed: bool,
    /// The deciding policy and rule index, if a policy decided.
    pub policy: Option<(&'p Policy, usize)>,
    pub reason: Reason,
    /// AUDIT policies that matched (and their rule).
    pub audit: Vec<(&'p Policy, usize)>,
    /// Dry-run policies and what they would have done (`Some(rule)` = matched).
    pub dry_run: Vec<(&'p Policy, Option<usize>)>,
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.reason, self.policy) {
            (Reason::DeniedByPolicy, Some((p, r))) => {
                write!(f, "denied by DENY policy {} rule {r}", p.id)
            }
            (Reason::AllowedByPolicy, Some((p, r))) => {
                write!(f, "allowed by ALLOW policy {} rule {r}", p.id)
            }
            (Reason::NoAllowPolicy, _) => {
                f.write_str("allowed: no ALLOW policy applies to the workload")
            }
            (Reason::NoAllowPolicyMatched, _) => {
                f.write_str("denied: ALLOW policies apply to the workload but none matched")
            }
            _ => f.write_str("undetermined"),
        }
    }
}

/// Observes evaluation step by step. All methods default to nothing.
pub trait Tracer {
    fn policy(&mut self, _p: &Policy) {}
    fn rule(&mut self, _index: usize, _matched: Option<bool>) {}
    fn field(&mut self, _path: &'static str, _ok: bool) {}
    fn condition(&mut self, _index: usize, _ok: bool) {}
}

/// The tracer of the hot path: compiles to nothing.
pub struct NoTrace;
impl Tracer for NoTrace {}

/// Evaluates `policies` (those applying to the destination workload, in a stable order).
pub fn evaluate<'p, I, T>(policies: I, a: &Attributes<'_>, t: &mut T) -> Decision<'p>
where
    I: IntoIterator<Item = &'p Policy> + Clone,
    T: Tracer,
{
    let mut audit = Vec::new();
    let mut dry_run = Vec::new();
    let mut deny: Option<(&Policy, usize)> = None;
    let mut allow: Option<(&Policy, usize)> = None;
    let mut allow_applies = false;
    for p in policies {
        t.policy(p);
        let hit = matching_rule(p, a, t);
        if p.dry_run {
            dry_run.push((p, hit));
            continue;
        }
        match (p.action, hit) {
            (Action::Deny, Some(r)) if deny.is_none() => deny = Some((p, r)),
            (Action::Allow, h) => {
                allow_applies = true;
                if allow.is_none() {
                    allow = h.map(|r| (p, r));
                }
            }
            (Action::Audit, Some(r)) => audit.push((p, r)),
            _ => {}
        }
    }
    let (allowed, policy, reason) = if let Some(d) = deny {
        (false, Some(d), Reason::DeniedByPolicy)
    } else if !allow_applies {
        (true, None, Reason::NoAllowPolicy)
    } else if let Some(al) = allow {
        (true, Some(al), Reason::AllowedByPolicy)
    } else {
        (false, None, Reason::NoAllowPolicyMatched)
    };
    Decision {
        allowed,
        policy,
        reason,
        audit,
        dry_run,
    }
}

/// The index of the first rule of `p` that matches, using the rule form for the protocol.
fn matching_rule<T: Tracer>(p: &Policy, a: &Attributes<'_>, t: &mut T) -> Option<usize> {
    let mut found = None;
    for i in 0..p.rules.len() {
        let rule = match a.protocol {
            Protocol::Http => Some(&p.rules[i]),
            Protocol::Tcp => p.tcp_rules[i].as_ref(),
        };
        let Some(rule) = rule else {
            t.rule(i, None);
            continue;
        };
        let ok = rule_matches(rule, a, t);
        t.rule(i, Some(ok));
        if ok {
            found = Some(i);
            break;
        }
    }
    found
}

fn rule_matches<T: Tracer>(r: &Rule, a: &Attributes<'_>, t: &mut T) -> bool {
    if let Some(from) = &r.from {
        let ok = from.iter().any(|s| source_matches(s, a, t));
        if !ok {
            return false;
        }
    }
    if let Some(to) = &r.to {
        let ok = to.iter().any(|o| operation_matches(o, a, t));
        if !ok {
            return false;
        }
    }
    r.when
        .iter()
        .enumerate()
        .all(|(i, c)| condition_matches(i, c, a, t))
}

macro_rules! check {
    ($t:expr, $field:expr, $path:expr, $ok:expr) => {
        if $field.is_set() {
            let ok = $ok;
            $t.field($path, ok);
            if !ok {
                return false;
            }
        }
    };
}

fn sm(m: &StringMatch, v: &str) -> bool {
    m.matches(v)
}

fn source_matches<T: Tracer>(s: &Source, a: &Attributes<'_>, t: &mut T) -> bool {
    let peer = a.peer;
    check!(
        t,
        s.principals,
        "source.principals",
        s.principals.check(peer.map(|p| p.principal.as_str()), sm)
    );
    check!(
        t,
        s.namespaces,
        "source.namespaces",
        s.namespaces
            .check(peer.and_then(|p| p.namespace.as_deref()), sm)
    );
    check!(
        t,
        s.service_accounts,
        "source.serviceAccounts",
        s.service_accounts
            .check(peer.and_then(|p| p.service_account.as_deref()), |v, x| v
                == x)
    );
    check!(
        t,
        s.ip_blocks,
        "source.ipBlocks",
        s.ip_blocks
            .check(Some(a.source_ip), |n, ip| n.contains(&ip))
    );
    let remote = a
        .http
        .and_then(|h| h.remote_ip)
        .or(Some(a.source_ip))
        .filter(|_| a.http.is_some());
    check!(
        t,
        s.remote_ip_blocks,
        "source.remoteIpBlocks",
        s.remote_ip_blocks.check(remote, |n, ip| n.contains(&ip))
    );
    check!(
        t,
        s.trust_domains,
        "source.trustDomains",
        s.trust_domains
            .check(peer.map(|p| p.trust_domain.as_str()), sm)
    );
    let req_principal = a
        .http
        .and_then(|h| h.jwt.as_ref())
        .and_then(|j| j.principal.as_deref());
    check!(
        t,
        s.request_principals,
        "source.requestPrincipals",
        s.request_principals.check(req_principal, sm)
    );
    true
}

fn operation_matches<T: Tracer>(o: &Operation, a: &Attributes<'_>, t: &mut T) -> bool {
    let http = a.http;
    check!(
        t,
        o.hosts,
        "operation.hosts",
        o.hosts
            .check(http.map(|h| h.host.as_str()), |m, v| m.matches_fold(v))
    );
    check!(
        t,
        o.ports,
        "operation.ports",
        o.ports.check(Some(a.destination_port), |p, x| *p == x)
    );
    check!(
        t,
        o.methods,
        "operation.methods",
        o.methods.check(http.map(|h| h.method.as_str()), sm)
    );
    check!(
        t,
        o.paths,
        "operation.paths",
        o.paths
            .check(http.map(|h| h.path.as_str()), |m, v| m.matches(v))
    );
    true
}

fn condition_matches<T: Tracer>(i: usize, c: &Condition, a: &Attributes<'_>, t: &mut T) -> bool {
    let ok = match &c.key {
        Key::RequestHeader(name) => {
            let v = a.http.and_then(|h| {
                h.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            });
            cond_str(c, v.into_iter())
        }
        Key::AuthClaims(path) => {
            let claim = a
                .http
                .and_then(|h| h.jwt.as_ref())
                .and_then(|j| path.iter().try_fold(&j.claims, |v, k| v.get(k)));
            match claim {
                Some(serde_json::Value::Array(items)) => {
                    cond_str(c, items.iter().filter_map(|v| v.as_str()))
                }
                Some(serde_json::Value::String(s)) => cond_str(c, std::iter::once(s.as_str())),
                Some(serde_json::Value::Bool(b)) => {
                    cond_str(c, std::iter::once(if *b { "true" } else { "false" }))
                }
                _ => cond_str(c, std::iter::empty()),
            }
        }
        Key::AuthAudiences => {
            let jwt = a.http.and_then(|h| h.jwt.as_ref());
            cond_str(
                c,
                jwt.into_iter()
                    .flat_map(|j| j.audiences.iter().map(String::as_str)),
            )
        }
        Key::AuthPrincipal => cond_str(
            c,
            a.http
                .and_then(|h| h.jwt.as_ref())
                .and_then(|j| j.principal.as_deref())
                .into_iter(),
        ),
        Key::AuthPresenter => cond_str(
            c,
            a.http
                .and_then(|h| h.jwt.as_ref())
                .and_then(|j| j.presenter.as_deref())
                .into_iter(),
        ),
        Key::SourcePrincipal => cond_str(c, a.peer.map(|p| p.principal.as_str()).into_iter()),
        Key::SourceNamespace => {
            cond_str(c, a.peer.and_then(|p| p.namespace.as_deref()).into_iter())
        }
        Key::SourceServiceAccount => cond_str(
            c,
            a.peer
                .and_then(|p| p.service_account.as_deref())
                .into_iter(),
        ),
        Key::SourceTrustDomain => cond_str(c, a.peer.map(|p| p.trust_domain.as_str()).into_iter()),
        Key::ConnectionSni => {
            let sni = a.sni;
            cond_any(c, |v| match (v, sni) {
                (CondValue::Str(m), Some(s)) => m.matches_fold(s),
                _ => false,
            })
        }
        Key::SourceIp => cond_ip(c, Some(a.source_ip)),
        Key::DestinationIp => cond_ip(c, Some(a.destination_ip)),
        Key::RemoteIp => {
            let remote = a.http.map(|h| h.remote_ip.unwrap_or(a.source_ip));
            cond_ip(c, remote)
        }
        Key::DestinationPort => cond_any(
            c,
            |v| matches!(v, CondValue::Port(p) if *p == a.destination_port),
        ),
        Key::TimeWindow => cond_any(
            c,
            |v| matches!(v, CondValue::Window(w) if w.contains(a.time)),
        ),
    };
    t.condition(i, ok);
    ok
}

/// `(values empty or one matches) and (notValues empty or none matches)` over a predicate.
fn cond_any(c: &Condition, m: impl Fn(&CondValue) -> bool) -> bool {
    (c.values.is_empty() || c.values.iter().any(&m)) && !c.not_values.iter().any(&m)
}

fn cond_str<'v>(c: &Condition, vals: impl Iterator<Item = &'v str> + Clone) -> bool {
    cond_any(c, |cv| match cv {
        CondValue::Str(m) => vals.clone().any(|v| m.matches(v)),
        _ => false,
    })
}

fn cond_ip(c: &Condition, ip: Option<IpAddr>) -> bool {
    cond_any(c, |cv| match (cv, ip) {
        (CondValue::Cidr(n), Some(ip)) => n.contains(&ip),
        _ => false,
    })
}
