//! The Helm chart `deploy/helm/ward`: `helm lint`; `helm template` output valid for two
//! Kubernetes versions (`kubernetes-validate --strict`); least-privilege RBAC (no wildcard
//! anywhere, the proxy can read no Secret — it has no API access at all); every example policy
//! valid against the chart's CRD schemas; and the chart wired to the rest of the repository:
//! the generated CRDs, the webhook, the alert rules and dashboard, the Dockerfiles, the
//! flags the binaries accept.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("deploy/helm/ward")
}

/// helm: `$HELM`, else `target/tools/helm`, else on `PATH` (`scripts/install-kube-tools`).
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM") {
        return PathBuf::from(p);
    }
    let local = root().join("target/tools/helm");
    if local.exists() {
        return local;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("helm not found: scripts/install-kube-tools puts helm 4 in target/tools (.ci/run does)")
        })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (.ci/run installs it)"))
}

/// `helm template` with `--set` values; every document of the output.
fn template(sets: &[&str]) -> (String, Vec<Value>) {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "ward"]).arg(chart()).args([
        "--namespace",
        "ward-system",
        "--include-crds",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|de| <Value as serde::Deserialize>::deserialize(de).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

const ALL_ON: &[&str] = &[
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "control.istioPolicies=true",
    "image.registry=registry.example.com/ward",
    "proxy.workerThreads=2",
    "trustDomainAliases={old.example}",
];

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the chart's output"))
}

#[test]
fn helm_lint_passes_with_default_and_with_every_option() {
    for sets in [
        &[][..],
        ALL_ON,
        &[
            "webhook.enabled=false",
            "proxy.uninstallHook.enabled=false",
            "control.replicas=1",
        ],
    ] {
        let mut cmd = Command::new(helm());
        cmd.args(["lint", "--strict"]).arg(chart());
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "helm lint {sets:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn rendered_manifests_validate_strictly_for_two_kubernetes_versions() {
    let dir = tempfile::tempdir().unwrap();
    for (i, sets) in [&[][..], ALL_ON].iter().enumerate() {
        let (text, _) = template(sets);
        let file = dir.path().join(format!("rendered-{i}.yaml"));
        std::fs::write(&file, text).unwrap();
        for version in ["1.33.0", "1.35.0"] {
            let out = run(Command::new("kubernetes-validate")
                .args(["--strict", "-k", version])
                .arg(&file));
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{sets:?} on {version}:\n{report}");
            // Only the Prometheus Operator's kinds have no bundled schema (checked below).
            for line in report.lines().filter(|l| !l.starts_with("INFO")) {
                assert!(
                    line.contains("monitoring.coreos.com/v1"),
                    "{sets:?} on {version}: {line}"
                );
            }
            assert!(
                report.contains("passed for resource daemonset/ward-proxy"),
                "{report}"
            );
        }
    }
}

/// Every rule of every Role/ClusterRole in `docs` that uses a wildcard.
fn wildcards(docs: &[Value]) -> Vec<String> {
    let mut found = Vec::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        assert!(
            d.get("aggregationRule").is_none(),
            "{}: aggregated roles grant what others add",
            d["metadata"]["name"]
        );
        for rule in d["rules"].as_array().into_iter().flatten() {
            for field in [
                "apiGroups",
                "resources",
                "verbs",
                "resourceNames",
                "nonResourceURLs",
            ] {
                if rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v.as_str().is_some_and(|s| s.contains('*')))
                {
                    found.push(format!("{} {}: {rule}", d["kind"], d["metadata"]["name"]));
                }
            }
        }
    }
    found
}

/// The rules granted to ServiceAccount `sa` by the bindings in `docs`.
fn rules_of(docs: &[Value], sa: &str) -> Vec<Value> {
    let mut rules = Vec::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let bound = b["subjects"].as_array().into_iter().flatten().any(|s| {
            (s["kind"] == "ServiceAccount" && s["name"] == sa)
                || (s["kind"] == "Group"
                    && s["name"]
                        .as_str()
                        .is_some_and(|g| g.starts_with("system:serviceaccounts")))
        });
        if bound {
            let role = find(
                docs,
                b["roleRef"]["kind"].as_str().unwrap(),
                b["roleRef"]["name"].as_str().unwrap(),
            );
            rules.extend(role["rules"].as_array().into_iter().flatten().cloned());
        }
    }
    rules
}

