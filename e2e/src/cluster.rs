//! Starting and stopping the whole mini-cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::addresses::AddressBlock;
use crate::api::aggregator::Aggregator;
use crate::api::auth::{self, AuthState, Authority};
use crate::api::faults::{self, Faults};
use crate::api::server::{ApiState, router};
use crate::api::store::{Store, WriteOptions};
use crate::controllers::kubelet::ProjectImages;
use crate::controllers::{
    self, binder, daemonset, deployment, endpoints, gc, kubelet, provisioner, proxy, replicaset, scheduler, snapshotter,
};
use crate::host::{self, Children};

/// The provisioner name of the built-in local storage classes (and their CSIDriver).
pub const PROVISIONER: &str = "local.e2e.cdi.kubevirt.io";
/// The default class: WaitForFirstConsumer, as local storage is in real clusters.
pub const CLASS_WFFC: &str = "local";
/// The same storage, bound immediately.
pub const CLASS_IMMEDIATE: &str = "local-immediate";

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Working directory: kubeconfig, node roots, volume backing files, process logs.
    pub dir: PathBuf,
    /// Simulated nodes, named `node-1` … `node-N`.
    pub nodes: usize,
    /// Loopback port to serve on; 0 picks a free one.
    pub port: u16,
    /// The project's images the kubelets run as local binaries (e.g. `cdi-rs/mover` as
    /// `cdi-mover`); containers of other images only pretend to run.
    pub images: ProjectImages,
    /// How many changes the watch history keeps; older resourceVersions get 410 Gone.
    pub watch_history: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl ClusterConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            dir: dir.into(),
            nodes: 2,
            port: 0,
            images: ProjectImages::default(),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running mini-cluster. Dropping it stops everything too, but [`Cluster::shutdown`] waits
/// for the processes to end and is the way to stop it in async code.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    store: Arc<Store>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    watch_generation: watch::Sender<u64>,
    tasks: Vec<JoinHandle<()>>,
    kubelets: Vec<Arc<kubelet::Kubelet>>,
    children: Children,
    addresses: Arc<AddressBlock>,
    /// Errors and dropped watches the API server injects, for tests; none unless set.
    faults: Arc<Faults>,
    /// The CA, the serving certificate and the keys of tokens.
    authority: Arc<Authority>,
    /// Whether Services are routed by the kernel (nftables) rather than relayed.
    services_in_kernel: bool,
    stopped: bool,
}

impl Cluster {
    /// Brings the cluster up: API server on 127.0.0.1, the stand-in controllers, one kubelet
    /// per node, the built-in namespaces, nodes and storage classes, and `DIR/kubeconfig`.
    ///
    /// # Errors
    /// When the directory or the listener cannot be set up.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let config = ClusterConfig { dir: dir.clone(), ..config };
        let children = Children::default();
        // Whatever a crashed earlier run left in this directory goes first.
        host::cleanup(&dir, &children);
        let mut undo = UndoStart { dir: dir.clone(), children: children.clone(), armed: true };
        host::share_mounts(&dir).context("making the cluster directory a shared mount")?;

