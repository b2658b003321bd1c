//! HBONE over any byte stream (TLS between proxies; memory in benchmarks): HTTP/2 `CONNECT`
//! tunnels, on the `h2` crate directly.
//!
//! Why not hyper's upgrade: an upgraded hyper stream copies every write into a fresh heap
//! buffer and every read out of the frame it arrived in. Here a tunnel is the raw pair of h2
//! stream halves ([`Tunnel`]), so the relay hands the bytes it read from a socket to h2 as one
//! `Bytes` and writes received frames straight to the socket (see `relay.rs`).
//!
//! Settings (both roles): 4 MiB stream and 16 MiB connection windows (a bulk stream is never
//! window-bound on a LAN), 256 KiB frames, no server push, and a PING every 30 s that must be
//! answered within 10 s or the connection is dropped (so dead peers do not keep tunnels).
//!
//! This module decides nothing about identity or policy: callers authenticate the TLS peer and
//! authorize each stream.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};

pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME: u32 = 256 * 1024;
/// Data a stream may have queued for sending beyond what the peer's window admits.
const SEND_BUFFER: usize = 1024 * 1024;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent streams a server accepts per connection.
pub const SERVER_MAX_STREAMS: u32 = 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Both halves of one tunnel.
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("HTTP/2: {0}")]
    Http(#[from] h2::Error),
    #[error("refused with HTTP {0}")]
    Refused(StatusCode),
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
}

/// The client side of one HBONE connection; clones share it.
#[derive(Clone)]
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

/// Performs the HTTP/2 handshake as a client on `io`. Run the returned future (it drives the
/// connection, keep-alive included) until it ends; the connection is closed when it does.
pub async fn client<IO>(io: IO) -> Result<(Client, impl Future<Output = ()> + Send), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake::<IO, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping = conn.ping_pong();
    let flag = closed.clone();
    let driver = async move {
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(error = %e, "HBONE client connection ended");
            },
            why = keepalive(ping) => tracing::info!(%why, "HBONE client connection dropped"),
        }
        flag.store(true, Ordering::Relaxed);
    };
    Ok((Client { send, closed }, driver))
}

impl Client {
    /// The connection has ended (or its driver stopped); open no more tunnels on it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Opens a tunnel to `target`, telling the peer the original client address. Succeeds only
    /// once the peer answered 200, i.e. once its upstream connection is up.
    pub async fn open(&self, target: SocketAddr, client_ip: IpAddr) -> Result<Tunnel, OpenError> {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string())
            .header("forwarded", format!("for=\"{client_ip}\""))
            .body(())?;
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(req, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(OpenError::Refused(response.status()));
        }
        Ok(Tunnel {
            send: stream,
            recv: response.into_body(),
        })
    }
}

/// PINGs every [`KEEPALIVE_INTERVAL`]; resolves (with the reason) when the peer stops
/// answering, never otherwise.
async fn keepalive(ping: Option<h2::PingPong>) -> &'static str {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        if ping.send_ping(h2::Ping::opaque()).is_err() {
            return std::future::pending().await;
        }
        let pong = std::future::poll_fn(|cx| ping.poll_pong(cx));
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pong).await {
            Ok(Ok(_)) => {}
            // The connection ended: its driver reports that itself.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return "no PING answer within 10 s",
        }
    }
}

/// Serves HBONE on `io`: every accepted stream is handed to `handle` on a task of its own.
/// Returns when the peer closes the connection, it fails, or it stops answering PINGs.
pub async fn serve<IO, H, Fut>(io: IO, mut handle: H) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: FnMut(http::Request<RecvStream>, h2::server::SendResponse<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<IO, Bytes>(io)
        .await?;
    let ping = conn.ping_pong();
    let alive = keepalive(ping);
    tokio::pin!(alive);
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    tokio::spawn(handle(req, respond));
                }
                Some(Err(e)) => return Err(e),
                None => break,
            },
            why = &mut alive => {
                tracing::info!(%why, "HBONE server connection dropped");
                return Ok(());
            }
        }
    }
    std::future::poll_fn(|cx| conn.poll_closed(cx)).await
}

/// Answers a stream with `status`; for 200 the stream stays open and its send half is
/// returned.
pub fn respond(
    mut respond: h2::server::SendResponse<Bytes>,
    status: StatusCode,
) -> Option<SendStream<Bytes>> {
    let mut r = http::Response::new(());
    *r.status_mut() = status;
    let open = status == StatusCode::OK;
    match respond.send_response(r, !open) {
        Ok(s) if open => Some(s),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "answering a tunnel stream");
            None
        }
    }
}
