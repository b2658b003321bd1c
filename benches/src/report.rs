//! Turns measurements into the Markdown report and the JSON file: medians with min–max over
//! repetitions, ratios to the no-proxy baseline and to the Envoy pair, and the DESIGN.md
//! quality bars with their verdicts.

use std::fmt::Write as _;

use crate::scenarios::Measurement;
use crate::topology::Mode;

/// median, min, max of one metric over a measurement's samples.
pub fn stat(m: &Measurement, key: &str) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = m
        .samples
        .iter()
        .filter_map(|s| s.get(key).copied())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((mid, v[0], v[v.len() - 1]))
}

pub fn median(m: &Measurement, key: &str) -> Option<f64> {
    stat(m, key).map(|s| s.0)
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(m: &Measurement, key: &str) -> String {
    match stat(m, key) {
        None => "–".into(),
        Some((mid, lo, hi)) if m.samples.len() > 1 => {
            format!("{} ({}–{})", fmt_num(mid), fmt_num(lo), fmt_num(hi))
        }
        Some((mid, _, _)) => fmt_num(mid),
    }
}

/// The variant of the no-proxy baseline for a variant (an L7 port's baseline is the same
/// nginx on an L4 port: without proxies the two ports are identical).
fn baseline_variant(v: &str) -> String {
    v.replace("L7 (http)", "L4 (tcp)")
}

fn find<'a>(
    all: &'a [Measurement],
    scenario: &str,
    variant: &str,
    mode: Mode,
) -> Option<&'a Measurement> {
    all.iter()
        .find(|m| m.scenario == scenario && m.variant == variant && m.mode == mode)
}

fn direct_of<'a>(all: &'a [Measurement], m: &Measurement) -> Option<&'a Measurement> {
    let scenario = if m.scenario == "tunnel-rate" {
        "conn-rate"
    } else {
        m.scenario
    };
    find(all, scenario, &baseline_variant(&m.variant), Mode::Direct)
}

fn envoy_of<'a>(all: &'a [Measurement], m: &Measurement) -> Option<&'a Measurement> {
    let (scenario, mode) = match m.mode {
        Mode::Ward => (m.scenario, Mode::Envoy),
        Mode::WardNoPool | Mode::Haproxy if m.scenario == "tunnel-rate" => {
            ("tunnel-rate", Mode::EnvoyNoPool)
        }
        Mode::Haproxy => (m.scenario, Mode::Envoy),
        _ => return None,
    };
    find(all, scenario, &baseline_variant(&m.variant), mode)
        .or_else(|| find(all, scenario, &m.variant, mode))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

struct Column {
    title: &'static str,
    key: &'static str,
}

const fn col(title: &'static str, key: &'static str) -> Column {
    Column { title, key }
}

/// One table: a row per measurement of `scenario`, the headline metric with its ratios, then
/// `columns`.
fn table(
    out: &mut String,
    all: &[Measurement],
    scenario: &str,
    headline: Column,
    columns: &[Column],
) {
    let rows: Vec<&Measurement> = all.iter().filter(|m| m.scenario == scenario).collect();
    if rows.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "| path | variant | {} | × direct | × Envoy |",
        headline.title
    );
    for c in columns {
        let _ = write!(out, " {} |", c.title);
    }
    out.push_str("\n|---|---|---:|---:|---:|");
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    for m in &rows {
        let h = median(m, headline.key);
        let to =
            |other: Option<&Measurement>| ratio(h, other.and_then(|o| median(o, headline.key)));
        let direct = if m.mode == Mode::Direct {
            "1.00".to_string()
        } else {
            to(direct_of(all, m))
        };
        let envoy = if m.mode == Mode::Envoy || m.mode == Mode::EnvoyNoPool {
            "1.00".to_string()
        } else {
            to(envoy_of(all, m))
        };
        let _ = write!(
            out,
            "| {} | {} | {} | {direct} | {envoy} |",
            m.mode.label(),
            m.variant,
            cell(m, headline.key)
        );
        for c in columns {
            let _ = write!(out, " {} |", cell(m, c.key));
        }
        out.push('\n');
    }
    for m in rows.iter().filter(|m| m.note.is_some()) {
        let _ = writeln!(
            out,
            "\n{}: {}",
            m.mode.label(),
            m.note.as_deref().unwrap_or("")
        );
    }
    out.push('\n');
}

