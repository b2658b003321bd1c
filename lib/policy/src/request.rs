//! The JSON request of `ward policy eval` / `explain` / `test`, and the JSON verdict.
//!
//! ```json
//! {"destination": {"namespace": "foo", "labels": {"app": "web"}, "ip": "10.1.0.5",
//!                  "port": 8080, "protocol": "tcp"},
//!  "source": {"principal": "spiffe://cluster.local/ns/bar/sa/client", "ip": "10.1.0.9",
//!             "remote_ip": "203.0.113.7"},
//!  "connection": {"sni": "web.foo.svc"},
//!  "request": {"method": "GET", "path": "/api?x=1", "host": "web.foo:8080",
//!              "headers": {"x-token": "abc"}, "jwt_claims": {"iss": "https://idp", "sub": "u1"}},
//!  "time": "2026-11-23T10:00:00Z"}
//! ```
//! `source.principal` may be null (plaintext). The request path is normalized exactly as the
//! proxy does; an ambiguous path is refused (HTTP 400) before policy runs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use ward_lib_identity::SpiffeId;

use crate::eval::{Attributes, Decision, HttpAttributes, Jwt, PeerIdentity, Protocol};
use crate::index::PolicySet;
use crate::model::MtlsMode;
use crate::path::{normalize, Ambiguous, PathError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    pub destination: Destination,
    pub source: Source,
    #[serde(default)]
    pub connection: Option<Connection>,
    #[serde(default)]
    pub request: Option<Request>,
    #[serde(default)]
    pub time: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: ProtocolName,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolName {
    Tcp,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub principal: Option<String>,
    pub ip: IpAddr,
    #[serde(default)]
    pub remote_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[serde(default)]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub jwt_claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a request document is unusable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("request: {0}")]
    Json(String),
    #[error("request: source.principal {0:?}: {1}")]
    Principal(String, String),
    #[error("request: time {0:?} is not an RFC 3339 timestamp")]
    Time(String),
}

/// A request turned into evaluation inputs.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    peer: Option<PeerIdentity>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    port: u16,
    protocol: Protocol,
    sni: Option<String>,
    http: Option<HttpAttributes>,
    time: Timestamp,
    /// Set when the request path was refused (HTTP 400) before policy.
    pub path_error: Option<PathError>,
}

impl EvalRequest {
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| RequestError::Json(format!("{}: {}", e.path(), e.inner())))
    }

    /// Prepares for evaluation; `now` is used when the request has no `time`.
    pub fn prepare(&self, now: Timestamp) -> Result<Prepared, RequestError> {
        let peer = match &self.source.principal {
            None => None,
            Some(p) => {
                let id = SpiffeId::parse(p)
                    .map_err(|e| RequestError::Principal(p.clone(), e.to_string()))?;
                Some(PeerIdentity::from_spiffe_id(&id))
            }
        };
        let time = match &self.time {
            None => now,
            Some(t) => t.parse().map_err(|_| RequestError::Time(t.clone()))?,
        };
        let protocol = match self.destination.protocol {
            ProtocolName::Tcp => Protocol::Tcp,
            ProtocolName::Http => Protocol::Http,
        };
        let mut path_error = None;
        let http = match (&self.request, protocol) {
            (Some(r), Protocol::Http) => {
                let path = match normalize(&r.path, Ambiguous::Reject) {
                    Ok(p) => p,
                    Err(e) => {
                        path_error = Some(e);
                        String::new()
                    }
                };
                Some(HttpAttributes {
                    method: r.method.clone(),
                    path,
                    host: r.host.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                    remote_ip: self.source.remote_ip,
                    jwt: r.jwt_claims.as_ref().map(jwt_from_claims),
                })
            }
            _ => None,
        };
        Ok(Prepared {
            namespace: self.destination.namespace.clone(),
            labels: self.destination.labels.clone(),
            peer,
            source_ip: self.source.ip,
            destination_ip: self.destination.ip,
            port: self.destination.port,
            protocol,
            sni: self.connection.as_ref().and_then(|c| c.sni.clone()),
            http,
            time,
            path_error,
        })
    }
}

fn jwt_from_claims(claims: &serde_json::Map<String, serde_json::Value>) -> Jwt {
    let s = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let principal = match (s("iss"), s("sub")) {
        (Some(i), Some(u)) => Some(format!("{i}/{u}")),
        _ => None,
    };
    let audiences = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Jwt {
        principal,
        audiences,
        presenter: s("azp"),
        claims: serde_json::Value::Object(claims.clone()),
    }
}

impl Prepared {
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.port,
            protocol: self.protocol,
            sni: self.sni.as_deref(),
            http: self.http.as_ref(),
            time: self.time,
        }
    }

    pub fn is_plaintext(&self) -> bool {
        self.peer.is_none()
    }
}

/// The JSON verdict of `ward policy eval`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub decision: String,
    pub policy: Option<String>,
    pub action: Option<String>,
    pub rule: Option<usize>,
    pub audit: Vec<String>,
    pub reason: String,
}

/// Evaluates a prepared request against a set: path refusal and (when the inputs carry
/// PeerAuthentication) STRICT plaintext refusal come first, as in the proxy.
pub fn decide(set: &PolicySet, req: &Prepared) -> Verdict {
    if let Some(e) = &req.path_error {
        return refusal(format!("request refused before policy with HTTP 400: {e}"));
    }
    if req.is_plaintext()
        && set.has_peer_authentication()
        && set.mtls_mode(&req.namespace, &req.labels) == MtlsMode::Strict
    {
        return refusal(
            "plaintext refused before policy: the destination's peer authentication is STRICT"
                .into(),
        );
    }
    let wp = set.for_workload(&req.namespace, &req.labels);
    let d = wp.evaluate(&req.attributes());
    verdict(&d)
}

fn refusal(reason: String) -> Verdict {
    Verdict {
        decision: "deny".into(),
        policy: None,
        action: None,
        rule: None,
        audit: Vec::new(),
        reason,
    }
}

/// Renders a decision as the JSON verdict.
pub fn verdict(d: &Decision<'_>) -> Verdict {
    let mut reason = d.to_string();
    for (p, hit) in &d.dry_run {
        match hit {
            Some(r) => reason.push_str(&format!(
                "; dry-run {} policy {} would match (rule {r})",
                p.action, p.id
            )),
            None => reason.push_str(&format!(
                "; dry-run {} policy {} would not match",
                p.action, p.id
            )),
        }
    }
    Verdict {
        decision: if d.allowed { "allow" } else { "deny" }.into(),
        policy: d.policy.map(|(p, _)| p.id.to_string()),
        action: d.policy.map(|(p, _)| p.action.to_string()),
        rule: d.policy.map(|(_, r)| r),
        audit: d.audit.iter().map(|(p, _)| p.id.to_string()).collect(),
        reason,
    }
}
