//! `ward`: the operator and developer command line.
//!
//! Thin by design: argument parsing and output formatting only. Every rule it applies lives in
//! a library crate (`ward-ca`, `ward-lib-identity`), so the CLI and the services never disagree.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod ca;
mod cert;
mod demo;
mod policy;

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "ward: a zero-trust data plane for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Operate ward's certificate authority.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Inspect certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Validate, evaluate, explain and test authorization policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Print ward's CustomResourceDefinitions (AuthorizationPolicy, PeerAuthentication in
    /// security.ward.dev/v1), generated from their Rust types.
    Crds,
    /// A zero-trust mesh on this machine, no Kubernetes needed: two nodes of network
    /// namespaces, the control component, a proxy per node, sample workloads and policies, and
    /// a scripted tour of allowed and denied calls (root).
    Demo(demo::DemoArgs),
    /// The demo's sample workloads and client (run inside the demo's pods).
    #[command(subcommand, hide = true)]
    DemoWorkload(demo::workload::WorkloadCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::DemoWorkload(cmd) => demo::workload::run(cmd),
        Command::Crds => ward_lib_crds::crds_yaml()
            .map(|y| {
                print!("{y}");
                ExitCode::SUCCESS
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ward: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
