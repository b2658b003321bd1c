//! `ward policy …`: validate, eval (machine interface), explain (human trace) and test
//! (policy unit tests for CI). All semantics live in `ward-lib-policy`; this file reads files
//! and formats output.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ward_lib_policy::compile::{parse_documents, Document};
use ward_lib_policy::request::{decide, EvalRequest};
use ward_lib_policy::testfile::TestFile;
use ward_lib_policy::{PolicySet, TrustConfig, DEFAULT_ROOT_NAMESPACE};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check policy files: errors (exit 1) and warnings, including every fail-closed rewrite.
    Validate {
        /// Files or directories (*.yaml, *.yml, *.json; directories are walked, skipping
        /// `*.test.yaml` test files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Evaluate one request; prints one JSON verdict (exit 0), or an error (exit 2).
    Eval(EvalArgs),
    /// Explain one decision: which policies applied, which rules and fields matched.
    Explain(EvalArgs),
    /// Run policy test files; a PASS/FAIL line per case and a summary (exit 1 on failure).
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
pub struct TrustArgs {
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Former trust domains still accepted in principals.
    #[arg(long = "trust-domain-alias")]
    aliases: Vec<String>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    #[command(flatten)]
    trust: TrustArgs,
    /// Policy file or directory (repeatable).
    #[arg(long = "policy", required = true)]
    policies: Vec<PathBuf>,
    /// Request JSON file, or - for standard input.
    #[arg(long)]
    request: String,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Validate { paths, trust } => validate(&paths, &trust.config()),
        PolicyCommand::Eval(args) => Ok(eval_or_explain(&args, false)),
        PolicyCommand::Explain(args) => Ok(eval_or_explain(&args, true)),
        PolicyCommand::Test { files } => test(&files),
    }
}

impl TrustArgs {
    fn config(&self) -> TrustConfig {
        TrustConfig {
            trust_domain: self.trust_domain.clone(),
            aliases: self.aliases.clone(),
        }
    }
}

/// Every policy file under the given paths, in a stable order.
fn policy_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        ward_lib_api::config::policy_files(p, &mut out)
            .with_context(|| format!("reading {}", p.display()))?;
    }
    Ok(out)
}

/// Reads the files as `(origin, text)` pairs.
fn read_all(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

fn validate(paths: &[PathBuf], trust: &TrustConfig) -> anyhow::Result<ExitCode> {
    let files = policy_files(paths)?;
    let mut errors = 0;
    let mut warnings = 0;
    let mut policies = 0;
    for (origin, text) in read_all(&files)? {
        match parse_documents(&text, &origin, trust) {
            Ok(docs) => {
                for d in docs {
                    policies += 1;
                    if let Document::Authorization(p) = d {
                        for w in &p.warnings {
                            warnings += 1;
                            println!("{origin}: policy {}: warning: {w}", p.id);
                        }
                    }
                }
            }
            Err(es) => {
                for e in es {
                    errors += 1;
                    eprintln!("{e}");
                }
            }
        }
    }
    if errors > 0 {
        eprintln!(
            "{errors} error(s), {warnings} warning(s) in {} file(s)",
            files.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "ok: {policies} polic{} in {} file(s), {warnings} warning(s)",
        if policies == 1 { "y" } else { "ies" },
        files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Exit 2 with a message: the inputs (policies or request) are unusable.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ward: error: {msg}");
    ExitCode::from(2)
}

fn load_set(
    root_namespace: &str,
    trust: TrustConfig,
    paths: &[PathBuf],
) -> Result<PolicySet, String> {
    let files = policy_files(paths).map_err(|e| format!("{e:#}"))?;
    let texts = read_all(&files).map_err(|e| format!("{e:#}"))?;
    PolicySet::parse(
        root_namespace,
        trust,
        texts.iter().map(|(o, t)| (o.as_str(), t.as_str())),
    )
    .map_err(|es| {
        let lines: Vec<String> = es.iter().map(ToString::to_string).collect();
        format!("invalid policies:\n{}", lines.join("\n"))
    })
}

fn eval_or_explain(args: &EvalArgs, explain: bool) -> ExitCode {
    let set = match load_set(&args.root_namespace, args.trust.config(), &args.policies) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let text = if args.request == "-" {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            return usage_error(format!("reading the request from stdin: {e}"));
        }
        s
    } else {
        match std::fs::read_to_string(&args.request) {
            Ok(s) => s,
            Err(e) => return usage_error(format!("reading --request {}: {e}", args.request)),
        }
    };
    let prepared =
        match EvalRequest::from_json(&text).and_then(|r| r.prepare(jiff::Timestamp::now())) {
            Ok(p) => p,
            Err(e) => return usage_error(e),
        };
    if explain {
        print!("{}", ward_lib_policy::explain::explain(&set, &prepared));
    } else {
        match serde_json::to_string(&decide(&set, &prepared)) {
            Ok(json) => println!("{json}"),
            Err(e) => return usage_error(e),
        }
    }
    ExitCode::SUCCESS
}

fn test(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let tf = TestFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = tf.policies.iter().map(|p| base.join(p)).collect();
        let files =
            policy_files(&paths).with_context(|| format!("{}: policies", file.display()))?;
        let mut texts = read_all(&files)?;
        texts.push((
            format!("{}: documents", file.display()),
            tf.inline_documents().map_err(|e| anyhow::anyhow!(e))?,
        ));
        let set = PolicySet::parse(
            tf.root_namespace(),
            tf.trust(),
            texts.iter().map(|(o, t)| (o.as_str(), t.as_str())),
        )
        .map_err(|es| {
            let lines: Vec<String> = es.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(
                "{}: invalid policies:\n{}",
                file.display(),
                lines.join("\n")
            )
        })?;
        println!("{}", file.display());
        for r in tf.run(&set, jiff::Timestamp::now()) {
            match r.failure {
                None => {
                    passed += 1;
                    println!("  PASS  {}", r.name);
                }
                Some(why) => {
                    failed += 1;
                    println!("  FAIL  {}: {why}", r.name);
                }
            }
        }
    }
    println!("policy tests: {passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
