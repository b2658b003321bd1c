//! Real TLS 1.3 handshakes (in memory) between rustls peers presenting generated SVIDs.

use std::sync::Arc;

use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use ward_lib_identity::bundle::shared;
use ward_lib_identity::tls::{self, SingleCert, SvidServerVerifier};
use ward_lib_identity::{SpiffeId, SvidError, TrustBundle};

use crate::certs::{now, Ca, Issued, Leaf};

const CLIENT: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/b/sa/server";

#[derive(Debug)]
struct FixedClock;

impl rustls::time_provider::TimeProvider for FixedClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(now())
    }
}

type ErrPredicate = fn(&SvidError) -> bool;

struct Outcome {
    client: Result<Option<SpiffeId>, rustls::Error>,
    server: Result<Option<SpiffeId>, rustls::Error>,
    /// The key-exchange group the server negotiated.
    group: Option<rustls::NamedGroup>,
}

async fn handshake(
    bundle: &TrustBundle,
    client_cert: Option<&Issued>,
    server_cert: &Issued,
    expect: &str,
) -> Outcome {
    handshake_offering(bundle, client_cert, server_cert, expect, None).await
}

/// [`handshake`] with a client offering only `client_groups` (a peer without ward's groups).
async fn handshake_offering(
    bundle: &TrustBundle,
    client_cert: Option<&Issued>,
    server_cert: &Issued,
    expect: &str,
    client_groups: Option<Vec<&'static dyn rustls::crypto::SupportedKxGroup>>,
) -> Outcome {
    let provider = tls::provider();
    let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(FixedClock);
    let bundle = shared(bundle.clone());
    let server_key = tls::certified_key(
        vec![server_cert.der.clone()],
        server_cert.key.clone_key(),
        &provider,
    )
    .unwrap();
    let server_cfg = tls::server_config(
        bundle.clone(),
        Arc::new(SingleCert(server_key)),
        provider.clone(),
        time.clone(),
    )
    .unwrap();
    let client_key = client_cert
        .map(|c| tls::certified_key(vec![c.der.clone()], c.key.clone_key(), &provider).unwrap());
    let verifier =
        SvidServerVerifier::expecting(bundle, SpiffeId::parse(expect).unwrap(), provider.clone());
    let client_provider = match client_groups {
        Some(groups) => Arc::new(rustls::crypto::CryptoProvider {
            kx_groups: groups,
            ..(*provider).clone()
        }),
        None => provider,
    };
    let client_cfg = tls::client_config(verifier, client_key, client_provider, time).unwrap();

    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server_cfg));
    let connector = TlsConnector::from(Arc::new(client_cfg));
    let server = tokio::spawn(async move {
        let mut s = acceptor.accept(b).await.map_err(unwrap_io)?;
        let id = tls::peer_identity(s.get_ref().1);
        let group = s
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf).await;
        let _ = s.write_all(b"pong").await;
        Ok((id, group))
    });
    let name = ServerName::try_from("ignored.invalid").unwrap();
    let client = async {
        let mut s = connector.connect(name, a).await.map_err(unwrap_io)?;
        let id = tls::peer_identity(s.get_ref().1);
        s.write_all(b"ping").await.map_err(unwrap_io)?;
        let mut buf = [0u8; 4];
        // In TLS 1.3 the client learns of a rejected client certificate on its first read.
        s.read_exact(&mut buf).await.map_err(unwrap_io)?;
        Ok(id)
    }
    .await;
    let (server, group) = match server.await.unwrap() {
        Ok((id, group)) => (Ok(id), group),
        Err(e) => (Err(e), None),
    };
    Outcome {
        client,
        server,
        group,
    }
}

fn unwrap_io(e: std::io::Error) -> rustls::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls_err) => tls_err.clone(),
        None => rustls::Error::General(e.to_string()),
    }
}

fn svid_err(r: &Result<Option<SpiffeId>, rustls::Error>) -> Option<SvidError> {
    r.as_ref().err().and_then(|e| tls::svid_error(e).cloned())
}

#[tokio::test]
async fn mutual_success_sees_both_ids() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let c = ca.issue(&Leaf::good(CLIENT));
    let s = ca.issue(&Leaf::good(SERVER));
    let out = handshake(&bundle, Some(&c), &s, SERVER).await;
    assert_eq!(out.client.unwrap().unwrap().as_str(), SERVER);
    assert_eq!(out.server.unwrap().unwrap().as_str(), CLIENT);
}

