//! `cdi-mover`: see `cli/` for the commands.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    // `serve` logs at info; the one-shot commands only warn.
    let default = if matches!(cli.command, cli::Command::Serve(_)) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    cdi_common::heap::tune_for_streaming();
    cdi_mover::tls::install_crypto_provider();
    std::process::exit(cli::run(cli));
}
