//! The HBONE server side after TLS: ward's HTTP/2 server settings and its CONNECT validation
//! (`ward_proxy::inbound::connect_target`) on arbitrary bytes from a peer. No panic, no hang;
//! a stream whose request is not CONNECT to an ip:port is refused.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (mut peer, server) = tokio::io::duplex(64 * 1024);
        let serve = ward_proxy::hbone::serve(server, |req, respond| async move {
            let status = match ward_proxy::inbound::connect_target(&req) {
                Ok(_) => http::StatusCode::OK,
                Err(r) => {
                    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
                    r.status
                }
            };
            let _ = ward_proxy::hbone::respond(respond, status);
        });
        let feed = async move {
            // Most inputs get past the connection preface; some test the preface itself.
            if data.first() != Some(&b'P') {
                let _ = peer.write_all(PREFACE).await;
            }
            let _ = peer.write_all(data).await;
            let _ = peer.shutdown().await;
            // Let the server read and answer before the peer goes away.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            drop(peer);
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(serve, feed) }).await;
    });
});
