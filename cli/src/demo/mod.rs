//! `ward demo`: a zero-trust mesh on one machine, with no Kubernetes.
//!
//! It builds a two-node cluster of network namespaces ([`netns`]), runs `ward-control` in local
//! mode (with its CA) and one `ward-proxy` per node, starts sample HTTP and TCP workloads
//! ([`workload`]) in two namespaces, applies example policies, and plays a scripted tour
//! ([`tour`]): each call is made from inside a pod and its outcome read back from the
//! destination proxy's access log — the deciding policy is what the proxy decided, not what the
//! demo expected. A call whose outcome differs from the script fails the demo (exit 1), so CI
//! running `ward demo --once` checks the whole product end to end.
//!
//! The demo needs root, `ip` and `nft`, and `ward-proxy` and `ward-control` next to the `ward`
//! binary (`scripts/demo` builds all three). It removes everything it created on exit, also on
//! Ctrl-C, and first removes what a crashed earlier run left.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

mod netns;
mod tour;
pub mod workload;

use netns::Cluster;

#[derive(Args)]
pub struct DemoArgs {
    /// Exit after the tour instead of staying up until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Where the demo keeps its CA, mesh file, policies and logs (recreated on every run,
    /// removed on exit).
    #[arg(long, default_value = "/tmp/ward-demo")]
    dir: PathBuf,
}

/// (name, namespace, service account, node) of every pod; each pod is labelled `app: <name>`.
const PODS: &[(&str, &str, &str, usize)] = &[
    ("frontend", "shop", "frontend", 1),
    ("orders-db", "shop", "orders-db", 1),
    ("tool", "dev", "tool", 1),
    ("storefront", "shop", "storefront", 2),
    ("checkout", "shop", "checkout", 2),
    ("payments", "shop", "payments", 2),
];

/// Servers: (pod, port, protocol).
const SERVERS: &[(&str, u16, &str)] = &[
    ("storefront", 8080, "http"),
    ("payments", 8080, "http"),
    ("orders-db", 5432, "tcp"),
];

/// The policies the demo starts with: the repository's examples, compiled in so the binary
/// needs no checkout.
const POLICIES: &[(&str, &str)] = &[
    ("mesh-strict.yaml", MESH_STRICT),
    (
        "namespace-isolation.yaml",
        include_str!("../../../examples/policies/namespace-isolation.yaml"),
    ),
    (
        "allow-by-service-account.yaml",
        include_str!("../../../examples/policies/allow-by-service-account.yaml"),
    ),
    (
        "deny-admin-path.yaml",
        include_str!("../../../examples/policies/deny-admin-path.yaml"),
    ),
];

const MESH_STRICT: &str = "\
# Mesh-wide: every workload accepts only mutual TLS from the mesh (plaintext is refused).
apiVersion: security.ward.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: ward-system
spec:
  mtls:
    mode: STRICT
";

