//! The benchmark harness: `cargo run --release -p ward-benches -- <scenario>…` (or `all`).
//!
//! Each scenario builds the two-node network-namespace topology of `ward-tests`, runs release
//! builds of ward, measures, tears everything down, and writes a Markdown table and a JSON file
//! under `target/bench-results/`. Scenarios so far:
//! - `idle-memory`: proxy RSS idle, and with 1 000 and 5 000 idle tunnelled connections
//!   (client pod → node-1 proxy → HBONE → node-2 proxy → server pod).
//!
//! It needs root (namespaces) and fails loudly when a tool is missing.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
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
        vec!["idle-memory"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    std::fs::create_dir_all(&out_dir)?;
    for s in scenarios {
        match s {
            "idle-memory" => idle_memory(&out_dir)?,
            other => anyhow::bail!("unknown scenario {other:?} (known: idle-memory, all)"),
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
    let _ = Command::new("true").status();
    Ok(())
}
