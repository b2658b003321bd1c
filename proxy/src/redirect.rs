//! Transparent interception with nftables, at node level.
//!
//! Pods are routed through their node's network namespace, so one table there sees all their
//! TCP traffic in `prerouting`, IPv4 and IPv6 alike. Only *enrolled* workloads are captured:
//! the table holds sets of their addresses (`pods4`, `pods6`), kept equal to the local
//! workloads of the configuration, so a pod outside the mesh on the same node is untouched:
//! - the proxy's own (marked) traffic returns untouched;
//! - traffic from a captured pod to addresses of the node itself returns untouched;
//! - other TCP from a captured pod is redirected to the outbound listener (15001);
//! - TCP *to* a captured pod from elsewhere (plaintext that did not come through a tunnel) is
//!   redirected to the inbound plaintext listener (15006), which refuses it for STRICT workloads;
//! - non-TCP traffic (UDP, ICMP, …) *to* a STRICT pod is dropped in `forward` (sets `closed4`,
//!   `closed6`): the proxy cannot authenticate it, so it must not arrive — unless the operator
//!   allowed it for that workload (`ward.dev/allow-non-tcp`), or it answers the pod's own
//!   traffic (conntrack: DNS replies, ICMP errors about its connections).
//!
//! Everything lives in one table, `inet ward` (both families, so no IPv6 path goes around an
//! IPv4-only table), installed atomically (`nft -f`) and idempotently (the script declares,
//! deletes and re-creates the table, and replaces an earlier release's `ip ward` with it). The
//! table outlives the proxy: a stopped, crashed or upgrading proxy leaves it in place, so
//! captured traffic keeps going to the proxy's ports, where nothing listens and connections
//! are refused — the node fails closed instead of opening — and the next proxy adopts it. Only
//! an explicit uninstall (`ward-proxy uninstall`) removes it, leaving the ruleset exactly as it
//! was before. A change of the workload set replaces the sets' elements in one transaction
//! (flush + add): no packet sees a half-updated set, and live connections (conntrack-NATed
//! already) are not disturbed.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::socket::PROXY_MARK;

/// The packet mark of replies to the proxy's own connections, and the number of the routing
/// table that delivers them locally (1338).
pub const REPLY_MARK: u32 = 0x53a;

/// Whether the proxy manages redirection rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Install (or adopt) the `inet ward` nftables table at start; leave it at exit.
    Nftables,
    /// Leave interception to someone else (tests that only exercise HBONE).
    None,
}

const TABLE: &str = "ward";
/// The family of the table: `inet` holds IPv4 and IPv6 rules together, so one atomic script
/// covers a dual-stack node and no IPv6 path bypasses an IPv4-only table.
const FAMILY: &str = "inet";
/// Earlier releases used an `ip` (IPv4-only) table of the same name: the install script
/// replaces it in the same transaction, and uninstall removes it too.
const LEGACY_FAMILY: &str = "ip";

/// What the table captures: every local workload address (`pods`), and those that non-TCP
/// traffic must not reach (`closed`: STRICT, non-TCP not allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    pub pods: Vec<IpAddr>,
    pub closed: Vec<IpAddr>,
}

/// The sets of the table: (name, addresses of one family, nft type).
fn sets(capture: &Capture) -> [(&'static str, String, &'static str); 4] {
    [
        ("pods4", list(&capture.pods, IpAddr::is_ipv4), "ipv4_addr"),
        ("pods6", list(&capture.pods, IpAddr::is_ipv6), "ipv6_addr"),
        (
            "closed4",
            list(&capture.closed, IpAddr::is_ipv4),
            "ipv4_addr",
        ),
        (
            "closed6",
            list(&capture.closed, IpAddr::is_ipv6),
            "ipv6_addr",
        ),
    ]
}

