//! Garbage, oversized and slow clients get errors or time-outs; others keep being served.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use ward_lib_api::ca::IssueRequest;

use crate::harness::{start, Ca, Options};

async fn still_serves(ca: &Ca) {
    let mut c = ca.client(&ca.token("node-1"));
    c.issue("default", "web", None)
        .await
        .expect("a well-behaved client is served meanwhile");
}

/// Reads until EOF or error; returns how long that took.
async fn closed_within(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "server did not close the connection within {limit:?}"
    );
    start.elapsed()
}

#[tokio::test]
async fn garbage_bytes_are_dropped() {
    let ca = start(Options::default()).await;
    let mut s = TcpStream::connect(ca.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage")
        .await
        .unwrap();
    closed_within(s, Duration::from_secs(3)).await;
    still_serves(&ca).await;
}

#[tokio::test]
async fn stalled_handshakes_time_out_and_do_not_block_others() {
    let ca = start(Options::default()).await;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        stalled.push(TcpStream::connect(ca.addr).await.unwrap());
    }
    // A half-sent ClientHello.
    stalled[0]
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    still_serves(&ca).await;
    for s in stalled {
        // handshake_timeout is 500 ms in the harness.
        closed_within(s, Duration::from_secs(3)).await;
    }
    still_serves(&ca).await;
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let ca = start(Options::default()).await;
    let mut c = ca.client(&ca.token("node-1"));
    let status = c
        .issue_raw(IssueRequest {
            csr_der: vec![0x30; 200 * 1024],
            namespace: "default".into(),
            service_account: "web".into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // Huge metadata is refused by the HTTP/2 header-list limit.
    let mut big = ca.client(&"x".repeat(64 * 1024));
    let err = big.issue("default", "web", None).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    still_serves(&ca).await;
}

#[tokio::test]
async fn slow_request_body_gets_deadline_exceeded() {
    let ca = start(Options::default()).await;
    // A real TLS + HTTP/2 client that sends headers and half a gRPC frame, then stalls.
    let provider = ward_lib_identity::tls::provider();
    let verifier = ward_lib_identity::tls::SvidServerVerifier::expecting(
        ca.bundle.clone(),
        ca.ca_id.clone(),
        provider.clone(),
    );
    let mut cfg = ward_lib_identity::tls::client_config(
        verifier,
        None,
        provider,
        std::sync::Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(ca.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("ward-ca.invalid".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    // gRPC frame header announcing 100 bytes, then only 3 of them.
    tx.send(Ok(Frame::data(Bytes::from_static(&[
        0, 0, 0, 0, 100, 1, 2, 3,
    ]))))
    .await
    .unwrap();
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = http::Request::post("http://ward-ca/ward.ca.v1.CertificateService/Issue")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("server answers a stalled request within its time-out")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "DEADLINE_EXCEEDED"
    );
    drop(tx);
    still_serves(&ca).await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
