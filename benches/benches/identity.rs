//! Identity micro-benchmarks: what a handshake and an issuance cost in CPU.
//!
//! - `svid/verify`: one X509-SVID chain (leaf signed by the root) checked against the bundle —
//!   every rule plus the signature — as each side of an HBONE handshake does for its peer;
//! - `ca/verify-csr+sign`: the CA's work per issuance: CSR proof of possession, then signing;
//! - `tls/mtls-handshake`: a complete TLS 1.3 handshake with client certificates between ward's
//!   own client and server configurations (both sides' CPU, in memory — no sockets).
//!
//! DESIGN.md: a brand-new mTLS tunnel ≤ 0.45 ms CPU per side.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use ward_ca::authority::Authority;
use ward_ca::csr::verify_csr;
use ward_lib_api::ca_client::new_key_and_csr;
use ward_lib_identity::svid::{verify_svid, PeerRole};
use ward_lib_identity::tls::{self, SingleCert, SvidServerVerifier};
use ward_lib_identity::{bundle, SpiffeId, TrustDomain};

struct Fixture {
    ca: Authority,
    client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    server_id: SpiffeId,
    now: OffsetDateTime,
}

fn fixture() -> Fixture {
    let td = TrustDomain::parse("cluster.local").expect("trust domain");
    let now = OffsetDateTime::now_utc();
    let (ca, _) = Authority::init_root(&td, now, Duration::from_secs(86_400)).expect("root");
    let issue = |sa: &str| {
        let (key, csr) = new_key_and_csr().expect("csr");
        let id = SpiffeId::for_service_account(&td, "bench", sa).expect("id");
        let csr = verify_csr(&csr).expect("verified csr");
        let issued = ca
            .sign(&csr, &id, Duration::from_secs(3600), now)
            .expect("issued");
        (issued.chain, key)
    };
    let client = issue("client");
    let server = issue("server");
    Fixture {
        server_id: SpiffeId::for_service_account(&td, "bench", "server").expect("id"),
        ca,
        client,
        server,
        now,
    }
}

fn svid(c: &mut Criterion) {
    let f = fixture();
    let bundle = f.ca.bundle();
    let now = UnixTime::since_unix_epoch(Duration::from_secs(f.now.unix_timestamp() as u64 + 5));
    assert!(verify_svid(&f.client.0, &bundle, now, PeerRole::Client).is_ok());
    c.bench_function("svid/verify", |b| {
        b.iter(|| {
            verify_svid(
                std::hint::black_box(&f.client.0),
                &bundle,
                now,
                PeerRole::Client,
            )
        })
    });
    let (_, csr) = new_key_and_csr().expect("csr");
    let id = f.server_id.clone();
    c.bench_function("ca/verify-csr+sign", |b| {
        b.iter(|| {
            let v = verify_csr(std::hint::black_box(&csr)).expect("csr");
            f.ca.sign(&v, &id, Duration::from_secs(3600), f.now)
                .expect("sign")
        })
    });
    c.bench_function("ca/new-key+csr (proxy side)", |b| {
        b.iter(|| new_key_and_csr().expect("csr"))
    });
}

fn handshake(c: &mut Criterion) {
    let f = fixture();
    let provider = tls::provider();
    let shared = bundle::shared(f.ca.bundle());
    let server_key =
        tls::certified_key(f.server.0.clone(), f.server.1.clone_key(), &provider).expect("key");
    let client_key =
        tls::certified_key(f.client.0.clone(), f.client.1.clone_key(), &provider).expect("key");
    let server_cfg = Arc::new(
        tls::server_config(
            shared.clone(),
            Arc::new(SingleCert(server_key)),
            provider.clone(),
            Arc::new(rustls::time_provider::DefaultTimeProvider),
        )
        .expect("server config"),
    );
    let client_cfg = Arc::new(
        tls::client_config(
            SvidServerVerifier::expecting(shared, f.server_id.clone(), provider.clone()),
            Some(client_key),
            provider,
            Arc::new(rustls::time_provider::DefaultTimeProvider),
        )
        .expect("client config"),
    );
    let name = ServerName::try_from("bench.server.ward").expect("name");
    let run = || {
        let mut client =
            rustls::ClientConnection::new(client_cfg.clone(), name.clone()).expect("client");
        let mut server = rustls::ServerConnection::new(server_cfg.clone()).expect("server");
        let mut buf = Vec::with_capacity(16 * 1024);
        while client.is_handshaking() || server.is_handshaking() {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("client write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server read");
                server.process_new_packets().expect("server handshake");
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("server write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read");
                client.process_new_packets().expect("client handshake");
            }
        }
        assert!(server.peer_certificates().is_some());
    };
    run();
    c.bench_function("tls/mtls-handshake (both sides)", |b| b.iter(run));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = svid, handshake
}
criterion_main!(benches);
