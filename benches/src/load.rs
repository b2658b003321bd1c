//! Load generators, run inside the client pod's network namespace (the harness re-executes
//! itself there: `ward-benches __load …`), printing one JSON result on stdout.
//!
//! - `http-rate`: HTTP/1.1 over keep-alive connections at a fixed total rate (open loop).
//!   Latency is counted from the moment a request *should* have been sent when the connection
//!   was still busy with an earlier one (so a slow proxy cannot hide queueing — "coordinated
//!   omission"), and from the actual send otherwise (so the generator's own timer slack is not
//!   blamed on the path under test).
//! - `conn-rate`: closed loop; each worker opens a TCP connection, sends one request with
//!   `Connection: close`, reads the response to EOF, and starts over: new connections per
//!   second.
//!
//! Blocking sockets on plain threads: a handful of connections, precise `nanosleep` pacing,
//! and no runtime between the clock and the socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Latency summary in microseconds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    fn of(mut ns: Vec<u64>) -> Option<Self> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let q = |p: f64| {
            let i = ((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1;
            ns[i] as f64 / 1e3
        };
        Some(Self {
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: ns[ns.len() - 1] as f64 / 1e3,
        })
    }
}

/// What a load run reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    /// Completed requests (or connections) in the measured window.
    pub completed: u64,
    /// Failed requests or connections (any error or non-200 status).
    pub errors: u64,
    /// Completed per second.
    pub rate: f64,
    pub latency: Option<Latency>,
}

