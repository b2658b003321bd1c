//! Untrusted PKCS#10 CSRs → a verified public key, and nothing else.
//!
//! The CA takes exactly one thing from a CSR: the public key, after checking that the CSR's
//! self-signature verifies under it (proof of possession). Subject, SANs and requested
//! extensions are never read, so no name a requester writes can reach a certificate.

use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::*;

/// Largest CSR accepted, in bytes. A P-256 CSR is ~250 bytes; anything near this is hostile.
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is empty")]
    Empty,
    #[error("CSR is {0} bytes; the limit is {MAX_CSR_LEN}")]
    TooLarge(usize),
    #[error("CSR is not valid DER PKCS#10: {0}")]
    Malformed(String),
    #[error("CSR has {0} trailing bytes after the PKCS#10 structure")]
    TrailingData(usize),
    #[error("CSR self-signature does not verify (no proof of possession of the key)")]
    BadSignature,
    #[error("CSR key must be ECDSA P-256; found {0}")]
    UnsupportedKey(String),
}

/// A CSR's public key after its proof of possession was verified.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// DER SubjectPublicKeyInfo.
    spki_der: Vec<u8>,
}

impl VerifiedCsr {
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// Parses and verifies a DER CSR.
pub fn verify_csr(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData(rest.len()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        let what = match curve {
            Some(c) => format!("{} with parameters {c}", spki.algorithm.algorithm),
            None => spki.algorithm.algorithm.to_string(),
        };
        return Err(CsrError::UnsupportedKey(what));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    Ok(VerifiedCsr {
        spki_der: spki.raw.to_vec(),
    })
}
