//! Root and intermediate authorities, lifetime clamping, and directory round trips.

use std::time::Duration;

use rustls::pki_types::UnixTime;
use time::OffsetDateTime;
use ward_ca::authority::{self, Authority, AuthorityError, AuthorityPem};
use ward_ca::csr::verify_csr;
use ward_lib_api::ca_client::new_key_and_csr;
use ward_lib_identity::svid::{verify_svid, PeerRole};
use ward_lib_identity::{SpiffeId, TrustDomain};

const NOW: i64 = 1_795_392_000;

fn td() -> TrustDomain {
    TrustDomain::parse("cluster.local").unwrap()
}

fn id() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap()
}

fn at(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(s).unwrap()
}

fn csr() -> ward_ca::csr::VerifiedCsr {
    verify_csr(&new_key_and_csr().unwrap().1).unwrap()
}

#[test]
fn not_after_is_clamped_to_the_issuer() {
    let (ca, _) = Authority::init_root(&td(), at(NOW), Duration::from_secs(3600)).unwrap();
    let issued = ca
        .sign(&csr(), &id(), Duration::from_secs(86_400), at(NOW))
        .unwrap();
    assert_eq!(issued.not_after, NOW + 3600);
    // The requested TTL is also clamped to the configured maximum.
    let (ca, _) = Authority::init_root(&td(), at(NOW), Duration::from_secs(365 * 86_400)).unwrap();
    let ca = ca.with_max_ttl(Duration::from_secs(7200));
    let issued = ca
        .sign(&csr(), &id(), Duration::from_secs(86_400), at(NOW))
        .unwrap();
    assert_eq!(issued.not_after, NOW + 7200);
    // An expired issuer signs nothing.
    let err = ca
        .sign(
            &csr(),
            &id(),
            Duration::from_secs(60),
            at(NOW + 400 * 86_400),
        )
        .unwrap_err();
    assert!(matches!(err, AuthorityError::IssuerExpired(_)), "{err}");
}

#[test]
fn intermediate_signs_and_chain_verifies() {
    // A root made outside ward (e.g. an organisation's offline root) and an intermediate.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut rp = rcgen::CertificateParams::default();
    rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rp.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(rp, root_key);
    let int_key = rcgen::KeyPair::generate().unwrap();
    let mut ip = rcgen::CertificateParams::default();
    ip.distinguished_name = rcgen::DistinguishedName::new();
    ip.distinguished_name
        .push(rcgen::DnType::CommonName, "ward intermediate");
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ip.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    ip.not_after = at(NOW + 30 * 86_400);
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();
    let pem = AuthorityPem {
        trust_domain: "cluster.local".into(),
        root: root.pem(),
        cert: int.pem(),
        key: int_key.serialize_pem(),
        chain: String::new(),
    };
    let ca = Authority::from_pem(&pem).unwrap();
    let issued = ca
        .sign(&csr(), &id(), Duration::from_secs(3600), at(NOW))
        .unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf + intermediate");
    let now = UnixTime::since_unix_epoch(Duration::from_secs(NOW as u64));
    let v = verify_svid(&issued.chain, &ca.bundle(), now, PeerRole::Client).unwrap();
    assert_eq!(v.id, id());

    // Wrong key for the certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    let bad = AuthorityPem {
        key: other.serialize_pem(),
        ..pem.clone()
    };
    assert!(matches!(
        Authority::from_pem(&bad),
        Err(AuthorityError::KeyMismatch)
    ));
    // An intermediate that does not chain to the given root.
    let (_, stranger) = Authority::init_root(&td(), at(NOW), Duration::from_secs(3600)).unwrap();
    let unchained = AuthorityPem {
        root: stranger.root,
        ..pem.clone()
    };
    let err = Authority::from_pem(&unchained).unwrap_err();
    assert!(matches!(err, AuthorityError::Chain(_)), "{err}");
    // A leaf is not a signing certificate.
    let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", issued.chain[0].to_vec()));
    let not_ca = AuthorityPem {
        cert: leaf_pem,
        ..pem
    };
    let err = Authority::from_pem(&not_ca).unwrap_err();
    assert!(err.to_string().contains("cA is not true"), "{err}");
}

#[test]
fn directory_round_trip_and_no_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) = Authority::init_root(&td(), at(NOW), Duration::from_secs(3600)).unwrap();
    authority::write_dir(dir.path(), &pem).unwrap();
    let loaded = Authority::load_dir(dir.path()).unwrap();
    assert_eq!(loaded.trust_domain().as_str(), "cluster.local");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let err = authority::write_dir(dir.path(), &pem).unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    std::fs::remove_file(dir.path().join("root.pem")).unwrap();
    let err = Authority::load_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("root.pem"), "{err}");
}
