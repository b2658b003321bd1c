//! Transparent interception with nftables, at node level.
//!
//! Pods are routed through their node's network namespace, so one table there sees all their
//! TCP traffic in `prerouting`:
//! - the proxy's own (marked) traffic returns untouched;
//! - traffic from the node's pod CIDR to addresses of the node itself returns untouched;
//! - other TCP from the pod CIDR is redirected to the outbound listener (15001);
//! - TCP *to* the pod CIDR from elsewhere (plaintext that did not come through a tunnel) is
//!   redirected to the inbound plaintext listener (15006), which refuses it for STRICT workloads.
//!
//! Everything lives in one table, `ip ward`, installed atomically (`nft -f`) and idempotently
//! (the script declares, deletes and re-creates the table), and removed with one `delete
//! table`, so a stopped proxy leaves the ruleset exactly as it found it.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::socket::PROXY_MARK;

/// Whether the proxy manages redirection rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Install the `ip ward` nftables table at start; remove it at exit.
    Nftables,
    /// Leave interception to someone else (tests that only exercise HBONE).
    None,
}

const TABLE: &str = "ward";

/// The nft script for a node.
pub fn ruleset(pod_cidr: IpNet, outbound_port: u16, inbound_plaintext_port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} return\n\
         \t\tip saddr {pod_cidr} fib daddr type local return\n\
         \t\tip saddr {pod_cidr} meta l4proto tcp redirect to :{outbound_port}\n\
         \t\tip daddr {pod_cidr} meta l4proto tcp redirect to :{inbound_plaintext_port}\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (or replaces) the table.
pub fn install(
    pod_cidr: IpNet,
    outbound_port: u16,
    inbound_plaintext_port: u16,
) -> anyhow::Result<()> {
    if !matches!(pod_cidr, IpNet::V4(_)) {
        anyhow::bail!("pod CIDR {pod_cidr}: only IPv4 interception is implemented");
    }
    nft_script(&ruleset(pod_cidr, outbound_port, inbound_plaintext_port))
}

/// Removes the table if present.
pub fn remove() -> anyhow::Result<()> {
    nft_script(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n"))
}

fn nft_script(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running nft (apt-get install -y nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
