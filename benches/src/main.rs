//! The benchmark harness: `cargo run --release -p ward-benches -- <scenario>…` (or `all`).
//!
//! Each scenario builds the two-node network-namespace topology of `ward-tests`, runs release
//! builds of ward, measures, tears everything down, and writes a Markdown table and a JSON file
//! under `target/bench-results/`. Scenarios so far:
//! - `idle-memory`: proxy RSS idle, and with 1 000 and 5 000 idle tunnelled connections
//!   (client pod → node-1 proxy → HBONE → node-2 proxy → server pod).
//! - `l7-vs-l4`: HTTP/1.1 keep-alive load (wrk, 16 connections, 5 s) against nginx on the
//!   server pod: directly (no proxies), through the proxies with the port declared TCP (L4),
//!   and declared HTTP (L7: per-request authorization and forwarding).
//!
//! It needs root (namespaces) and fails loudly when a tool is missing.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ward_tests::{in_ns, Cluster, PodSpec};

const PODS: &[PodSpec] = &[
    PodSpec {
        name: "client",
        node: 1,
        namespace: "bench",
        service_account: "client",
        labels: &[("app", "client")],
    },
    PodSpec {
        name: "server",
        node: 2,
        namespace: "bench",
        service_account: "server",
        labels: &[("app", "server")],
    },
];

const HOLD_PY: &str = r#"
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def serve():
    async def handle(r, w):
        await r.read()
        w.close()
    s = await asyncio.start_server(handle, "0.0.0.0", 9100, backlog=4096)
    print("listening", flush=True)
    await s.serve_forever()
async def hold(host, n):
    conns = []
    for i in range(n):
        for attempt in range(50):
            try:
                conns.append(await asyncio.open_connection(host, 9100))
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            print("failed", i, flush=True)
            return
        if (i + 1) % 500 == 0:
            await asyncio.sleep(0.05)
    print("open", len(conns), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
if sys.argv[1] == "serve":
    asyncio.run(serve())
else:
    asyncio.run(hold(sys.argv[2], int(sys.argv[3])))
"#;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenarios: Vec<&str> = if args.is_empty() || args.iter().any(|a| a == "all") {
        vec!["idle-memory", "l7-vs-l4"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out_dir)?;
    for s in scenarios {
        match s {
            "idle-memory" => idle_memory(&out_dir)?,
            "l7-vs-l4" => l7_vs_l4(&out_dir)?,
            other => {
                anyhow::bail!("unknown scenario {other:?} (known: idle-memory, l7-vs-l4, all)")
            }
        }
    }
    Ok(())
}

