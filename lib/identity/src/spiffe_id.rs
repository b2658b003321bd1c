//! SPIFFE IDs and trust domains as types that can only hold valid values.
//!
//! Parsing follows the SPIFFE-ID standard: scheme `spiffe` (lowercase), a trust domain of
//! lowercase letters, digits, `.`, `-` and `_` (no port, no userinfo), a path of segments made
//! of letters, digits, `.`, `-` and `_` (no empty, `.` or `..` segment, no trailing slash), no
//! query, no fragment, no percent-encoding; trust domain at most 255 bytes and the whole ID at
//! most 2048 bytes. A workload ID additionally has a non-empty path; ward's workloads use the
//! Kubernetes form `ns/<namespace>/sa/<service-account>`.
//!
//! Each rejected form has its own [`SpiffeIdError`] variant so errors name the rule that failed.

use std::fmt;
use std::str::FromStr;

/// Longest trust domain name the SPIFFE standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID URI the SPIFFE standard allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("scheme must be exactly 'spiffe://' (lowercase)")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain must be lowercase (found {0:?})")]
    TrustDomainUppercase(char),
    #[error("trust domain must not contain a port")]
    TrustDomainPort,
    #[error("trust domain must not contain userinfo ('@')")]
    TrustDomainUserinfo,
    #[error("trust domain contains {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    #[error("path segments must not be percent-encoded ('%')")]
    PercentEncoded,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("a workload SPIFFE ID needs a path (an ID without one names the trust domain)")]
    MissingPath,
    #[error("namespace {0:?} is not a valid Kubernetes namespace name")]
    BadNamespace(String),
    #[error("service account {0:?} is not a valid Kubernetes service-account name")]
    BadServiceAccount(String),
}

/// A trust domain name, e.g. `cluster.local`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`cluster.local`) or a trust-domain ID
    /// (`spiffe://cluster.local`).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let name = match s.strip_prefix(SCHEME) {
            Some(rest) => rest,
            None if s.to_ascii_lowercase().starts_with(SCHEME) => {
                return Err(SpiffeIdError::WrongScheme)
            }
            None => s,
        };
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A workload SPIFFE ID: `spiffe://<trust-domain>/<path>` with a non-empty path.
///
/// Stored as the full URI plus the offset of the path, so the string form, the trust domain and
/// the path are all borrowed without allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset of the `/` that starts the path.
    path_at: usize,
}

impl SpiffeId {
    /// Parses a full `spiffe://` URI.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment are checked first: they would otherwise surface as odd path chars.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.to_owned(),
            path_at: SCHEME.len() + td.len(),
        })
    }

    /// Builds the Kubernetes workload form `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn for_service_account(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        if !is_dns1123_label(namespace) {
            return Err(SpiffeIdError::BadNamespace(namespace.to_owned()));
        }
        if !is_dns1123_subdomain(service_account) {
            return Err(SpiffeIdError::BadServiceAccount(service_account.to_owned()));
        }
        // A valid trust domain and two DNS names make a valid path (lowercase letters, digits,
        // '-' and '.', no empty or dot-only segment): built directly rather than parsed again,
        // since proxies build one per workload of the mesh. The length limit still applies.
        let mut uri = String::with_capacity(
            SCHEME.len() + td.as_str().len() + 8 + namespace.len() + service_account.len(),
        );
        uri.push_str(SCHEME);
        uri.push_str(td.as_str());
        let path_at = uri.len();
        uri.push_str("/ns/");
        uri.push_str(namespace);
        uri.push_str("/sa/");
        uri.push_str(service_account);
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        debug_assert_eq!(
            Self::parse(&uri).ok(),
            Some(Self {
                uri: uri.clone(),
                path_at
            })
        );
        Ok(Self { uri, path_at })
    }

    /// The full URI, `spiffe://…`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust-domain name (without scheme).
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_at]
    }

    /// The trust domain as an owned, typed value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The ID without the `spiffe://` prefix, as Istio's `principals` field writes it.
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// `(namespace, service account)` when the path has the Kubernetes form `/ns/X/sa/Y`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut it = self.path()[1..].split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of a Kubernetes-form ID.
    pub fn namespace(&self) -> Option<&str> {
        self.service_account().map(|(ns, _)| ns)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::TrustDomainUppercase(c)),
            ':' => return Err(SpiffeIdError::TrustDomainPort),
            '@' => return Err(SpiffeIdError::TrustDomainUserinfo),
            _ => return Err(SpiffeIdError::TrustDomainChar(c)),
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Err(SpiffeIdError::MissingPath);
    }
    // `path` is non-empty and starts with '/', so this also rejects a bare "/".
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(SpiffeIdError::PercentEncoded),
                _ => return Err(SpiffeIdError::PathChar(c)),
            }
        }
    }
    Ok(())
}

