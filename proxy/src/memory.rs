//! Giving freed memory back to the kernel after a load.
//!
//! mimalloc keeps the pages a burst of connections freed (10 000 idle connections closing left
//! 46–62 MiB resident) until later allocations on the same thread purge them; a node proxy that
//! is quiet after a burst would hold that memory indefinitely. So every 10 s (the proxy's
//! sweeper) [`request_give_back`] bumps an epoch, and each runtime worker, the next time it
//! parks (goes idle), sees the new epoch and runs `mi_collect` on its own heap
//! ([`on_thread_park`]): mimalloc heaps are per thread, so only the owning thread can purge
//! one, and an idle moment is when purging costs the data path nothing. The price is that the
//! next burst faults its pages in again, at most once per 10 s.
//!
//! The one `unsafe` call of the proxy lives here (the crate denies it everywhere else).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped by [`request_give_back`]; a worker collects when it has not seen the current value.
static EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Asks every runtime worker to give its freed memory back when it next goes idle.
pub fn request_give_back() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// The runtime's `on_thread_park` hook: one atomic load when nothing was requested.
pub fn on_thread_park() {
    let epoch = EPOCH.load(Ordering::Relaxed);
    if SEEN.with(|s| s.replace(epoch)) != epoch {
        give_back_now();
    }
}

/// Returns this thread's free mimalloc pages (and abandoned segments) to the kernel.
pub fn give_back_now() {
    // SAFETY: `mi_collect` takes no pointers and touches only mimalloc's own bookkeeping; it is
    // documented as callable from any thread at any time. When mimalloc is not the global
    // allocator (tests, benches in process) it finds nothing to collect.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_makes_the_next_park_collect_once() {
        let before = SEEN.with(Cell::get);
        request_give_back();
        on_thread_park();
        let seen = SEEN.with(Cell::get);
        assert_ne!(seen, before);
        assert_eq!(seen, EPOCH.load(Ordering::Relaxed));
        // Nothing new requested: a park leaves the epoch seen as it was.
        on_thread_park();
        assert_eq!(SEEN.with(Cell::get), seen);
    }
}
