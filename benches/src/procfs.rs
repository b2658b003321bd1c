//! What the harness reads about a running process from `/proc`: CPU time (user + system,
//! all threads) and resident memory (current and peak).

use std::time::Duration;

/// CPU time a process has used so far (all its threads, live and exited).
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("process {pid} is gone: {e}"))?;
    // The command name may contain spaces; fields after it are space-separated.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) … utime(11) stime(12), in clock ticks.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no field {i}"))
    };
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / clock_ticks() as f64,
    ))
}

/// `sysconf(_SC_CLK_TCK)`, via getconf (no libc bindings needed); 100 on Linux in practice.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("process {pid} is gone: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status has no {key}"))
}

/// Resident memory now, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory since the last [`reset_peak`], KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resets the peak-RSS mark to the current RSS (`echo 5 > /proc/PID/clear_refs`).
pub fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| anyhow::anyhow!("resetting the peak RSS of {pid}: {e}"))
}

/// CPU used by each of `pids` while `f` runs.
pub fn cpu_during<T>(
    pids: &[u32],
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<Duration>)> {
    let before = pids
        .iter()
        .map(|&p| cpu(p))
        .collect::<Result<Vec<_>, _>>()?;
    let out = f()?;
    let after = pids
        .iter()
        .map(|&p| cpu(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((
        out,
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    ))
}
