//! `cdi-populator`: `crds` prints the CRDs; `run` runs the controllers; `upload-proxy`
//! serves the upload proxy.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::Write as _;

use anyhow::Context as _;
use cdi_populator::cli::{Cli, Command, CrdsArgs};
use cdi_populator::crds;
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds(args) => print_crds(&args),
        Command::Run(args) => serve(cdi_populator::app::run(args)),
        Command::UploadProxy(args) => {
            // Every upload passes through it in buffers of a few hundred KiB.
            cdi_common::heap::tune_for_streaming();
            serve(cdi_populator::upload::proxy::run(args))
        }
    }
}

/// Logging, ring as the TLS provider, a runtime: what both servers need.
fn serve(server: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(server)
}

fn print_crds(args: &CrdsArgs) -> anyhow::Result<()> {
    let Some(dir) = &args.out_dir else {
        let yaml = crds::all_yaml()?;
        std::io::stdout().write_all(yaml.as_bytes())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in crds::all() {
        let path = dir.join(crds::file_name(&crd));
        std::fs::write(&path, crds::to_yaml(&crd)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
