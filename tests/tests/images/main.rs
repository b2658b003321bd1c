//! The container images' Dockerfiles (`deploy/docker/`): each parses (with the
//! `dockerfile-parse` library; no Docker engine runs on these machines) and its build matches
//! the workspace — the package and binary it builds exist, the binary it copies is the one it
//! built, the entrypoint runs it, and the runtime stage drops root where the component allows.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected errors

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The instructions of a Dockerfile as `(INSTRUCTION, value)`, from the parser.
fn parse(path: &Path) -> Vec<(String, String)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom dockerfile_parse import DockerfileParser\n\
             p = DockerfileParser(path=sys.argv[1])\n\
             print(json.dumps([[i['instruction'], i['value']] for i in p.structure]))",
            &path.display().to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert!(
        out.status.success(),
        "parsing {} (pip install dockerfile-parse): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(package name, its binaries)` of every workspace member with a `[[bin]]`.
fn packages() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for dir in ["proxy", "control", "cli", "ca", "benches", "tests"] {
        let Ok(text) = std::fs::read_to_string(root().join(dir).join("Cargo.toml")) else {
            continue;
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|n| n.trim_end_matches('"').to_owned())
            .unwrap();
        let bins: Vec<String> = text
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = \"")))
            .map(|n| n.trim_end_matches('"').to_owned())
            .collect();
        out.push((name, bins));
    }
    out
}

#[test]
fn every_dockerfile_parses_and_builds_what_the_workspace_has() {
    let packages = packages();
    let images = [
        ("ward-proxy.Dockerfile", "ward-proxy", "ward-proxy", false),
        (
            "ward-control.Dockerfile",
            "ward-control",
            "ward-control",
            true,
        ),
        ("ward.Dockerfile", "ward-cli", "ward", true),
    ];
    let found: Vec<String> = std::fs::read_dir(root().join("deploy/docker"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        found.len(),
        images.len(),
        "an image without a test: {found:?}"
    );
    for (file, package, bin, non_root) in images {
        let ins = parse(&root().join("deploy/docker").join(file));
        let froms: Vec<&str> = ins
            .iter()
            .filter(|(i, _)| i == "FROM")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            froms.len(),
            2,
            "{file}: a build stage and a runtime stage: {froms:?}"
        );
        assert!(froms[0].ends_with(" AS build"), "{file}: {froms:?}");
        // The build: this package and binary, locked, release.
        let bins = &packages
            .iter()
            .find(|(p, _)| p == package)
            .unwrap_or_else(|| panic!("{file}: no workspace package {package}"))
            .1;
        assert!(
            bins.iter().any(|b| b == bin),
            "{file}: {package} has no binary {bin}: {bins:?}"
        );
        let run = ins
            .iter()
            .find(|(i, v)| i == "RUN" && v.contains("cargo build"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{file}: no cargo build"));
        for part in [
            "--release",
            "--locked",
            &format!("-p {package}"),
            &format!("--bin {bin}"),
        ] {
            assert!(run.contains(part), "{file}: `{run}` lacks {part}");
        }
        // Everything it copies from the context exists; the binary it ships is the one built.
        for (_, v) in ins.iter().filter(|(i, _)| i == "COPY") {
            if let Some(rest) = v.strip_prefix("--from=build ") {
                let src = rest.split_whitespace().next().unwrap();
                assert_eq!(src, format!("/src/target/release/{bin}"), "{file}");
                assert!(
                    rest.ends_with(&format!("/usr/local/bin/{bin}")),
                    "{file}: {rest}"
                );
            } else {
                let src = v.split_whitespace().next().unwrap();
                assert!(
                    root().join(src).exists(),
                    "{file}: COPY {src}: no such path"
                );
            }
        }
        let entry = ins
            .iter()
            .find(|(i, _)| i == "ENTRYPOINT")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            entry,
            Some(format!("[\"/usr/local/bin/{bin}\"]").as_str()),
            "{file}"
        );
        // Root only where the component needs it (the proxy programs nftables).
        let user = ins
            .iter()
            .rev()
            .find(|(i, _)| i == "USER")
            .map(|(_, v)| v.as_str());
        if non_root {
            assert!(froms[1].contains(":nonroot"), "{file}: {}", froms[1]);
            assert_eq!(user, Some("65532:65532"), "{file}");
        } else {
            let runtime = ins
                .iter()
                .skip_while(|(i, _)| i != "FROM")
                .skip(1)
                .skip_while(|(i, _)| i != "FROM");
            let installs: String = runtime
                .filter(|(i, _)| i == "RUN")
                .map(|(_, v)| v.as_str())
                .collect();
            assert!(
                installs.contains("nftables"),
                "{file}: the proxy needs the nft binary"
            );
            assert!(
                installs.contains("iproute2"),
                "{file}: the proxy needs the ip binary (the return route of transparent connections)"
            );
        }
    }
    // The build context leaves out what is not source.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/"), "{ignore}");
}
