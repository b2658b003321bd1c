//! Per-connection memory is bounded: the futures that hold a connection's state have a fixed,
//! asserted size (relay buffers are two 64 KiB heap buffers on top). A change that grows them
//! has to change these numbers deliberately.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{accesslog, certs, conns, hbone, inbound, outbound, pool, relay, state, Ctx};

/// Upper bound for any per-connection task future, in bytes.
const MAX_CONNECTION_FUTURE: usize = 2 * 1024;

async fn ctx() -> Arc<Ctx> {
    let state = state::State::new("node-1".into());
    let certs = certs::CertManager::new(
        certs::CaSettings {
            address: "127.0.0.1:1".parse().unwrap(),
            identity: "ward-system/ward-ca".into(),
            token_file: "/nonexistent".into(),
            ttl: None,
        },
        state.clone(),
    );
    Arc::new(Ctx {
        pool: pool::Pool::new(state.clone(), certs.clone(), true),
        state,
        certs,
        conns: Arc::new(conns::Registry::default()),
        log: accesslog::AccessLog::start(),
        metrics: crate::metrics::Metrics::new(),
        active: AtomicUsize::new(0),
        draining: std::sync::atomic::AtomicBool::new(false),
        l7: crate::l7::L7::default(),
        hbone_tls: std::sync::Mutex::new(None),
        hard_stop: watch::channel(false).0,
        transparent: std::sync::atomic::AtomicBool::new(false),
    })
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// A tunnel over an in-memory HBONE connection whose server accepts every stream.
async fn in_memory_tunnel() -> hbone::Tunnel {
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(hbone::serve(b, |_req, respond| async move {
        let _open = hbone::respond(respond, http::StatusCode::OK);
        std::future::pending::<()>().await;
    }));
    let (client, driver) = hbone::client(a).await.unwrap();
    tokio::spawn(driver);
    let target = "10.0.0.1:80".parse().unwrap();
    client.open(target, target.ip()).await.unwrap()
}

/// The size of the future that serves one inbound HBONE stream, measured on a real stream.
async fn hbone_stream_future_size(ctx: &Arc<Ctx>) -> usize {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server_ctx = ctx.clone();
    tokio::spawn(hbone::serve(b, move |req, respond| {
        let td = ward_lib_identity::TrustDomain::parse("cluster.local").unwrap();
        let id = Arc::new(ward_lib_identity::SpiffeId::for_service_account(&td, "a", "b").unwrap());
        let peer = Arc::new(ward_lib_policy::PeerIdentity::from_spiffe_id(&id));
        let fut = inbound::connect_stream(
            server_ctx.clone(),
            req,
            respond,
            peer,
            id.clone(),
            id,
            "10.0.0.2:1".parse().unwrap(),
        );
        let _ = tx.send(std::mem::size_of_val(&fut));
        fut
    }));
    let (client, driver) = hbone::client(a).await.unwrap();
    tokio::spawn(driver);
    let target = "10.0.0.1:80".parse().unwrap();
    let _ = client.open(target, target.ip()).await;
    rx.recv().await.unwrap()
}

#[tokio::test]
async fn per_connection_futures_are_small() {
    let ctx = ctx().await;
    let (a, b) = pair().await;
    let peer = a.local_addr().unwrap();
    let sizes = [
        (
            "outbound",
            std::mem::size_of_val(&outbound::connection(ctx.clone(), a, peer)),
        ),
        (
            "inbound plaintext",
            std::mem::size_of_val(&inbound::plaintext_connection(ctx.clone(), b, peer)),
        ),
    ];
    let (c, d) = pair().await;
    let (e, f) = pair().await;
    let splice = relay::splice(&ctx, c, e, None);
    let relay_size = std::mem::size_of_val(&splice);
    drop(splice);
    drop((d, f));
    let (tcp, _other) = pair().await;
    let tunnel = in_memory_tunnel().await;
    let hbone_stream = hbone_stream_future_size(&ctx).await;
    let splice = relay::splice_tunnel(&ctx, tcp, tunnel, None);
    let tunnel_relay_size = std::mem::size_of_val(&splice);
    drop(splice);
    for (name, size) in sizes.into_iter().chain([
        ("relay", relay_size),
        ("tunnel relay", tunnel_relay_size),
        ("HBONE stream", hbone_stream),
    ]) {
        assert!(
            size <= MAX_CONNECTION_FUTURE,
            "{name} connection future is {size} bytes (limit {MAX_CONNECTION_FUTURE})"
        );
        eprintln!("{name}: {size} bytes");
    }
}
