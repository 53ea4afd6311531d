//! `cdi-mover`: see `cli.rs` for the commands.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    cdi_mover::tls::install_crypto_provider();
    let code = match &cli.command {
        cli::Command::Import(args) => cli::run_import(args),
    };
    std::process::exit(code);
}
