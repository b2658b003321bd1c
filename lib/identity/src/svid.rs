//! X509-SVID verification: the rules every peer certificate in ward must pass.
//!
//! A chain is accepted only if its leaf carries exactly one URI SAN holding a valid SPIFFE ID,
//! is not a CA, has a critical key-usage extension with digitalSignature and without
//! keyCertSign/cRLSign, has (if it has one) an extended key usage with both serverAuth and
//! clientAuth, is inside its validity window at the caller's `now`, and chains (through the
//! presented intermediates) to a root of the trust domain named in its own SPIFFE ID.
//!
//! Every failure is a distinct [`SvidError`] that names the rule, and [`check_leaf`] reports
//! every rule separately for `ward cert inspect`. Nothing here reads a clock.

use std::fmt;

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::*;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// The SVID rules, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidRule {
    /// The leaf is a well-formed X.509 certificate.
    Parse,
    /// Exactly one URI SAN.
    OneUriSan,
    /// The URI SAN is a valid SPIFFE ID with a path.
    SpiffeId,
    /// basicConstraints cA is not true.
    NotCa,
    /// keyUsage present, critical, digitalSignature, no keyCertSign / cRLSign.
    KeyUsage,
    /// extendedKeyUsage, if present, has serverAuth and clientAuth.
    ExtendedKeyUsage,
    /// notBefore ≤ now ≤ notAfter.
    Validity,
    /// The chain leads to a root of the ID's trust domain.
    Chain,
}

impl SvidRule {
    pub const ALL: [SvidRule; 8] = [
        SvidRule::Parse,
        SvidRule::OneUriSan,
        SvidRule::SpiffeId,
        SvidRule::NotCa,
        SvidRule::KeyUsage,
        SvidRule::ExtendedKeyUsage,
        SvidRule::Validity,
        SvidRule::Chain,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            SvidRule::Parse => "leaf is a well-formed X.509 certificate",
            SvidRule::OneUriSan => "exactly one URI SAN",
            SvidRule::SpiffeId => "URI SAN is a valid SPIFFE ID",
            SvidRule::NotCa => "leaf is not a CA (basicConstraints cA=false)",
            SvidRule::KeyUsage => {
                "keyUsage critical, with digitalSignature, without keyCertSign/cRLSign"
            }
            SvidRule::ExtendedKeyUsage => {
                "extendedKeyUsage (if present) has serverAuth and clientAuth"
            }
            SvidRule::Validity => "inside its validity window",
            SvidRule::Chain => "chains to a root of its trust domain",
        }
    }
}

/// Why a certificate chain is not an acceptable X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("no certificate presented")]
    EmptyChain,
    #[error("leaf certificate is malformed: {0}")]
    Malformed(String),
    #[error("leaf has no URI SAN; an X509-SVID carries exactly one")]
    NoUriSan,
    #[error("leaf has {0} URI SANs; an X509-SVID carries exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId { uri: String, reason: SpiffeIdError },
    #[error("leaf has basicConstraints cA=true; a CA certificate is never a workload identity")]
    LeafIsCa,
    #[error("leaf has no keyUsage extension")]
    KeyUsageMissing,
    #[error("leaf keyUsage extension is not marked critical")]
    KeyUsageNotCritical,
    #[error("leaf keyUsage lacks digitalSignature")]
    KeyUsageNoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign, which only CA certificates may have")]
    KeyUsageCertSign,
    #[error("leaf keyUsage has cRLSign, which only CA certificates may have")]
    KeyUsageCrlSign,
    #[error("leaf extendedKeyUsage lacks serverAuth")]
    EkuNoServerAuth,
    #[error("leaf extendedKeyUsage lacks clientAuth")]
    EkuNoClientAuth,
    #[error("certificate expired: notAfter {not_after} is before now {now} (unix seconds)")]
    Expired { not_after: i64, now: u64 },
    #[error("certificate not yet valid: notBefore {not_before} is after now {now} (unix seconds)")]
    NotYetValid { not_before: i64, now: u64 },
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("chain does not verify against the roots of trust domain {domain:?}: {reason}")]
    Chain { domain: String, reason: String },
    #[error("peer is {actual}, expected {expected}")]
    UnexpectedIdentity { expected: String, actual: String },
}

impl SvidError {
    /// The rule this error violates.
    pub fn rule(&self) -> SvidRule {
        use SvidError as E;
        match self {
            E::EmptyChain | E::Malformed(_) => SvidRule::Parse,
            E::NoUriSan | E::MultipleUriSans(_) => SvidRule::OneUriSan,
            E::InvalidSpiffeId { .. } | E::UnexpectedIdentity { .. } => SvidRule::SpiffeId,
            E::LeafIsCa => SvidRule::NotCa,
            E::KeyUsageMissing
            | E::KeyUsageNotCritical
            | E::KeyUsageNoDigitalSignature
            | E::KeyUsageCertSign
            | E::KeyUsageCrlSign => SvidRule::KeyUsage,
            E::EkuNoServerAuth | E::EkuNoClientAuth => SvidRule::ExtendedKeyUsage,
            E::Expired { .. } | E::NotYetValid { .. } => SvidRule::Validity,
            E::UnknownTrustDomain(_) | E::Chain { .. } => SvidRule::Chain,
        }
    }

