//! The command line: one module per command.
//!
//! * `import SOURCE TARGET` — one import on this machine ([`import`]).
//! * `serve` — the gRPC node agent ([`serve`]).
//! * `hold` — the holder pod's process: sleeps until told to stop, printing the import's
//!   log ([`hold`]).
//! * `client ...` — drives a running mover ([`client`]).

pub mod client;
pub mod hold;
pub mod import;
pub mod output;
pub mod serve;
pub mod upload;
pub mod volume;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cdi-mover", version, about = "The cdi-rs data mover: VM images into raw disks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import one image on this machine: SOURCE (a path, file://, http:// or https:// URL, or
    /// blank: for an empty disk) into TARGET (a block device, a directory for a filesystem
    /// volume's disk.img, or a file).
    Import(import::ImportArgs),
    /// Run the cdi.mover.v1 gRPC service (the node agent).
    Serve(serve::ServeArgs),
    /// Sleep until SIGTERM or SIGINT (the process of a holder pod), printing what the node
    /// mover appends to the import's log file.
    Hold(hold::HoldArgs),
    /// Talk to a running mover.
    Client(client::ClientArgs),
}

/// Exit status of a failure worth retrying (EX_TEMPFAIL); terminal failures exit with 1,
/// usage errors with 2.
pub const EXIT_RETRYABLE: i32 = 75;

/// Runs the command; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Import(args) => import::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Hold(args) => hold::run(&args),
        Command::Client(args) => client::run(&args),
    }
}
