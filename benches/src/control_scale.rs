//! `control-scale`: the control component at cluster scale.
//!
//! A fake API server (in this process) holds `--pods` pods (default 10 000) in 100 enrolled
//! namespaces on `--nodes` nodes (100), 10 services and 10 AuthorizationPolicies per
//! namespace (1 000 each); `ward-control` (release build, its own process, so its memory is
//! its own) watches it; `--proxies` (100) copies of the proxy's control-stream client — the
//! proxy's own code, without a data path — connect over real gRPC and TLS on loopback, one per
//! node, each applying pushes into its own configuration state exactly as a proxy does.
//!
//! It prints one line:
//! `control-scale: initial <S> s, pod-change p99 <MS> ms, policy-change p99 <MS> ms, rss <MB> MB, delta <BYTES> bytes`
//! - initial: from the clients' start until all of them hold the full view (applied, ACKed);
//! - pod-change: one pod relabelled through the API until every proxy (all hold the address
//!   table) has applied it; p99 over `--changes` (20) changes;
//! - policy-change: one policy edited until every proxy of a node it applies to has applied it;
//! - rss: the control component's peak resident memory (VmHWM) over the run;
//! - delta: resource bytes one proxy received for one pod change.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ward_lib_identity::{TrustBundle, TrustDomain};
use ward_proxy::state::State;
use ward_tests_fake_apiserver::{FakeApiServer, TokenInfo};

const NAMESPACES: usize = 100;
const APPS: usize = 10;

struct Opts {
    pods: usize,
    nodes: usize,
    proxies: usize,
    changes: usize,
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut o = Opts {
        pods: 10_000,
        nodes: 100,
        proxies: 100,
        changes: 20,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || -> anyhow::Result<usize> {
            Ok(it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))?
                .parse()?)
        };
        match a.as_str() {
            "--pods" => o.pods = v()?,
            "--nodes" => o.nodes = v()?,
            "--proxies" => o.proxies = v()?,
            "--changes" => o.changes = v()?,
            other => anyhow::bail!(
                "unknown argument {other:?}; control-scale [--pods N] [--nodes N] [--proxies N] [--changes N]"
            ),
        }
    }
    anyhow::ensure!(
        o.proxies <= o.nodes,
        "--proxies must not exceed --nodes (one per node)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(o))
}

fn pod(i: usize, nodes: usize, rev: usize) -> Value {
    let ns = format!("ns-{}", i % NAMESPACES);
    let ip = format!(
        "10.{}.{}.{}",
        100 + i / 65_000,
        (i / 250) % 256,
        i % 250 + 1
    );
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": format!("pod-{i}"),
                     "labels": {"app": format!("app-{}", i % APPS), "rev": rev.to_string()}},
        "spec": {"nodeName": format!("node-{}", i % nodes), "serviceAccountName": format!("sa-{}", i % APPS),
                 "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn policy(ns: usize, app: usize, port: usize) -> Value {
    json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
        "metadata": {"namespace": format!("ns-{ns}"), "name": format!("allow-app-{app}")},
        "spec": {"selector": {"matchLabels": {"app": format!("app-{app}")}},
                 "rules": [{"from": [{"source": {"namespaces": [format!("ns-{ns}")]}}],
                            "to": [{"operation": {"ports": [port.to_string()]}}]}]}})
}

async fn run(o: Opts) -> anyhow::Result<()> {
    let api = FakeApiServer::start("127.0.0.1:0".parse()?).await?;
    let build = Instant::now();
    for ns in 0..NAMESPACES {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{ns}"), "labels": {"ward.dev/mesh": "enabled"}}}));
        for app in 0..APPS {
            api.apply(policy(ns, app, 8080));
            let ips: Vec<String> = (0..o.pods)
                .filter(|i| i % NAMESPACES == ns && i % APPS == app)
                .map(|i| {
                    pod(i, o.nodes, 0)["status"]["podIP"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                })
                .collect();
            api.apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"namespace": format!("ns-{ns}"), "name": format!("svc-{app}")},
                "spec": {"clusterIP": format!("10.96.{ns}.{}", app + 1), "ports": [{"name": "http", "port": 80, "appProtocol": "http"}]}}));
            api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": format!("ns-{ns}"), "name": format!("svc-{app}-x"),
                             "labels": {"kubernetes.io/service-name": format!("svc-{app}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "appProtocol": "http"}],
                "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()}));
        }
    }
    api.apply(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ward-system"}}),
    );
    for n in 0..o.nodes {
        api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", n / 250, n % 250 + 1)}]}}));
        api.add_token(
            &format!("token-{n}"),
            TokenInfo {
                username: "system:serviceaccount:ward-system:ward-proxy".into(),
                audiences: vec!["ward-control".into()],
                node: Some(format!("node-{n}")),
                expired: false,
            },
        );
    }
    for i in 0..o.pods {
        api.apply(pod(i, o.nodes, 0));
    }
    eprintln!(
        "control-scale: API server holds {} pods, {} policies, {} services, {} nodes (built in {:.1} s)",
        o.pods,
        NAMESPACES * APPS,
        NAMESPACES * APPS,
        o.nodes,
        build.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let listen: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let control = ward_tests::built("ward-control", true);
    let mut child = Command::new(&control)
        .args(["--listen", &listen.to_string()])
        .env("KUBECONFIG", &kubeconfig)
        .env("WARD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", control.display()))?;
    let result = measure(&o, &api, listen, &dir, child.id()).await;
    let _ = child.kill();
    let _ = child.wait();
    let line = result?;
    println!("{line}");
    Ok(())
}

