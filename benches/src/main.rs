//! The benchmark harness: `cargo run --release -p ward-benches -- all` (root).
//!
//! Builds the two-node network-namespace topology of `ward-tests` once (release builds of
//! ward), then for each path — no proxy, ward, an Envoy HBONE pair, an haproxy mTLS pair, and
//! ward and Envoy with one connection per tunnel — runs the scenarios that apply to it, each
//! repeated, measuring the proxies' CPU and memory from `/proc` alongside:
//! - `throughput`: iperf3, 1 and 4 streams;
//! - `latency`: HTTP/1.1 at 1 000 and 5 000 req/s (open loop) through an L4 and an L7 port;
//! - `http-max`: wrk, closed loop;
//! - `conn-rate` / `tunnel-rate`: new connections per second, with pooled tunnels and with a
//!   new mTLS connection each;
//! - `idle-memory`: RSS idle and with 1 000 and 10 000 idle tunnelled connections;
//! - `policy`: the policy decision with 10 000 policies (in process);
//! - `log-flood`: `conn-rate` through ward with its access log to a file, off, and stalled
//!   (nobody reads it): logging must not slow the data path; drops are counted.
//!
//! `control-scale` (separate, no root needed) measures the control component at 10 000 pods
//! and 100 proxies (`control_scale.rs`).
//!
//! Writes `target/bench-results/results.{md,json}`, tears everything down (also on failure),
//! and exits non-zero — naming the tool — when something it needs is missing.
#![forbid(unsafe_code)]

/// The proxy's allocator: `control-scale` runs the proxies' own control-stream client code in
/// this process, and should measure it as the proxy binary runs it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod control_scale;
mod load;
mod pairs;
mod procfs;
mod report;
mod scenarios;
mod topology;

use std::process::Command;
use std::time::Instant;

use scenarios::{Measurement, Settings};
use topology::{Bench, Mode, HTTP_L4, HTTP_L7};

const SCENARIOS: &[&str] = &[
    "throughput",
    "latency",
    "http-max",
    "conn-rate",
    "idle-memory",
    "policy",
    "log-flood",
];

const USAGE: &str = "usage: ward-benches [all | SCENARIO…] [--reps N] [--secs S] [--no-pin] [--paths ward,envoy,haproxy] [--profile DIR]
       ward-benches shell [PATH]   |   ward-benches report RESULTS.json
       ward-benches control-scale [--pods N] [--nodes N] [--proxies N] [--changes N]
scenarios: throughput latency http-max conn-rate (includes tunnel-rate) idle-memory policy log-flood";

