//! SPIFFE IDs and trust domains from arbitrary text: no panic; whatever parses re-parses to the
//! same value, and its parts are consistent with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_lib_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(s) {
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID re-parses");
        assert_eq!(again.as_str(), id.as_str());
        assert!(id.as_str().starts_with("spiffe://"));
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain_str(), id.path()),
            id.as_str()
        );
        let _ = (id.principal(), id.namespace(), id.service_account());
        TrustDomain::parse(id.trust_domain_str()).expect("an ID's trust domain parses");
    }
    if let Ok(td) = TrustDomain::parse(s) {
        assert_eq!(
            TrustDomain::parse(td.as_str()).expect("re-parses").as_str(),
            td.as_str()
        );
    }
});
