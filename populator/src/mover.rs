//! Reaching the mover of a node: its pod (found by label and node), a gRPC channel to its
//! pod IP with mutual TLS, cached per address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cdi_common::mtls;
use cdi_proto::v1::mover_client::MoverClient;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tonic::transport::{Channel, Endpoint};

use crate::certs::{ClientIdentity, MOVER_SERVER_NAME};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct MoverConfig {
    /// Namespace of the mover DaemonSet's pods.
    pub namespace: String,
    /// Label selector of the mover pods.
    pub selector: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum MoverError {
    #[error("no running mover pod on node {node} (pods matching {selector} in {namespace})")]
    NoMover { node: String, selector: String, namespace: String },
    #[error("cannot list mover pods: {0}")]
    List(#[source] Box<kube::Error>),
    #[error("cannot connect to the mover at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot use the client certificate for movers: {0}")]
    Identity(String),
}

/// Finds and connects to movers.
pub struct Movers {
    client: kube::Client,
    identity: Option<ClientIdentity>,
    cfg: MoverConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for Movers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Movers").field("cfg", &self.cfg).field("tls", &self.identity.is_some()).finish()
    }
}

impl Movers {
    /// `identity: None` speaks plaintext (movers started with --insecure-plaintext).
    pub fn new(client: kube::Client, identity: Option<ClientIdentity>, cfg: MoverConfig) -> Movers {
        Movers { client, identity, cfg, channels: Mutex::new(HashMap::new()) }
    }

    /// A client for the mover running on `node`.
    pub async fn on_node(&self, node: &str) -> Result<MoverClient<Channel>, MoverError> {
        Ok(MoverClient::new(self.channel_on_node(node).await?))
    }

    /// The channel under [`Movers::on_node`]'s client, for calls made by hand.
    pub async fn channel_on_node(&self, node: &str) -> Result<Channel, MoverError> {
        let address = self.address_on_node(node).await?;
        self.channel(&address)
    }

    /// `IP:PORT` of the mover running on `node` (its pod's IP).
    pub async fn address_on_node(&self, node: &str) -> Result<String, MoverError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.cfg.namespace);
        let list = pods
            .list(&ListParams::default().labels(&self.cfg.selector).fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| MoverError::List(Box::new(e)))?;
        let ip = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .find_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
            .ok_or_else(|| MoverError::NoMover {
                node: node.to_string(),
                selector: self.cfg.selector.clone(),
                namespace: self.cfg.namespace.clone(),
            })?;
        Ok(format!("{ip}:{}", self.cfg.port))
    }

    /// A lazily connecting channel; tonic reconnects it as needed.
    fn channel(&self, address: &str) -> Result<Channel, MoverError> {
        if let Some(c) = self.channels.lock().expect("channels lock").get(address) {
            return Ok(c.clone());
        }
        let connect = |source| MoverError::Connect { address: address.to_string(), source };
        // The scheme only names the :scheme of requests: TLS, when used, is the connector's.
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(connect)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Some(KEEPALIVE));
        let channel = match &self.identity {
            Some(id) => {
                let config = mtls::client_config(&id.cert, &id.key, &id.ca).map_err(MoverError::Identity)?;
                let connector = mtls::Connector::new(config, MOVER_SERVER_NAME, CONNECT_TIMEOUT)
                    .map_err(MoverError::Identity)?
                    .keepalive(KEEPALIVE);
                endpoint.connect_with_connector_lazy(connector)
            }
            None => endpoint.connect_lazy(),
        };
        self.channels.lock().expect("channels lock").insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}
