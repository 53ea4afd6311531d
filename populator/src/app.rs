//! `cdi-populator run`: leader election, certificates, metrics, then the controller.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::RunArgs;

use crate::controller::{self, ControllerConfig};
use crate::datavolume::{self, ConfigDefaults};
use crate::leader::{LeaderConfig, Leadership};
use crate::metrics::Metrics;
use crate::mover::{MoverConfig, Movers};

/// Runs until leadership is lost (an error: the pod restarts and competes again).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics, health on /healthz");
    tokio::spawn(crate::metrics::serve(listener, metrics.clone()));

    let identity = args.identity.clone().unwrap_or_else(|| format!("cdi-populator-{}", std::process::id()));
    let leadership = Leadership::new(
        client.clone(),
        LeaderConfig { namespace: args.namespace.clone(), lease: args.lease.clone(), identity },
    );
    leadership.acquire().await;

    // Only the leader writes certificates: no two populators race to make them.
    let client_identity = if args.insecure_mover_plaintext {
        None
    } else {
        Some(crate::certs::ensure_all(client.clone(), &args.namespace).await?)
    };
    let movers = Movers::new(
        client.clone(),
        client_identity,
        MoverConfig {
            namespace: args.mover_namespace.clone().unwrap_or_else(|| args.namespace.clone()),
            selector: args.mover_selector.clone(),
            port: args.mover_port,
        },
    );
    let cfg = ControllerConfig {
        holder_image: args.holder_image.clone(),
        progress_interval: Duration::from_millis(args.progress_interval_ms.max(1000)),
        retry_base: Duration::from_secs(args.retry_base.max(1)),
        retry_cap: Duration::from_secs(args.retry_cap.max(args.retry_base)),
        filesystem_overhead: args.filesystem_overhead,
    };
    // Until StorageProfile and CDIConfig exist, DataVolumes are completed from our flags.
    let defaults = Arc::new(ConfigDefaults { filesystem_overhead: args.filesystem_overhead });
    tokio::select! {
        () = controller::run(client.clone(), cfg, movers, metrics) => anyhow::bail!("the controller stopped"),
        () = datavolume::run(client, defaults) => anyhow::bail!("the DataVolume controller stopped"),
        () = leadership.keep() => anyhow::bail!("lost leadership"),
    }
}
