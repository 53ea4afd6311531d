//! `cdi-populator run`: metrics, the admission webhook and the upload API on every replica;
//! then leader election, certificates, and the controllers (populate, DataVolume, and the
//! configuration kinds') on the leader.

use std::sync::Arc;
use std::time::Duration;

use crate::cli::RunArgs;

use crate::config::Defaults;
use crate::controller::{self, ControllerConfig};
use crate::datavolume;
use crate::leader::{LeaderConfig, Leadership};
use crate::metrics::Metrics;
use crate::mover::{MoverConfig, Movers};
use crate::upload::api::{self as upload_api, ApiConfig};
use crate::webhook::{self, WebhookConfig};

/// Runs until leadership is lost (an error: the pod restarts and competes again).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics, health on /healthz");
    tokio::spawn(crate::metrics::serve(listener, metrics.clone()));

    // Every replica serves the webhook (the Service picks any ready one), with the
    // certificate the leader makes.
    let webhook_cfg = WebhookConfig {
        listen: args.webhook_listen,
        namespace: args.namespace.clone(),
        service: args.webhook_service.clone(),
        configuration: args.webhook_configuration.clone(),
    };
    let mut webhook = tokio::spawn(webhook::serve(client.clone(), webhook_cfg.clone()));
    let webhook_stopped = |r: Result<Result<(), webhook::WebhookError>, tokio::task::JoinError>| match r {
        Ok(Err(e)) => anyhow::Error::new(e),
        Ok(Ok(())) => anyhow::anyhow!("the admission webhook stopped"),
        Err(e) => anyhow::anyhow!("the admission webhook task failed: {e}"),
    };

    // The upload API, likewise on every replica, once the leader has made its certificate.
    let api_cfg = ApiConfig {
        listen: args.api_listen,
        namespace: args.namespace.clone(),
        service: args.api_service.clone(),
        api_service: args.api_apiservice.clone(),
    };
    let mut upload_api = tokio::spawn(upload_api::serve(client.clone(), api_cfg.clone()));
    let api_stopped = |r: Result<Result<(), upload_api::ApiServerError>, tokio::task::JoinError>| match r {
        Ok(Err(e)) => anyhow::Error::new(e),
        Ok(Ok(())) => anyhow::anyhow!("the upload API stopped"),
        Err(e) => anyhow::anyhow!("the upload API task failed: {e}"),
    };

    let identity = args.identity.clone().unwrap_or_else(|| format!("cdi-populator-{}", std::process::id()));
    let leadership = Leadership::new(
        client.clone(),
        LeaderConfig { namespace: args.namespace.clone(), lease: args.lease.clone(), identity },
    );
    tokio::select! {
        () = leadership.acquire() => {}
        r = &mut webhook => return Err(webhook_stopped(r)),
        r = &mut upload_api => return Err(api_stopped(r)),
    }

    // Only the leader writes certificates: no two populators race to make them.
    let webhook_ca = crate::certs::ensure_webhook(client.clone(), &args.namespace, &args.webhook_service).await?;
    let api_ca = crate::certs::ensure_api(client.clone(), &args.namespace, &args.api_service).await?;
    crate::certs::ensure_upload(client.clone(), &args.namespace).await?;
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
        namespace: args.namespace.clone(),
    };
    let (defaults, fill_defaults) = Defaults::new(client.clone(), args.filesystem_overhead);
    let default_overhead = crate::config::cdiconfig::default_overhead(args.filesystem_overhead);
    // DataVolumes are completed from CDIConfig and the StorageProfiles once their caches
    // are filled (or, after a bounded wait, from the fallbacks).
    let datavolumes = {
        let (client, defaults) = (client.clone(), defaults.clone());
        async move {
            defaults.wait_ready().await;
            datavolume::run(client, Arc::new(defaults)).await;
        }
    };
    tokio::select! {
        () = controller::run(client.clone(), cfg, movers, metrics, defaults) => anyhow::bail!("the controller stopped"),
        () = crate::config::run_in(client.clone(), default_overhead, args.namespace.clone()) => anyhow::bail!("the configuration controllers stopped"),
        () = fill_defaults => anyhow::bail!("the configuration caches stopped"),
        () = datavolumes => anyhow::bail!("the DataVolume controller stopped"),
        () = crate::datasource::run(client.clone()) => anyhow::bail!("the DataSource controller stopped"),
        () = leadership.keep() => anyhow::bail!("lost leadership"),
        () = webhook::ca_bundle::keep(client.clone(), webhook_cfg, webhook_ca) => anyhow::bail!("the caBundle keeper stopped"),
        () = upload_api::keep_ca_bundle(client, api_cfg, api_ca) => anyhow::bail!("the APIService caBundle keeper stopped"),
        r = webhook => Err(webhook_stopped(r)),
        r = upload_api => Err(api_stopped(r)),
    }
}
