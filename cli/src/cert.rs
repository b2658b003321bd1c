//! `ward cert inspect`: what a certificate says, and whether it passes each X509-SVID rule.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use rustls::pki_types::UnixTime;
use ward_lib_identity::bundle::parse_pem_certs;
use ward_lib_identity::svid::{check_leaf, spiffe_id_of, SvidRule};
use ward_lib_identity::TrustBundle;
use x509_parser::prelude::*;

#[derive(Subcommand)]
pub enum CertCommand {
    /// Print a certificate chain's SPIFFE ID, validity and chain, and check every SVID rule.
    Inspect {
        /// PEM file: the leaf first, then any intermediates.
        file: PathBuf,
        /// PEM roots to check the chain against (the trust domain is the leaf's).
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
}

pub fn run(cmd: CertCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCommand::Inspect { file, bundle } => inspect(&file, bundle.as_deref()),
    }
}

fn inspect(file: &std::path::Path, bundle: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let chain = parse_pem_certs(&text).with_context(|| format!("{}", file.display()))?;
    let now = UnixTime::now();
    let mut out = String::new();
    let leaf_id = spiffe_id_of(&chain[0]);
    match &leaf_id {
        Ok(id) => writeln!(out, "SPIFFE ID:  {id}")?,
        Err(e) => writeln!(out, "SPIFFE ID:  none ({e})")?,
    }
    writeln!(out, "chain:")?;
    for (i, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der) {
            Ok((_, c)) => {
                let v = c.validity();
                writeln!(
                    out,
                    "  [{i}] subject: {}",
                    display_name(&c.subject().to_string())
                )?;
                writeln!(
                    out,
                    "      issuer:  {}",
                    display_name(&c.issuer().to_string())
                )?;
                writeln!(out, "      serial:  {}", c.raw_serial_as_string())?;
                writeln!(
                    out,
                    "      valid:   {} .. {}{}",
                    v.not_before,
                    v.not_after,
                    remaining(v.not_after.timestamp(), now)
                )?;
                writeln!(out, "      CA:      {}", c.is_ca())?;
            }
            Err(e) => writeln!(out, "  [{i}] unparseable: {e}")?,
        }
    }
    let trust = match (bundle, &leaf_id) {
        (Some(path), Ok(id)) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut b = TrustBundle::new();
            b.add_pem(&id.trust_domain(), &pem)
                .with_context(|| format!("{}", path.display()))?;
            Some(b)
        }
        _ => None,
    };
    writeln!(out, "X509-SVID rules:")?;
    let report = check_leaf(&chain, trust.as_ref(), now);
    let mut failed = false;
    for rule in SvidRule::ALL {
        match report.iter().find(|c| c.rule == rule) {
            Some(check) => match &check.outcome {
                Ok(()) => writeln!(out, "  PASS  {rule}")?,
                Err(e) => {
                    failed = true;
                    writeln!(out, "  FAIL  {rule}: {e}")?;
                }
            },
            None if rule == SvidRule::Chain => {
                writeln!(out, "  SKIP  {rule} (pass --bundle ROOTS.pem to check)")?
            }
            None => writeln!(out, "  SKIP  {rule} (the leaf could not be parsed)")?,
        }
    }
    print!("{out}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn display_name(s: &str) -> &str {
    if s.is_empty() {
        "(empty)"
    } else {
        s
    }
}

fn remaining(not_after: i64, now: UnixTime) -> String {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let left = not_after - now;
    if left < 0 {
        format!("  (expired {} ago)", human(-left))
    } else {
        format!("  (expires in {})", human(left))
    }
}

fn human(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
    .to_string()
}
