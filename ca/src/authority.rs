//! The signing authority: a root (or an intermediate with its chain) and the rules for what it
//! signs.
//!
//! Every workload certificate is an X509-SVID: exactly one URI SAN (the CA-decided SPIFFE ID),
//! `cA=false`, critical keyUsage digitalSignature, EKU serverAuth + clientAuth, ECDSA P-256,
//! a random 128-bit serial, and a notAfter that never exceeds the issuer's.
//!
//! On disk an authority is a directory (see [`Authority::load_dir`]); the private key file is
//! written with mode 0600.

use std::fs;
use std::path::Path;
use std::time::Duration;

use ::time::OffsetDateTime;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use ward_lib_identity::bundle::parse_pem_certs;
use ward_lib_identity::svid::{verify_svid, PeerRole};
use ward_lib_identity::{SpiffeId, TrustBundle, TrustDomain};
use x509_parser::prelude::*;

use crate::csr::VerifiedCsr;

/// Default workload certificate lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime the CA grants unless configured otherwise.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// notBefore is backdated by this much to tolerate clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// File names inside a CA directory.
pub mod files {
    pub const ROOT: &str = "root.pem";
    pub const CERT: &str = "ca.pem";
    pub const KEY: &str = "ca-key.pem";
    pub const CHAIN: &str = "chain.pem";
    pub const TRUST_DOMAIN: &str = "trust-domain";
}

/// Why the authority could not be built or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("signing certificate: {0}")]
    SigningCert(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("signing key does not match the public key of the signing certificate")]
    KeyMismatch,
    #[error("the signing certificate does not chain to the root(s): {0}")]
    Chain(String),
    #[error("trust domain: {0}")]
    TrustDomain(String),
    #[error("the issuer expired at {0} (unix seconds); nothing can be signed")]
    IssuerExpired(i64),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// A workload certificate as issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf first, then intermediates (never the root).
    pub chain: Vec<CertificateDer<'static>>,
    pub spiffe_id: SpiffeId,
    pub not_before: i64,
    pub not_after: i64,
    /// Hex serial number, for audit logs.
    pub serial: String,
}

/// A loaded CA: it signs with `key` as `signing_cert`.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    signing_cert: CertificateDer<'static>,
    /// Certificates between the signing certificate and the root, excluding both.
    intermediates: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    signing_is_root: bool,
    issuer_not_after: i64,
    max_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("issuer_not_after", &self.issuer_not_after)
            .field("signing_is_root", &self.signing_is_root)
            .finish_non_exhaustive()
    }
}

/// PEM texts of an authority, as written to and read from a CA directory.
#[derive(Debug, Clone)]
pub struct AuthorityPem {
    pub trust_domain: String,
    pub root: String,
    pub cert: String,
    pub key: String,
    /// Intermediates between `cert` and the root; empty when `cert` is the root.
    pub chain: String,
}

