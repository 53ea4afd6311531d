//! `cdi-mover serve`: the node agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use cdi_mover::error::one_line;
use cdi_mover::service::server::{self, ServeConfig};
use cdi_mover::service::tls::TlsFiles;

use super::output::error_line;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for the gRPC API (port 0 picks one; the bound address is printed as JSON).
    #[arg(long, default_value = "0.0.0.0:7443", env = "MOVER_LISTEN")]
    pub listen: SocketAddr,
    /// PEM certificate chain the server presents.
    #[arg(long, env = "MOVER_TLS_CERT", required_unless_present = "insecure_plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "MOVER_TLS_KEY", required_unless_present = "insecure_plaintext")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that client certificates must be signed by (mutual TLS).
    #[arg(long, env = "MOVER_CLIENT_CA", required_unless_present = "insecure_plaintext")]
    pub client_ca: Option<PathBuf>,
    /// Serve without TLS or client authentication. For local tests only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub insecure_plaintext: bool,
    /// Where the kubelet keeps pod volumes on this node.
    #[arg(long, default_value = "/var/lib/kubelet", env = "KUBELET_ROOT")]
    pub kubelet_root: PathBuf,
    /// Imports run at once; more wait in a queue.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Address for Prometheus /metrics and /healthz.
    #[arg(long, env = "MOVER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The node this mover runs on (reported by Capabilities).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Seconds a finished task stays visible (for re-attaching clients).
    #[arg(long, default_value_t = 3600)]
    pub task_retention: u64,
    /// Seconds shutdown waits for cancelled tasks to clean up.
    #[arg(long, default_value_t = 20)]
    pub drain_timeout: u64,
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn run(args: &ServeArgs) -> i32 {
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => {
            Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: client_ca.clone() })
        }
        _ => None,
    };
    let cfg = ServeConfig {
        listen: args.listen,
        tls,
        kubelet_root: args.kubelet_root.clone(),
        max_concurrent: args.max_concurrent.max(1),
        metrics_listen: args.metrics_listen,
        node_name: args.node_name.clone(),
        retention: Duration::from_secs(args.task_retention),
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error_line(&format!("cannot start the runtime: {e}"));
            return 1;
        }
    };
    let served = rt.block_on(server::serve(cfg, terminated(), |bound| {
        // One line for scripts and tests to learn the addresses (port 0 included).
        println!("{}", serde_json::json!({ "listening": bound.grpc, "metrics": bound.metrics }));
    }));
    match served {
        Ok(()) => 0,
        Err(e) => {
            error_line(&one_line(&e));
            1
        }
    }
}