/// A DESIGN.md quality bar and how ward did.
#[derive(Debug, serde::Serialize)]
pub struct Bar {
    pub bar: &'static str,
    pub target: String,
    pub ward: Option<f64>,
    pub envoy: Option<f64>,
    pub met: Option<bool>,
    pub how: &'static str,
}

fn bar(
    bar: &'static str,
    target: f64,
    at_most: bool,
    ward: Option<f64>,
    envoy: Option<f64>,
    how: &'static str,
) -> Bar {
    Bar {
        bar,
        target: format!("{} {}", if at_most { "≤" } else { "≥" }, fmt_num(target)),
        ward,
        envoy,
        met: ward.map(|w| if at_most { w <= target } else { w >= target }),
        how,
    }
}

pub fn bars(all: &[Measurement]) -> Vec<Bar> {
    let get = |scenario: &str, variant: &str, mode: Mode, key: &str| {
        find(all, scenario, variant, mode).and_then(|m| median(m, key))
    };
    let share = |scenario: &str, variant: &str, mode: Mode, key: &str| {
        let direct_scenario = if scenario == "tunnel-rate" {
            "conn-rate"
        } else {
            scenario
        };
        let direct = get(
            direct_scenario,
            &baseline_variant(variant),
            Mode::Direct,
            key,
        )?;
        Some(get(scenario, variant, mode, key)? / direct)
    };
    // "Under the load above": the loads the bars above name (one stream, 1 000 req/s on either
    // port, new connections through pooled tunnels).
    let max_of = |mode: Mode, keys: &[&str]| {
        all.iter()
            .filter(|m| m.mode == mode && named_load(m))
            .flat_map(|m| keys.iter().filter_map(|k| median(m, k)))
            .reduce(f64::max)
    };
    let rss_idle = |mode: Mode| {
        let a = get(
            "idle-memory",
            "idle tunnelled connections",
            mode,
            "idle_mib_node1",
        )?;
        let b = get(
            "idle-memory",
            "idle tunnelled connections",
            mode,
            "idle_mib_node2",
        )?;
        Some(a.max(b) * 1.048_576)
    };
    let ms = |v: Option<f64>| v.map(|x| x / 1000.0);
    vec![
        bar(
            "single-stream throughput, share of direct (1.25 × ztunnel's 0.27 here)",
            0.34,
            false,
            share("throughput", "1 stream", Mode::Ward, "gbit_s"),
            share("throughput", "1 stream", Mode::Envoy, "gbit_s"),
            "iperf3, 1 stream, Gbit/s through both proxies ÷ without proxies",
        ),
        bar(
            "proxy CPU per GB, sending side (node-1), s",
            0.7,
            true,
            get("throughput", "1 stream", Mode::Ward, "cpu_s_per_gb_node1"),
            get("throughput", "1 stream", Mode::Envoy, "cpu_s_per_gb_node1"),
            "user+system CPU of the node-1 proxy ÷ GB moved (iperf3, 1 stream)",
        ),
        bar(
            "proxy CPU per GB, receiving side (node-2), s",
            0.7,
            true,
            get("throughput", "1 stream", Mode::Ward, "cpu_s_per_gb_node2"),
            get("throughput", "1 stream", Mode::Envoy, "cpu_s_per_gb_node2"),
            "user+system CPU of the node-2 proxy ÷ GB moved (iperf3, 1 stream)",
        ),
        bar(
            "p99 at 1 000 req/s over keep-alive connections, × direct",
            2.5,
            true,
            share("latency", "L4 (tcp) port, 1000 req/s", Mode::Ward, "p99_us"),
            share("latency", "L4 (tcp) port, 1000 req/s", Mode::Envoy, "p99_us"),
            "fixed-rate HTTP/1.1 over 10 connections, end to end (L4 port), ÷ the same without proxies",
        ),
        bar(
            "p99 at 1 000 req/s, L7 port, × direct",
            3.0,
            true,
            share("latency", "L7 (http) port, 1000 req/s", Mode::Ward, "p99_us"),
            None,
            "as above, port declared http (every request authorized)",
        ),
        bar(
            "new connections through pooled tunnels, share of direct",
            0.55,
            false,
            share("conn-rate", "new connection + 1 request", Mode::Ward, "rate"),
            share("conn-rate", "new connection + 1 request", Mode::Envoy, "rate"),
            "connect + 1 request + close, 8 at a time",
        ),
        bar(
            "new mTLS tunnel, CPU per side (node-1), ms",
            0.45,
            true,
            ms(get("tunnel-rate", "new connection + 1 request", Mode::WardNoPool, "cpu_us_per_conn_node1")),
            ms(get("tunnel-rate", "new connection + 1 request", Mode::EnvoyNoPool, "cpu_us_per_conn_node1")),
            "pooling off: CPU per connection, which includes TLS 1.3 + HTTP/2 handshakes, the stream and the relay",
        ),
        bar(
            "new mTLS tunnel, CPU per side (node-2), ms",
            0.45,
            true,
            ms(get("tunnel-rate", "new connection + 1 request", Mode::WardNoPool, "cpu_us_per_conn_node2")),
            ms(get("tunnel-rate", "new connection + 1 request", Mode::EnvoyNoPool, "cpu_us_per_conn_node2")),
            "as above, server side",
        ),
        bar(
            "proxy RSS idle, MB",
            10.0,
            true,
            rss_idle(Mode::Ward),
            rss_idle(Mode::Envoy),
            "VmRSS of each proxy with configuration and certificates, no connections (larger of the two)",
        ),
        bar(
            "proxy RSS under load, MB",
            16.0,
            true,
            max_of(Mode::Ward, &["peak_rss_mib_node1", "peak_rss_mib_node2"]).map(|x| x * 1.048_576),
            max_of(Mode::Envoy, &["peak_rss_mib_node1", "peak_rss_mib_node2"]).map(|x| x * 1.048_576),
            "largest peak RSS (VmHWM, median of repetitions) of either proxy under one iperf3 stream, 1 000 req/s (L4 and L7) and the connection-rate load; every scenario's peak is in the tables below",
        ),
        bar(
            "proxy RSS above idle 30 s after a load, MiB",
            2.0,
            true,
            get("idle-memory", "idle tunnelled connections", Mode::Ward, "given_back_over_idle_mib"),
            get("idle-memory", "idle tunnelled connections", Mode::Envoy, "given_back_over_idle_mib"),
            "10 000 idle tunnelled connections opened and closed: VmRSS 30 s after the close minus VmRSS before any load (larger of the two proxies)",
        ),
        bar(
            "policy decision (10 000 policies mesh-wide), µs",
            1.0,
            true,
            get("policy", &format!("{} policies in the mesh", 10_012), Mode::Ward, "p99_ns")
                .map(|x| x / 1000.0),
            None,
            "p99 of individually timed decisions on the cached per-workload path",
        ),
    ]
}

