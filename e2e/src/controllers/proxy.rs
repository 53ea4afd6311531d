//! A kube-proxy stand-in. Every Service port is reached on `clusterIP:port` (ClusterIPs
//! come from the cluster's loopback block, so they are local addresses), and a NodePort
//! Service also on `127.0.0.1:nodePort` and every node's (loopback) InternalIP; each new
//! connection goes to a ready endpoint of the Service's EndpointSlices, round robin.
//!
//! Where nftables works (root, `nft` installed), the kernel rewrites the connections'
//! destination as kube-proxy does ([`super::nat`]); otherwise, and always for
//! `127.0.0.1:nodePort`, this process listens itself and relays each connection to its
//! backend. Backends follow the slices. A Service that goes away closes its listeners
//! (the connections they relay with them); connections the kernel rewrote live on, as
//! with kube-proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::endpoints::SERVICE_NAME_LABEL;
use super::nat::{NatTable, Routes};
use crate::api::store::{Query, Store};
use crate::api::util::meta_str;

type Backends = Arc<RwLock<Vec<SocketAddr>>>;

struct Listener {
    backends: Backends,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Ends the accept loop and, with its JoinSet, every connection it relays.
        self.task.abort();
    }
}

pub struct Proxy {
    listeners: Mutex<HashMap<SocketAddr, Listener>>,
    /// The cluster's in-kernel forwarding, when nftables can be used.
    nat: Option<NatTable>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy of the cluster holding loopback block `block`.
    pub fn new(block: u8) -> Proxy {
        Proxy { listeners: Mutex::default(), nat: NatTable::create(block) }
    }

    /// Whether node IPs and ClusterIPs are routed by the kernel.
    pub fn in_kernel(&self) -> bool {
        self.nat.is_some()
    }

    pub async fn sweep(&self, store: &Store) -> anyhow::Result<()> {
        let services = store.list(&store.rt("", "services"), &Query::default(), None, None)?.items;
        let slices = store.list(&store.rt("discovery.k8s.io", "endpointslices"), &Query::default(), None, None)?.items;
        // kube-proxy answers a NodePort on every node address; node IPs here are loopback ones.
        let nodes = store.list(&store.rt("", "nodes"), &Query::default(), None, None)?.items;
        let mut node_ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into()];
        node_ips.extend(
            nodes.iter().flat_map(|n| n["status"]["addresses"].as_array().cloned().unwrap_or_default()).filter_map(
                |a| {
                    (a["type"] == "InternalIP")
                        .then(|| a["address"].as_str()?.parse::<std::net::IpAddr>().ok())
                        .flatten()
                },
            ),
        );
        node_ips.retain(std::net::IpAddr::is_loopback);
        let mut wanted: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        for svc in &services {
            let ns = meta_str(svc, "namespace");
            let name = meta_str(svc, "name");
            let ip = svc["spec"]["clusterIP"].as_str().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            let own: Vec<&Value> = slices
                .iter()
                .map(|s| &**s)
                .filter(|s| meta_str(s, "namespace") == ns && s["metadata"]["labels"][SERVICE_NAME_LABEL] == name)
                .collect();
            for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
                if port["protocol"].as_str().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let backends = backends_for(&own, port["name"].as_str().unwrap_or_default());
                let Some(p) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else { continue };
                if let Some(ip) = ip
                    && ip.is_loopback()
                {
                    wanted.insert(SocketAddr::new(ip, p), backends.clone());
                }
                if let Some(np) = port["nodePort"].as_u64().and_then(|p| u16::try_from(p).ok()) {
                    for node_ip in &node_ips {
                        wanted.insert(SocketAddr::new(*node_ip, np), backends.clone());
                    }
                }
            }
        }
        if let Some(nat) = &self.nat {
            let routes: Routes = wanted.extract_if(|addr, _| NatTable::handles(addr)).collect();
            nat.apply(routes);
        }
        let mut to_bind = Vec::new();
        {
            let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.retain(|addr, _| wanted.contains_key(addr));
            for (addr, backends) in wanted {
                match listeners.get(&addr) {
                    Some(l) => *l.backends.write().unwrap_or_else(|e| e.into_inner()) = backends,
                    None => to_bind.push((addr, backends)),
                }
            }
        }
        for (addr, backends) in to_bind {
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let backends: Backends = Arc::new(RwLock::new(backends));
                    let task = tokio::spawn(serve(listener, backends.clone()));
                    self.listeners.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, Listener { backends, task });
                }
                // Retried at the next sweep (another process may hold a node port).
                Err(e) => tracing::warn!(%addr, error = %e, "service proxy cannot listen"),
            }
        }
        Ok(())
    }
}

/// The ready endpoints of the slices for the Service port named `port_name`.
fn backends_for(slices: &[&Value], port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let Some(port) = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == false {
                continue;
            }
            for a in e["addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = a.as_str().and_then(|a| a.parse().ok()) {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out
}

async fn serve(listener: TcpListener, backends: Backends) {
    let next = AtomicUsize::new(0);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let list = backends.read().unwrap_or_else(|e| e.into_inner()).clone();
                let first = next.fetch_add(1, Ordering::Relaxed);
                conns.spawn(relay(client, list, first));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Bytes moved per read and write, each way (512 KiB per relayed connection). With tokio's
/// default of 8 KiB, this process spent 22% of a core relaying a 1.3 GB upload to the
/// upload proxy's NodePort; with 256 KiB, 14%. `splice(2)` through a pipe did no better
/// (0.4–0.5 s of this process's CPU per upload, against 0.1 s with the kernel's DNAT): the
/// extra loopback TCP hop, not the copy, is the cost.
const COPY_BUF: usize = 256 << 10;

/// Forwards one connection to the first backend (from `first` on) that accepts it; with
/// none, the client's connection is closed, as kube-proxy rejects it.
async fn relay(mut client: TcpStream, backends: Vec<SocketAddr>, first: usize) {
    for k in 0..backends.len() {
        let addr = backends[(first + k) % backends.len()];
        if let Ok(Ok(mut upstream)) = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, COPY_BUF, COPY_BUF).await;
            return;
        }
    }
}
