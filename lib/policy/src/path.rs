//! Request-path normalization, owned here and shared with the proxy's L7 path so that what
//! policy matches is exactly what the workload will see.
//!
//! Rules, in order:
//! 1. the fragment (`#…`) and the query (`?…`) are dropped;
//! 2. by default, paths whose meaning differs between servers are **rejected** (the proxy
//!    answers 400): an encoded `/` (`%2F`) or `\` (`%5C`), a literal `\`, a `;` (path
//!    parameters), control characters, or a path that does not start with `/`;
//! 3. percent-escapes of unreserved characters (`A–Z a–z 0–9 - . _ ~`) are decoded, so `%61`
//!    is `a` and `%2E` is `.`; other escapes are kept, with upper-case hex;
//! 4. runs of `/` are merged into one;
//! 5. `.` and `..` segments are removed (RFC 3986 §5.2.4); `..` never climbs above `/`.
//!
//! Matching stays case-sensitive, as in Istio.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/' (%2F), which servers interpret differently")]
    EncodedSlash,
    #[error("path contains an encoded or literal '\\', which servers interpret differently")]
    Backslash,
    #[error("path contains ';' (path parameters), which servers interpret differently")]
    Semicolon,
    #[error("path contains a malformed percent-escape")]
    BadEscape,
    #[error("path contains a control character or space")]
    Control,
}

/// What to do with ambiguous paths (step 2 above).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ambiguous {
    /// Refuse them (default).
    #[default]
    Reject,
    /// Let them through unchanged (`%2F`, `%5C` stay encoded; `;` stays literal).
    Allow,
}

/// Normalizes a request target's path for policy matching.
pub fn normalize(raw: &str, ambiguous: Ambiguous) -> Result<String, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = &raw[..end];
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let strict = ambiguous == Ambiguous::Reject;
    // Decode unreserved escapes, validating every escape.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                // Both digits are < 16, so the value fits a byte.
                let v = u8::try_from(h * 16 + l).map_err(|_| PathError::BadEscape)?;
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(char::from(v));
                } else {
                    if strict && v == b'/' {
                        return Err(PathError::EncodedSlash);
                    }
                    if strict && v == b'\\' {
                        return Err(PathError::Backslash);
                    }
                    decoded.push('%');
                    decoded.push(hex_upper(v >> 4));
                    decoded.push(hex_upper(v & 0xf));
                }
                i += 3;
            }
            b'\\' if strict => return Err(PathError::Backslash),
            b';' if strict => return Err(PathError::Semicolon),
            0..=0x20 | 0x7f => return Err(PathError::Control),
            _ => {
                // Copy one UTF-8 character (non-ASCII bytes pass through unchanged).
                let ch_len = utf8_len(b);
                let end = (i + ch_len).min(bytes.len());
                decoded.push_str(&String::from_utf8_lossy(&bytes[i..end]));
                i = end;
            }
        }
    }
    Ok(remove_dot_segments(&decoded))
}

fn hex_upper(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0xf)])
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Merges slashes and resolves `.`/`..` on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/./admin", "/admin"),
            ("/a/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2E%2E/admin", "/admin"),
            ("/a/%2e/b", "/a/b"),
            ("/admin/", "/admin/"),
            ("/admin/x", "/admin/x"),
            ("/admin?x=1", "/admin"),
            ("/admin#x", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/..", "/a/"),
            ("/a/%7e", "/a/~"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/Admin", "/Admin"),
            ("/ü", "/ü"),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize(input, Ambiguous::Reject).as_deref(),
                Ok(want),
                "{input}"
            );
        }
        let bad = [
            ("/admin;x", PathError::Semicolon),
            ("/admin%2f", PathError::EncodedSlash),
            ("/admin%2F..", PathError::EncodedSlash),
            ("/admin%5c", PathError::Backslash),
            ("/admin\\x", PathError::Backslash),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("admin", PathError::NotAbsolute),
            ("/a b", PathError::Control),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input, Ambiguous::Reject), Err(want), "{input}");
        }
        assert_eq!(
            normalize("/admin;x", Ambiguous::Allow).as_deref(),
            Ok("/admin;x")
        );
        assert_eq!(
            normalize("/admin%2fx", Ambiguous::Allow).as_deref(),
            Ok("/admin%2Fx")
        );
    }
}
