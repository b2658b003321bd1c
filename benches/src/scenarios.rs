//! The scenarios: each runs against the current path of a [`Bench`] a number of times and
//! returns one [`Measurement`] with a sample per repetition. A scenario that sees no traffic,
//! or a tool that fails, is an error — never a row of zeros.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::LoadResult;
use crate::procfs;
use crate::topology::{pinned, Bench, Mode, HTTP_L4, HTTP_L7, IPERF};

/// One repetition: metric name → value.
pub type Sample = BTreeMap<&'static str, f64>;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub scenario: &'static str,
    pub variant: String,
    pub mode: Mode,
    pub samples: Vec<Sample>,
    /// Anything the reader must know about this row (e.g. why a state was not measured).
    pub note: Option<String>,
}

/// Run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reps: usize,
    pub secs: f64,
    /// Record `perf` profiles of ward's proxies (first repetition of each scenario) here.
    pub profile: Option<std::path::PathBuf>,
}

/// `perf record` on each proxy while a scenario runs (ward's paths only), reported to text.
struct Profile {
    runs: Vec<(std::process::Child, std::path::PathBuf)>,
}

impl Profile {
    fn start(b: &Bench, st: &Settings, rep: usize, name: &str) -> anyhow::Result<Option<Self>> {
        let Some(dir) = &st.profile else {
            return Ok(None);
        };
        if rep > 0 || !matches!(b.mode, Mode::Ward | Mode::WardNoPool) {
            return Ok(None);
        }
        std::fs::create_dir_all(dir)?;
        let mut runs = Vec::new();
        for (i, pid) in b.proxy_pids().iter().enumerate() {
            let slug: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let data = dir.join(format!("{slug}-node{}.perf.data", i + 1));
            let child = std::process::Command::new("perf")
                .args([
                    "record",
                    "-q",
                    "-e",
                    "cpu-clock",
                    "-F",
                    "1999",
                    "-g",
                    "--call-graph",
                    "dwarf,32768",
                    "-o",
                ])
                .arg(&data)
                .args(["-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!("perf is missing (apt-get install -y linux-perf): {e}")
                })?;
            runs.push((child, data));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Some(Self { runs }))
    }

    fn finish(self) -> anyhow::Result<()> {
        for (mut child, data) in self.runs {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
            // A flat profile (self time by binary and symbol) to read and commit, and the
            // call graph for digging.
            let flat = std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--sort",
                    "dso,sym",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                    "-i",
                ])
                .arg(&data)
                .output()?;
            std::fs::write(data.with_extension("flat.txt"), &flat.stdout)?;
            let graph = std::process::Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percent-limit",
                    "2",
                    "-g",
                    "caller,1,callee,function,percent",
                    "-i",
                ])
                .arg(&data)
                .output()?;
            std::fs::write(data.with_extension("graph.txt"), &graph.stdout)?;
        }
        Ok(())
    }
}

const MIB: f64 = 1024.0;

/// Adds per-proxy CPU (scaled by `per`) and peak RSS to `s`, under `cpu_key_1/2` names.
fn add_proxy_metrics(
    s: &mut Sample,
    pids: &[u32],
    cpu: &[Duration],
    per: f64,
    keys: [&'static str; 2],
) -> anyhow::Result<()> {
    for (i, pid) in pids.iter().enumerate() {
        s.insert(keys[i], cpu[i].as_secs_f64() / per);
        s.insert(
            ["peak_rss_mib_node1", "peak_rss_mib_node2"][i],
            procfs::peak_rss_kib(*pid)? as f64 / MIB,
        );
    }
    Ok(())
}

fn reset_peaks(pids: &[u32]) -> anyhow::Result<()> {
    pids.iter().try_for_each(|&p| procfs::reset_peak(p))
}

/// One repetition of a load: peak RSS reset, profiled when asked (first repetition), and the
/// proxies' CPU measured around `f`.
fn repetition<T>(
    b: &Bench,
    st: &Settings,
    rep: usize,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<Duration>)> {
    let pids = b.proxy_pids();
    reset_peaks(&pids)?;
    let profile = Profile::start(b, st, rep, name)?;
    let measured = procfs::cpu_during(&pids, f)?;
    if let Some(p) = profile {
        p.finish()?;
    }
    Ok(measured)
}

/// iperf3 from the client pod to the server pod, `streams` parallel streams.
pub fn throughput(b: &Bench, streams: usize, st: &Settings) -> anyhow::Result<Measurement> {
    let pids = b.proxy_pids();
    let mut samples = Vec::new();
    for rep in 0..st.reps {
        let (json, cpu) = repetition(b, st, rep, &format!("throughput-{streams}"), || {
            let o = pinned(&b.client_ns(), b.pin, "0", "iperf3")
                .args([
                    "-c",
                    &b.c.pod("server").ip,
                    "-p",
                    &IPERF.to_string(),
                    "-t",
                    &format!("{}", st.secs.ceil() as u64),
                    "-P",
                    &streams.to_string(),
                    "-J",
                ])
                .output()?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|e| {
                anyhow::anyhow!(
                    "iperf3 printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&o.stderr)
                )
            })?;
            if let Some(err) = v.get("error") {
                anyhow::bail!("iperf3 through {}: {err}", b.mode.label());
            }
            Ok(v)
        })?;
        let recv = &json["end"]["sum_received"];
        let bytes = recv["bytes"].as_f64().unwrap_or(0.0);
        let bps = recv["bits_per_second"].as_f64().unwrap_or(0.0);
        anyhow::ensure!(
            bytes > 0.0 && bps > 0.0,
            "iperf3 through {} moved no data: {json}",
            b.mode.label()
        );
        let mut s = Sample::from([("gbit_s", bps / 1e9), ("gb", bytes / 1e9)]);
        add_proxy_metrics(
            &mut s,
            &pids,
            &cpu,
            bytes / 1e9,
            ["cpu_s_per_gb_node1", "cpu_s_per_gb_node2"],
        )?;
        samples.push(s);
    }
    Ok(Measurement {
        scenario: "throughput",
        variant: format!("{streams} stream{}", if streams == 1 { "" } else { "s" }),
        mode: b.mode,
        samples,
        note: None,
    })
}