        let addresses = Arc::new(AddressBlock::lease()?);
        let store = Arc::new(Store::new(config.watch_history));
        store.set_service_block(addresses.index());
        seed(&store, &config, &addresses)?;
        let authority = Arc::new(Authority::generate()?);
        std::fs::write(dir.join("ca.crt"), authority.ca_pem()).context("writing ca.crt")?;

        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await.context("binding the API port")?;
        let addr = listener.local_addr()?;
        let listener = auth::tls::TlsListener::new(listener, authority.tls().server_config.clone())?;
        let (stop, stop_rx) = watch::channel(false);
        let (watch_generation, _) = watch::channel(0u64);
        let state = ApiState {
            store: store.clone(),
            watch_generation: watch_generation.clone(),
            bookmark_interval: config.bookmark_interval,
            nodes_dir: dir.join("nodes"),
        };
        let faults = Arc::new(Faults::default());
        let aggregator = Arc::new(Aggregator::generate(store.clone(), authority.ca_pem())?);
        aggregator.publish()?;
        let auth_state =
            AuthState { authority: authority.clone(), store: store.clone(), aggregator: aggregator.clone() };
        let app = router(state)
            .layer(axum::middleware::from_fn_with_state(auth_state, auth::middleware))
            .layer(axum::middleware::from_fn_with_state(faults.clone(), faults::inject));
        let mut tasks = Vec::new();
        let mut srv_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = srv_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "API server stopped");
            }
        }));

        let s = store.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "gc", move || {
            let s = s.clone();
            async move { gc::sweep(&s) }
        })));
        let s = store.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "serviceaccounts", move || {
            let s = s.clone();
            async move { auth::ensure_default_service_accounts(&s) }
        })));
        let s = store.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "scheduler", move || {
            let s = s.clone();
            async move { scheduler::sweep(&s) }
        })));
        let s = store.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "binder", move || {
            let s = s.clone();
            async move { binder::sweep(&s) }
        })));
        // kube-controller-manager's workload controllers.
        for (name, sweep) in [
            ("deployment", deployment::sweep as fn(&Store) -> anyhow::Result<()>),
            ("replicaset", replicaset::sweep),
            ("daemonset", daemonset::sweep),
            ("endpointslice", endpoints::sweep),
        ] {
            let s = store.clone();
            tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), name, move || {
                let s = s.clone();
                async move { sweep(&s) }
            })));
        }
        let prov = Arc::new(provisioner::Provisioner::new(store.clone(), dir.join("nodes")));
        let p = prov.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "provisioner", move || {
            let p = p.clone();
            async move { p.sweep().await }
        })));
        // kube-proxy: Services on their ClusterIPs and node ports.
        let px = Arc::new(proxy::Proxy::new(addresses.index()));
        let services_in_kernel = px.in_kernel();
        let s = store.clone();
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "proxy", move || {
            let (px, s) = (px.clone(), s.clone());
            async move { px.sweep(&s).await }
        })));
        // kube-aggregator: APIServices' availability and discovery.
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "apiservices", move || {
            let a = aggregator.clone();
            async move { a.sweep().await }
        })));
        let snap = Arc::new(snapshotter::Snapshotter::new(store.clone(), dir.join("snapshots")));
        tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "snapshotter", move || {
            let s = snap.clone();
            async move { s.sweep().await }
        })));
        let mut kubelets = Vec::new();
        for i in 0..config.nodes {
            let k = Arc::new(kubelet::Kubelet::new(
                store.clone(),
                &config,
                i,
                children.clone(),
                addresses.clone(),
                addr,
                authority.clone(),
            ));
            let kk = k.clone();
            tasks.push(tokio::spawn(controllers::run_loop(store.clone(), stop_rx.clone(), "kubelet", move || {
                let k = kk.clone();
                async move { k.sweep().await }
            })));
            kubelets.push(k);
        }

        undo.armed = false;
        let cluster = Cluster {
            config,
            store,
            addr,
            stop,
            watch_generation,
            tasks,
            kubelets,
            children,
            addresses,
            faults,
            authority,
            services_in_kernel,
            stopped: false,
        };
        cluster.write_kubeconfig()?;
        Ok(cluster)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.config.dir.join("kubeconfig")
    }

    /// The loopback addresses this cluster's nodes and pods use.
    pub fn addresses(&self) -> &AddressBlock {
        &self.addresses
    }

    /// Whether Services are routed by the kernel (nftables), as kube-proxy does, rather than
    /// relayed by this process (where nftables cannot be used).
    pub fn services_in_kernel(&self) -> bool {
        self.services_in_kernel
    }

    /// The node names, `node-1` … `node-N`.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.config.nodes).map(node_name).collect()
    }

    /// The kubelet root directory of a node (`node-1`).
    pub fn kubelet_root(&self, node: &str) -> PathBuf {
        self.config.dir.join("nodes").join(node).join("kubelet")
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The cluster CA's certificate (PEM), also in `DIR/ca.crt`: what pods get as
    /// `ca.crt` next to their service-account token.
    pub fn ca_pem(&self) -> &str {
        self.authority.ca_pem()
    }

    /// The cluster's credentials: issues service-account tokens (for the kubelet).
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// A kube-rs client for this cluster (default namespace `default`), trusting the
    /// cluster's CA and authenticated as the admin. It is the test's observer: injected
    /// [`Faults`] spare its requests.
    ///
    /// # Errors
    /// Only if kube-rs rejects the configuration.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let uri: http::Uri = self.url().parse()?;
        let mut config = kube::Config::new(uri);
        config.root_cert = Some(vec![self.authority.tls().ca_der.clone()]);
        config.auth_info = serde_json::from_value(json!({"token": self.authority.admin_token()}))?;
        config
            .headers
            .push((http::HeaderName::from_static(faults::OBSERVER_HEADER), http::HeaderValue::from_static("true")));
        Ok(kube::Client::try_from(config)?)
    }

    /// The faults the API server injects into every client's requests but
    /// [`Cluster::client`]'s; none until a test sets some.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Sends `signal` to the process of a running container, as a crash (SIGKILL) or a
    /// runtime stopping it (SIGTERM) would; the pod's restartPolicy decides what follows.
    /// Returns the process id signalled.
    ///
    /// # Errors
    /// When the pod is not bound to a node of this cluster or the container runs no process.
    pub async fn signal_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        signal: nix::sys::signal::Signal,
    ) -> anyhow::Result<i32> {
        let found = self.store.get(&self.store.rt("", "pods"), namespace, pod)?;
        let node = crate::api::util::str_at(&found, "spec.nodeName");
        let uid = crate::api::util::meta_str(&found, "uid");
        let kubelet = self.kubelets.iter().find(|k| k.node() == node).context("the pod is on no node of ours")?;
        kubelet
            .signal_container(uid, container, signal)
            .await
            .with_context(|| format!("no process runs container {container} of pod {namespace}/{pod}"))
    }

    /// The process id of a running container (its process group leader).
    pub async fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Option<i32> {
        let found = self.store.get(&self.store.rt("", "pods"), namespace, pod).ok()?;
        let node = crate::api::util::str_at(&found, "spec.nodeName");
        let kubelet = self.kubelets.iter().find(|k| k.node() == node)?;
        kubelet.container_pid(crate::api::util::meta_str(&found, "uid"), container).await
    }

    /// Where the kubelet writes a container's output (what `kubectl logs` serves), restarts
    /// appended.
    pub fn container_log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        let node = self
            .store
            .get(&self.store.rt("", "pods"), namespace, pod)
            .map(|p| crate::api::util::str_at(&p, "spec.nodeName").to_string())
            .unwrap_or_default();
        self.config.dir.join("nodes").join(node).join("logs").join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// Ends every open watch stream, as an API server restart or a dropped connection would;
    /// clients resume from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.watch_generation.send_modify(|g| *g += 1);
    }

    fn write_kubeconfig(&self) -> anyhow::Result<()> {
        // The admin: a bearer token of user kubernetes-admin in group system:masters.
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cdi-e2e\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\ncontexts:\n- name: cdi-e2e\n  context:\n    cluster: cdi-e2e\n    \
             user: cdi-e2e\n    namespace: default\ncurrent-context: cdi-e2e\nusers:\n- name: cdi-e2e\n  user:\n    \
             token: {}\n",
            self.url(),
            crate::api::util::base64(self.authority.ca_pem().as_bytes()),
            self.authority.admin_token(),
        );
        std::fs::write(self.kubeconfig_path(), kc).context("writing the kubeconfig")
    }

    /// Stops the controllers and the server, ends every pod process, then removes every
    /// mount and loop device the cluster made.
    pub async fn shutdown(mut self) {
        self.stop_now();
        for k in &self.kubelets {
            k.stop_all().await;
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                tracing::warn!("a cluster task did not stop within 5s");
            }
        }
        host::cleanup(&self.config.dir, &self.children);
        self.stopped = true;
    }

    fn stop_now(&self) {
        let _ = self.stop.send(true);
        self.drop_watches();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stop_now();
        for t in &self.tasks {
            t.abort();
        }
        host::cleanup(&self.config.dir, &self.children);
    }
}

