//! Access logs: one JSON line per connection on stdout. The data path hands a record to a
//! bounded queue and never waits; if the writer falls behind, records are dropped and counted.
//!
//! The writer wakes every [`BATCH_INTERVAL`] and writes everything queued with one flush, so
//! logging costs no thread wake-up (and no write syscall) per connection: at thousands of
//! connections per second those wake-ups, not the formatting, were the expensive part.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// How long a record may wait in the queue before it is written.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Queue capacity: at 20 ms batches, room for ~400 000 connections per second.
const QUEUE: usize = 8192;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub direction: &'static str,
    pub src_identity: Option<String>,
    pub src: String,
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_identity: Option<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub reason: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub duration_ms: u64,
}

impl Record {
    /// A record that so far says "denied, for no stated reason"; callers fill in the rest.
    pub fn new(direction: &'static str, src: String, dst: String) -> Self {
        Self {
            direction,
            src_identity: None,
            src,
            dst,
            dst_workload: None,
            dst_identity: None,
            decision: "deny",
            policy: None,
            reason: String::new(),
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0,
        }
    }
}

/// The access log of the process: a [`LogHandle`] every task can clone.
pub struct AccessLog(LogHandle);

/// A cheap handle to the access log, for records written after the task that started them
/// has moved on (an HTTP request's line is written when its response body ends).
#[derive(Clone)]
pub struct LogHandle {
    /// `None`: access logging is off (`--access-log off`).
    tx: Option<mpsc::Sender<Record>>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl LogHandle {
    /// Queues `rec` without waiting; if the writer has fallen behind, drops and counts it.
    pub fn log(&self, rec: Record) {
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl AccessLog {
    /// Starts the writer task.
    pub fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            loop {
                // Blocks only while the queue is empty; then takes whatever else arrived
                // within one batch interval.
                let Some(first) = rx.blocking_recv() else {
                    return;
                };
                std::thread::sleep(BATCH_INTERVAL);
                let mut next = Some(first);
                while let Some(rec) = next {
                    write_line(&mut out, &rec);
                    next = rx.try_recv().ok();
                }
                let _ = out.flush();
            }
        });
        Self::with(Some(tx))
    }

    /// Access logging off: records are discarded (and not counted as dropped).
    pub fn off() -> Self {
        Self::with(None)
    }

    fn with(tx: Option<mpsc::Sender<Record>>) -> Self {
        Self(LogHandle {
            tx,
            dropped: std::sync::Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn handle(&self) -> LogHandle {
        self.0.clone()
    }

    pub fn log(&self, rec: Record) {
        self.0.log(rec);
    }

    /// Records dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

fn write_line(out: &mut impl Write, rec: &Record) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        ts: String,
        kind: &'static str,
        #[serde(flatten)]
        rec: &'a Record,
    }
    let line = Line {
        ts: jiff::Timestamp::now().to_string(),
        kind: "ward.access",
        rec,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