/// Entry point of `ward-benches __load <kind> <addr> <rate|workers> <conns> <secs>`.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize, what: &str| {
        args.get(i)
            .ok_or_else(|| anyhow::anyhow!("__load: missing {what}"))
    };
    let addr: SocketAddr = arg(1, "address")?.parse()?;
    let secs: f64 = arg(4, "seconds")?.parse()?;
    let window = Duration::from_secs_f64(secs);
    let result = match arg(0, "kind")?.as_str() {
        "http-rate" => http_rate(
            addr,
            arg(2, "rate")?.parse()?,
            arg(3, "connections")?.parse()?,
            window,
        )?,
        "conn-rate" => conn_rate(addr, arg(2, "workers")?.parse()?, window)?,
        other => anyhow::bail!("__load: unknown kind {other:?}"),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

const WARMUP: Duration = Duration::from_secs(1);

fn request(addr: SocketAddr, close: bool) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ward-benches\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Reads one response; true if its status is 200.
fn read_response(r: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<bool> {
    line.clear();
    if r.read_line(line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let ok = line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200");
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(line)?;
            let n = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut skip = vec![0; n + 2];
            r.read_exact(&mut skip)?;
            if n == 0 {
                break;
            }
        }
    } else {
        std::io::copy(&mut r.by_ref().take(length as u64), &mut std::io::sink())?;
    }
    Ok(ok)
}

fn connect(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(BufReader::with_capacity(16 * 1024, s))
}

/// Fixed total `rate` over `conns` keep-alive connections for `window` (after a warm-up).
pub fn http_rate(
    addr: SocketAddr,
    rate: f64,
    conns: usize,
    window: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(rate > 0.0 && conns > 0, "rate and connections must be > 0");
    let start = Instant::now() + Duration::from_millis(200);
    let measure_from = start + WARMUP;
    let end = measure_from + window;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    // Diagnostics: `WARD_LOAD_SLOW_US=N` prints every request slower than N µs to stderr.
    let slow_us: Option<u64> = std::env::var("WARD_LOAD_SLOW_US")
        .ok()
        .and_then(|v| v.parse().ok());
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let offset = Duration::from_secs_f64(i as f64 / rate);
            std::thread::spawn(move || -> (Vec<u64>, u64) {
                let req = request(addr, false);
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut line = String::new();
                let mut conn = connect(addr).ok();
                let mut prev_done = Instant::now();
                let mut k = 0u32;
                loop {
                    let intended = start + offset + interval * k;
                    k += 1;
                    if intended >= end {
                        break;
                    }
                    let now = Instant::now();
                    if intended > now {
                        std::thread::sleep(intended - now);
                    }
                    // Behind schedule because the previous response was late: count from the
                    // intended time; on schedule: from the actual send.
                    let from = if prev_done > intended {
                        intended
                    } else {
                        Instant::now()
                    };
                    let ok = match conn.as_mut() {
                        Some(c) => c
                            .get_mut()
                            .write_all(&req)
                            .and_then(|()| read_response(c, &mut line)),
                        None => Err(std::io::ErrorKind::NotConnected.into()),
                    };
                    prev_done = Instant::now();
                    let measured = intended >= measure_from;
                    if slow_us.is_some_and(|t| (prev_done - from).as_micros() as u64 > t) {
                        eprintln!(
                            "slow: conn {i} at {:.4} s took {} µs",
                            (from - start).as_secs_f64(),
                            (prev_done - from).as_micros()
                        );
                    }
                    match ok {
                        Ok(true) if measured => lat.push((prev_done - from).as_nanos() as u64),
                        Ok(true) => {}
                        Ok(false) => errors += u64::from(measured),
                        Err(_) => {
                            errors += u64::from(measured);
                            conn = connect(addr).ok();
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    collect(workers, window)
}

/// Joins the workers (each returning its latencies in ns and its error count) into one result
/// over the measured `window`.
fn collect(
    workers: Vec<std::thread::JoinHandle<(Vec<u64>, u64)>>,
    window: Duration,
) -> anyhow::Result<LoadResult> {
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (lat, e) = w
            .join()
            .map_err(|_| anyhow::anyhow!("load worker panicked"))?;
        all.extend(lat);
        errors += e;
    }
    Ok(LoadResult {
        completed: all.len() as u64,
        errors,
        rate: all.len() as f64 / window.as_secs_f64(),
        latency: Latency::of(all),
    })
}

/// `workers` closed loops of connect → request (`Connection: close`) → response → EOF.
pub fn conn_rate(addr: SocketAddr, workers: usize, window: Duration) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(workers > 0, "workers must be > 0");
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + window;
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            std::thread::spawn(move || -> (Vec<u64>, u64) {
                let req = request(addr, true);
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut line = String::new();
                let mut rest = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let ok = connect(addr).and_then(|mut c| {
                        c.get_mut().write_all(&req)?;
                        let ok = read_response(&mut c, &mut line)?;
                        rest.clear();
                        c.read_to_end(&mut rest)?;
                        Ok(ok)
                    });
                    if t0 < measure_from {
                        continue;
                    }
                    match ok {
                        Ok(true) => lat.push(t0.elapsed().as_nanos() as u64),
                        _ => {
                            errors += 1;
                            // A refused or reset connection must not turn into a busy loop.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    collect(threads, window)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly

    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener};

    use super::*;

    /// A loopback HTTP/1.1 server: keep-alive unless asked to close; every `fail_every`-th
    /// request answers 500; responses alternate between content-length and chunked bodies.
    fn server(fail_every: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for s in l.incoming().flatten() {
                let n = n.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    loop {
                        let mut close = false;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line.to_ascii_lowercase().starts_with("connection: close") {
                                close = true;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        let status = if fail_every > 0 && k % fail_every == 0 {
                            500
                        } else {
                            200
                        };
                        let resp = if k % 2 == 0 {
                            format!("HTTP/1.1 {status} x\r\ncontent-length: 3\r\n\r\nok\n")
                        } else {
                            format!("HTTP/1.1 {status} x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n")
                        };
                        if w.write_all(resp.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn fixed_rate_sends_the_rate_asked_for_and_counts_every_response() {
        let r = http_rate(server(0), 400.0, 4, Duration::from_secs(1)).unwrap();
        assert_eq!(r.errors, 0);
        // 400/s for 1 s after the warm-up: the schedule is exact, allow for a request at the edge.
        assert!((395..=405).contains(&r.completed), "{r:?}");
        let l = r.latency.unwrap();
        assert!(
            l.p50_us > 0.0 && l.p50_us <= l.p99_us && l.p99_us <= l.max_us,
            "{l:?}"
        );
    }

    #[test]
    fn errors_are_counted_not_hidden() {
        let r = http_rate(server(4), 200.0, 2, Duration::from_secs(1)).unwrap();
        assert!(
            r.errors > 30 && r.errors < 70,
            "a quarter of ~200 requests fail: {r:?}"
        );
        let r = conn_rate(server(4), 2, Duration::from_millis(500)).unwrap();
        assert!(r.errors > 0 && r.completed > r.errors, "{r:?}");
    }

    #[test]
    fn connection_rate_opens_a_connection_per_request() {
        let r = conn_rate(server(0), 2, Duration::from_millis(500)).unwrap();
        assert_eq!(r.errors, 0);
        assert!(r.completed > 100, "{r:?}");
    }

    #[test]
    fn nothing_listening_is_an_error_not_a_zero() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = conn_rate(addr, 1, Duration::from_millis(200)).unwrap();
        assert_eq!(r.completed, 0);
        assert!(r.errors > 0);
        assert!(r.latency.is_none());
    }

    #[test]
    fn percentiles_pick_the_right_sample() {
        let l = Latency::of((1..=1000).map(|i| i * 1000).collect()).unwrap();
        assert_eq!(
            (l.p50_us, l.p99_us, l.p999_us, l.max_us),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert!(Latency::of(Vec::new()).is_none());
    }
}
