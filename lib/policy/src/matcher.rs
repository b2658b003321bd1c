//! Value matchers: Istio's string forms (exact, `prefix*`, `*suffix`, `*` presence), CIDRs,
//! ports, and URI-template paths.
//!
//! Parsing is strict: a `*` anywhere but as the whole value, the first or the last character is
//! rejected (it would otherwise silently be a literal character, which no policy author means).

use std::net::IpAddr;

use ipnet::IpNet;

/// How one string value matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: present and non-empty.
    Presence,
}

impl StringMatch {
    /// Parses a policy value. `fold_case` lower-cases it for case-insensitive fields (hosts).
    pub fn parse(v: &str, fold_case: bool) -> Result<Self, String> {
        if v.is_empty() {
            return Err("empty string is not a valid value".into());
        }
        let v = if fold_case {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        };
        if v == "*" {
            return Ok(StringMatch::Presence);
        }
        let stars = v.matches('*').count();
        if stars == 1 {
            if let Some(rest) = v.strip_suffix('*') {
                return Ok(StringMatch::Prefix(rest.to_owned()));
            }
            if let Some(rest) = v.strip_prefix('*') {
                return Ok(StringMatch::Suffix(rest.to_owned()));
            }
        }
        if stars > 0 {
            return Err(format!(
                "{v:?}: '*' is allowed only as the whole value, as a prefix match (abc*) or as a suffix match (*abc)"
            ));
        }
        Ok(StringMatch::Exact(v))
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(e) => s == e,
            StringMatch::Prefix(p) => s.starts_with(p.as_str()),
            StringMatch::Suffix(x) => s.ends_with(x.as_str()),
            StringMatch::Presence => !s.is_empty(),
        }
    }

    /// Case-insensitive match; the pattern was lower-cased at parse time.
    pub fn matches_fold(&self, s: &str) -> bool {
        fn eq(a: &str, b: &str) -> bool {
            a.eq_ignore_ascii_case(b)
        }
        match self {
            StringMatch::Exact(e) => eq(s, e),
            StringMatch::Prefix(p) => {
                s.len() >= p.len() && s.is_char_boundary(p.len()) && eq(&s[..p.len()], p)
            }
            StringMatch::Suffix(x) => {
                s.len() >= x.len()
                    && s.is_char_boundary(s.len() - x.len())
                    && eq(&s[s.len() - x.len()..], x)
            }
            StringMatch::Presence => !s.is_empty(),
        }
    }
}

/// Parses an IP address or CIDR (`10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`).
pub fn parse_cidr(v: &str) -> Result<IpNet, String> {
    if let Ok(net) = v.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("{v:?} is not an IP address or CIDR"))
}

/// Parses a port: a decimal number 0–65535 (Istio writes ports as strings).
pub fn parse_port(v: &str) -> Result<u16, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a port number"));
    }
    v.parse::<u16>()
        .map_err(|_| format!("{v:?} is outside the port range 0-65535"))
}

/// A `paths` value: a string match, or a URI template with `{*}` (exactly one segment) and
/// `{**}` (zero or more segments). `{**}` must be the last *operator*; literal segments may
/// follow it (`/store/{**}/cart`), as Istio documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    String(StringMatch),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathMatch {
    pub fn parse(v: &str) -> Result<Self, String> {
        if !v.contains('{') && !v.contains('}') {
            return StringMatch::parse(v, false).map(PathMatch::String);
        }
        if !v.starts_with('/') {
            return Err(format!("{v:?}: a path template must start with '/'"));
        }
        let parts: Vec<&str> = v[1..].split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut after_rest = false;
        for p in &parts {
            match *p {
                "{*}" | "{**}" if after_rest => {
                    return Err(format!(
                        "{v:?}: '{{**}}' must be the last operator; only literal segments may follow it"
                    ))
                }
                "{*}" => segs.push(Segment::One),
                "{**}" => {
                    after_rest = true;
                    segs.push(Segment::Rest);
                }
                lit if lit.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "{v:?}: segment {lit:?} mixes literal text with a template or '*'; use {{*}} or {{**}} as whole segments"
                    ))
                }
                lit => segs.push(Segment::Literal(lit.to_owned())),
            }
        }
        Ok(PathMatch::Template(segs))
    }

    /// Matches a normalized path.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(m) => m.matches(path),
            PathMatch::Template(segs) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                let mut at = 0;
                for (i, seg) in segs.iter().enumerate() {
                    match seg {
                        Segment::Rest => {
                            // Zero or more segments, then exactly the literals after it.
                            let tail = &segs[i + 1..];
                            if parts.len() < at + tail.len() {
                                return false;
                            }
                            let start = parts.len() - tail.len();
                            return tail
                                .iter()
                                .zip(&parts[start..])
                                .all(|(s, p)| matches!(s, Segment::Literal(l) if l == p));
                        }
                        Segment::One => match parts.get(at) {
                            Some(p) if !p.is_empty() => at += 1,
                            _ => return false,
                        },
                        Segment::Literal(l) => match parts.get(at) {
                            Some(p) if p == l => at += 1,
                            _ => return false,
                        },
                    }
                }
                at == parts.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_forms() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc*", "abcd", true),
            ("abc*", "xabc", false),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),
        ];
        for (pat, s, want) in cases {
            assert_eq!(
                StringMatch::parse(pat, false).unwrap().matches(s),
                want,
                "{pat} vs {s}"
            );
        }
        for bad in ["a*b", "**", "*a*", ""] {
            assert!(StringMatch::parse(bad, false).is_err(), "{bad}");
        }
        let host = StringMatch::parse("Web.Example.COM", true).unwrap();
        assert!(host.matches_fold("WEB.example.com"));
        let suf = StringMatch::parse("*.EXAMPLE.com", true).unwrap();
        assert!(suf.matches_fold("a.example.COM"));
        assert!(!suf.matches_fold("example.com"));
    }

    #[test]
    fn templates() {
        let t = PathMatch::parse("/api/{*}/items/{**}").unwrap();
        assert!(t.matches("/api/v1/items/a/b"));
        assert!(t.matches("/api/v1/items/"));
        assert!(!t.matches("/api/v1/x/items/a"));
        assert!(!t.matches("/api//items/a"));
        let one = PathMatch::parse("/users/{*}").unwrap();
        assert!(one.matches("/users/7"));
        assert!(!one.matches("/users/7/x"));
        let t = PathMatch::parse("/store/{**}/cart").unwrap();
        for (p, want) in [
            ("/store/cart", true),
            ("/store/a/cart", true),
            ("/store/a/b/cart", true),
            ("/store/a/cart/x", false),
            ("/store", false),
            ("/shop/a/cart", false),
        ] {
            assert_eq!(t.matches(p), want, "{p}");
        }
        assert!(PathMatch::parse("/a/{**}/{*}").is_err());
        assert!(PathMatch::parse("/a/{**}/b/{**}").is_err());
        assert!(PathMatch::parse("/a/x{*}").is_err());
    }

    #[test]
    fn ports_and_cidrs() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert!(parse_port("65536").is_err());
        assert!(parse_port("-1").is_err());
        assert!(parse_port("http").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.1").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
    }
}
