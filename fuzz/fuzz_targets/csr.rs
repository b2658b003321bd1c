//! The CA's CSR verification on arbitrary DER and on mutations of a valid CSR: no panic; a
//! mutated CSR that still verifies carries the original key (signatures bind it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_ca::csr::verify_csr;

fn valid() -> &'static (Vec<u8>, Vec<u8>) {
    static V: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    V.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let spki = verify_csr(&der).unwrap().spki_der().to_vec();
        (der, spki)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = verify_csr(rest);
        return;
    }
    let (der, spki) = valid();
    let mut csr = der.clone();
    for pair in rest.chunks_exact(3) {
        let pos = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % csr.len();
        csr[pos] ^= pair[2];
    }
    if let Ok(v) = verify_csr(&csr) {
        assert_eq!(
            v.spki_der(),
            spki.as_slice(),
            "a mutated CSR verified with another key"
        );
    }
});
