//! The demo's cluster of network namespaces, and the processes in it.
//!
//! ```text
//!  ward-demo-net : bridge br0 ──┬── ward-demo-control  10.88.0.100  ward-control (local mode, CA)
//!                               ├── ward-demo-node-1   10.88.0.1    ward-proxy, pods 10.88.1.0/24
//!                               ├── ward-demo-node-2   10.88.0.2    ward-proxy, pods 10.88.2.0/24
//!                               └── ward-demo-outside  10.88.0.200  a host outside the mesh
//!  ward-demo-<pod> : one namespace per pod, on a routed /30 veth to its node, so every packet
//!                    of a pod passes its node's namespace, where the proxy intercepts it.
//! ```
//! Everything is created inside namespaces whose names start with [`PREFIX`] — no link, route or
//! rule is added to the machine's own namespace — so deleting those namespaces (after killing
//! every process inside them) removes all the demo made, including the proxies' nftables
//! tables. A crashed earlier run is cleaned up the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Every namespace the demo creates starts with this.
pub const PREFIX: &str = "ward-demo-";

/// A node of the demo cluster.
pub struct Node {
    pub name: &'static str,
    pub netns: String,
    pub address: &'static str,
    pub pod_cidr: &'static str,
}

/// A pod as created.
#[derive(Clone)]
pub struct Pod {
    pub name: &'static str,
    pub namespace: &'static str,
    pub service_account: &'static str,
    pub node: usize,
    pub netns: String,
    pub ip: String,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub dir: PathBuf,
    children: Vec<Child>,
}