/// Runs the load generator (this binary, `__load …`) in the client pod.
fn load(b: &Bench, args: &[String]) -> anyhow::Result<LoadResult> {
    let exe = std::env::current_exe()?;
    let o = pinned(&b.client_ns(), b.pin, "0", &exe.display().to_string())
        .arg("__load")
        .args(args)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "load generator failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: LoadResult = serde_json::from_slice(&o.stdout)?;
    anyhow::ensure!(
        r.completed > 0,
        "no request completed through {} (errors: {})",
        b.mode.label(),
        r.errors
    );
    Ok(r)
}

fn latency_metrics(s: &mut Sample, r: &LoadResult) {
    if let Some(l) = &r.latency {
        s.insert("p50_us", l.p50_us);
        s.insert("p90_us", l.p90_us);
        s.insert("p99_us", l.p99_us);
        s.insert("p999_us", l.p999_us);
        s.insert("max_us", l.max_us);
    }
    s.insert("rate", r.rate);
    s.insert("errors", r.errors as f64);
}

/// HTTP/1.1 at a fixed rate over 10 keep-alive connections.
pub fn latency(b: &Bench, port: u16, rate: u32, st: &Settings) -> anyhow::Result<Measurement> {
    let args = [
        "http-rate".to_string(),
        b.server(port),
        rate.to_string(),
        "10".into(),
        st.secs.to_string(),
    ];
    let keys = ["cpu_us_per_req_node1", "cpu_us_per_req_node2"];
    Ok(Measurement {
        scenario: "latency",
        variant: format!("{} port, {rate} req/s", port_kind(port)),
        mode: b.mode,
        samples: generated_load(b, st, &format!("latency-{port}-{rate}"), &args, keys)?,
        note: None,
    })
}

/// Runs the load generator with `args` once per repetition: latency, rate and errors, and
/// each proxy's CPU per request (or connection) under `cpu_keys`.
fn generated_load(
    b: &Bench,
    st: &Settings,
    name: &str,
    args: &[String],
    cpu_keys: [&'static str; 2],
) -> anyhow::Result<Vec<Sample>> {
    let pids = b.proxy_pids();
    let mut samples = Vec::new();
    for rep in 0..st.reps {
        let (r, cpu) = repetition(b, st, rep, name, || load(b, args))?;
        let mut s = Sample::new();
        latency_metrics(&mut s, &r);
        // CPU over the warm-up too: count everything sent, not only what was measured.
        let sent = r.rate * (st.secs + 1.0);
        add_proxy_metrics(&mut s, &pids, &cpu, sent / 1e6, cpu_keys)?;
        samples.push(s);
    }
    Ok(samples)
}

fn port_kind(port: u16) -> &'static str {
    if port == HTTP_L7 {
        "L7 (http)"
    } else {
        "L4 (tcp)"
    }
}