/// Between ward peers the hybrid post-quantum group is chosen; a peer that offers only X25519
/// (an older Envoy, say) is still served, with X25519.
#[tokio::test]
async fn ward_peers_agree_on_x25519mlkem768_and_x25519_only_peers_still_connect() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let client = ca.issue(&Leaf::good(CLIENT));
    let server = ca.issue(&Leaf::good(SERVER));
    let both = handshake(&bundle, Some(&client), &server, SERVER).await;
    assert_eq!(both.server.unwrap().unwrap().as_str(), CLIENT);
    assert_eq!(both.group, Some(rustls::NamedGroup::X25519MLKEM768));
    let classic = handshake_offering(
        &bundle,
        Some(&client),
        &server,
        SERVER,
        Some(vec![rustls::crypto::aws_lc_rs::kx_group::X25519]),
    )
    .await;
    assert_eq!(classic.client.unwrap().unwrap().as_str(), SERVER);
    assert_eq!(classic.group, Some(rustls::NamedGroup::X25519));
}

#[tokio::test]
async fn server_with_wrong_identity_is_refused_by_client() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let c = ca.issue(&Leaf::good(CLIENT));
    let s = ca.issue(&Leaf::good("spiffe://cluster.local/ns/b/sa/impostor"));
    let out = handshake(&bundle, Some(&c), &s, SERVER).await;
    assert!(
        matches!(
            svid_err(&out.client),
            Some(SvidError::UnexpectedIdentity { .. })
        ),
        "{:?}",
        out.client.err()
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let s = ca.issue(&Leaf::good(SERVER));
    let out = handshake(&bundle, None, &s, SERVER).await;
    assert_eq!(
        out.server.unwrap_err(),
        rustls::Error::NoCertificatesPresented
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn bad_client_certificates_are_refused_with_the_rule() {
    let ca = Ca::root("root");
    let stranger = Ca::root("stranger");
    let bundle = ca.bundle("cluster.local");
    let s = ca.issue(&Leaf::good(SERVER));
    let mut expired = Leaf::good(CLIENT);
    expired.not_before = -7200;
    expired.not_after = -60;
    let mut leaf_ca = Leaf::good(CLIENT);
    leaf_ca.ca = true;
    let cases: Vec<(&str, Issued, ErrPredicate)> = vec![
        ("expired", ca.issue(&expired), |e| {
            matches!(e, SvidError::Expired { .. })
        }),
        ("cA leaf", ca.issue(&leaf_ca), |e| *e == SvidError::LeafIsCa),
        ("unknown root", stranger.issue(&Leaf::good(CLIENT)), |e| {
            matches!(e, SvidError::Chain { .. })
        }),
        (
            "other trust domain",
            ca.issue(&Leaf::good("spiffe://other.org/ns/a/sa/client")),
            |e| matches!(e, SvidError::UnknownTrustDomain(_)),
        ),
    ];
    for (name, cert, pred) in cases {
        let out = handshake(&bundle, Some(&cert), &s, SERVER).await;
        let err = svid_err(&out.server).unwrap_or_else(|| panic!("{name}: {:?}", out.server));
        assert!(pred(&err), "{name}: {err:?}");
        assert!(out.client.is_err(), "{name}: client must see the refusal");
    }
}

#[tokio::test]
async fn bad_server_certificates_are_refused_with_the_rule() {
    let ca = Ca::root("root");
    let bundle = ca.bundle("cluster.local");
    let c = ca.issue(&Leaf::good(CLIENT));
    let mut no_client_auth = Leaf::good(SERVER);
    no_client_auth.ekus = Some(vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]);
    let cert = ca.issue(&no_client_auth);
    let out = handshake(&bundle, Some(&c), &cert, SERVER).await;
    assert_eq!(svid_err(&out.client), Some(SvidError::EkuNoClientAuth));
}

#[tokio::test]
async fn bundle_swap_applies_to_next_handshake() {
    let old = Ca::root("old");
    let new = Ca::root("new");
    let shared_bundle = shared(old.bundle("cluster.local"));
    let provider = tls::provider();
    let verifier = tls::SvidClientVerifier::new(shared_bundle.clone(), provider);
    let cert = new.issue(&Leaf::good(CLIENT));
    use rustls::server::danger::ClientCertVerifier;
    assert!(verifier.verify_client_cert(&cert.der, &[], now()).is_err());
    shared_bundle.store(Arc::new(new.bundle("cluster.local")));
    assert!(verifier.verify_client_cert(&cert.der, &[], now()).is_ok());
}
