//! The operator-facing files under `deploy/`: the Prometheus alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`: each alert fires and clears), and the
//! Grafana dashboard is a well-formed dashboard whose every panel queries something. (That
//! every metric they name exists is checked against real scrapes in the network-namespace
//! metrics test.)
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (apt-get install -y prometheus; .ci/run installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_fire_and_clear_as_tested() {
    let dir = deploy("prometheus");
    let checked = promtool(&["check", "rules", "ward-alerts.yaml"], &dir);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "ward-alerts.test.yaml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test that expects it to fire at some time and not at another.
    let rules = std::fs::read_to_string(dir.join("ward-alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("ward-alerts.test.yaml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            cases >= 3,
            "alert {alert}: {cases} evaluations tested (want before, firing, cleared)"
        );
    }
}

#[test]
fn the_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(deploy("grafana/ward-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["uid"], "ward-mesh");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"namespace"),
        "{vars:?}"
    );
    let panels = d["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() <= 24 && g["h"].as_u64().unwrap() > 0,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("ward_"), "panel {}: {expr}", p["title"]);
            // Balanced parentheses and braces: a cheap syntax check (promtool has none for
            // bare expressions; the netns test runs the queries against real data).
            for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
                assert_eq!(
                    expr.matches(open).count(),
                    expr.matches(close).count(),
                    "panel {}: unbalanced {open}{close} in {expr}",
                    p["title"]
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
}
