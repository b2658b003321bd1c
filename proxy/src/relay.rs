//! Byte splicing between two streams, bounded per connection (two 64 KiB buffers), ending on
//! EOF, error, a per-connection cancel (policy change) or the proxy's hard stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};

use crate::Ctx;

const BUF: usize = 64 * 1024;

/// How a relay ended.
pub struct Outcome {
    /// Bytes from `a` to `b`, and from `b` to `a`.
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub ended_by: &'static str,
}

/// Copies both ways until one side finishes, `cancel` fires, or the proxy stops.
pub async fn splice<A, B>(
    ctx: &Arc<Ctx>,
    mut a: A,
    mut b: B,
    cancel: Option<oneshot::Receiver<&'static str>>,
) -> Outcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    ctx.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(ctx.clone());
    let mut stop: watch::Receiver<bool> = ctx.hard_stop.subscribe();
    let cancelled = async {
        match cancel {
            Some(rx) => rx.await.unwrap_or("cancelled"),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF) => match r {
            Ok((x, y)) => Outcome { a_to_b: x, b_to_a: y, ended_by: "closed" },
            Err(_) => Outcome { a_to_b: 0, b_to_a: 0, ended_by: "error" },
        },
        why = cancelled => Outcome { a_to_b: 0, b_to_a: 0, ended_by: why },
        _ = crate::stopped(&mut stop) => Outcome { a_to_b: 0, b_to_a: 0, ended_by: "proxy stopping" },
    }
}

struct ActiveGuard(Arc<Ctx>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
