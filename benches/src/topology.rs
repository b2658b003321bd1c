//! The benchmark topology: the two-node namespace cluster of `ward-tests` with a client pod on
//! node-1 and a server pod on node-2 (nginx on 8080 and 8081, iperf3 on 5201, an idle-connection
//! holder on 9100), and the *path* between them, switched in place:
//! no proxy, ward, ward without tunnel pooling, an Envoy HBONE pair (pooled or not), an haproxy
//! mTLS pair.
//!
//! Pinning (the default): load generators and servers run on CPU 0, every proxy on CPU 1, so
//! the proxies never steal the load generator's core (and Envoy runs `--concurrency 1`, ward's
//! runtime sizes itself to the one CPU it may use).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_tests::{built, in_ns, must, run, wait_listening, Cluster, PodSpec};

use crate::pairs;

pub const IPERF: u16 = 5201;
/// nginx, declared `tcp` (L4).
pub const HTTP_L4: u16 = 8080;
/// nginx, declared `http` (ward authorizes every request: L7).
pub const HTTP_L7: u16 = 8081;
/// Idle-connection holder.
pub const HOLD: u16 = 9100;

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

const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
const SERVER_SNI: &str = "bench.server.ward";

/// The path between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Mode {
    Direct,
    Ward,
    WardNoPool,
    Envoy,
    EnvoyNoPool,
    Haproxy,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (no proxy)",
            Mode::Ward => "ward",
            Mode::WardNoPool => "ward, no tunnel pooling",
            Mode::Envoy => "Envoy HBONE pair",
            Mode::EnvoyNoPool => "Envoy HBONE pair, 1 stream per connection",
            Mode::Haproxy => "haproxy mTLS pair (L4, no HBONE)",
        }
    }

    pub fn proxied(self) -> bool {
        self != Mode::Direct
    }
}

pub struct Bench {
    pub c: Cluster,
    pub mode: Mode,
    pub pin: bool,
    envoy: PathBuf,
    holders: Vec<Child>,
}

/// Runs `program args…` inside `ns`, on the load generators' CPU when pinning.
pub fn pinned(ns: &str, pin: bool, cpu: &str, program: &str) -> Command {
    if pin {
        let mut c = in_ns(ns, "taskset");
        c.args(["-c", cpu, program]);
        c
    } else {
        in_ns(ns, program)
    }
}

fn require(tool: &str, install: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(ok, "{tool} is missing: {install}");
    Ok(())
}

/// Fails with the install command of every tool the harness needs that is missing.
pub fn require_tools() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("nginx", "nginx"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("taskset", "util-linux"),
        ("nft", "nftables"),
        ("python3", "python3"),
    ] {
        if let Err(e) = require(tool, &format!("apt-get install -y {pkg}")) {
            missing.push(e.to_string());
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("missing tools:\n  {}", missing.join("\n  "));
    }
    Ok(())
}

impl Bench {
    pub fn new(pin: bool) -> anyhow::Result<Self> {
        require_tools()?;
        let envoy = ward_tests::envoy();
        let mut c = Cluster::new(2, PODS);
        c.release = true;
        c.extra_ports = vec![(HTTP_L7, "http"), (IPERF, "tcp")];
        c.proxy_log = "info";
        if pin {
            c.proxy_cpus = Some("1".into());
        }
        c.start_ca();
        c.write_mesh("");
        // Short-lived connections by the ten thousand: widen the port range everywhere.
        for ns in [
            c.pod("client").netns.clone(),
            c.pod("server").netns.clone(),
            c.ns("n1"),
            c.ns("n2"),
        ] {
            must(in_ns(&ns, "sysctl").args([
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65000",
                "net.ipv4.tcp_tw_reuse=1",
            ]));
        }
        let ward = built("ward", true);
        for (who, id) in [
            ("client", "spiffe://cluster.local/ns/bench/sa/client"),
            ("server", SERVER_ID),
        ] {
            let dir = c.path(&format!("alt-{who}"));
            must(
                Command::new(&ward)
                    .args(["ca", "issue", "--spiffe-id", id, "--ca"])
                    .arg(c.path("ca"))
                    .arg("--out")
                    .arg(&dir),
            );
            // haproxy wants certificate chain and key in one file.
            let pem = std::fs::read_to_string(dir.join("chain.pem"))?
                + &std::fs::read_to_string(dir.join("key.pem"))?;
            std::fs::write(dir.join("haproxy.pem"), pem)?;
        }
        let mut b = Bench {
            c,
            mode: Mode::Direct,
            pin,
            envoy,
            holders: Vec::new(),
        };
        b.start_servers()?;
        Ok(b)
    }

