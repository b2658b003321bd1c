//! A tiny certificate factory: a good SVID by default, with knobs that break one rule each.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;
use ward_lib_identity::{TrustBundle, TrustDomain};

/// The injected "now" of every test: 2026-11-23T00:00:00Z.
pub const NOW_SECS: u64 = 1_795_392_000;

pub fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW_SECS))
}

fn at(offset_secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(NOW_SECS as i64 + offset_secs).unwrap()
}

pub struct Ca {
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn issue(&self, leaf: &Leaf) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = leaf.params().signed_by(&key, &self.issuer).unwrap();
        Issued {
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    pub fn bundle(&self, td: &str) -> TrustBundle {
        let mut b = TrustBundle::new();
        b.add_root(&TrustDomain::parse(td).unwrap(), self.der.clone())
            .unwrap();
        b
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at(-86_400 * 30);
    p.not_after = at(86_400 * 365);
    p
}

pub struct Issued {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

/// A leaf description; `Leaf::good(id)` passes every rule.
#[derive(Clone)]
pub struct Leaf {
    pub uris: Vec<String>,
    pub ca: bool,
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
    pub key_usage_non_critical: bool,
    pub ekus: Option<Vec<ExtendedKeyUsagePurpose>>,
    pub not_before: i64,
    pub not_after: i64,
}

impl Leaf {
    pub fn good(id: &str) -> Leaf {
        Leaf {
            uris: vec![id.to_owned()],
            ca: false,
            key_usages: Some(vec![KeyUsagePurpose::DigitalSignature]),
            key_usage_non_critical: false,
            ekus: Some(vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]),
            not_before: -3600,
            not_after: 3600,
        }
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = self
            .uris
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .collect();
        if self.uris.is_empty() {
            p.subject_alt_names = vec![SanType::DnsName("web.example".try_into().unwrap())];
        }
        p.is_ca = if self.ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        if self.key_usage_non_critical {
            // keyUsage = BIT STRING { digitalSignature }, written by hand to control criticality.
            let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![3, 2, 7, 0x80]);
            ext.set_criticality(false);
            p.custom_extensions.push(ext);
        } else if let Some(ku) = &self.key_usages {
            p.key_usages = ku.clone();
        }
        if let Some(ekus) = &self.ekus {
            p.extended_key_usages = ekus.clone();
        }
        p.not_before = at(self.not_before);
        p.not_after = at(self.not_after);
        p
    }
}
