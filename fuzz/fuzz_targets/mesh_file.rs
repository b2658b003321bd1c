//! The mesh file (local mode): arbitrary YAML through parsing and validation into a snapshot,
//! with a real trust bundle and policy text from the same input. No panic; errors are values.
//! (A malformed bundle is the CA's and identity crate's parser: the `svid` target.)
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_lib_api::config::{MeshFile, Snapshot};

fn bundle_pem() -> &'static str {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    })
}

fuzz_target!(|data: &[u8]| {
    // The mesh file, then (after a NUL byte) a policy file.
    let mut parts = data.splitn(2, |&b| b == 0);
    let (Ok(mesh), Ok(policy)) = (
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
    ) else {
        return;
    };
    let Ok(file) = MeshFile::parse(mesh, "mesh.yaml") else {
        return;
    };
    let _ = Snapshot::build(
        file,
        bundle_pem(),
        &[("policies/fuzz.yaml".into(), policy.to_owned())],
        "fuzz".into(),
    );
});