fn idle_memory(out_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut c = Cluster::new(2, PODS);
    c.release = true;
    c.start_ca();
    c.write_mesh("");
    std::fs::write(c.path("hold.py"), HOLD_PY)?;
    let script = c.path("hold.py").display().to_string();
    let server_ns = c.pod("server").netns.clone();
    c.spawn(
        "holder-server",
        &server_ns,
        std::path::Path::new("python3"),
        &[&script, "serve"],
    );
    c.start_proxy(1, &[]);
    c.start_proxy(2, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let mut rows = vec![("idle".to_string(), c.proxy_rss_kib(1), c.proxy_rss_kib(2))];
    let server_ip = c.pod("server").ip.clone();
    let mut holders = Vec::new();
    let mut total = 0;
    for target in [1000usize, 5000] {
        let n = target - total;
        let mut child = in_ns(&c.pod("client").netns, "python3")
            .args([&script, "hold", &server_ip, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        let started = Instant::now();
        BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        )
        .read_line(&mut line)?;
        anyhow::ensure!(
            line.starts_with("open"),
            "opening {n} connections failed: {line}"
        );
        total = target;
        std::thread::sleep(Duration::from_secs(2));
        rows.push((
            format!(
                "{total} idle tunnelled connections (opened in {:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            c.proxy_rss_kib(1),
            c.proxy_rss_kib(2),
        ));
        holders.push(child);
    }
    let dump = c.admin(1, "/config_dump");
    for mut h in holders {
        if let Some(mut stdin) = h.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        let _ = h.kill();
        let _ = h.wait();
    }
    let mut md = String::from("| state | node-1 proxy RSS (MiB, client side) | node-2 proxy RSS (MiB, server side) |\n|---|---:|---:|\n");
    for (state, a, b) in &rows {
        let _ = writeln!(
            md,
            "| {state} | {:.1} | {:.1} |",
            *a as f64 / 1024.0,
            *b as f64 / 1024.0
        );
    }
    let d1 = rows[2].1 as f64 - rows[0].1 as f64;
    let d2 = rows[2].2 as f64 - rows[0].2 as f64;
    let _ = writeln!(md, "\nPer idle connection: {:.1} KiB (client side), {:.1} KiB (server side); pooled HBONE connections on node-1: {}.", d1 / 5000.0, d2 / 5000.0, dump["pooledTunnels"]);
    println!("{md}");
    std::fs::write(out_dir.join("idle-memory.md"), &md)?;
    let json = serde_json::json!({
        "scenario": "idle-memory",
        "rows": rows.iter().map(|(s, a, b)| serde_json::json!({"state": s, "node1_rss_kib": a, "node2_rss_kib": b})).collect::<Vec<_>>(),
    });
    std::fs::write(
        out_dir.join("idle-memory.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

/// One wrk run: requests/s and the p50/p99 latency in µs.
fn wrk(c: &Cluster, url: &str) -> anyhow::Result<(f64, f64, f64)> {
    let o = in_ns(&c.pod("client").netns, "wrk")
        .args(["-t1", "-c16", "-d5s", "--latency", url])
        .output()
        .map_err(|e| anyhow::anyhow!("wrk is missing (apt-get install -y wrk): {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    anyhow::ensure!(
        o.status.success() && !out.contains("Non-2xx"),
        "wrk failed or saw errors:\n{out}"
    );
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
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in:\n{out}"))?;
    let p50 = find("50%")
        .and_then(|v| us(&v))
        .ok_or_else(|| anyhow::anyhow!("no p50 in:\n{out}"))?;
    let p99 = find("99%")
        .and_then(|v| us(&v))
        .ok_or_else(|| anyhow::anyhow!("no p99 in:\n{out}"))?;
    Ok((rps, p50, p99))
}

fn l7_vs_l4(out_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (mode, proxies, protocol) in [
        ("direct (no proxy)", false, "tcp"),
        ("ward L4 (port declared tcp)", true, "tcp"),
        ("ward L7 (port declared http)", true, "http"),
    ] {
        let mut c = Cluster::new(2, PODS);
        c.release = true;
        c.web_protocol = protocol;
        c.start_ca();
        c.write_mesh("");
        let conf = c.path("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n access_log off;\n keepalive_requests 1000000;\n server {{ listen 8080; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
                dir = c.dir.path().display()
            ),
        )?;
        let server_ns = c.pod("server").netns.clone();
        let conf_s = conf.display().to_string();
        let prefix = c.dir.path().display().to_string();
        c.spawn(
            "nginx",
            &server_ns,
            std::path::Path::new("nginx"),
            &["-c", &conf_s, "-p", &prefix],
        );
        if proxies {
            c.start_proxy(1, &[]);
            c.start_proxy(2, &[]);
        }
        std::thread::sleep(Duration::from_millis(500));
        let url = format!("http://{}:8080/", c.pod("server").ip);
        let (rps, p50, p99) = wrk(&c, &url)?;
        rows.push((mode, rps, p50, p99));
    }
    let direct = rows[0].1;
    let mut md = String::from(
        "| path | req/s | ratio to direct | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|---:|\n",
    );
    for (mode, rps, p50, p99) in &rows {
        let _ = writeln!(
            md,
            "| {mode} | {rps:.0} | {:.2} | {p50:.0} | {p99:.0} |",
            rps / direct
        );
    }
    println!("{md}");
    std::fs::write(out_dir.join("l7-vs-l4.md"), &md)?;
    let json = serde_json::json!({
        "scenario": "l7-vs-l4",
        "load": "wrk -t1 -c16 -d5s, HTTP/1.1 keep-alive, nginx `return 200`",
        "rows": rows.iter().map(|(m, r, a, b)| serde_json::json!({"path": m, "rps": r, "p50_us": a, "p99_us": b})).collect::<Vec<_>>(),
    });
    std::fs::write(
        out_dir.join("l7-vs-l4.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
