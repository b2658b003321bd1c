//! Fixtures shared by fuzz targets (included with `#[path]`; each target is its own binary).

use std::sync::OnceLock;

/// A self-signed CA certificate (PEM), generated once per process: a real trust bundle.
pub fn root_pem() -> &'static str {
    static R: OnceLock<String> = OnceLock::new();
    R.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    })
}