/// Undoes a start that failed half-way (a dropped [`Cluster`] cleans up after itself).
struct UndoStart {
    dir: PathBuf,
    children: Children,
    armed: bool,
}

impl Drop for UndoStart {
    fn drop(&mut self) {
        if self.armed {
            host::cleanup(&self.dir, &self.children);
        }
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The namespaces, nodes, CSIDriver and storage classes every cluster starts with.
fn seed(store: &Store, config: &ClusterConfig, addresses: &AddressBlock) -> anyhow::Result<()> {
    let opts = WriteOptions { field_manager: "cdi-e2e".into(), ..Default::default() };
    let ns = store.rt("", "namespaces");
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        store.create(&ns, "", json!({"metadata": {"name": n}}), &opts)?;
    }
    let nodes = store.rt("", "nodes");
    for i in 1..=config.nodes {
        let name = node_name(i);
        let ip = addresses.node_ip(i);
        let now = crate::api::util::now();
        let node = json!({
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
            "spec": {},
        });
        store.create(&nodes, "", node, &opts)?;
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.33.0-cdi-e2e", "operatingSystem": "linux", "architecture": "amd64",
                "containerRuntimeVersion": "cdi-e2e://0.1", "kernelVersion": "", "osImage": "cdi-e2e",
                "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        }});
        store.patch(
            &nodes,
            "",
            &name,
            crate::api::store::PatchType::Merge,
            &status,
            crate::api::store::Sub::Status,
            &opts,
        )?;
    }
    crate::api::auth::rbac::seed_defaults(store)?;
    crate::api::auth::ensure_default_service_accounts(store)?;
    let csi = store.rt("storage.k8s.io", "csidrivers");
    store.create(&csi, "", json!({"metadata": {"name": PROVISIONER}, "spec": {"attachRequired": false}}), &opts)?;
    let sc = store.rt("storage.k8s.io", "storageclasses");
    store.create(
        &sc,
        "",
        json!({"metadata": {"name": CLASS_WFFC, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}),
        &opts,
    )?;
    store.create(
        &sc,
        "",
        json!({"metadata": {"name": CLASS_IMMEDIATE}, "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
               "volumeBindingMode": "Immediate"}),
        &opts,
    )?;
    snapshotter::seed(store)?;
    Ok(())
}