    fn start_servers(&mut self) -> anyhow::Result<()> {
        let dir = self.c.dir.path().display().to_string();
        let conf = self.c.path("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 16384; }}\nworker_rlimit_nofile 20000;\nhttp {{\n access_log off;\n keepalive_requests 10000000;\n server {{ listen {HTTP_L4} backlog=4096; listen {HTTP_L7} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
            ),
        )?;
        std::fs::write(self.c.path("hold.py"), HOLD_PY)?;
        let ns = self.c.pod("server").netns.clone();
        let conf = conf.display().to_string();
        let hold = self.c.path("hold.py").display().to_string();
        let port = IPERF.to_string();
        let hold_port = HOLD.to_string();
        let cpu0 = if self.pin { "0" } else { "0-1" };
        let taskset = Path::new("taskset");
        self.c.spawn(
            "nginx",
            &ns,
            taskset,
            &["-c", cpu0, "nginx", "-c", &conf, "-p", &dir],
        );
        self.c.spawn(
            "iperf3",
            &ns,
            taskset,
            &["-c", cpu0, "iperf3", "-s", "-p", &port],
        );
        self.c.spawn(
            "holder",
            &ns,
            taskset,
            &["-c", cpu0, "python3", &hold, "serve", &hold_port],
        );
        for p in [HTTP_L4, HTTP_L7, IPERF, HOLD] {
            wait_listening(&ns, p, Duration::from_secs(10));
        }
        Ok(())
    }

    /// The server pod's address for `port`.
    pub fn server(&self, port: u16) -> String {
        format!("{}:{port}", self.c.pod("server").ip)
    }

    pub fn client_ns(&self) -> String {
        self.c.pod("client").netns.clone()
    }

    /// Switches the path to `mode` (stopping whatever ran before) and checks that a request
    /// gets through it.
    pub fn set_mode(&mut self, mode: Mode) -> anyhow::Result<()> {
        self.stop_path()?;
        let n1 = self.c.ns("n1");
        let n2 = self.c.ns("n2");
        let targets_ports = [IPERF, HTTP_L4, HTTP_L7, HOLD];
        let node2 = "10.77.0.2".to_string();
        let server_ip = self.c.pod("server").ip.clone();
        let t = pairs::Targets {
            node2: &node2,
            server_ip: &server_ip,
            ports: &targets_ports,
        };
        let root = self.c.path("ca/root.pem");
        let client_dir = self.c.path("alt-client");
        let server_dir = self.c.path("alt-server");
        let certs = pairs::Certs {
            client_dir: &client_dir,
            server_dir: &server_dir,
            root: &root,
        };
        match mode {
            Mode::Direct => {}
            Mode::Ward => {
                self.c.start_proxy(2, &[]);
                self.c.start_proxy(1, &[]);
            }
            Mode::WardNoPool => {
                self.c.start_proxy(2, &[]);
                self.c.start_proxy(1, &["--no-tunnel-pool"]);
            }
            Mode::Envoy | Mode::EnvoyNoPool => {
                let server = pairs::envoy_server(&t, &certs);
                let client =
                    pairs::envoy_client(&t, &certs, mode == Mode::Envoy, SERVER_ID, SERVER_SNI);
                self.start_envoy(2, &n2, &server)?;
                self.install_interception()?;
                self.start_envoy(1, &n1, &client)?;
            }
            Mode::Haproxy => {
                let server = pairs::haproxy_server(&t, &server_dir.join("haproxy.pem"), &root);
                let client = pairs::haproxy_client(&t, &client_dir.join("haproxy.pem"), &root);
                self.start_haproxy(2, &n2, &server)?;
                self.install_interception()?;
                self.start_haproxy(1, &n1, &client)?;
            }
        }
        self.mode = mode;
        self.check_path()
    }

    /// ward's own interception rules on node-1, so every pair is reached the same way.
    fn install_interception(&self) -> anyhow::Result<()> {
        let pods = self
            .c
            .pods
            .iter()
            .filter(|p| p.spec.node == 1)
            .map(|p| p.ip.parse())
            .collect::<Result<Vec<std::net::IpAddr>, _>>()?;
        let capture = ward_proxy::redirect::Capture {
            pods,
            closed: Vec::new(),
        };
        let script = ward_proxy::redirect::ruleset(&capture, 15001, 15006);
        let path = self.c.path("intercept.nft");
        std::fs::write(&path, script)?;
        must(in_ns(&self.c.ns("n1"), "nft").arg("-f").arg(&path));
        Ok(())
    }

    fn start_envoy(&mut self, node: usize, ns: &str, config: &str) -> anyhow::Result<()> {
        let concurrency = if self.pin { "1" } else { "2" };
        let base_id = (30 + node).to_string();
        let envoy = self.envoy.display().to_string();
        let args = [
            "--concurrency",
            concurrency,
            "--disable-hot-restart",
            "--base-id",
            &base_id,
            "-l",
            "warn",
        ];
        let port = if node == 1 { 15001 } else { 15008 };
        self.start_peer("envoy", node, ns, config, "yaml", &envoy, &args, port)
    }

    fn start_haproxy(&mut self, node: usize, ns: &str, config: &str) -> anyhow::Result<()> {
        let port = if node == 1 { 15001 } else { 15100 };
        self.start_peer(
            "haproxy",
            node,
            ns,
            config,
            "cfg",
            "haproxy",
            &["-db"],
            port,
        )
    }

    /// Writes `config`, starts `program` with `args` and `-c CONFIG` (`-f` for haproxy) on the
    /// proxies' CPU, and waits until it listens on `port` (failing with its log if it exits).
    #[allow(clippy::too_many_arguments)] // reason: one private call per peer kind
    fn start_peer(
        &mut self,
        kind: &str,
        node: usize,
        ns: &str,
        config: &str,
        ext: &str,
        program: &str,
        args: &[&str],
        port: u16,
    ) -> anyhow::Result<()> {
        let label = format!("{kind}-{node}");
        let path = self.c.path(&format!("{label}.{ext}"));
        std::fs::write(&path, config)?;
        let path = path.display().to_string();
        let cpus = if self.pin { "1" } else { "0-1" };
        let flag = if kind == "haproxy" { "-f" } else { "-c" };
        let mut all = vec!["-c", cpus, program, flag, path.as_str()];
        all.extend_from_slice(args);
        self.c.spawn(&label, ns, Path::new("taskset"), &all);
        let start = Instant::now();
        while !ward_tests::listening(ns, port) {
            if self.c.exited(&label) {
                anyhow::bail!("{label} exited at start:\n{}", self.c.log_of(&label));
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "{label} did not listen on {port}:\n{}",
                self.c.log_of(&label)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the current path's proxies and removes interception.
    fn stop_path(&mut self) -> anyhow::Result<()> {
        self.release_holders();
        match self.mode {
            Mode::Direct => {}
            Mode::Ward | Mode::WardNoPool => {
                for i in [1, 2] {
                    let status = self.c.stop_proxy(i);
                    anyhow::ensure!(
                        status.success(),
                        "ward-proxy on node-{i} exited with {status}"
                    );
                    // A stopped proxy leaves its interception rules (fail closed); the next
                    // path needs them gone.
                    let _ = run(in_ns(&self.c.ns(&format!("n{i}")), "nft")
                        .args(["delete", "table", "inet", "ward"]));
                }
            }
            Mode::Envoy | Mode::EnvoyNoPool | Mode::Haproxy => {
                let what = if self.mode == Mode::Haproxy {
                    "haproxy"
                } else {
                    "envoy"
                };
                self.c.stop(&format!("{what}-1"));
                self.c.stop(&format!("{what}-2"));
                let _ =
                    run(in_ns(&self.c.ns("n1"), "nft").args(["delete", "table", "inet", "ward"]));
            }
        }
        self.mode = Mode::Direct;
        Ok(())
    }

    /// One request must get through, and through the proxies when there are any.
    fn check_path(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/", self.server(HTTP_L4));
        let (code, _) = self.c.curl_in(&self.client_ns(), &url, &[]);
        anyhow::ensure!(
            code == "200",
            "{}: a request to {url} answered {code:?}",
            self.mode.label()
        );
        let rules = run(in_ns(&self.c.ns("n1"), "nft").args(["list", "table", "inet", "ward"]));
        anyhow::ensure!(
            rules.status.success() == self.mode.proxied(),
            "{}: interception rules on node-1 are {}",
            self.mode.label(),
            if rules.status.success() {
                "present"
            } else {
                "missing"
            }
        );
        Ok(())
    }

    /// Copies every log of the cluster (proxies, access logs, servers, peers) to `dir`.
    pub fn save_logs(&self, dir: &Path) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::create_dir_all(dir);
        if let Ok(entries) = std::fs::read_dir(self.c.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(name) = name
                    .filter(|n| n.ends_with(".log") || n.ends_with(".yaml") || n.ends_with(".cfg"))
                {
                    let _ = std::fs::copy(&p, dir.join(name));
                }
            }
        }
    }

    /// PIDs of the node-1 and node-2 proxies (empty without proxies).
    pub fn proxy_pids(&self) -> Vec<u32> {
        match self.mode {
            Mode::Direct => vec![],
            Mode::Ward | Mode::WardNoPool => vec![self.c.proxy_pid(1), self.c.proxy_pid(2)],
            Mode::Envoy | Mode::EnvoyNoPool => {
                vec![self.c.child_pid("envoy-1"), self.c.child_pid("envoy-2")]
            }
            Mode::Haproxy => vec![self.c.child_pid("haproxy-1"), self.c.child_pid("haproxy-2")],
        }
    }

    /// Opens `n` more idle connections from the client pod to the holder on the server pod,
    /// kept open until the mode changes. Returns how long opening them took.
    pub fn hold(&mut self, n: usize) -> anyhow::Result<Duration> {
        let script = self.c.path("hold.py").display().to_string();
        let ip = self.c.pod("server").ip.clone();
        let started = Instant::now();
        let mut child = pinned(&self.client_ns(), self.pin, "0", "python3")
            .args([&script, "hold", &ip, &HOLD.to_string(), &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("holder has no stdout"))?,
        )
        .read_line(&mut line)?;
        self.holders.push(child);
        anyhow::ensure!(
            line.starts_with("open"),
            "{}: opening {n} idle connections failed: {line}",
            self.mode.label()
        );
        Ok(started.elapsed())
    }

    /// Closes every connection opened by [`Bench::hold`].
    pub fn release_holders(&mut self) {
        for mut h in self.holders.drain(..) {
            if let Some(mut stdin) = h.stdin.take() {
                let _ = stdin.write_all(b"");
            }
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.release_holders();
    }
}

const HOLD_PY: &str = r#"
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def serve(port):
    async def handle(r, w):
        await r.read()
        w.close()
    s = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096)
    await s.serve_forever()
async def hold(host, port, n):
    conns = []
    for i in range(n):
        for attempt in range(50):
            try:
                conns.append(await asyncio.open_connection(host, port))
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
    asyncio.run(serve(int(sys.argv[2])))
else:
    asyncio.run(hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"#;
