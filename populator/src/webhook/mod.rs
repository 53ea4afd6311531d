//! The validating admission webhook, CDI's `/datavolume-validate`, served over HTTPS by
//! every populator replica (the API server may call any of them through the webhook
//! Service).
//!
//! ```text
//!  leader:        certs::ensure_webhook ──> Secret cdi-populator-webhook-tls
//!                 ca_bundle::keep ─────────> ValidatingWebhookConfiguration caBundle
//!  every replica: Secret (watched) ──> tls::CertStore ──> TLS listener ──> server (axum)
//!                                                                            │
//!                                         datavolume::validate (pure rules) <┘
//! ```
//!
//! A replica listens only once it holds a certificate, so the readiness probe (a TLS port
//! that accepts connections) says when it can answer; until the leader has made the Secret
//! none is ready, and the webhook's `failurePolicy: Fail` refuses DataVolumes meanwhile.

pub mod ca_bundle;
pub mod datavolume;
pub mod review;
mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use crate::api::names::webhooks::DATAVOLUME_VALIDATE_PATH;
use crate::certs::{ServingCert, WEBHOOK_SECRET};
use tls::{CertStore, TlsListener};

/// Where and as what the webhook is served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The HTTPS listen address (the Service's target port).
    pub listen: SocketAddr,
    /// The populator's namespace: the Service's and the certificate Secret's.
    pub namespace: String,
    /// The Service the API server calls (the certificate is issued for its DNS names).
    pub service: String,
    /// The `ValidatingWebhookConfiguration` whose `caBundle` the leader keeps.
    pub configuration: String,
}

/// Why the webhook server stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr} for the admission webhook: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admission webhook TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the admission webhook server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("the watch of Secret {0} ended")]
    WatchEnded(String),
}

/// Serves the webhook until it fails: waits for the serving certificate's Secret (the
/// leader makes it), listens once it has one, and swaps the certificate whenever the
/// Secret changes.
///
/// # Errors
/// The port cannot be bound, or the server fails.
pub async fn serve(client: kube::Client, cfg: WebhookConfig) -> Result<(), WebhookError> {
    let certs = Arc::new(CertStore::default());
    let (loaded, mut is_loaded) = watch::channel(false);
    let follow = follow_secret(client.clone(), cfg.namespace.clone(), certs.clone(), loaded);
    tokio::pin!(follow);
    let ended = || WebhookError::WatchEnded(format!("{}/{WEBHOOK_SECRET}", cfg.namespace));
    tokio::select! {
        () = &mut follow => return Err(ended()),
        _ = is_loaded.wait_for(|l| *l) => {}
    }
    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebhookError::Bind { addr: cfg.listen, source })?;
    let addr = tcp.local_addr().map_err(|source| WebhookError::Bind { addr: cfg.listen, source })?;
    let listener = TlsListener::new(tcp, tls::server_config(certs)?).map_err(WebhookError::Serve)?;
    tracing::info!(%addr, path = DATAVOLUME_VALIDATE_PATH, "admission webhook serving");
    let app = server::router(Arc::new(server::Ctx { client }));
    tokio::select! {
        () = follow => Err(ended()),
        served = axum::serve(listener, app) => {
            served.map_err(WebhookError::Serve)?;
            Err(WebhookError::Serve(std::io::Error::other("the server returned")))
        }
    }
}

/// Loads the serving certificate from its Secret each time the Secret changes; `loaded`
/// turns true with the first good one. Returns only if the watch ends (it retries errors).
async fn follow_secret(client: kube::Client, namespace: String, certs: Arc<CertStore>, loaded: watch::Sender<bool>) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={WEBHOOK_SECRET}"));
    let secrets = watcher(api, config).default_backoff().applied_objects();
    futures_util::pin_mut!(secrets);
    let mut current: Option<ServingCert> = None;
    while let Some(event) = secrets.next().await {
        let secret = match event {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, secret = WEBHOOK_SECRET, "watching the webhook certificate");
                continue;
            }
        };
        let cert = match ServingCert::from_secret(&secret, &namespace) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "the webhook certificate Secret is incomplete");
                continue;
            }
        };
        if current.as_ref() == Some(&cert) {
            continue;
        }
        match certs.set(&cert) {
            Ok(()) => {
                tracing::info!(secret = WEBHOOK_SECRET, "webhook serving certificate loaded");
                current = Some(cert);
                loaded.send_replace(true);
            }
            Err(e) => tracing::error!(error = %e, secret = WEBHOOK_SECRET, "unusable webhook certificate"),
        }
    }
}
