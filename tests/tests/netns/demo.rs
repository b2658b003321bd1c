//! `ward demo --once`: the README's first command, end to end — the tour's allowed and denied
//! calls with their deciding policies, the live change, the metrics summary — and afterwards
//! nothing it created remains (namespaces, links, rules, processes, files).

use std::process::Command;

use ward_tests::{built, must, require_privileges, run, SERIAL};

/// What the machine's own namespace looks like: its links, its nftables ruleset, the network
/// namespaces and the processes started from the demo's directory.
fn machine_state(dir: &str) -> (String, String, Vec<String>, Vec<String>) {
    let links = must(Command::new("ip").args(["-o", "link", "show"]))
        .lines()
        .map(|l| l.split(": ").nth(1).unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let rules = must(Command::new("nft").args(["list", "ruleset"]));
    let namespaces = must(Command::new("ip").args(["netns", "list"]))
        .lines()
        .filter(|l| l.starts_with("ward-demo-"))
        .map(str::to_owned)
        .collect();
    let processes = must(Command::new("ps").args(["-eo", "pid,args"]))
        .lines()
        .filter(|l| l.contains(dir) || l.contains("demo-workload"))
        .map(str::to_owned)
        .collect();
    (links, rules, namespaces, processes)
}

#[test]
fn the_demo_tours_the_mesh_and_leaves_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_privileges();
    let ward = built("ward", false);
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo").display().to_string();
    let before = machine_state(&demo_dir);
    assert!(
        before.2.is_empty(),
        "a demo is already running: {:?}",
        before.2
    );

    let out = run(Command::new(&ward).args(["demo", "--once", "--dir", &demo_dir]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ward demo --once failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
    let line = |needles: &[&str]| {
        assert!(
            stdout
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n))),
            "no line with all of {needles:?} in:\n{stdout}"
        );
    };
    // Allowed and denied calls, each with the policy the destination proxy says decided it.
    line(&[
        "ALLOW",
        "shop/frontend",
        "shop/storefront",
        "GET /products",
        "200",
        "policy shop/namespace-isolation",
    ]);
    line(&["ALLOW", "svc shop/storefront 10.96.0.10:80", "200"]);
    line(&[
        "DENY",
        "shop/frontend",
        "GET /admin/users",
        "403",
        "policy shop/deny-admin",
    ]);
    line(&["DENY", "dev/tool", "GET /products", "403", "none matched"]);
    line(&[
        "ALLOW",
        "shop/checkout",
        "shop/orders-db",
        "TCP connection",
        "hello",
    ]);
    line(&[
        "DENY",
        "dev/tool",
        "shop/orders-db",
        "TCP connection",
        "reset",
    ]);
    line(&[
        "DENY",
        "(outside the mesh)",
        "peer authentication is STRICT",
    ]);
    // The live change, and its effect.
    line(&["changing a policy live: dev-reads-products.yaml"]);
    line(&["in force on every node after"]);
    line(&[
        "ALLOW",
        "dev/tool",
        "GET /products",
        "200",
        "policy shop/dev-reads-products",
    ]);
    // The metrics summary counts what the tour did.
    line(&["deny", "DENY", "shop/deny-admin", "2"]);
    line(&["deny", "STRICT", "none", "1"]);
    line(&["removed its network namespaces, processes"]);

    let after = machine_state(&demo_dir);
    assert_eq!(
        before.0, after.0,
        "links of the machine's namespace changed"
    );
    assert_eq!(before.1, after.1, "the machine's nftables ruleset changed");
    assert!(after.2.is_empty(), "namespaces left: {:?}", after.2);
    assert!(after.3.is_empty(), "processes left: {:?}", after.3);
    assert!(
        !std::path::Path::new(&demo_dir).exists(),
        "{demo_dir} was left behind"
    );
    assert!(
        !std::path::Path::new("/run/ward-demo.pid").exists(),
        "the demo's lock file was left behind"
    );
}

#[test]
fn the_demo_removes_what_a_crashed_run_left() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_privileges();
    let ward = built("ward", false);
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo").display().to_string();
    // A crashed run: its namespaces (one with a process inside), a stale lock and directory.
    must(Command::new("ip").args(["netns", "add", "ward-demo-node-1"]));
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", "ward-demo-node-1", "sleep", "600"])
        .spawn()
        .unwrap();
    std::fs::create_dir_all(format!("{demo_dir}/policies")).unwrap();
    std::fs::write(format!("{demo_dir}/.ward-demo"), "").unwrap();
    // Were it read, it would deny every call in shop and the tour would fail.
    std::fs::write(
        format!("{demo_dir}/policies/stale.yaml"),
        "apiVersion: security.ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: stale, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n",
    )
    .unwrap();
    std::fs::write("/run/ward-demo.pid", "999999999").unwrap();

    let out = run(Command::new(&ward).args(["demo", "--once", "--dir", &demo_dir]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed 1 network namespace(s) left by an earlier demo"),
        "{stdout}"
    );
    assert!(
        sleeper.try_wait().unwrap().is_some() || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            sleeper.try_wait().unwrap().is_some()
        },
        "the crashed run's process was not killed"
    );
    let _ = sleeper.kill();
    assert!(machine_state(&demo_dir).2.is_empty());
}

#[test]
fn the_demo_never_removes_a_directory_that_is_not_its_own() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_privileges();
    let ward = built("ward", false);
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("notes.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let out = run(Command::new(&ward)
        .args(["demo", "--once", "--dir"])
        .arg(dir.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a ward demo directory"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
}
