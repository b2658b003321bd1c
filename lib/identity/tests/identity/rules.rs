//! One certificate per SVID rule, each breaking only that rule.

use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use rustls_pki_types::CertificateDer;
use ward_lib_identity::svid::{check_leaf, verify_svid, verify_svid_expecting};
use ward_lib_identity::{PeerRole, SpiffeId, SvidError, SvidRule, TrustDomain};

use crate::certs::{now, Ca, Leaf, NOW_SECS};

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

type Tweak = fn(&mut Leaf);
type ErrPredicate = fn(&SvidError) -> bool;

#[test]
fn each_rule_broken_alone() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let cases: &[(&str, Tweak, Option<ErrPredicate>)] = &[
        ("good", |_| {}, None),
        ("no EKU at all is allowed", |l| l.ekus = None, None),
        (
            "no URI SAN",
            |l| l.uris.clear(),
            Some(|e| *e == SvidError::NoUriSan),
        ),
        (
            "two URI SANs",
            |l| {
                l.uris
                    .push("spiffe://cluster.local/ns/default/sa/other".into())
            },
            Some(|e| *e == SvidError::MultipleUriSans(2)),
        ),
        (
            "URI SAN that is not a SPIFFE ID",
            |l| l.uris = vec!["https://web.example/x".into()],
            Some(|e| matches!(e, SvidError::InvalidSpiffeId { .. })),
        ),
        (
            "URI SAN with a trailing slash",
            |l| l.uris = vec!["spiffe://cluster.local/ns/default/".into()],
            Some(|e| matches!(e, SvidError::InvalidSpiffeId { .. })),
        ),
        (
            "cA=true leaf",
            |l| l.ca = true,
            Some(|e| *e == SvidError::LeafIsCa),
        ),
        (
            "key usage missing",
            |l| l.key_usages = Some(vec![]),
            Some(|e| *e == SvidError::KeyUsageMissing),
        ),
        (
            "key usage not critical",
            |l| l.key_usage_non_critical = true,
            Some(|e| *e == SvidError::KeyUsageNotCritical),
        ),
        (
            "key usage without digitalSignature",
            |l| l.key_usages = Some(vec![Ku::KeyEncipherment]),
            Some(|e| *e == SvidError::KeyUsageNoDigitalSignature),
        ),
        (
            "key usage with keyCertSign",
            |l| l.key_usages = Some(vec![Ku::DigitalSignature, Ku::KeyCertSign]),
            Some(|e| *e == SvidError::KeyUsageCertSign),
        ),
        (
            "key usage with cRLSign",
            |l| l.key_usages = Some(vec![Ku::DigitalSignature, Ku::CrlSign]),
            Some(|e| *e == SvidError::KeyUsageCrlSign),
        ),
        (
            "EKU without clientAuth",
            |l| l.ekus = Some(vec![Eku::ServerAuth]),
            Some(|e| *e == SvidError::EkuNoClientAuth),
        ),
        (
            "EKU without serverAuth",
            |l| l.ekus = Some(vec![Eku::ClientAuth]),
            Some(|e| *e == SvidError::EkuNoServerAuth),
        ),
        (
            "expired",
            |l| {
                l.not_before = -7200;
                l.not_after = -1;
            },
            Some(|e| matches!(e, SvidError::Expired { now, .. } if *now == NOW_SECS)),
        ),
        (
            "not yet valid",
            |l| {
                l.not_before = 60;
                l.not_after = 7200;
            },
            Some(|e| matches!(e, SvidError::NotYetValid { now, .. } if *now == NOW_SECS)),
        ),
    ];
    for (name, tweak, want) in cases {
        let mut leaf = Leaf::good(ID);
        tweak(&mut leaf);
        let cert = ca.issue(&leaf);
        let got = verify_svid(
            std::slice::from_ref(&cert.der),
            &bundle,
            now(),
            PeerRole::Client,
        );
        match want {
            None => {
                let v = got.unwrap_or_else(|e| panic!("{name}: expected success, got {e}"));
                assert_eq!(v.id.as_str(), ID, "{name}");
            }
            Some(pred) => {
                let err = got.expect_err(name);
                assert!(pred(&err), "{name}: wrong error {err:?}");
                // The report used by `ward cert inspect` fails the same rule, and only that one.
                let report = check_leaf(std::slice::from_ref(&cert.der), Some(&bundle), now());
                let failed: Vec<SvidRule> = report
                    .iter()
                    .filter(|c| c.outcome.is_err())
                    .map(|c| c.rule)
                    .collect();
                let rule = err.rule();
                assert!(
                    failed.contains(&rule),
                    "{name}: report {failed:?} lacks {rule:?}"
                );
                // No other SVID rule fails. (The chain check may fail as well: webpki enforces
                // some of the same rules, e.g. validity and cA, while building the path.)
                let others: Vec<_> = failed
                    .iter()
                    .filter(|r| **r != rule && **r != SvidRule::Chain)
                    // Without one URI SAN there is no SPIFFE ID to evaluate either.
                    .filter(|r| !(rule == SvidRule::OneUriSan && **r == SvidRule::SpiffeId))
                    .collect();
                assert!(others.is_empty(), "{name}: report {failed:?}");
            }
        }
    }
}

