//! X509-SVID verification on arbitrary DER, and on mutations of a valid chain: no panic, and
//! no mutation of a valid certificate ever verifies as another identity.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, UnixTime};
use ward_lib_identity::svid::{verify_svid, PeerRole};
use ward_lib_identity::{SpiffeId, TrustBundle, TrustDomain};

struct Fixture {
    bundle: TrustBundle,
    chain: Vec<CertificateDer<'static>>,
    id: SpiffeId,
    now: UnixTime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let (authority, _) = ward_ca::authority::Authority::init_root(
            &td,
            now,
            std::time::Duration::from_secs(365 * 86_400),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let csr = ward_ca::csr::verify_csr(csr.der()).unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        let issued = authority
            .sign(&csr, &id, std::time::Duration::from_secs(3600), now)
            .unwrap();
        Fixture {
            bundle: authority.bundle(),
            chain: issued.chain,
            id,
            now: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_060)),
        }
    })
}

fn check(f: &Fixture, chain: &[CertificateDer<'_>]) {
    for role in [PeerRole::Client, PeerRole::Server] {
        if let Ok(v) = verify_svid(chain, &f.bundle, f.now, role) {
            assert_eq!(v.id, f.id, "a chain verified as another identity");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // Arbitrary DER as the leaf.
        0 => check(f, &[CertificateDer::from(rest.to_vec())]),
        // Arbitrary DER as leaf and intermediate, split where the next two bytes say.
        1 if rest.len() >= 2 => {
            let at = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % rest.len();
            let (a, b) = rest[2..].split_at(at.saturating_sub(2).min(rest.len() - 2));
            check(
                f,
                &[
                    CertificateDer::from(a.to_vec()),
                    CertificateDer::from(b.to_vec()),
                ],
            );
        }
        // The valid leaf with bytes flipped: (position, xor) pairs.
        _ => {
            let mut leaf = f.chain[0].to_vec();
            for pair in rest.chunks_exact(3) {
                let pos = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % leaf.len();
                leaf[pos] ^= pair[2];
            }
            let mut chain = vec![CertificateDer::from(leaf)];
            chain.extend(f.chain[1..].iter().cloned());
            check(f, &chain);
        }
    }
});