async fn wait<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return Ok(t);
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Starts a proxy's control-stream client for `node`.
fn client(
    node: usize,
    listen: SocketAddr,
    roots: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Arc<State>> {
    let td = TrustDomain::parse("cluster.local")?;
    let token = dir.join(format!("token-{node}"));
    std::fs::write(&token, format!("token-{node}"))?;
    let state = State::new(format!("node-{node}"));
    let mut b = TrustBundle::new();
    b.add_pem(&td, roots)?;
    state.seed_bundle(b);
    tokio::spawn(ward_proxy::control::run(
        state.clone(),
        ward_proxy::control::ControlSettings {
            address: listen,
            identity: "ward-system/ward-control".into(),
            trust_domain: td,
            token_file: token,
        },
    ));
    Ok(state)
}

/// A `/proc/PID/status` memory field, in KiB.
fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let i = ((v.len() as f64) * 0.99).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

async fn measure(
    o: &Opts,
    api: &FakeApiServer,
    listen: SocketAddr,
    dir: &tempfile::TempDir,
    pid: u32,
) -> anyhow::Result<String> {
    let roots = wait("the root ConfigMap", Duration::from_secs(30), || {
        api.get("v1", "ConfigMap", "ward-system", "ward-root-ca")
            .and_then(|cm| cm["data"]["root.pem"].as_str().map(str::to_owned))
    })
    .await?;
    // A probe client waits out the control component's own initial sync.
    let probe = client(0, listen, &roots, dir.path())?;
    wait(
        "the control component's initial sync",
        Duration::from_secs(120),
        || probe.snapshot().filter(|s| s.by_ip.len() == o.pods),
    )
    .await?;
    drop(probe);
    let rss_synced = vm(pid, "VmRSS:");

    let start = Instant::now();
    let states: Vec<Arc<State>> = (0..o.proxies)
        .map(|n| client(n, listen, &roots, dir.path()))
        .collect::<anyhow::Result<_>>()?;
    wait("every proxy's full view", Duration::from_secs(120), || {
        states
            .iter()
            .all(|s| s.snapshot().is_some_and(|s| s.by_ip.len() == o.pods))
            .then_some(())
    })
    .await?;
    let initial = start.elapsed();
    eprintln!(
        "control-scale: initial distribution to {} proxies in {:.2} s; control RSS {} MB synced, {} MB after distribution (peak {} MB)",
        o.proxies,
        initial.as_secs_f64(),
        rss_synced / 1000,
        vm(pid, "VmRSS:") / 1000,
        vm(pid, "VmHWM:") / 1000,
    );

    // Pod changes: relabel pod i; every proxy must see the new label.
    let mut pod_times = Vec::new();
    let mut delta = 0u64;
    for c in 0..o.changes {
        let i = (c * 7919) % o.pods;
        let ip: std::net::IpAddr = pod(i, o.nodes, 0)["status"]["podIP"]
            .as_str()
            .unwrap_or("")
            .parse()?;
        let rev = (c + 1).to_string();
        let t = Instant::now();
        api.apply(pod(i, o.nodes, c + 1));
        wait(
            "a pod change at every proxy",
            Duration::from_secs(30),
            || {
                states
                    .iter()
                    .all(|s| {
                        s.snapshot().is_some_and(|s| {
                            s.by_ip
                                .get(&ip)
                                .is_some_and(|w| w.labels.get("rev") == Some(&rev))
                        })
                    })
                    .then_some(())
            },
        )
        .await?;
        pod_times.push(t.elapsed());
        delta = states[0].control.last_push_bytes.load(Ordering::Relaxed);
    }

    // Policy changes: edit ns-j/allow-app-k; the proxies of the nodes it applies to (those
    // hosting an app-k pod of ns-j) must hold the new rule.
    let mut policy_times = Vec::new();
    for c in 0..o.changes {
        let (ns, app) = ((c * 13) % NAMESPACES, (c * 3) % APPS);
        let port = 9000 + c;
        let affected: Vec<&Arc<State>> = states
            .iter()
            .enumerate()
            .filter(|(n, _)| {
                (0..o.pods).any(|i| i % NAMESPACES == ns && i % APPS == app && i % o.nodes == *n)
            })
            .map(|(_, s)| s)
            .collect();
        let id = format!("ns-{ns}/allow-app-{app}");
        let needle = format!("{port}");
        let t = Instant::now();
        api.apply(policy(ns, app, port));
        wait(
            "a policy change at every affected proxy",
            Duration::from_secs(30),
            || {
                affected
                    .iter()
                    .all(|s| {
                        s.snapshot().is_some_and(|s| {
                            s.policies.policies().iter().any(|p| {
                                p.id.to_string() == id && format!("{:?}", p.rules).contains(&needle)
                            })
                        })
                    })
                    .then_some(())
            },
        )
        .await?;
        policy_times.push(t.elapsed());
    }
    let hwm_kib = vm(pid, "VmHWM:");
    Ok(format!(
        "control-scale: initial {:.2} s, pod-change p99 {} ms, policy-change p99 {} ms, rss {} MB, delta {} bytes",
        initial.as_secs_f64(),
        p99(pod_times).as_millis(),
        p99(policy_times).as_millis(),
        hwm_kib * 1024 / 1_000_000,
        delta
    ))
}