/// Runs `ip netns exec NS program …` (or the program itself with `ns == None`) and requires
/// success.
pub fn sh(ns: Option<&str>, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = command(ns, Path::new(program));
    let out = cmd
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}`{} failed: {}",
            args.join(" "),
            ns.map(|n| format!(" in {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run inside network namespace `ns` (`ip netns exec` execs it, so a child's PID is
/// the program's own).
pub fn command(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Kills every process in the demo's namespaces and deletes them; returns how many it removed.
pub fn remove_all() -> usize {
    let Ok(list) = sh(None, "ip", &["netns", "list"]) else {
        return 0;
    };
    let mut removed = 0;
    for ns in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
    {
        if let Ok(pids) = sh(None, "ip", &["netns", "pids", ns]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        if sh(None, "ip", &["netns", "del", ns]).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl Cluster {
    /// Creates the namespaces, links and routes for `pods` on two nodes.
    pub fn create(
        dir: &Path,
        pods: &[(&'static str, &'static str, &'static str, usize)],
    ) -> anyhow::Result<Cluster> {
        let mut c = Cluster {
            nodes: vec![
                Node {
                    name: "node-1",
                    netns: format!("{PREFIX}node-1"),
                    address: "10.88.0.1",
                    pod_cidr: "10.88.1.0/24",
                },
                Node {
                    name: "node-2",
                    netns: format!("{PREFIX}node-2"),
                    address: "10.88.0.2",
                    pod_cidr: "10.88.2.0/24",
                },
            ],
            pods: Vec::new(),
            dir: dir.to_owned(),
            children: Vec::new(),
        };
        let net = add_ns("net")?;
        sh(Some(&net), "ip", &["link", "add", "br0", "type", "bridge"])?;
        sh(Some(&net), "ip", &["link", "set", "br0", "up"])?;
        attach(&add_ns("control")?, "control", "10.88.0.100/24")?;
        let outside = add_ns("outside")?;
        attach(&outside, "outside", "10.88.0.200/24")?;
        for (i, node) in c.nodes.iter().enumerate() {
            add_ns(&node.netns[PREFIX.len()..])?;
            attach(&node.netns, node.name, &format!("{}/24", node.address))?;
            sh(
                Some(&node.netns),
                "sysctl",
                &["-qw", "net.ipv4.ip_forward=1"],
            )?;
            sh(
                Some(&outside),
                "ip",
                &["route", "add", node.pod_cidr, "via", node.address],
            )?;
            for (j, other) in c.nodes.iter().enumerate() {
                if i != j {
                    sh(
                        Some(&node.netns),
                        "ip",
                        &["route", "add", other.pod_cidr, "via", other.address],
                    )?;
                }
            }
        }
        for (k, &(name, namespace, service_account, node)) in pods.iter().enumerate() {
            let node_ns = c.nodes[node - 1].netns.clone();
            let pod_ns = add_ns(name)?;
            let link = format!("pod{k}");
            let base = 4 * (k + 1);
            let gw = format!("10.88.{node}.{}", base + 1);
            let ip = format!("10.88.{node}.{}", base + 2);
            sh(
                None,
                "ip",
                &[
                    "link", "add", &link, "netns", &node_ns, "type", "veth", "peer", "name",
                    "eth0", "netns", &pod_ns,
                ],
            )?;
            sh(
                Some(&node_ns),
                "ip",
                &["addr", "add", &format!("{gw}/30"), "dev", &link],
            )?;
            sh(Some(&node_ns), "ip", &["link", "set", &link, "up"])?;
            sh(
                Some(&pod_ns),
                "ip",
                &["addr", "add", &format!("{ip}/30"), "dev", "eth0"],
            )?;
            sh(Some(&pod_ns), "ip", &["link", "set", "eth0", "up"])?;
            sh(
                Some(&pod_ns),
                "ip",
                &["route", "add", "default", "via", &gw],
            )?;
            c.pods.push(Pod {
                name,
                namespace,
                service_account,
                node,
                netns: pod_ns,
                ip,
            });
        }
        Ok(c)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("the demo defines no pod {name}"))
    }

    /// Starts `program args…` in `ns`, its stdout and stderr appended to `<dir>/<log>`.
    pub fn spawn(
        &mut self,
        ns: &str,
        log: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<()> {
        self.spawn_split(ns, log, log, program, args, &[])
    }

    /// [`Cluster::spawn`] with stdout and stderr in separate files, and extra environment.
    pub fn spawn_split(
        &mut self,
        ns: &str,
        stdout: &str,
        stderr: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .with_context(|| format!("creating {}", self.dir.join(name).display()))
        };
        let child = command(Some(ns), program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(open(stdout)?)
            .stderr(open(stderr)?)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", program.display()))?;
        self.children.push(child);
        Ok(())
    }

    /// Fails if a process the demo started has exited (a proxy that could not start, say),
    /// naming its log.
    pub fn check_children(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "a process of the demo (pid {}) exited: {status}; see the logs in {}",
                    child.id(),
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    /// Waits until `probe` returns true, or fails with `what` after `within`.
    pub fn wait(
        &mut self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        while !probe() {
            self.check_children()?;
            if start.elapsed() > within {
                bail!(
                    "{what} did not happen within {within:?}; see the logs in {}",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_all();
    }
}

fn add_ns(short: &str) -> anyhow::Result<String> {
    let name = format!("{PREFIX}{short}");
    sh(None, "ip", &["netns", "add", &name])?;
    sh(Some(&name), "ip", &["link", "set", "lo", "up"])?;
    Ok(name)
}

/// Connects `ns` to the bridge with a veth whose namespace end is `eth0`.
fn attach(ns: &str, port: &str, addr: &str) -> anyhow::Result<()> {
    let net = format!("{PREFIX}net");
    sh(
        None,
        "ip",
        &[
            "link", "add", port, "netns", &net, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    sh(
        Some(&net),
        "ip",
        &["link", "set", port, "master", "br0", "up"],
    )?;
    sh(Some(ns), "ip", &["addr", "add", addr, "dev", "eth0"])?;
    sh(Some(ns), "ip", &["link", "set", "eth0", "up"])?;
    Ok(())
}