/// Set by SIGINT/SIGTERM/SIGHUP; every wait checks it, and the cluster's drop cleans up.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let bins = preflight()?;
    check_dir(&args.dir)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    std::thread::spawn(move || loop {
        if stop.load(Ordering::Relaxed) {
            STOP.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    let _lock = Lock::take()?;
    let leftovers = netns::remove_all();
    if leftovers > 0 {
        println!(
            "removed {leftovers} network namespace(s) left by an earlier demo that did not finish"
        );
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir).with_context(|| {
            format!(
                "removing the previous demo directory {}",
                args.dir.display()
            )
        })?;
    }
    std::fs::create_dir_all(args.dir.join("policies"))
        .with_context(|| format!("creating {}", args.dir.display()))?;
    std::fs::write(
        args.dir.join(MARKER),
        "made by `ward demo`; removed when it exits\n",
    )?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let result = (|| {
        let mut cluster = Cluster::create(&dir, PODS)?;
        start(&mut cluster, &bins)?;
        let ok = tour::play(&mut cluster, &bins)?;
        if !args.once && !interrupted() {
            tour::stay_up(&mut cluster, &bins)?;
        }
        Ok::<_, anyhow::Error>(ok)
    })();
    // The cluster is gone here (dropped inside the closure): processes killed, namespaces
    // deleted.
    let _ = std::fs::remove_dir_all(&dir);
    let left = netns::remove_all();
    println!(
        "\nward demo: removed its network namespaces, processes and {}{}",
        dir.display(),
        if left > 0 {
            " (some needed a second try)"
        } else {
            ""
        }
    );
    match result {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => {
            eprintln!(
                "ward demo: some calls did not end as the tour expected (marked UNEXPECTED above)"
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) if interrupted() => {
            eprintln!("ward demo: interrupted ({e:#})");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

pub fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The file that marks a directory as the demo's own: only such a directory (or an empty one,
/// or none) is ever removed, so a mistyped `--dir` cannot delete someone's files.
const MARKER: &str = ".ward-demo";

fn check_dir(dir: &Path) -> anyhow::Result<()> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(()); // absent (or unreadable: creating it will say why)
    };
    if dir.join(MARKER).is_file() || entries.next().is_none() {
        return Ok(());
    }
    bail!(
        "--dir {} exists and is not a ward demo directory (no {MARKER} in it); the demo removes its directory on exit, so choose a new or empty one",
        dir.display()
    )
}

/// Paths of the programs the demo runs.
pub struct Binaries {
    pub ward: PathBuf,
    pub proxy: PathBuf,
    pub control: PathBuf,
}

/// Root, the tools and the sibling binaries — each missing one named in one line.
fn preflight() -> anyhow::Result<Binaries> {
    if !cfg!(target_os = "linux") {
        bail!("ward demo needs Linux (network namespaces and nftables)");
    }
    let ward = std::env::current_exe().context("locating the ward binary")?;
    let dir = ward.parent().unwrap_or(Path::new("."));
    let sibling = |name: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            bail!(
                "ward demo needs {name} next to ward in {}: build it with `cargo build --release -p ward-proxy -p ward-control`, or run scripts/demo",
                dir.display()
            )
        }
    };
    let bins = Binaries {
        proxy: sibling("ward-proxy")?,
        control: sibling("ward-control")?,
        ward: ward.clone(),
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("ward demo needs root (it creates network namespaces and nftables rules): run it with sudo");
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("sysctl", "procps"),
        ("kill", "procps"),
    ] {
        if find_in_path(tool).is_none() {
            bail!("ward demo needs `{tool}`: apt-get install -y {package}");
        }
    }
    Ok(bins)
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// One demo at a time: the namespaces' names are fixed, so a second run would tear down the
/// first. The lock is a PID file; a stale one (its process gone) is taken over.
struct Lock(PathBuf);

impl Lock {
    fn take() -> anyhow::Result<Lock> {
        let path = PathBuf::from("/run/ward-demo.pid");
        if let Ok(pid) = std::fs::read_to_string(&path) {
            let pid = pid.trim();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if pid != std::process::id().to_string()
                && String::from_utf8_lossy(&cmdline).contains("demo")
            {
                bail!("another ward demo is running (pid {pid}); stop it first (Ctrl-C, or kill {pid})");
            }
        }
        std::fs::write(&path, std::process::id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Lock(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The CA, the mesh file and policies, the workloads, the control component and the proxies.
fn start(c: &mut Cluster, bins: &Binaries) -> anyhow::Result<()> {
    let dir = c.dir.clone();
    let ward = |args: &[&str]| -> anyhow::Result<String> {
        netns::sh(None, &bins.ward.display().to_string(), args)
    };
    println!(
        "== starting a mesh of 2 nodes and {} pods in {}",
        c.pods.len(),
        dir.display()
    );
    ward(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--out",
        &dir.join("ca").display().to_string(),
    ])?;
    for node in &c.nodes {
        let token = ward(&[
            "ca",
            "bootstrap-token",
            "--node",
            node.name,
            "--ca",
            &dir.join("ca").display().to_string(),
        ])?;
        std::fs::write(dir.join(format!("token-{}", node.name)), token.trim())?;
    }
    for (name, yaml) in POLICIES {
        std::fs::write(dir.join("policies").join(name), yaml)?;
    }
    std::fs::write(dir.join("mesh.yaml"), mesh_file(c))?;
    // A request to explain by hand: the call dev/tool makes to the storefront.
    std::fs::write(
        dir.join(tour::EXPLAIN_REQUEST),
        format!(
            r#"{{"destination": {{"namespace": "shop", "labels": {{"app": "storefront"}}, "ip": "{}", "port": 8080, "protocol": "http"}},
 "source": {{"principal": "spiffe://cluster.local/ns/dev/sa/tool", "ip": "{}"}},
 "request": {{"method": "GET", "path": "/products", "host": "storefront.shop"}}}}
"#,
            c.pod("storefront").ip,
            c.pod("tool").ip
        ),
    )?;
    for &(pod, port, protocol) in SERVERS {
        let ns = c.pod(pod).netns.clone();
        let port_s = port.to_string();
        c.spawn(
            &ns,
            &format!("workload-{pod}.log"),
            &bins.ward,
            &["demo-workload", protocol, "--name", pod, "--port", &port_s],
        )?;
        let probe = format!("127.0.0.1:{port}");
        let ward_path = bins.ward.clone();
        c.wait(
            &format!("{pod} listening on {port}"),
            Duration::from_secs(10),
            || {
                tour::call_in(&ward_path, &ns, "tcp", &probe, "GET", "/")
                    .is_ok_and(|l| !l.starts_with("error refused"))
            },
        )?;
    }
    let ctl = format!("{}control", netns::PREFIX);
    c.spawn(
        &ctl,
        "control.log",
        &bins.control,
        &[
            "--local-mesh",
            &dir.join("mesh.yaml").display().to_string(),
            "--local-ca",
            &dir.join("ca").display().to_string(),
            "--listen",
            "10.88.0.100:15012",
            "--metrics",
            "10.88.0.100:15014",
            "--webhook",
            "127.0.0.1:15017",
        ],
    )?;
    println!(
        "   ward-control (local mode, CA)    10.88.0.100:15012   log {}",
        dir.join("control.log").display()
    );
    let nodes: Vec<(String, &'static str)> =
        c.nodes.iter().map(|n| (n.netns.clone(), n.name)).collect();
    for (ns, name) in &nodes {
        c.spawn_split(
            ns,
            &format!("access-{name}.log"),
            &format!("proxy-{name}.log"),
            &bins.proxy,
            &[
                "--node",
                name,
                "--token-file",
                &format!("token-{name}"),
                "--control",
                "10.88.0.100:15012",
                "--trust-bundle",
                "ca/root.pem",
                "--drain-timeout",
                "1s",
            ],
            &[("WARD_LOG", "info")],
        )?;
    }
    for (ns, name) in &nodes {
        let ward_path = bins.ward.clone();
        c.wait(
            &format!("the proxy of {name} becoming ready"),
            Duration::from_secs(30),
            || {
                tour::call_in(
                    &ward_path,
                    ns,
                    "http",
                    "127.0.0.1:15021",
                    "GET",
                    "/healthz/ready",
                )
                .is_ok_and(|l| l == "http 200")
            },
        )?;
        println!(
            "   ward-proxy on {name}                ready            log {}, access log {}",
            dir.join(format!("proxy-{name}.log")).display(),
            dir.join(format!("access-{name}.log")).display()
        );
    }
    Ok(())
}

fn mesh_file(c: &Cluster) -> String {
    let mut y = String::from(
        "# The demo's cluster: what the Kubernetes API would say about nodes, pods and Services.\n\
         trustDomain: cluster.local\ntrustBundle: ca/root.pem\npolicies: [policies]\nnodes:\n",
    );
    for n in &c.nodes {
        y.push_str(&format!(
            "  - {{name: {}, address: {}, podCidr: {}}}\n",
            n.name, n.address, n.pod_cidr
        ));
    }
    y.push_str("workloads:\n");
    for p in &c.pods {
        let ports: Vec<String> = SERVERS
            .iter()
            .filter(|s| s.0 == p.name)
            .map(|(_, port, proto)| format!("{{port: {port}, protocol: {proto}}}"))
            .collect();
        y.push_str(&format!(
            "  - {{name: {name}, namespace: {ns}, serviceAccount: {sa}, node: node-{node}, ip: {ip}, labels: {{app: {name}}}, ports: [{ports}]}}\n",
            name = p.name,
            ns = p.namespace,
            sa = p.service_account,
            node = p.node,
            ip = p.ip,
            ports = ports.join(", ")
        ));
    }
    y.push_str(&format!(
        "services:\n  - {{name: storefront, namespace: shop, vip: {}, selector: {{app: storefront}}, ports: [{{port: 80, targetPort: 8080, protocol: http}}]}}\n",
        tour::STOREFRONT_VIP
    ));
    y
}
