//! HBONE stream setup in memory: ward's own `hbone` client and server over an in-process pipe
//! (`tokio::io::duplex`), so only protocol work is measured — no sockets, no kernel.
//!
//! - `hbone/open-stream (pooled connection)`: CONNECT → 200 on an established HTTP/2
//!   connection, what every new TCP connection through a pooled tunnel costs;
//! - `hbone/new-connection (mTLS + h2 + first stream)`: TLS 1.3 with client certificates,
//!   the HTTP/2 handshake and the first CONNECT, what a tunnel without pooling costs;
//! - `hbone/relay 1 MiB`: 1 MiB through an open tunnel (client → server), frames included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::StatusCode;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use ward_ca::authority::Authority;
use ward_ca::csr::verify_csr;
use ward_lib_api::ca_client::new_key_and_csr;
use ward_lib_identity::tls::{self, SingleCert, SvidServerVerifier};
use ward_lib_identity::{bundle, SpiffeId, TrustDomain};
use ward_proxy::hbone;

const TARGET: &str = "10.0.2.10:8080";

/// Answers every stream 200 and drains what it receives.
async fn server<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = hbone::serve(io, |req, respond| async move {
        let mut recv = req.into_body();
        if hbone::respond(respond, StatusCode::OK).is_some() {
            while let Some(Ok(d)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(d.len());
            }
        }
    })
    .await;
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn open_stream(c: &mut Criterion) {
    let rt = rt();
    let target: SocketAddr = TARGET.parse().expect("addr");
    let client = rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(server(b));
        let (client, driver) = hbone::client(a).await.expect("handshake");
        tokio::spawn(driver);
        client
    });
    c.bench_function("hbone/open-stream (pooled connection)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let t = client.open(target, target.ip()).await.expect("open");
                drop(t);
            })
        })
    });
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    c.bench_function("hbone/relay 1 MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut t = client.open(target, target.ip()).await.expect("open");
                for _ in 0..16 {
                    let mut part = chunk.clone();
                    while !part.is_empty() {
                        t.send.reserve_capacity(part.len());
                        let cap = loop {
                            let cap = t.send.capacity();
                            if cap > 0 {
                                break cap;
                            }
                            std::future::poll_fn(|cx| t.send.poll_capacity(cx))
                                .await
                                .expect("open stream")
                                .expect("capacity");
                        };
                        let n = cap.min(part.len());
                        t.send.send_data(part.split_to(n), false).expect("send");
                    }
                }
                t.send.send_data(Bytes::new(), true).expect("end");
            })
        })
    });
}

fn new_connection(c: &mut Criterion) {
    let td = TrustDomain::parse("cluster.local").expect("td");
    let now = OffsetDateTime::now_utc();
    let (ca, _) = Authority::init_root(&td, now, Duration::from_secs(86_400)).expect("root");
    let provider = tls::provider();
    let issue = |sa: &str| {
        let (key, csr) = new_key_and_csr().expect("csr");
        let id = SpiffeId::for_service_account(&td, "bench", sa).expect("id");
        let issued = ca
            .sign(
                &verify_csr(&csr).expect("csr"),
                &id,
                Duration::from_secs(3600),
                now,
            )
            .expect("sign");
        tls::certified_key(issued.chain, key, &provider).expect("key")
    };
    let shared = bundle::shared(ca.bundle());
    let mut server_cfg = tls::server_config(
        shared.clone(),
        Arc::new(SingleCert(issue("server"))),
        provider.clone(),
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .expect("server config");
    server_cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_id = SpiffeId::for_service_account(&td, "bench", "server").expect("id");
    let mut client_cfg = tls::client_config(
        SvidServerVerifier::expecting(shared, server_id, provider.clone()),
        Some(issue("client")),
        provider,
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .expect("client config");
    client_cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let name = ServerName::try_from("bench.server.ward").expect("name");
    let target: SocketAddr = TARGET.parse().expect("addr");
    let rt = rt();
    c.bench_function("hbone/new-connection (mTLS + h2 + first stream)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (a, s) = tokio::io::duplex(1 << 16);
                let acceptor = acceptor.clone();
                let srv = tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        server(tls).await;
                    }
                });
                let tls = connector.connect(name.clone(), a).await.expect("tls");
                let (client, driver) = hbone::client(tls).await.expect("h2");
                let drv = tokio::spawn(driver);
                let t = client.open(target, target.ip()).await.expect("open");
                drop((t, client));
                let _ = drv.await;
                let _ = srv.await;
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = open_stream, new_connection
}
criterion_main!(benches);