/// The scenarios whose load a DESIGN.md bar names.
fn named_load(m: &Measurement) -> bool {
    matches!(
        (m.scenario, m.variant.as_str()),
        ("throughput", "1 stream")
            | (
                "latency",
                "L4 (tcp) port, 1000 req/s" | "L7 (http) port, 1000 req/s"
            )
            | ("conn-rate", _)
    )
}

/// Largest peak RSS (MB) of `mode`'s proxies over every load scenario.
fn peak_everywhere(all: &[Measurement], mode: Mode) -> Option<f64> {
    all.iter()
        .filter(|m| m.mode == mode && !matches!(m.scenario, "idle-memory" | "retained"))
        .flat_map(|m| {
            ["peak_rss_mib_node1", "peak_rss_mib_node2"]
                .into_iter()
                .filter_map(|k| median(m, k))
        })
        .reduce(f64::max)
        .map(|x| x * 1.048_576)
}

/// The Markdown report.
pub fn markdown(all: &[Measurement], machine: &str, settings: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ward benchmark results\n\n{machine}\n\n{settings}\n");
    out.push_str("## Quality bars (DESIGN.md)\n\n| bar | target | ward | Envoy pair | met | measured as |\n|---|---:|---:|---:|:---:|---|\n");
    for b in bars(all) {
        let v = |x: Option<f64>| x.map(fmt_num).unwrap_or_else(|| "–".into());
        let met = match b.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {met} | {} |",
            b.bar,
            b.target,
            v(b.ward),
            v(b.envoy),
            b.how
        );
    }
    out.push_str("| control: 10 000 pods, 1 000 policies, 100 nodes → full distribution, s | ≤ 2 | – | – | see `control-scale` | measured by its own command, `control-scale` (benches/README.md) |\n\n");
    let mb = |x: Option<f64>| x.map(fmt_num).unwrap_or_else(|| "–".into());
    let _ = writeln!(
        out,
        "Largest peak RSS over every load scenario (4 streams, 5 000 req/s and wrk's closed loop included): ward {} MB, Envoy {} MB, haproxy {} MB.\n",
        mb(peak_everywhere(all, Mode::Ward)),
        mb(peak_everywhere(all, Mode::Envoy)),
        mb(peak_everywhere(all, Mode::Haproxy))
    );

    out.push_str("## TCP throughput (iperf3)\n\n");
    table(
        &mut out,
        all,
        "throughput",
        col("Gbit/s", "gbit_s"),
        &[
            col("CPU s/GB node-1", "cpu_s_per_gb_node1"),
            col("CPU s/GB node-2", "cpu_s_per_gb_node2"),
            col("peak RSS MiB node-1", "peak_rss_mib_node1"),
            col("peak RSS MiB node-2", "peak_rss_mib_node2"),
        ],
    );
    out.push_str("## HTTP/1.1 latency at a fixed rate (10 keep-alive connections, open loop)\n\nRatios are of p99 (lower is better).\n\n");
    table(
        &mut out,
        all,
        "latency",
        col("p99 µs", "p99_us"),
        &[
            col("p50 µs", "p50_us"),
            col("p90 µs", "p90_us"),
            col("p99.9 µs", "p999_us"),
            col("achieved req/s", "rate"),
            col("errors", "errors"),
            col("CPU µs/req node-1", "cpu_us_per_req_node1"),
            col("CPU µs/req node-2", "cpu_us_per_req_node2"),
            col("peak RSS MiB node-1", "peak_rss_mib_node1"),
        ],
    );
    out.push_str("## HTTP/1.1 maximum rate (wrk, 16 keep-alive connections, closed loop)\n\n");
    table(
        &mut out,
        all,
        "http-max",
        col("req/s", "rps"),
        &[
            col("p50 µs", "p50_us"),
            col("p99 µs", "p99_us"),
            col("CPU µs/req node-1", "cpu_us_per_req_node1"),
            col("CPU µs/req node-2", "cpu_us_per_req_node2"),
        ],
    );
    out.push_str("## New connections per second through pooled tunnels (8 concurrent)\n\n");
    table(
        &mut out,
        all,
        "conn-rate",
        col("conn/s", "rate"),
        &[
            col("p50 µs", "p50_us"),
            col("p99 µs", "p99_us"),
            col("CPU µs/conn node-1", "cpu_us_per_conn_node1"),
            col("CPU µs/conn node-2", "cpu_us_per_conn_node2"),
        ],
    );
    out.push_str(
        "## New mTLS tunnels per second (a new TLS connection for every TCP connection)\n\n",
    );
    table(
        &mut out,
        all,
        "tunnel-rate",
        col("conn/s", "rate"),
        &[
            col("p50 µs", "p50_us"),
            col("p99 µs", "p99_us"),
            col("CPU µs/conn node-1", "cpu_us_per_conn_node1"),
            col("CPU µs/conn node-2", "cpu_us_per_conn_node2"),
        ],
    );
    out.push_str(
        "## Access logging under a connection flood (ward; the log written, off, and stalled)\n\n",
    );
    table(
        &mut out,
        all,
        "log-flood",
        col("conn/s", "rate"),
        &[
            col("p50 µs", "p50_us"),
            col("p99 µs", "p99_us"),
            col("CPU µs/conn node-1", "cpu_us_per_conn_node1"),
            col("CPU µs/conn node-2", "cpu_us_per_conn_node2"),
            col("records dropped node-1", "dropped_node1"),
            col("records dropped node-2", "dropped_node2"),
        ],
    );
    out.push_str("## Proxy memory with idle tunnelled connections (VmRSS, measured first on a fresh path)\n\n");
    table(
        &mut out,
        all,
        "idle-memory",
        col("idle MiB node-1", "idle_mib_node1"),
        &[
            col("idle MiB node-2", "idle_mib_node2"),
            col("1 000 conns MiB node-1", "conns1000_mib_node1"),
            col("1 000 conns MiB node-2", "conns1000_mib_node2"),
            col("10 000 conns MiB node-1", "conns10000_mib_node1"),
            col("10 000 conns MiB node-2", "conns10000_mib_node2"),
            col("KiB/conn node-1", "kib_per_conn_node1"),
            col("KiB/conn node-2", "kib_per_conn_node2"),
            col("closed again MiB node-1", "closed_mib_node1"),
            col("closed again MiB node-2", "closed_mib_node2"),
            col("30 s later MiB node-1", "later_mib_node1"),
            col("30 s later MiB node-2", "later_mib_node2"),
        ],
    );
    out.push_str("## Proxy memory after all load scenarios (idle again)\n\n");
    table(
        &mut out,
        all,
        "retained",
        col("RSS MiB node-1", "rss_mib_node1"),
        &[col("RSS MiB node-2", "rss_mib_node2")],
    );
    out.push_str("## Policy decision (in process)\n\n");
    for m in all.iter().filter(|m| m.scenario == "policy") {
        let _ = writeln!(
            out,
            "{}: p50 {} ns, p99 {} ns.\n",
            m.variant,
            cell(m, "p50_ns"),
            cell(m, "p99_ns")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // reason: tests fail loudly

    use super::*;
    use crate::scenarios::Sample;

    fn m(scenario: &'static str, variant: &str, mode: Mode, values: &[f64]) -> Measurement {
        Measurement {
            scenario,
            variant: variant.into(),
            mode,
            samples: values
                .iter()
                .map(|v| Sample::from([("gbit_s", *v), ("cpu_s_per_gb_node1", v / 10.0)]))
                .collect(),
            note: None,
        }
    }

    #[test]
    fn medians_with_min_and_max() {
        let x = m("throughput", "1 stream", Mode::Ward, &[3.0, 1.0, 2.0]);
        assert_eq!(stat(&x, "gbit_s"), Some((2.0, 1.0, 3.0)));
        let even = m("throughput", "1 stream", Mode::Ward, &[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(stat(&even, "gbit_s"), Some((2.5, 1.0, 4.0)));
        assert_eq!(stat(&x, "missing"), None);
    }

    #[test]
    fn bars_compare_against_the_same_runs_baseline() {
        let all = vec![
            m("throughput", "1 stream", Mode::Direct, &[10.0]),
            m("throughput", "1 stream", Mode::Ward, &[5.0]),
            m("throughput", "1 stream", Mode::Envoy, &[2.0]),
        ];
        let b = bars(&all);
        let share = &b[0];
        assert_eq!(share.ward, Some(0.5));
        assert_eq!(share.envoy, Some(0.2));
        assert_eq!(share.met, Some(true));
        // CPU s/GB: 0.5 against ≤ 0.7.
        assert_eq!(b[1].met, Some(true));
        // Nothing measured: not "met", not "failed".
        assert!(b.iter().any(|x| x.met.is_none()));
        let md = markdown(&all, "machine", "settings");
        assert!(
            md.contains("| ward | 1 stream | 5.00 | 0.50 | 2.50 |"),
            "{md}"
        );
    }
}