impl Authority {
    /// Creates a new self-signed root for `td`, valid from `now` for `validity`.
    pub fn init_root(
        td: &TrustDomain,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(Self, AuthorityPem), AuthorityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AuthorityError::Generate(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ward");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ward root CA {td}"));
        // The trust-domain ID in the CA certificate, as the X509-SVID standard permits.
        params.subject_alt_names = vec![san_uri(&format!("spiffe://{td}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let cert = params
            .self_signed(&key)
            .map_err(|e| AuthorityError::Generate(e.to_string()))?;
        let pem = AuthorityPem {
            trust_domain: td.to_string(),
            root: cert.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
            chain: String::new(),
        };
        Ok((Self::from_pem(&pem)?, pem))
    }

    /// Loads an authority from PEM: a root signing directly, or an intermediate whose `chain`
    /// leads to one of the roots. The key must match the signing certificate.
    pub fn from_pem(pem: &AuthorityPem) -> Result<Self, AuthorityError> {
        let trust_domain = TrustDomain::parse(pem.trust_domain.trim())
            .map_err(|e| AuthorityError::TrustDomain(e.to_string()))?;
        let roots = parse_pem_certs(&pem.root).map_err(|e| AuthorityError::File {
            path: files::ROOT.into(),
            reason: e.to_string(),
        })?;
        let mut certs = parse_pem_certs(&pem.cert).map_err(|e| AuthorityError::File {
            path: files::CERT.into(),
            reason: e.to_string(),
        })?;
        if certs.len() != 1 {
            return Err(AuthorityError::SigningCert(format!(
                "{} holds {} certificates; put intermediates in {}",
                files::CERT,
                certs.len(),
                files::CHAIN
            )));
        }
        let signing_cert = certs.remove(0);
        let intermediates = if pem.chain.trim().is_empty() {
            Vec::new()
        } else {
            parse_pem_certs(&pem.chain).map_err(|e| AuthorityError::File {
                path: files::CHAIN.into(),
                reason: e.to_string(),
            })?
        };
        let key = KeyPair::from_pem(&pem.key).map_err(|e| AuthorityError::Key(e.to_string()))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(AuthorityError::Key(
                "the signing key must be ECDSA P-256".into(),
            ));
        }

        let (_, parsed) = X509Certificate::from_der(&signing_cert)
            .map_err(|e| AuthorityError::SigningCert(e.to_string()))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(AuthorityError::SigningCert(
                "basicConstraints cA is not true; it cannot sign certificates".into(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(AuthorityError::KeyMismatch);
        }
        let issuer_not_after = parsed.validity().not_after.timestamp();
        let signing_is_root = roots.iter().any(|r| r == &signing_cert);
        if !signing_is_root {
            check_intermediate_chain(&signing_cert, &intermediates, &roots)?;
        }
        let issuer = Issuer::from_ca_cert_der(&signing_cert, key)
            .map_err(|e| AuthorityError::SigningCert(e.to_string()))?;
        Ok(Self {
            trust_domain,
            issuer,
            signing_cert,
            intermediates,
            roots,
            signing_is_root,
            issuer_not_after,
            max_ttl: DEFAULT_MAX_TTL,
        })
    }

    /// Reads `trust-domain`, `root.pem`, `ca.pem`, `ca-key.pem` and (optional) `chain.pem`.
    pub fn load_dir(dir: &Path) -> Result<Self, AuthorityError> {
        let read = |name: &str, required: bool| -> Result<String, AuthorityError> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(String::new())
                }
                Err(e) => Err(AuthorityError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        };
        Self::from_pem(&AuthorityPem {
            trust_domain: read(files::TRUST_DOMAIN, true)?,
            root: read(files::ROOT, true)?,
            cert: read(files::CERT, true)?,
            key: read(files::KEY, true)?,
            chain: read(files::CHAIN, false)?,
        })
    }

    /// Sets the longest lifetime granted.
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The certificate this authority signs with (a root or an intermediate).
    pub fn signing_certificate(&self) -> &CertificateDer<'static> {
        &self.signing_cert
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as a trust bundle for this authority's trust domain.
    pub fn bundle(&self) -> TrustBundle {
        let mut b = TrustBundle::new();
        for r in &self.roots {
            // Roots were parsed and checked when the authority was built.
            let _ = b.add_root(&self.trust_domain, r.clone());
        }
        b
    }

    /// Signs a workload certificate for `id` with the key from `csr`. `ttl` is clamped to the
    /// authority's maximum, and notAfter to the issuer's notAfter.
    pub fn sign(
        &self,
        csr: &VerifiedCsr,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, AuthorityError> {
        self.sign_with_dns_names(csr, id, &[], ttl, now)
    }

    /// As [`Authority::sign`], with DNS names beside the SPIFFE ID (the SPIFFE X509-SVID
    /// standard allows other SAN types): for the control component's own serving
    /// certificates, which clients outside the mesh — the API server calling the admission
    /// webhook — verify by DNS name. Never used for workloads, whose CSRs name nothing.
    pub fn sign_with_dns_names(
        &self,
        csr: &VerifiedCsr,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, AuthorityError> {
        if now.unix_timestamp() >= self.issuer_not_after {
            return Err(AuthorityError::IssuerExpired(self.issuer_not_after));
        }
        let public_key = SubjectPublicKeyInfo::from_der(csr.spki_der())
            .map_err(|e| AuthorityError::Generate(format!("CSR public key: {e}")))?;
        let ttl = ttl.min(self.max_ttl);
        let not_after = (now + ttl).min(
            OffsetDateTime::from_unix_timestamp(self.issuer_not_after)
                .map_err(|e| AuthorityError::Generate(e.to_string()))?,
        );
        let serial = random_serial();
        let mut params = CertificateParams::default();
        // An empty subject; the identity lives in the (then critical) URI SAN alone.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![san_uri(id.as_str())?];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into().map_err(
                    |e: rcgen::Error| AuthorityError::Generate(format!("DNS name {name:?}: {e}")),
                )?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial.clone());
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| AuthorityError::Generate(e.to_string()))?;
        let mut chain = Vec::with_capacity(2 + self.intermediates.len());
        chain.push(cert.der().clone());
        if !self.signing_is_root {
            chain.push(self.signing_cert.clone());
            chain.extend(self.intermediates.iter().cloned());
        }
        Ok(IssuedCert {
            chain,
            spiffe_id: id.clone(),
            not_before: (now - BACKDATE).unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            serial: serial
                .to_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

/// Writes a CA directory (creating it); the key is written with mode 0600 and never
/// overwritten.
pub fn write_dir(dir: &Path, pem: &AuthorityPem) -> Result<(), AuthorityError> {
    let io = |path: &Path, e: std::io::Error| AuthorityError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let key_path = dir.join(files::KEY);
    if key_path.exists() {
        return Err(AuthorityError::File {
            path: key_path.display().to_string(),
            reason: "already exists; refusing to overwrite a CA key".into(),
        });
    }
    write_private(&key_path, pem.key.as_bytes()).map_err(|e| io(&key_path, e))?;
    for (name, text) in [
        (files::ROOT, pem.root.as_str()),
        (files::CERT, pem.cert.as_str()),
        (files::CHAIN, pem.chain.as_str()),
        (files::TRUST_DOMAIN, &format!("{}\n", pem.trust_domain)),
    ] {
        let p = dir.join(name);
        fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    Ok(())
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Checks that `signing_cert` → `intermediates` → some root is a chain of valid signatures.
/// (webpki cannot do this: it refuses CA certificates as end entities.)
fn check_intermediate_chain(
    signing_cert: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), AuthorityError> {
    let mut all: Vec<&CertificateDer<'static>> = vec![signing_cert];
    all.extend(intermediates.iter());
    for pair in all.windows(2) {
        verify_signed_by(pair[0], pair[1])?;
    }
    let last = all.last().copied().unwrap_or(signing_cert);
    if roots.iter().any(|r| verify_signed_by(last, r).is_ok()) {
        Ok(())
    } else {
        Err(AuthorityError::Chain(
            "the last certificate of the chain is not signed by any root".into(),
        ))
    }
}

fn verify_signed_by(
    child: &CertificateDer<'_>,
    parent: &CertificateDer<'_>,
) -> Result<(), AuthorityError> {
    let (_, c) =
        X509Certificate::from_der(child).map_err(|e| AuthorityError::Chain(e.to_string()))?;
    let (_, p) =
        X509Certificate::from_der(parent).map_err(|e| AuthorityError::Chain(e.to_string()))?;
    c.verify_signature(Some(p.public_key())).map_err(|_| {
        AuthorityError::Chain(format!(
            "'{}' is not signed by '{}'",
            c.subject(),
            p.subject()
        ))
    })
}

fn san_uri(uri: &str) -> Result<SanType, AuthorityError> {
    Ok(SanType::URI(uri.try_into().map_err(
        |e: rcgen::Error| AuthorityError::Generate(e.to_string()),
    )?))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so it encodes as exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Verifies that an issued chain is a valid SVID under this authority's roots (a self-check
/// used by tests and by `ward ca issue`).
pub fn self_check(auth: &Authority, issued: &IssuedCert, now: u64) -> Result<(), String> {
    let now = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now));
    verify_svid(&issued.chain, &auth.bundle(), now, PeerRole::Client)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
