//! Socket options the proxy needs: the mark that exempts its own traffic from interception,
//! the original destination of a redirected connection, and transparent (`IP_TRANSPARENT`)
//! connections that carry the client's own address to the workload. All go through
//! `socket2`, so this module needs no `unsafe` (the crate's one exception is [`crate::memory`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

/// The mark on every socket the proxy opens (1337): redirection rules return early for it.
pub const PROXY_MARK: u32 = 0x539;

/// The destination a redirected connection from `peer` was originally sent to, asked in the
/// peer's family (IPv4 and IPv6 connections arrive on separate, single-family listeners, so
/// the accepted peer address says which — no `getsockname` per connection).
pub fn original_dst(stream: &TcpStream, peer: SocketAddr) -> std::io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let orig = if peer.is_ipv6() {
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
    connect_as(addr, None, timeout).await
}

/// [`connect`], from the client's own address `source` when given: the socket is transparent
/// (`IP_TRANSPARENT`, needs CAP_NET_ADMIN) and bound to `source` (port chosen by the kernel),
/// so the workload sees its caller as it would without a mesh. The replies come back to this
/// socket through the node's return route ([`crate::redirect`]: connection mark → local
/// delivery). `source` must be an address the caller owns — the callers pass only an
/// authenticated workload's address or the peer of a completed TCP handshake. Not used:
/// a `source` of the other family than `addr`, or equal to it (a pod calling itself through a
/// Service: a packet from its own address would be dropped as a martian). If the socket
/// cannot be made transparent (no CAP_NET_ADMIN), the connection is made from the node's
/// address instead, with one warning.
pub async fn connect_as(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
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
    if let Some(source) = source.filter(|s| s.is_ipv4() == addr.is_ipv4() && *s != addr.ip()) {
        // IP_TRANSPARENT at the IP level also applies to IPv6 sockets (one flag in the kernel).
        match socket.set_ip_transparent_v4(true) {
            Ok(()) => socket.bind(&SocketAddr::new(source, 0).into())?,
            Err(e) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot make transparent sockets (CAP_NET_ADMIN?): workloads see the node's address instead of their clients'");
                }
            }
        }
    }
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
