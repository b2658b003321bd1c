//! `ward-control`: parses flags, sets up logging and runs [`ward_control::runtime`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = ward_control::runtime::Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward-control: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ward_control::runtime::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ward-control: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
