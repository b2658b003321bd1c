//! Socket options the proxy needs: the mark that exempts its own traffic from interception,
//! and the original destination of a redirected connection. Both go through `socket2`, so
//! this crate needs no `unsafe`.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

/// The mark on every socket the proxy opens (1337): redirection rules return early for it.
pub const PROXY_MARK: u32 = 0x539;

/// The destination a redirected connection was originally sent to (asked in the socket's own
/// family: IPv4 and IPv6 connections arrive on separate listeners).
pub fn original_dst(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let orig = if stream.local_addr()?.is_ipv6() {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    orig.and_then(|a| {
        a.as_socket()
            .ok_or_else(|| std::io::Error::other("original destination is not an inet address"))
    })
}

/// Connects with the proxy's mark set and Nagle off, within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    // Non-blocking from creation: saves two fcntl calls per connection.
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // Marking needs CAP_NET_ADMIN; without it (tests outside a namespace) carry on unmarked.
    if let Err(e) = socket.set_mark(PROXY_MARK) {
        tracing::trace!(error = %e, "SO_MARK not set");
    }
    socket.set_tcp_nodelay(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })?
}