/// The nft script that (re)creates the table for `capture`. Every rule exists once per family
/// (`ip` for IPv4, `ip6` for IPv6): a dual-stack pod is captured on both of its addresses.
pub fn ruleset(capture: &Capture, outbound_port: u16, inbound_plaintext_port: u16) -> String {
    let mut s = format!(
        "table {LEGACY_FAMILY} {TABLE}\n\
         delete table {LEGACY_FAMILY} {TABLE}\n\
         table {FAMILY} {TABLE}\n\
         delete table {FAMILY} {TABLE}\n\
         table {FAMILY} {TABLE} {{\n"
    );
    for (name, elements, ty) in sets(capture) {
        s.push_str(&format!("\tset {name} {{\n\t\ttype {ty}\n"));
        if !elements.is_empty() {
            s.push_str(&format!("\t\telements = {{ {elements} }}\n"));
        }
        s.push_str("\t}\n");
    }
    s.push_str(&format!(
        "\tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat - 10; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} return\n"
    ));
    for (ip, v) in [("ip", 4), ("ip6", 6)] {
        s.push_str(&format!(
            "\t\t{ip} saddr @pods{v} fib daddr type local return\n\
             \t\t{ip} saddr @pods{v} meta l4proto tcp redirect to :{outbound_port}\n\
             \t\t{ip} daddr @pods{v} meta l4proto tcp redirect to :{inbound_plaintext_port}\n"
        ));
    }
    // The return path of transparent connections (the workload sees its client's address):
    // every connection the proxy opens is marked (`ct mark`) when it starts; the replies to
    // it get the reply mark in prerouting, and the policy route of that mark (see
    // `install_return_route`) delivers them locally — to the proxy's socket bound to the
    // client's address — instead of forwarding them to the client itself. The empty `nat`
    // postrouting chain makes the kernel give a proxy connection whose addresses and ports
    // equal a client connection it already tracks (a same-node client's original connection)
    // a fresh source port instead of dropping it as a clash.
    s.push_str(&format!(
        "\t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority mangle; policy accept;\n\
         \t\tmeta mark {PROXY_MARK:#x} ct state new ct mark set {PROXY_MARK:#x}\n\
         \t}}\n\
         \tchain replies {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tct mark {PROXY_MARK:#x} meta mark set {REPLY_MARK:#x}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    ));
    s.push_str(
        "\t}\n\
         \tchain forward {\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n",
    );
    for (ip, v) in [("ip", 4), ("ip6", 6)] {
        s.push_str(&format!(
            "\t\t{ip} daddr @closed{v} meta l4proto != tcp ct state established,related accept\n\
             \t\t{ip} daddr @closed{v} meta l4proto != tcp counter drop\n"
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

/// The script that replaces every set in one transaction.
pub fn set_update(capture: &Capture) -> String {
    let mut s = String::new();
    for (name, elements, _) in sets(capture) {
        s.push_str(&format!("flush set {FAMILY} {TABLE} {name}\n"));
        if !elements.is_empty() {
            s.push_str(&format!(
                "add element {FAMILY} {TABLE} {name} {{ {elements} }}\n"
            ));
        }
    }
    s
}

fn list(ips: &[IpAddr], family: fn(&IpAddr) -> bool) -> String {
    ips.iter()
        .filter(|ip| family(ip))
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs (or replaces) the table for `capture`.
pub fn install(
    capture: &Capture,
    outbound_port: u16,
    inbound_plaintext_port: u16,
) -> anyhow::Result<()> {
    nft_script(&ruleset(capture, outbound_port, inbound_plaintext_port))
}

/// Replaces the captured addresses (the table must be installed).
pub fn update(capture: &Capture) -> anyhow::Result<()> {
    nft_script(&set_update(capture))
}

/// Removes the table (and an earlier release's IPv4-only one) and the return route, if present.
pub fn remove() -> anyhow::Result<()> {
    nft_script(&format!(
        "table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n\
         table {LEGACY_FAMILY} {TABLE}\ndelete table {LEGACY_FAMILY} {TABLE}\n"
    ))?;
    remove_return_route()
}

/// The policy route that delivers replies to transparent connections locally, per family:
/// `ip rule fwmark REPLY_MARK lookup 1338` and `local default dev lo table 1338`. Idempotent
/// (the route is replaced; the rule added only if missing — never deleted and re-added, which
/// would misroute replies for a moment). Like the table, it outlives the proxy.
pub fn install_return_route() -> anyhow::Result<()> {
    let table = REPLY_MARK.to_string();
    let mark = format!("{REPLY_MARK:#x}");
    let install = |family: &str, default: &str| -> anyhow::Result<()> {
        ip_cmd(&[
            family, "route", "replace", "local", default, "dev", "lo", "table", &table,
        ])?;
        let rules = ip_cmd(&[family, "rule", "show", "fwmark", &mark])?;
        if !rules.contains(&format!("lookup {table}")) {
            ip_cmd(&[family, "rule", "add", "fwmark", &mark, "lookup", &table])?;
        }
        Ok(())
    };
    install("-4", "0.0.0.0/0")?;
    // A node without IPv6 has no IPv6 clients to preserve.
    if let Err(e) = install("-6", "::/0") {
        tracing::warn!(error = %e, "no IPv6 return route (IPv6 unavailable?)");
    }
    Ok(())
}

fn remove_return_route() -> anyhow::Result<()> {
    let table = REPLY_MARK.to_string();
    let mark = format!("{REPLY_MARK:#x}");
    for family in ["-4", "-6"] {
        // Without IPv6 there is nothing to show or remove for `-6`.
        let Ok(rules) = ip_cmd(&[family, "rule", "show", "fwmark", &mark]) else {
            continue;
        };
        for _ in rules.lines().filter(|l| l.contains("lookup")) {
            ip_cmd(&[family, "rule", "del", "fwmark", &mark, "lookup", &table])?;
        }
        // Absent already is fine: flushing an empty table fails only with "no such table".
        let _ = ip_cmd(&[family, "route", "flush", "table", &table]);
    }
    Ok(())
}

fn ip_cmd(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running ip (apt-get install -y iproute2): {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> Capture {
        let ips = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect()
        };
        Capture {
            pods: ips(&["10.1.0.2", "fd01::2", "10.1.0.3"]),
            closed: ips(&["fd01::2"]),
        }
    }

    #[test]
    fn every_rule_exists_for_both_families_and_the_legacy_table_goes() {
        let s = ruleset(&capture(), 15001, 15006);
        assert!(
            s.starts_with("table ip ward\ndelete table ip ward\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.1.0.2, 10.1.0.3 }"), "{s}");
        assert!(s.contains("elements = { fd01::2 }"), "{s}");
        for ip in ["ip", "ip6"] {
            let v = if ip == "ip" { 4 } else { 6 };
            for rule in [
                format!("{ip} saddr @pods{v} meta l4proto tcp redirect to :15001"),
                format!("{ip} daddr @pods{v} meta l4proto tcp redirect to :15006"),
                format!("{ip} daddr @closed{v} meta l4proto != tcp counter drop"),
            ] {
                assert!(s.contains(&rule), "missing {rule:?} in\n{s}");
            }
        }
    }

    #[test]
    fn a_set_update_replaces_every_set() {
        let s = set_update(&capture());
        for set in ["pods4", "pods6", "closed4", "closed6"] {
            assert!(s.contains(&format!("flush set inet ward {set}\n")), "{s}");
        }
        assert!(
            s.contains("add element inet ward closed6 { fd01::2 }"),
            "{s}"
        );
        assert!(!s.contains("add element inet ward closed4"), "{s}");
    }
}