fn grants_secrets(rules: &[Value]) -> bool {
    rules.iter().any(|r| {
        r["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x == "secrets" || x == "*")
    })
}

#[test]
fn rbac_uses_no_wildcard_and_the_proxy_can_read_no_secret() {
    for sets in [&[][..], ALL_ON] {
        let (_, docs) = template(sets);
        assert_eq!(wildcards(&docs), Vec::<String>::new(), "{sets:?}");
        // The proxy has no API access at all: no role bound, no API token mounted.
        let proxy_rules = rules_of(&docs, "ward-proxy");
        assert!(!grants_secrets(&proxy_rules), "{proxy_rules:?}");
        assert!(
            proxy_rules.is_empty(),
            "the proxy is granted {proxy_rules:?}"
        );
        let sa = find(&docs, "ServiceAccount", "ward-proxy");
        assert_eq!(sa["automountServiceAccountToken"], false);
        let ds = find(&docs, "DaemonSet", "ward-proxy");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert!(
            !pod["volumes"].to_string().contains("\"secret\""),
            "the proxy mounts a Secret: {}",
            pod["volumes"]
        );
        // Its only credential: a projected token for the control component's audience.
        assert!(pod["volumes"]
            .to_string()
            .contains(r#""audience":"ward-control""#));
        // The control component reads exactly one Secret, by name.
        let control_rules = rules_of(&docs, "ward-control");
        for r in control_rules
            .iter()
            .filter(|r| r["resources"].to_string().contains("secrets"))
        {
            let verbs = r["verbs"].to_string();
            if verbs.contains("get") || verbs.contains("list") || verbs.contains("watch") {
                assert_eq!(r["resourceNames"], json!(["ward-ca"]), "{r}");
            }
        }
    }
}

/// The checks above bite: a chart that granted a wildcard, or bound the proxy to a role that
/// reads Secrets, would be caught.
#[test]
fn the_rbac_checks_catch_a_wildcard_and_a_proxy_reading_secrets() {
    let (_, mut docs) = template(&[]);
    docs.push(
        json!({"kind": "ClusterRole", "metadata": {"name": "too-wide"},
        "rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]}),
    );
    docs.push(json!({"kind": "ClusterRoleBinding", "metadata": {"name": "too-wide"},
        "roleRef": {"kind": "ClusterRole", "name": "too-wide"},
        "subjects": [{"kind": "ServiceAccount", "name": "ward-proxy", "namespace": "ward-system"}]}));
    assert_eq!(wildcards(&docs).len(), 1);
    assert!(grants_secrets(&rules_of(&docs, "ward-proxy")));
}

#[test]
fn every_example_policy_validates_against_the_charts_crd_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(chart().join("crds/ward-crds.yaml")).unwrap();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let crd: Value = serde::Deserialize::deserialize(de).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        std::fs::write(dir.path().join(format!("{kind}.json")), schema.to_string()).unwrap();
    }
    let mut checked = 0;
    let examples = root().join("examples/policies");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") || name.ends_with(".test.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc: Value = serde::Deserialize::deserialize(de).unwrap();
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"].as_str().unwrap();
            let file = dir.path().join(format!("{name}-{i}.json"));
            std::fs::write(&file, doc.to_string()).unwrap();
            let out = run(Command::new("check-jsonschema")
                .arg("--schemafile")
                .arg(dir.path().join(format!("{kind}.json")))
                .arg(&file));
            assert!(
                out.status.success(),
                "{name} document {i}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} example policies found");
    // And the schema refuses what it should (the check bites).
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"apiVersion": "security.ward.dev/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "x", "namespace": "y"}, "spec": {"action": "MAYBE"}})
        .to_string(),
    )
    .unwrap();
    let out = run(Command::new("check-jsonschema")
        .arg("--schemafile")
        .arg(dir.path().join("AuthorizationPolicy.json"))
        .arg(&bad));
    assert!(!out.status.success(), "an unknown action passed the schema");
}

#[test]
fn the_chart_installs_the_generated_crds_and_the_repositorys_webhook_alerts_and_dashboard() {
    let (_, docs) = template(ALL_ON);
    // CRDs: exactly what `ward crds` generates (lib/crds checks the file; here, that the chart
    // installs that file).
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let names: Vec<&str> = crds
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "authorizationpolicies.security.ward.dev",
            "peerauthentications.security.ward.dev"
        ]
    );
    let generated = run(Command::new(ward_tests::built("ward", false)).arg("crds"));
    let generated: Vec<Value> =
        serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&generated.stdout))
            .map(|de| <Value as serde::Deserialize>::deserialize(de).unwrap())
            .filter(|v| !v.is_null())
            .collect();
    assert_eq!(crds.into_iter().cloned().collect::<Vec<_>>(), generated);

    // The webhook: the one committed for plain-manifest installs, in the release namespace.
    let plain: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/webhook/ward-policy-validation.yaml"))
            .unwrap(),
    )
    .unwrap();
    let charted = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "ward-policy-validation",
    );
    assert_eq!(charted["webhooks"], plain["webhooks"]);

    // Alert rules and dashboard: the files promtool and the dashboard tests check.
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/ward-alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(find(&docs, "PrometheusRule", "ward")["spec"], rules);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/ward-dashboard.json")).unwrap(),
    )
    .unwrap();
    let in_map: Value = serde_json::from_str(
        find(&docs, "ConfigMap", "ward-dashboard")["data"]["ward-dashboard.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(in_map, dashboard);

    // Monitors scrape ports that exist, by name.
    let svc = find(&docs, "Service", "ward-control");
    assert!(svc["spec"]["ports"]
        .to_string()
        .contains(r#""name":"http-metrics""#));
    assert_eq!(
        find(&docs, "ServiceMonitor", "ward-control")["spec"]["endpoints"][0]["port"],
        "http-metrics"
    );
    let ds = find(&docs, "DaemonSet", "ward-proxy");
    assert!(ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .to_string()
        .contains(r#""name":"http-metrics""#));
    assert_eq!(
        find(&docs, "PodMonitor", "ward-proxy")["spec"]["podMetricsEndpoints"][0]["port"],
        "http-metrics"
    );
}

/// Runs `binary --help` and requires every `--flag` of `args` among its options.
fn flags_exist(binary: &str, args: &Value) {
    let help = run(Command::new(ward_tests::built(binary, false)).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in args.as_array().unwrap() {
        let flag = arg.as_str().unwrap().split('=').next().unwrap();
        if flag.starts_with("--") {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{binary} has no {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn workloads_are_locked_down_and_use_flags_the_binaries_have() {
    let (_, docs) = template(ALL_ON);
    let control = find(&docs, "Deployment", "ward-control");
    let spec = &control["spec"]["template"]["spec"];
    assert_eq!(control["spec"]["replicas"], 2);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "registry.example.com/ward/ward-control:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["securityContext"]["capabilities"].get("add").is_none());
    flags_exist("ward-control", &c["args"]);
    assert!(
        c["env"].to_string().contains("POD_NAME"),
        "leader election needs the pod name"
    );
    let pdb = find(&docs, "PodDisruptionBudget", "ward-control");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    let proxy = find(&docs, "DaemonSet", "ward-proxy");
    let spec = &proxy["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let p = &spec["containers"][0];
    assert_eq!(
        p["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"])
    );
    assert_eq!(p["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(p["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(p["securityContext"]["allowPrivilegeEscalation"], false);
    flags_exist("ward-proxy", &p["args"]);
    assert!(p["args"]
        .to_string()
        .contains("--control=ward-control.ward-system.svc:15012"));
    // The grace period covers the drain (10 s by default) and then some.
    let args = p["args"].to_string();
    assert!(args.contains("--drain-timeout=10s"), "{args}");
    assert_eq!(spec["terminationGracePeriodSeconds"], 15);
    let (_, slow) = template(&["proxy.drainTimeout=2m"]);
    assert_eq!(
        find(&slow, "DaemonSet", "ward-proxy")["spec"]["template"]["spec"]
            ["terminationGracePeriodSeconds"],
        125
    );

    // The uninstall hook runs `ward-proxy uninstall` on every node, before the release goes.
    let hook = find(&docs, "DaemonSet", "ward-uninstall");
    assert_eq!(
        hook["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    let init = &hook["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["args"], json!(["uninstall"]));
    assert_eq!(init["image"], p["image"]);
    assert_eq!(
        hook["spec"]["template"]["spec"]["tolerations"],
        spec["tolerations"]
    );
    let wait = find(&docs, "Job", "ward-uninstall-wait");
    assert_eq!(
        wait["metadata"]["annotations"]["helm.sh/hook"],
        "pre-delete"
    );
    assert!(
        wait["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse::<i32>()
            .unwrap()
            > hook["metadata"]["annotations"]["helm.sh/hook-weight"]
                .as_str()
                .unwrap()
                .parse::<i32>()
                .unwrap()
    );

    // Every image the chart runs of ward's own has a Dockerfile building that binary.
    for image in ["ward-control", "ward-proxy"] {
        let file = root().join(format!("deploy/docker/{image}.Dockerfile"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("--bin {image}")),
            "{}",
            file.display()
        );
    }
}
