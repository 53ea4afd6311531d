//! Command-line interface of `cdi-populator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default address of the HTTP endpoint serving `/healthz` and `/metrics`; the Deployment
/// in `deploy/` probes this port.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9101";
/// Default HTTPS address of the admission webhook; the webhook Service targets this port.
pub const DEFAULT_WEBHOOK_LISTEN: &str = "0.0.0.0:8443";
/// Default HTTPS address of the upload API (`upload.cdi.kubevirt.io`); Service `cdi-api`
/// targets this port.
pub const DEFAULT_API_LISTEN: &str = "0.0.0.0:8444";

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
// One value, parsed once at start: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Print the CRDs of our kinds as multi-document YAML (or write one file per CRD).
    Crds(CrdsArgs),
    /// Run the controllers (leader-elected).
    Run(RunArgs),
    /// Serve the upload proxy: checks upload tokens and streams uploads to the node movers.
    UploadProxy(UploadProxyArgs),
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
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "cdi-populator")]
    pub lease: String,
    /// Label selector of the mover pods (one per node).
    #[arg(long, default_value = "app.kubernetes.io/name=cdi-mover")]
    pub mover_selector: String,
    /// Namespace of the mover pods (default: the populator's).
    #[arg(long)]
    pub mover_namespace: Option<String>,
    /// The movers' gRPC port.
    #[arg(long, default_value_t = 7443)]
    pub mover_port: u16,
    /// Speak plaintext to movers started with --insecure-plaintext. For local tests only.
    #[arg(long)]
    pub insecure_mover_plaintext: bool,
    /// Image of the holder pods (it runs `cdi-mover hold`).
    #[arg(long, env = "HOLDER_IMAGE", default_value = "cdi-rs/mover:latest")]
    pub holder_image: String,
    /// Milliseconds between progress writes on one PVC (at least 1000).
    #[arg(long, default_value_t = 1000)]
    pub progress_interval_ms: u64,
    /// First delay after a retryable failure, in seconds; doubles up to --retry-cap.
    #[arg(long, default_value_t = 10)]
    pub retry_base: u64,
    /// Longest delay between retries, in seconds.
    #[arg(long, default_value_t = 300)]
    pub retry_cap: u64,
    /// Filesystem overhead for filesystem volumes where CDIConfig's spec sets no global one
    /// (its status then shows this value).
    #[arg(long, default_value_t = 0.06)]
    pub filesystem_overhead: f64,
    /// Where to serve the admission webhook (HTTPS), on every replica.
    #[arg(long, default_value = DEFAULT_WEBHOOK_LISTEN)]
    pub webhook_listen: SocketAddr,
    /// The Service in front of the webhook, in --namespace: its serving certificate is
    /// issued for this Service's DNS names.
    #[arg(long, default_value = "cdi-populator-webhook")]
    pub webhook_service: String,
    /// The ValidatingWebhookConfiguration whose caBundle the leader keeps current.
    #[arg(long, default_value = "cdi-populator-webhook")]
    pub webhook_configuration: String,
    /// Where to serve the aggregated upload API (HTTPS, front-proxy client certificates),
    /// on every replica.
    #[arg(long, default_value = DEFAULT_API_LISTEN)]
    pub api_listen: SocketAddr,
    /// The Service in front of the upload API, in --namespace: its serving certificate is
    /// issued for this Service's DNS names.
    #[arg(long, default_value = "cdi-api")]
    pub api_service: String,
    /// The APIService whose caBundle the leader keeps.
    #[arg(long, default_value = crate::upload::api::API_SERVICE)]
    pub api_apiservice: String,
}

/// `cdi-populator upload-proxy`.
#[derive(Debug, Args)]
pub struct UploadProxyArgs {
    /// Where to serve HTTPS (the cdi-uploadproxy Service targets this port).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The mounted Secret cdi-uploadproxy-tls: tls.crt/tls.key (serving), ca.crt,
    /// client.crt/client.key (to the movers), verify.key (the token public key).
    #[arg(long, value_name = "DIR", default_value = "/etc/cdi-uploadproxy")]
    pub tls_dir: PathBuf,
    /// The namespace the proxy runs in (the movers' by default).
    #[arg(long, env = "POD_NAMESPACE", default_value = "cdi-rs")]
    pub namespace: String,
    /// Label selector of the mover pods (one per node).
    #[arg(long, default_value = "app.kubernetes.io/name=cdi-mover")]
    pub mover_selector: String,
    /// Namespace of the mover pods (default: --namespace).
    #[arg(long)]
    pub mover_namespace: Option<String>,
    /// The movers' gRPC port.
    #[arg(long, default_value_t = 7443)]
    pub mover_port: u16,
    /// Seconds a request waits for its claim to become ready before a 503.
    #[arg(long, default_value_t = 10)]
    pub ready_timeout: u64,
}