    /// A short, stable, label-safe name for metrics (`handshake failures by reason`).
    pub fn reason_code(&self) -> &'static str {
        use SvidError as E;
        match self {
            E::EmptyChain => "no_certificate",
            E::Malformed(_) => "malformed",
            E::NoUriSan => "no_uri_san",
            E::MultipleUriSans(_) => "multiple_uri_sans",
            E::InvalidSpiffeId { .. } => "invalid_spiffe_id",
            E::LeafIsCa => "leaf_is_ca",
            E::KeyUsageMissing => "key_usage_missing",
            E::KeyUsageNotCritical => "key_usage_not_critical",
            E::KeyUsageNoDigitalSignature => "key_usage_no_digital_signature",
            E::KeyUsageCertSign => "key_usage_cert_sign",
            E::KeyUsageCrlSign => "key_usage_crl_sign",
            E::EkuNoServerAuth => "eku_no_server_auth",
            E::EkuNoClientAuth => "eku_no_client_auth",
            E::Expired { .. } => "expired",
            E::NotYetValid { .. } => "not_yet_valid",
            E::UnknownTrustDomain(_) => "unknown_trust_domain",
            E::Chain { .. } => "untrusted_chain",
            E::UnexpectedIdentity { .. } => "unexpected_identity",
        }
    }
}

/// Which side of a handshake the verified certificate belongs to; selects the EKU webpki
/// requires of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Client,
    Server,
}

/// A chain that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub id: SpiffeId,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

/// Verifies `chain` (leaf first, then intermediates) as an X509-SVID against `bundle` at `now`.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: UnixTime,
    role: PeerRole,
) -> Result<VerifiedSvid, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    verify_svid_parts(leaf, intermediates, bundle, now, role)
}

/// [`verify_svid`] with the leaf and intermediates apart, as rustls hands them over (saves
/// building a chain vector per handshake).
pub fn verify_svid_parts(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: UnixTime,
    role: PeerRole,
) -> Result<VerifiedSvid, SvidError> {
    let facts = leaf_facts(leaf)?;
    facts.check_rules(now)?;
    verify_chain(leaf, intermediates, &facts.id, bundle, now, role)?;
    Ok(VerifiedSvid {
        id: facts.id,
        not_before: facts.not_before,
        not_after: facts.not_after,
    })
}

/// Like [`verify_svid`], and also requires the peer to be `expected`.
pub fn verify_svid_expecting(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: UnixTime,
    role: PeerRole,
    expected: &SpiffeId,
) -> Result<VerifiedSvid, SvidError> {
    let verified = verify_svid(chain, bundle, now, role)?;
    require_identity(&verified, expected)?;
    Ok(verified)
}

/// Fails unless a verified peer is `expected`.
pub fn require_identity(verified: &VerifiedSvid, expected: &SpiffeId) -> Result<(), SvidError> {
    if &verified.id != expected {
        return Err(SvidError::UnexpectedIdentity {
            expected: expected.to_string(),
            actual: verified.id.to_string(),
        });
    }
    Ok(())
}

/// One line of a rule-by-rule report.
#[derive(Debug, Clone)]
pub struct RuleCheck {
    pub rule: SvidRule,
    pub outcome: Result<(), SvidError>,
}

/// Rule-by-rule report on a chain, for humans (`ward cert inspect`). Unlike [`verify_svid`]
/// it does not stop at the first failure; a rule that cannot be evaluated because an earlier one
/// failed (e.g. the chain, when there is no SPIFFE ID) is reported with that earlier error.
pub fn check_leaf(
    chain: &[CertificateDer<'_>],
    bundle: Option<&TrustBundle>,
    now: UnixTime,
) -> Vec<RuleCheck> {
    let mut out = Vec::with_capacity(SvidRule::ALL.len());
    let Some(leaf) = chain.first() else {
        out.push(RuleCheck {
            rule: SvidRule::Parse,
            outcome: Err(SvidError::EmptyChain),
        });
        return out;
    };
    let parsed = match X509Certificate::from_der(leaf) {
        Ok((_, cert)) => cert,
        Err(e) => {
            out.push(RuleCheck {
                rule: SvidRule::Parse,
                outcome: Err(SvidError::Malformed(e.to_string())),
            });
            return out;
        }
    };
    out.push(RuleCheck {
        rule: SvidRule::Parse,
        outcome: Ok(()),
    });
    let uri = single_uri_san(&parsed);
    out.push(RuleCheck {
        rule: SvidRule::OneUriSan,
        outcome: uri.as_ref().map(|_| ()).map_err(Clone::clone),
    });
    let id = uri.and_then(|u| parse_id(&u));
    out.push(RuleCheck {
        rule: SvidRule::SpiffeId,
        outcome: id.as_ref().map(|_| ()).map_err(Clone::clone),
    });
    out.push(RuleCheck {
        rule: SvidRule::NotCa,
        outcome: check_not_ca(&parsed),
    });
    out.push(RuleCheck {
        rule: SvidRule::KeyUsage,
        outcome: check_key_usage(&parsed),
    });
    out.push(RuleCheck {
        rule: SvidRule::ExtendedKeyUsage,
        outcome: check_eku(&parsed),
    });
    let (nb, na) = validity(&parsed);
    out.push(RuleCheck {
        rule: SvidRule::Validity,
        outcome: check_validity(nb, na, now),
    });
    if let Some(bundle) = bundle {
        let chain_outcome = id.and_then(|id| {
            verify_chain(leaf, &chain[1..], &id, bundle, now, PeerRole::Client).map(|_| ())
        });
        out.push(RuleCheck {
            rule: SvidRule::Chain,
            outcome: chain_outcome,
        });
    }
    out
}

/// The SPIFFE ID in a leaf certificate, without verifying anything else. For use only on
/// chains a verifier in this crate has already accepted (e.g. the peer of a finished handshake).
pub fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    parse_id(&single_uri_san(&cert)?)
}