/// wrk, closed loop: the most requests per second 16 keep-alive connections get through.
pub fn http_max(b: &Bench, port: u16, st: &Settings) -> anyhow::Result<Measurement> {
    let pids = b.proxy_pids();
    let mut samples = Vec::new();
    for rep in 0..st.reps {
        let url = format!("http://{}/", b.server(port));
        let secs = format!("{}s", st.secs.ceil() as u64);
        let (out, cpu) = repetition(b, st, rep, &format!("http-max-{port}"), || {
            let o = pinned(&b.client_ns(), b.pin, "0", "wrk")
                .args(["-t1", "-c16", "-d", &secs, "--latency", &url])
                .output()?;
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            anyhow::ensure!(
                o.status.success() && !out.contains("Non-2xx") && !out.contains("Socket errors"),
                "wrk through {} failed or saw errors:\n{out}",
                b.mode.label()
            );
            Ok(out)
        })?;
        let (rps, p50, p99) = parse_wrk(&out)?;
        let mut s = Sample::from([("rps", rps), ("p50_us", p50), ("p99_us", p99)]);
        let total = rps * st.secs.ceil();
        add_proxy_metrics(
            &mut s,
            &pids,
            &cpu,
            total / 1e6,
            ["cpu_us_per_req_node1", "cpu_us_per_req_node2"],
        )?;
        samples.push(s);
    }
    Ok(Measurement {
        scenario: "http-max",
        variant: format!("{} port", port_kind(port)),
        mode: b.mode,
        samples,
        note: None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64, f64)> {
    let us = |v: &str| -> Option<f64> {
        let (n, unit) = v.split_at(v.find(|ch: char| ch.is_ascii_alphabetic())?);
        let n: f64 = n.parse().ok()?;
        Some(match unit {
            "us" => n,
            "ms" => n * 1e3,
            "s" => n * 1e6,
            _ => return None,
        })
    };
    let find = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps = find("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output:\n{out}"))?;
    let p50 = find("50%")
        .and_then(|v| us(&v))
        .ok_or_else(|| anyhow::anyhow!("no p50 in wrk output:\n{out}"))?;
    let p99 = find("99%")
        .and_then(|v| us(&v))
        .ok_or_else(|| anyhow::anyhow!("no p99 in wrk output:\n{out}"))?;
    Ok((rps, p50, p99))
}

/// New TCP connections per second (one request each, `Connection: close`), 8 at a time.
pub fn conn_rate(b: &Bench, st: &Settings) -> anyhow::Result<Measurement> {
    let args = [
        "conn-rate".to_string(),
        b.server(HTTP_L4),
        "8".into(),
        "0".into(),
        st.secs.to_string(),
    ];
    let keys = ["cpu_us_per_conn_node1", "cpu_us_per_conn_node2"];
    let name = format!("{:?}-conn-rate", b.mode);
    let samples = generated_load(b, st, &name, &args, keys)?;
    let scenario = match b.mode {
        Mode::WardNoPool | Mode::EnvoyNoPool | Mode::Haproxy => "tunnel-rate",
        _ => "conn-rate",
    };
    Ok(Measurement {
        scenario,
        variant: "new connection + 1 request".into(),
        mode: b.mode,
        samples,
        note: None,
    })
}

/// Connection rate through ward with its access log written to a file, switched off, and
/// stuck (a pipe nobody reads: every record after the first ~64 KiB is dropped). The data path
/// hands records to a bounded queue and never waits, so the three rates should match; the
/// drops are read from the proxies' `ward_access_log_dropped_total`.
pub fn log_flood(
    b: &mut Bench,
    st: &Settings,
    sink: ward_tests::AccessLogSink,
) -> anyhow::Result<Measurement> {
    b.c.access_log = sink;
    b.set_mode(Mode::Ward)?;
    let mut m = conn_rate(b, st)?;
    let mut dropped = Vec::new();
    for node in [1, 2] {
        let text = ward_tests::must(
            ward_tests::in_ns(&b.c.ns(&format!("n{node}")), "curl")
                .args(["-s", "http://127.0.0.1:15020/metrics"]),
        );
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix("ward_access_log_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("node-{node}: no ward_access_log_dropped_total"))?;
        dropped.push(value);
    }
    for s in &mut m.samples {
        s.insert("dropped_node1", dropped[0]);
        s.insert("dropped_node2", dropped[1]);
    }
    m.scenario = "log-flood";
    m.variant = match sink {
        ward_tests::AccessLogSink::File => "access log to a file",
        ward_tests::AccessLogSink::Off => "access log off",
        ward_tests::AccessLogSink::Stalled => "access log sink stalled",
    }
    .into();
    b.c.access_log = ward_tests::AccessLogSink::File;
    Ok(m)
}

fn rss_mib(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter()
        .map(|&p| Ok(procfs::rss_kib(p)? as f64 / MIB))
        .collect()
}

/// Proxy RSS on a freshly started path (configuration and certificates, no connection yet),
/// then with 1 000 and 10 000 idle tunnelled connections, then 3 s and 30 s after they closed.
/// Run it first on a path: "idle" means never loaded.
pub fn idle_memory(b: &mut Bench) -> anyhow::Result<Measurement> {
    let pids = b.proxy_pids();
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_mib(&pids)?;
    let mut s = Sample::from([("idle_mib_node1", idle[0]), ("idle_mib_node2", idle[1])]);
    let took = b.hold(1000)?;
    std::thread::sleep(Duration::from_secs(2));
    let k1 = rss_mib(&pids)?;
    s.insert("conns1000_mib_node1", k1[0]);
    s.insert("conns1000_mib_node2", k1[1]);
    s.insert("open1000_s", took.as_secs_f64());
    let mut note = None;
    if b.mode == Mode::Haproxy {
        // Two descriptors per connection: 10 000 connections exceed this machine's hard
        // descriptor limit (20 000) and haproxy's maxconn (8 000).
        note = Some(
            "10 000 not measured: haproxy needs 2 descriptors per connection (hard limit 20 000, maxconn 8 000)".into(),
        );
    } else {
        let took = b.hold(9000)?;
        std::thread::sleep(Duration::from_secs(3));
        let k10 = rss_mib(&pids)?;
        s.insert("conns10000_mib_node1", k10[0]);
        s.insert("conns10000_mib_node2", k10[1]);
        s.insert("open10000_s", took.as_secs_f64());
        s.insert("kib_per_conn_node1", (k10[0] - idle[0]) * MIB / 10_000.0);
        s.insert("kib_per_conn_node2", (k10[1] - idle[1]) * MIB / 10_000.0);
    }
    b.release_holders();
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_mib(&pids)?;
    s.insert("closed_mib_node1", after[0]);
    s.insert("closed_mib_node2", after[1]);
    // DESIGN's bar: memory given back within 30 s after a load ends.
    std::thread::sleep(Duration::from_secs(27));
    let later = rss_mib(&pids)?;
    s.insert("later_mib_node1", later[0]);
    s.insert("later_mib_node2", later[1]);
    s.insert(
        "given_back_over_idle_mib",
        (later[0] - idle[0]).max(later[1] - idle[1]),
    );
    Ok(Measurement {
        scenario: "idle-memory",
        variant: "idle tunnelled connections".into(),
        mode: b.mode,
        samples: vec![s],
        note,
    })
}

/// Proxy RSS once every load scenario of a path has finished (what stays resident).
pub fn retained_memory(b: &Bench) -> anyhow::Result<Measurement> {
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_mib(&b.proxy_pids())?;
    Ok(Measurement {
        scenario: "retained",
        variant: "after the load scenarios".into(),
        mode: b.mode,
        samples: vec![Sample::from([
            ("rss_mib_node1", rss[0]),
            ("rss_mib_node2", rss[1]),
        ])],
        note: None,
    })
}

/// The policy decision on the proxy's data path (cached per workload), 10 012 policies in the
/// mesh: p50/p99 over individually timed decisions.
pub fn policy_decision() -> anyhow::Result<Measurement> {
    let set = ward_benches::mesh(1000, 10, 10);
    let req = ward_benches::request();
    let wp = set.for_workload(&req.namespace, &req.labels);
    let attrs = req.attributes();
    anyhow::ensure!(
        wp.evaluate(&attrs).allowed,
        "the benchmark request must be allowed"
    );
    let (p50, p99) = ward_benches::percentiles(|| {
        std::hint::black_box(wp.evaluate(std::hint::black_box(&attrs)));
    });
    Ok(Measurement {
        scenario: "policy",
        variant: format!("{} policies in the mesh", set.policies().len()),
        mode: Mode::Ward,
        samples: vec![Sample::from([("p50_ns", p50), ("p99_ns", p99)])],
        note: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly

    #[test]
    fn wrk_output_is_parsed_in_microseconds() {
        let out = "Running 4s test @ http://10.77.2.10:8080/\n  1 threads and 16 connections\n  Latency Distribution\n     50%  277.00us\n     75%  400.00us\n     90%    1.20ms\n     99%    1.07ms\n  203794 requests in 4.00s, 31.87MB read\nRequests/sec:  50947.67\n";
        assert_eq!(super::parse_wrk(out).unwrap(), (50947.67, 277.0, 1070.0));
        assert!(super::parse_wrk("wrk: connection refused").is_err());
    }

    #[test]
    fn own_process_cpu_and_memory_are_readable() {
        let me = std::process::id();
        let before = crate::procfs::cpu(me).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(crate::procfs::cpu(me).unwrap() > before);
        assert!(crate::procfs::rss_kib(me).unwrap() > 0);
        assert!(
            crate::procfs::peak_rss_kib(me).unwrap() >= crate::procfs::rss_kib(me).unwrap() / 2
        );
        assert!(crate::procfs::cpu(u32::MAX).is_err());
    }
}