/// Kubernetes namespace names: RFC 1123 labels (lowercase alphanumerics and '-', ≤ 63 bytes,
/// starting and ending with an alphanumeric).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kubernetes service-account names: RFC 1123 subdomains (labels joined by '.', ≤ 253 bytes).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_ids() {
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let long_id = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN - 12));
        let cases: &[&str] = &[
            "spiffe://cluster.local/ns/default/sa/web",
            "spiffe://example.org/a",
            "spiffe://td_1-x.y/a/B/c.d/e-f/g_h",
            "spiffe://td/...",
            "spiffe://td/a..b",
            "spiffe://td/.hidden",
            &format!("spiffe://{long_td}/x"),
            &long_id,
        ];
        for case in cases {
            let id = SpiffeId::parse(case).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(id.as_str(), *case);
        }
    }

    #[test]
    fn rejected_ids() {
        use SpiffeIdError as E;
        let too_long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let too_long_id = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let cases: Vec<(&str, E)> = vec![
            ("", E::Empty),
            ("http://td/x", E::WrongScheme),
            ("SPIFFE://td/x", E::WrongScheme),
            ("spiffe:/td/x", E::WrongScheme),
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe:///x", E::MissingTrustDomain),
            (&too_long_td, E::TrustDomainTooLong),
            ("spiffe://Cluster.local/x", E::TrustDomainUppercase('C')),
            ("spiffe://td:8080/x", E::TrustDomainPort),
            ("spiffe://user@td/x", E::TrustDomainUserinfo),
            ("spiffe://td!/x", E::TrustDomainChar('!')),
            ("spiffe://t d/x", E::TrustDomainChar(' ')),
            (&too_long_id, E::TooLong),
            ("spiffe://td/x?q=1", E::Query),
            ("spiffe://td/x#frag", E::Fragment),
            ("spiffe://td/a%20b", E::PercentEncoded),
            ("spiffe://td//x", E::EmptySegment),
            ("spiffe://td/a//b", E::EmptySegment),
            ("spiffe://td/./x", E::DotSegment),
            ("spiffe://td/a/..", E::DotSegment),
            ("spiffe://td/x/", E::TrailingSlash),
            ("spiffe://td/", E::TrailingSlash),
            ("spiffe://td/a b", E::PathChar(' ')),
            ("spiffe://td/a:b", E::PathChar(':')),
            ("spiffe://td/é", E::PathChar('é')),
            ("spiffe://td", E::MissingPath),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn parts() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/foo/sa/bar").unwrap();
        assert_eq!(id.trust_domain_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/foo/sa/bar");
        assert_eq!(id.principal(), "cluster.local/ns/foo/sa/bar");
        assert_eq!(id.service_account(), Some(("foo", "bar")));
        assert_eq!(id.namespace(), Some("foo"));
        let other = SpiffeId::parse("spiffe://td/ns/foo/sa/bar/extra").unwrap();
        assert_eq!(other.service_account(), None);
        assert_eq!(
            SpiffeId::parse("spiffe://td/workload").unwrap().namespace(),
            None
        );
    }

    #[test]
    fn service_account_form() {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let id = SpiffeId::for_service_account(&td, "default", "web.v1").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/web.v1");
        assert_eq!(
            SpiffeId::for_service_account(&td, "Default", "web"),
            Err(SpiffeIdError::BadNamespace("Default".into()))
        );
        assert_eq!(
            SpiffeId::for_service_account(&td, "a.b", "web"),
            Err(SpiffeIdError::BadNamespace("a.b".into()))
        );
        assert_eq!(
            SpiffeId::for_service_account(&td, "ns", "-web"),
            Err(SpiffeIdError::BadServiceAccount("-web".into()))
        );
        assert_eq!(
            SpiffeId::for_service_account(&td, "ns", ""),
            Err(SpiffeIdError::BadServiceAccount(String::new()))
        );
    }

    #[test]
    fn trust_domains() {
        assert_eq!(
            TrustDomain::parse("cluster.local").unwrap().as_str(),
            "cluster.local"
        );
        assert_eq!(TrustDomain::parse("spiffe://td").unwrap().as_str(), "td");
        assert_eq!(
            TrustDomain::parse(""),
            Err(SpiffeIdError::MissingTrustDomain)
        );
        assert_eq!(
            TrustDomain::parse("TD"),
            Err(SpiffeIdError::TrustDomainUppercase('T'))
        );
        assert_eq!(
            TrustDomain::parse("td:1"),
            Err(SpiffeIdError::TrustDomainPort)
        );
        assert_eq!(
            TrustDomain::parse("SPIFFE://td"),
            Err(SpiffeIdError::WrongScheme)
        );
    }
}
