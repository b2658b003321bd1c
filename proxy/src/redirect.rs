//! Transparent interception with nftables, at node level.
//!
//! Pods are routed through their node's network namespace, so one table there sees all their
//! TCP traffic in `prerouting`. Only *enrolled* workloads are captured: the table holds a set
//! of their addresses (`pods`), kept equal to the local workloads of the configuration, so a
//! pod outside the mesh on the same node is untouched:
//! - the proxy's own (marked) traffic returns untouched;
//! - traffic from a captured pod to addresses of the node itself returns untouched;
//! - other TCP from a captured pod is redirected to the outbound listener (15001);
//! - TCP *to* a captured pod from elsewhere (plaintext that did not come through a tunnel) is
//!   redirected to the inbound plaintext listener (15006), which refuses it for STRICT workloads.
//!
//! Everything lives in one table, `ip ward`, installed atomically (`nft -f`) and idempotently
//! (the script declares, deletes and re-creates the table). The table outlives the proxy: a
//! stopped, crashed or upgrading proxy leaves it in place, so captured traffic keeps going to
//! the proxy's ports, where nothing listens and connections are refused — the node fails
//! closed instead of opening — and the next proxy adopts it. Only an explicit uninstall
//! (`ward-proxy uninstall`, one `delete table`) removes it, leaving the ruleset exactly as it
//! was before. A change of the
//! workload set replaces the set's elements in one transaction (flush + add): no packet sees
//! a half-updated set, and live connections (conntrack-NATed already) are not disturbed.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::socket::PROXY_MARK;

/// Whether the proxy manages redirection rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Install (or adopt) the `ip ward` nftables table at start; leave it at exit.
    Nftables,
    /// Leave interception to someone else (tests that only exercise HBONE).
    None,
}

const TABLE: &str = "ward";
const SET: &str = "pods";

/// The nft script that (re)creates the table, capturing `pods`.
pub fn ruleset(pods: &[IpAddr], outbound_port: u16, inbound_plaintext_port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset {SET} {{\n\
         \t\ttype ipv4_addr\n\
         {elements}\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} return\n\
         \t\tip saddr @{SET} fib daddr type local return\n\
         \t\tip saddr @{SET} meta l4proto tcp redirect to :{outbound_port}\n\
         \t\tip daddr @{SET} meta l4proto tcp redirect to :{inbound_plaintext_port}\n\
         \t}}\n\
         }}\n",
        elements = elements_line(pods),
    )
}

/// The script that replaces the captured set in one transaction.
pub fn set_update(pods: &[IpAddr]) -> String {
    let mut s = format!("flush set ip {TABLE} {SET}\n");
    let v4 = v4_list(pods);
    if !v4.is_empty() {
        s.push_str(&format!("add element ip {TABLE} {SET} {{ {v4} }}\n"));
    }
    s
}

fn v4_list(pods: &[IpAddr]) -> String {
    pods.iter()
        .filter(|ip| ip.is_ipv4())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn elements_line(pods: &[IpAddr]) -> String {
    let v4 = v4_list(pods);
    if v4.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {v4} }}\n")
    }
}

/// Installs (or replaces) the table, capturing `pods`.
pub fn install(
    pods: &[IpAddr],
    outbound_port: u16,
    inbound_plaintext_port: u16,
) -> anyhow::Result<()> {
    warn_unsupported(pods);
    nft_script(&ruleset(pods, outbound_port, inbound_plaintext_port))
}

/// Replaces the set of captured addresses (the table must be installed).
pub fn update(pods: &[IpAddr]) -> anyhow::Result<()> {
    warn_unsupported(pods);
    nft_script(&set_update(pods))
}

fn warn_unsupported(pods: &[IpAddr]) {
    let v6 = pods.iter().filter(|ip| ip.is_ipv6()).count();
    if v6 > 0 {
        tracing::warn!(
            addresses = v6,
            "IPv6 workload addresses are not intercepted yet (IPv4 only)"
        );
    }
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
