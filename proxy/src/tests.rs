//! Per-connection memory is bounded: the futures that hold a connection's state have a fixed,
//! asserted size (relay buffers are two 64 KiB heap buffers on top). A change that grows them
//! has to change these numbers deliberately.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{accesslog, certs, conns, inbound, outbound, pool, relay, state, Ctx};

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
        active: AtomicUsize::new(0),
        draining: std::sync::atomic::AtomicBool::new(false),
        l7: crate::l7::L7::default(),
        hbone_tls: std::sync::Mutex::new(None),
        hard_stop: watch::channel(false).0,
    })
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
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
    for (name, size) in sizes.into_iter().chain([("relay", relay_size)]) {
        assert!(
            size <= MAX_CONNECTION_FUTURE,
            "{name} connection future is {size} bytes (limit {MAX_CONNECTION_FUTURE})"
        );
        eprintln!("{name}: {size} bytes");
    }
}
