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
//!   redirected to the inbound plaintext listener (15006), which refuses it for STRICT workloads;
//! - non-TCP traffic (UDP, ICMP, …) *to* a STRICT pod is dropped in `forward` (a second set,
//!   `closed`): the proxy cannot authenticate it, so it must not arrive — unless the operator
//!   allowed it for that workload (`ward.dev/allow-non-tcp`), or it answers the pod's own
//!   traffic (conntrack: DNS replies, ICMP errors about its connections).
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
const CLOSED: &str = "closed";

/// What the table captures: every local workload address (`pods`), and those that non-TCP
/// traffic must not reach (`closed`: STRICT, non-TCP not allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub pods: Vec<IpAddr>,
    pub closed: Vec<IpAddr>,
}

/// The nft script that (re)creates the table for `capture`.
pub fn ruleset(capture: &Capture, outbound_port: u16, inbound_plaintext_port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tset {SET} {{\n\
         \t\ttype ipv4_addr\n\
         {pods}\
         \t}}\n\
         \tset {CLOSED} {{\n\
         \t\ttype ipv4_addr\n\
         {closed}\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} return\n\
         \t\tip saddr @{SET} fib daddr type local return\n\
         \t\tip saddr @{SET} meta l4proto tcp redirect to :{outbound_port}\n\
         \t\tip daddr @{SET} meta l4proto tcp redirect to :{inbound_plaintext_port}\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tip daddr @{CLOSED} meta l4proto != tcp ct state established,related accept\n\
         \t\tip daddr @{CLOSED} meta l4proto != tcp counter drop\n\
         \t}}\n\
         }}\n",
        pods = elements_line(&capture.pods),
        closed = elements_line(&capture.closed),
    )
}

/// The script that replaces both sets in one transaction.
pub fn set_update(capture: &Capture) -> String {
    let mut s = String::new();
    for (set, ips) in [(SET, &capture.pods), (CLOSED, &capture.closed)] {
        s.push_str(&format!("flush set ip {TABLE} {set}\n"));
        let v4 = v4_list(ips);
        if !v4.is_empty() {
            s.push_str(&format!("add element ip {TABLE} {set} {{ {v4} }}\n"));
        }
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

/// Installs (or replaces) the table for `capture`.
pub fn install(
    capture: &Capture,
    outbound_port: u16,
    inbound_plaintext_port: u16,
) -> anyhow::Result<()> {
    warn_unsupported(&capture.pods);
    nft_script(&ruleset(capture, outbound_port, inbound_plaintext_port))
}

/// Replaces the captured addresses (the table must be installed).
pub fn update(capture: &Capture) -> anyhow::Result<()> {
    warn_unsupported(&capture.pods);
    nft_script(&set_update(capture))
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