struct Opts {
    scenarios: Vec<String>,
    settings: Settings,
    pin: bool,
    paths: Vec<Mode>,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        scenarios: Vec::new(),
        settings: Settings {
            reps: 3,
            secs: 3.0,
            profile: None,
        },
        pin: true,
        paths: vec![
            Mode::Direct,
            Mode::Ward,
            Mode::Envoy,
            Mode::Haproxy,
            Mode::WardNoPool,
            Mode::EnvoyNoPool,
        ],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--reps" => o.settings.reps = value("--reps")?.parse()?,
            "--secs" => o.settings.secs = value("--secs")?.parse()?,
            "--no-pin" => o.pin = false,
            "--profile" => o.settings.profile = Some(value("--profile")?.into()),
            "--paths" => {
                let mut paths = vec![Mode::Direct];
                for p in value("--paths")?.split(',') {
                    match p {
                        "ward" => paths.extend([Mode::Ward, Mode::WardNoPool]),
                        "envoy" => paths.extend([Mode::Envoy, Mode::EnvoyNoPool]),
                        "haproxy" => paths.push(Mode::Haproxy),
                        other => anyhow::bail!("unknown path {other:?}\n{USAGE}"),
                    }
                }
                paths.sort();
                o.paths = paths;
            }
            "all" => o.scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if SCENARIOS.contains(&s) => o.scenarios.push(s.to_string()),
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    anyhow::ensure!(o.settings.reps > 0, "--reps must be at least 1");
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__load") {
        return load::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("control-scale") {
        return control_scale::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("shell") {
        return shell(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("report") {
        return rerender(&args[1..]);
    }
    let opts = parse(&args)?;
    let started = Instant::now();
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let mut results = Vec::new();
    let want = |s: &str| opts.scenarios.iter().any(|x| x == s);
    if want("policy") {
        eprintln!("== policy decision");
        results.push(scenarios::policy_decision()?);
    }
    let network: Vec<&String> = opts.scenarios.iter().filter(|s| *s != "policy").collect();
    if !network.is_empty() {
        let mut b = Bench::new(opts.pin)?;
        for &mode in &opts.paths {
            let t = Instant::now();
            b.set_mode(mode)?;
            eprintln!(
                "== {} (ready in {:.1} s)",
                mode.label(),
                t.elapsed().as_secs_f64()
            );
            let flood = if want("log-flood") && mode == Mode::Ward {
                log_flood(&mut b, &opts.settings, &mut results)
            } else {
                Ok(())
            };
            if let Err(e) = flood.and_then(|()| run_path(&mut b, mode, &opts, &mut results)) {
                let kept = out_dir.join("failed-logs");
                b.save_logs(&kept);
                write(&out_dir, &results, &opts, started)?;
                return Err(e.context(format!("logs of the run kept in {}", kept.display())));
            }
            write(&out_dir, &results, &opts, started)?;
        }
    }
    write(&out_dir, &results, &opts, started)?;
    println!("{}", std::fs::read_to_string(out_dir.join("results.md"))?);
    eprintln!(
        "results in {} ({:.0} s)",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `log-flood`: the three access-log sinks, one repetition each in turn, the order rotating,
/// so drift over the run (sockets in TIME_WAIT, conntrack, a noisy neighbour) spreads over all
/// three instead of being mistaken for the cost of one.
fn log_flood(b: &mut Bench, st: &Settings, results: &mut Vec<Measurement>) -> anyhow::Result<()> {
    use ward_tests::AccessLogSink::{File, Off, Stalled};
    let sinks = [File, Off, Stalled];
    let one = Settings {
        reps: 1,
        ..st.clone()
    };
    let mut rows: Vec<Option<Measurement>> = vec![None, None, None];
    for rep in 0..st.reps {
        for k in 0..sinks.len() {
            let i = (rep + k) % sinks.len();
            let m = scenarios::log_flood(b, &one, sinks[i])?;
            eprintln!("   log flood, {} (rep {rep}): {}", m.variant, brief(&m));
            match &mut rows[i] {
                Some(row) => row.samples.extend(m.samples),
                None => rows[i] = Some(m),
            }
        }
    }
    results.extend(rows.into_iter().flatten());
    Ok(())
}

/// The scenarios that apply to `mode`.
fn run_path(
    b: &mut Bench,
    mode: Mode,
    opts: &Opts,
    results: &mut Vec<Measurement>,
) -> anyhow::Result<()> {
    let st = &opts.settings;
    let want = |s: &str| opts.scenarios.iter().any(|x| x == s);
    let mut step = |what: &str, m: anyhow::Result<Measurement>| -> anyhow::Result<()> {
        let m = m.map_err(|e| e.context(format!("{what} through {}", mode.label())))?;
        eprintln!("   {what}: {}", brief(&m));
        results.push(m);
        Ok(())
    };
    let pooled_pair = matches!(
        mode,
        Mode::Direct | Mode::Ward | Mode::Envoy | Mode::Haproxy
    );
    let memory = matches!(mode, Mode::Ward | Mode::Envoy | Mode::Haproxy);
    // First, while the proxies have never carried traffic.
    if want("idle-memory") && memory {
        step("idle memory", scenarios::idle_memory(b))?;
        // Fresh proxies again: what the allocator kept from 10 000 connections (reported
        // above) must not count as the load scenarios' memory.
        b.set_mode(mode)?;
    }
    let l7_too: &[u16] = if mode == Mode::Ward {
        &[HTTP_L4, HTTP_L7]
    } else {
        &[HTTP_L4]
    };
    if want("throughput") && pooled_pair {
        for streams in [1, 4] {
            step("throughput", scenarios::throughput(b, streams, st))?;
        }
    }
    if want("latency") && pooled_pair {
        for &port in l7_too {
            for rate in [1000, 5000] {
                step("latency", scenarios::latency(b, port, rate, st))?;
            }
        }
    }
    if want("http-max") && pooled_pair {
        for &port in l7_too {
            step("http-max", scenarios::http_max(b, port, st))?;
        }
    }
    if want("conn-rate") {
        step("connections", scenarios::conn_rate(b, st))?;
    }
    if want("idle-memory") && memory {
        step("retained memory", scenarios::retained_memory(b))?;
    }
    Ok(())
}

/// `ward-benches shell [ward|ward-no-pool|envoy|haproxy|direct]`: builds the topology with one
/// path and waits (until stdin closes), for looking at it by hand.
fn shell(args: &[String]) -> anyhow::Result<()> {
    let mode = match args.first().map(String::as_str).unwrap_or("ward") {
        "direct" => Mode::Direct,
        "ward" => Mode::Ward,
        "ward-no-pool" => Mode::WardNoPool,
        "envoy" => Mode::Envoy,
        "envoy-no-pool" => Mode::EnvoyNoPool,
        "haproxy" => Mode::Haproxy,
        other => anyhow::bail!("unknown path {other:?}"),
    };
    let pin = !args.iter().any(|a| a == "--no-pin");
    let mut b = Bench::new(pin)?;
    b.set_mode(mode)?;
    println!(
        "{}: client pod netns {} → server {} (ports {HTTP_L4} L4, {HTTP_L7} L7, 5201 iperf3); nodes {} / {}; proxy PIDs {:?}; files in {}",
        mode.label(),
        b.client_ns(),
        b.c.pod("server").ip,
        b.c.ns("n1"),
        b.c.ns("n2"),
        b.proxy_pids(),
        b.c.dir.path().display()
    );
    println!("close stdin (Ctrl-D) to tear down");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    Ok(())
}

/// `ward-benches report results.json`: renders the Markdown report again from a results file
/// (after a change to the report itself, without measuring again).
fn rerender(args: &[String]) -> anyhow::Result<()> {
    let path = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: ward-benches report RESULTS.json"))?;
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    // Names become `'static` for the report's lookup tables; this runs once and exits.
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mode = |s: &str| -> anyhow::Result<Mode> {
        Ok(match s {
            "Direct" => Mode::Direct,
            "Ward" => Mode::Ward,
            "WardNoPool" => Mode::WardNoPool,
            "Envoy" => Mode::Envoy,
            "EnvoyNoPool" => Mode::EnvoyNoPool,
            "Haproxy" => Mode::Haproxy,
            other => anyhow::bail!("unknown path {other:?} in {path}"),
        })
    };
    let mut all = Vec::new();
    for m in v["measurements"].as_array().into_iter().flatten() {
        let samples = m["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                s.as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((leak(k), v.as_f64()?)))
                    .collect()
            })
            .collect();
        all.push(Measurement {
            scenario: leak(m["scenario"].as_str().unwrap_or_default()),
            variant: m["variant"].as_str().unwrap_or_default().to_owned(),
            mode: mode(m["mode"].as_str().unwrap_or_default())?,
            samples,
            note: m["note"].as_str().map(str::to_owned),
        });
    }
    anyhow::ensure!(!all.is_empty(), "{path} holds no measurements");
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    print!(
        "{}",
        report::markdown(&all, &text("machine"), &text("settings"))
    );
    Ok(())
}

fn brief(m: &Measurement) -> String {
    let mut keys: Vec<&str> = m
        .samples
        .first()
        .map(|s| s.keys().copied().collect())
        .unwrap_or_default();
    keys.retain(|k| !k.starts_with("peak_rss"));
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| report::median(m, k).map(|v| format!("{k}={v:.3}")))
        .collect();
    format!("{} — {}", m.variant, parts.join(" "))
}

fn machine() -> String {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "Machine: {} × {} ({}), Linux {}, {}. Tools: {}; {}; {}; {}.",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        sh("grep MemTotal /proc/meminfo | awk '{printf \"%.0f GiB\", $2/1048576}'"),
        sh("uname -r"),
        sh("date -u +%Y-%m-%d"),
        sh("iperf3 --version | head -1 | cut -d' ' -f1-2"),
        sh("nginx -v 2>&1"),
        sh("haproxy -v | head -1 | cut -d' ' -f1-3"),
        sh(&format!(
            "{} --version | grep -o 'version: [^ ]*' | head -1 | sed 's/^/Envoy /'",
            ward_tests::envoy().display()
        )),
    )
}

fn write(
    out_dir: &std::path::Path,
    results: &[Measurement],
    opts: &Opts,
    started: Instant,
) -> anyhow::Result<()> {
    let machine = machine();
    let settings = format!(
        "Each scenario: {} repetitions of {} s (median, min–max in parentheses); {}; whole run {:.0} s.",
        opts.settings.reps,
        opts.settings.secs,
        if opts.pin {
            "load generators and servers pinned to CPU 0, every proxy to CPU 1 (Envoy --concurrency 1, haproxy nbthread 1, ward's runtime sized to its one CPU)"
        } else {
            "no CPU pinning"
        },
        started.elapsed().as_secs_f64()
    );
    std::fs::write(
        out_dir.join("results.md"),
        report::markdown(results, &machine, &settings),
    )?;
    let json = serde_json::json!({
        "machine": machine,
        "settings": settings,
        "bars": report::bars(results),
        "measurements": results,
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
