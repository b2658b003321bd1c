//! Request-path normalization (shared by policy matching and the proxy's L7 path):
//! idempotent; never yields a `.` or `..` segment or an empty segment; never decodes `%2F` (no
//! slash appears that the input did not have); refuses ambiguous paths by default.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_lib_policy::path::{normalize, Ambiguous};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let path = &raw[..raw.find(['?', '#']).unwrap_or(raw.len())];
    for mode in [Ambiguous::Reject, Ambiguous::Allow] {
        let Ok(out) = normalize(raw, mode) else {
            continue;
        };
        assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
        assert_eq!(
            normalize(&out, mode).as_deref(),
            Ok(out.as_str()),
            "not idempotent: {raw:?} -> {out:?}"
        );
        for seg in out[1..].split('/') {
            assert!(seg != "." && seg != "..", "{raw:?} -> {out:?}");
        }
        assert!(!out[1..].contains("//"), "{raw:?} -> {out:?}");
        assert!(
            out.matches('/').count() <= path.matches('/').count(),
            "a slash was decoded: {raw:?} -> {out:?}"
        );
        if mode == Ambiguous::Reject {
            let lower = path.to_ascii_lowercase();
            assert!(
                !lower.contains("%2f") && !lower.contains("%5c") && !path.contains(';'),
                "an ambiguous path was accepted: {raw:?}"
            );
        }
    }
});