struct LeafFacts {
    id: SpiffeId,
    not_before: i64,
    not_after: i64,
    not_ca: Result<(), SvidError>,
    key_usage: Result<(), SvidError>,
    eku: Result<(), SvidError>,
}

impl LeafFacts {
    fn check_rules(&self, now: UnixTime) -> Result<(), SvidError> {
        self.not_ca.clone()?;
        self.key_usage.clone()?;
        self.eku.clone()?;
        check_validity(self.not_before, self.not_after, now)
    }
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<LeafFacts, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let id = parse_id(&single_uri_san(&cert)?)?;
    let (not_before, not_after) = validity(&cert);
    Ok(LeafFacts {
        id,
        not_before,
        not_after,
        not_ca: check_not_ca(&cert),
        key_usage: check_key_usage(&cert),
        eku: check_eku(&cert),
    })
}

fn single_uri_san(cert: &X509Certificate<'_>) -> Result<String, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(format!("subjectAltName: {e}")))?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
    let first = uris.next().ok_or(SvidError::NoUriSan)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(SvidError::MultipleUriSans(extra + 1));
    }
    Ok(first.to_owned())
}

fn parse_id(uri: &str) -> Result<SpiffeId, SvidError> {
    SpiffeId::parse(uri).map_err(|reason| SvidError::InvalidSpiffeId {
        uri: uri.to_owned(),
        reason,
    })
}

fn check_not_ca(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(format!("basicConstraints: {e}")))?;
    match bc {
        Some(ext) if ext.value.ca => Err(SvidError::LeafIsCa),
        _ => Ok(()),
    }
}

fn check_key_usage(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(format!("keyUsage: {e}")))?
        .ok_or(SvidError::KeyUsageMissing)?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::KeyUsageNoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::KeyUsageCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::KeyUsageCrlSign);
    }
    Ok(())
}

fn check_eku(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| SvidError::Malformed(format!("extendedKeyUsage: {e}")))?;
    let Some(eku) = eku else { return Ok(()) };
    if !eku.value.server_auth {
        return Err(SvidError::EkuNoServerAuth);
    }
    if !eku.value.client_auth {
        return Err(SvidError::EkuNoClientAuth);
    }
    Ok(())
}

fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let v = cert.validity();
    (v.not_before.timestamp(), v.not_after.timestamp())
}

fn check_validity(not_before: i64, not_after: i64, now: UnixTime) -> Result<(), SvidError> {
    let now_s = now.as_secs();
    let now_i = i64::try_from(now_s).unwrap_or(i64::MAX);
    if now_i < not_before {
        return Err(SvidError::NotYetValid {
            not_before,
            now: now_s,
        });
    }
    if now_i > not_after {
        return Err(SvidError::Expired {
            not_after,
            now: now_s,
        });
    }
    Ok(())
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    id: &SpiffeId,
    bundle: &TrustBundle,
    now: UnixTime,
    role: PeerRole,
) -> Result<(), SvidError> {
    let domain = id.trust_domain_str();
    let anchors = bundle
        .anchors(domain)
        .ok_or_else(|| SvidError::UnknownTrustDomain(domain.to_owned()))?;
    let chain_err = |reason: String| SvidError::Chain {
        domain: domain.to_owned(),
        reason,
    };
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| chain_err(webpki_reason(&e)))?;
    let usage = match role {
        PeerRole::Client => webpki::KeyUsage::client_auth(),
        PeerRole::Server => webpki::KeyUsage::server_auth(),
    };
    ee.verify_for_usage(SIG_ALGS, anchors, intermediates, now, usage, None, None)
        .map(|_| ())
        .map_err(|e| chain_err(webpki_reason(&e)))
}

/// Signature algorithms accepted in chains: the ring provider's webpki set.
static SIG_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] =
    webpki::ALL_VERIFICATION_ALGS;

fn webpki_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "issuer is not a root of this trust domain".into(),
        webpki::Error::InvalidSignatureForPublicKey => "signature does not verify".into(),
        webpki::Error::CertExpired { .. } => "a certificate in the chain has expired".into(),
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate in the chain is not yet valid".into()
        }
        other => format!("{other:?}"),
    }
}

impl fmt::Display for SvidRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}