#[test]
fn chain_rules() {
    let ca = Ca::root("root");
    let stranger = Ca::root("stranger");
    let bundle = ca.bundle("cluster.local");
    let good = ca.issue(&Leaf::good(ID));

    // Same trust-domain name, different root.
    let forged = stranger.issue(&Leaf::good(ID));
    let err = verify_svid(&[forged.der], &bundle, now(), PeerRole::Client).unwrap_err();
    assert!(
        matches!(&err, SvidError::Chain { domain, .. } if domain == "cluster.local"),
        "{err:?}"
    );
    assert!(err.to_string().contains("issuer is not a root"), "{err}");

    // An ID from a trust domain the bundle does not know, even if signed by a known root.
    let other_td = ca.issue(&Leaf::good("spiffe://other.org/ns/default/sa/web"));
    let err = verify_svid(
        std::slice::from_ref(&other_td.der),
        &bundle,
        now(),
        PeerRole::Client,
    )
    .unwrap_err();
    assert_eq!(err, SvidError::UnknownTrustDomain("other.org".into()));

    // The bundle knows other.org, but its root did not sign this certificate: the chain must
    // lead to the root of the domain the ID names, not to any root in the bundle.
    let mut both = bundle.clone();
    both.add_root(
        &TrustDomain::parse("other.org").unwrap(),
        stranger.der.clone(),
    )
    .unwrap();
    let err = verify_svid(&[other_td.der], &both, now(), PeerRole::Client).unwrap_err();
    assert!(matches!(err, SvidError::Chain { .. }), "{err:?}");

    // A tampered signature.
    let mut tampered = good.der.to_vec();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x55;
    let err = verify_svid(
        &[CertificateDer::from(tampered)],
        &bundle,
        now(),
        PeerRole::Client,
    )
    .unwrap_err();
    assert!(
        matches!(err, SvidError::Chain { .. } | SvidError::Malformed(_)),
        "{err:?}"
    );

    // Garbage and nothing.
    let err = verify_svid(
        &[CertificateDer::from(vec![1, 2, 3])],
        &bundle,
        now(),
        PeerRole::Client,
    )
    .unwrap_err();
    assert!(matches!(err, SvidError::Malformed(_)), "{err:?}");
    assert_eq!(
        verify_svid(&[], &bundle, now(), PeerRole::Client).unwrap_err(),
        SvidError::EmptyChain
    );
}

#[test]
fn intermediates() {
    let root = Ca::root("root");
    let inter = root.intermediate("intermediate");
    let bundle = root.bundle("cluster.local");
    let leaf = inter.issue(&Leaf::good(ID));
    let v = verify_svid(
        &[leaf.der.clone(), inter.der.clone()],
        &bundle,
        now(),
        PeerRole::Server,
    )
    .unwrap();
    assert_eq!(v.id.as_str(), ID);
    let err = verify_svid(&[leaf.der], &bundle, now(), PeerRole::Server).unwrap_err();
    assert!(matches!(err, SvidError::Chain { .. }), "{err:?}");
}

#[test]
fn bundle_with_two_roots_accepts_either() {
    let old = Ca::root("old");
    let new = Ca::root("new");
    let td = TrustDomain::parse("cluster.local").unwrap();
    let mut bundle = old.bundle("cluster.local");
    bundle.add_root(&td, new.der.clone()).unwrap();
    assert_eq!(bundle.roots("cluster.local").unwrap().len(), 2);
    for ca in [&old, &new] {
        let c = ca.issue(&Leaf::good(ID));
        verify_svid(&[c.der], &bundle, now(), PeerRole::Client).unwrap();
    }
    // Removing the old root (last step of a rotation) rejects what it signed.
    assert!(bundle.remove_root(&td, &old.der));
    let c = old.issue(&Leaf::good(ID));
    assert!(matches!(
        verify_svid(&[c.der], &bundle, now(), PeerRole::Client),
        Err(SvidError::Chain { .. })
    ));
}

#[test]
fn expected_identity() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let c = ca.issue(&Leaf::good(ID));
    let want = SpiffeId::parse(ID).unwrap();
    verify_svid_expecting(
        std::slice::from_ref(&c.der),
        &bundle,
        now(),
        PeerRole::Server,
        &want,
    )
    .unwrap();
    let other = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/db").unwrap();
    let err =
        verify_svid_expecting(&[c.der], &bundle, now(), PeerRole::Server, &other).unwrap_err();
    assert!(matches!(err, SvidError::UnexpectedIdentity { .. }));
    assert!(err
        .to_string()
        .contains("expected spiffe://cluster.local/ns/default/sa/db"));
}

#[test]
fn bundle_rejects_non_ca_roots_and_bad_pem() {
    let ca = Ca::root("root");
    let leaf = ca.issue(&Leaf::good(ID));
    let td = TrustDomain::parse("cluster.local").unwrap();
    let mut b = ward_lib_identity::TrustBundle::new();
    let err = b.add_root(&td, leaf.der).unwrap_err();
    assert!(
        err.to_string().contains("not true; a root must be a CA"),
        "{err}"
    );
    assert!(b.add_pem(&td, "not pem").is_err());
    assert!(b.add_pem(&td, "").is_err());
    assert!(b.roots("cluster.local").is_none());
}
