//! Command-line interface of `cdi-populator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default address of the HTTP endpoint serving `/healthz` and `/metrics`; the Deployment
/// in `deploy/` probes this port.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9101";

/// `cdi-populator`: the cdi-rs control plane.
#[derive(Debug, Parser)]
#[command(name = "cdi-populator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CRDs of our kinds as multi-document YAML (or write one file per CRD).
    Crds(CrdsArgs),
    /// Run the controllers (leader-elected).
    Run(RunArgs),
}

/// `cdi-populator crds`.
#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write `<group>_<plural>.yaml` files into this directory instead of printing.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `cdi-populator run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to serve `/healthz` and `/metrics`.
    #[arg(long, env = "CDI_POPULATOR_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    /// The namespace the populator runs in (its leader-election Lease and certificates
    /// live there); the Deployment sets it from the downward API.
    #[arg(long, env = "POD_NAMESPACE", default_value = "cdi-rs")]
    pub namespace: String,
    /// This replica's identity for leader election; the Deployment sets the pod name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}
