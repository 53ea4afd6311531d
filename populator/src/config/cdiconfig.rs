//! The CDIConfig controller: keeps the one `config` object and its `status`, the effective
//! settings (spec values, defaults where the spec says nothing or something invalid). It
//! follows the StorageClasses, because the filesystem overhead has one entry per class, and
//! the upload proxy's Service (and the Nodes, for a NodePort), because `uploadProxyURL` is
//! derived from them unless overridden.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, ResourceRequirements, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, watcher};

use super::{Ctx, Error, replace_status};
use crate::api::names::{config_defaults, singletons};
use crate::api::{CDIConfig, CDIConfigSpec, CDIConfigStatus, FilesystemOverhead};

/// Event reason on `config` when a filesystem overhead value is not a valid share.
pub const INVALID_FILESYSTEM_OVERHEAD: &str = "InvalidFilesystemOverhead";
/// Look again this often even without a change (CDI's informer resync).
const RESYNC: Duration = Duration::from_secs(600);
/// The upload proxy's Service, in the populator's namespace.
pub const UPLOAD_PROXY_SERVICE: &str = "cdi-uploadproxy";

/// Where clients outside the cluster reach the upload proxy, derived from its Service:
/// a LoadBalancer's first ingress (`https://<ip or hostname>`), else, for a NodePort (or a
/// LoadBalancer still without ingress), `https://<InternalIP of the first Ready node by
/// name>:<nodePort>`. IPv6 addresses go in brackets; a port other than 443 is added. `None`
/// when the Service is missing, of another type, or no node qualifies.
pub fn upload_proxy_url(service: Option<&Service>, nodes: &[Node]) -> Option<String> {
    let service = service?;
    let spec = service.spec.as_ref()?;
    // The HTTPS port: 443 if the Service has it, else its first.
    let ports = spec.ports.as_deref().unwrap_or_default();
    let port = ports.iter().find(|p| p.port == 443).or_else(|| ports.first())?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "LoadBalancer" {
        let ingress = service.status.as_ref()?.load_balancer.as_ref().and_then(|lb| lb.ingress.as_ref());
        let first = ingress.and_then(|i| i.first());
        let address = first.and_then(|i| i.ip.clone().filter(|ip| !ip.is_empty()).or_else(|| i.hostname.clone()));
        if let Some(address) = address.filter(|a| !a.is_empty()) {
            return Some(https(&address, port.port));
        }
    }
    if !matches!(kind, "NodePort" | "LoadBalancer") {
        return None;
    }
    let node_port = port.node_port.filter(|p| *p > 0)?;
    let mut ready: Vec<&Node> = nodes.iter().filter(|n| node_ready(n)).collect();
    ready.sort_by_key(|n| n.metadata.name.clone());
    let address = ready.iter().find_map(|n| {
        let addresses = n.status.as_ref()?.addresses.as_ref()?;
        addresses.iter().find(|a| a.type_ == "InternalIP" && !a.address.is_empty()).map(|a| a.address.clone())
    })?;
    Some(https(&address, node_port))
}

fn node_ready(node: &Node) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

fn https(host: &str, port: i32) -> String {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") }
}

/// A filesystem overhead as CDI accepts it: `0`, `1`, or `0.` followed by one to three
/// digits (CDI's pattern `^(0(?:\.\d{1,3})?|1)$`). Anything else is `None`.
pub fn parse_overhead(text: &str) -> Option<f64> {
    let valid = match text.strip_prefix("0.") {
        Some(digits) => (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
        None => text == "0" || text == "1",
    };
    valid.then(|| text.parse().ok()).flatten()
}

/// A value the spec gave that is ignored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Where, e.g. `spec.filesystemOverhead.storageClass[fast]`.
    pub field: String,
    pub value: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} is not a share between 0 and 1 with at most three decimals (e.g. \"0.055\"); \
             it is ignored and the default used",
            self.field, self.value
        )
    }
}

/// The filesystem overhead in effect: the spec's global value if valid, else `default`; one
/// entry per existing StorageClass, the spec's value for it if valid, else the global one.
pub fn effective_overhead(
    spec: Option<&FilesystemOverhead>,
    classes: &[String],
    default: &str,
) -> (FilesystemOverhead, Vec<Ignored>) {
    let mut ignored = Vec::new();
    let mut valid = |field: String, value: &String| {
        if parse_overhead(value).is_some() {
            Some(value.clone())
        } else {
            ignored.push(Ignored { field, value: value.clone() });
            None
        }
    };
    let global = spec
        .and_then(|s| s.global.as_ref())
        .and_then(|g| valid("spec.filesystemOverhead.global".into(), g))
        .unwrap_or_else(|| default.to_string());
    let per_class = spec.map(|s| &s.storage_class);
    let mut storage_class = BTreeMap::new();
    if let Some(per_class) = per_class {
        // Checked for every entry, existing class or not, so a typo is reported at once.
        for (class, value) in per_class {
            let field = format!("spec.filesystemOverhead.storageClass[{class}]");
            if let Some(v) = valid(field, value)
                && classes.contains(class)
            {
                storage_class.insert(class.clone(), v);
            }
        }
    }
    for class in classes {
        storage_class.entry(class.clone()).or_insert_with(|| global.clone());
    }
    (FilesystemOverhead { global: Some(global), storage_class }, ignored)
}

/// CDI's resources for worker containers when the spec sets none.
pub fn default_pod_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_string());
    ResourceRequirements {
        limits: Some(BTreeMap::from([
            ("cpu".into(), q(config_defaults::POD_LIMIT_CPU)),
            ("memory".into(), q(config_defaults::POD_LIMIT_MEMORY)),
        ])),
        requests: Some(BTreeMap::from([
            ("cpu".into(), q(config_defaults::POD_REQUEST_CPU)),
            ("memory".into(), q(config_defaults::POD_REQUEST_MEMORY)),
        ])),
        ..Default::default()
    }
}

/// The status for `spec`, given the existing StorageClasses, the global overhead default and
/// the upload proxy's address as derived from its Service ([`upload_proxy_url`]).
pub fn desired_status(
    spec: &CDIConfigSpec,
    classes: &[String],
    default_overhead: &str,
    derived_proxy_url: Option<String>,
) -> (CDIConfigStatus, Vec<Ignored>) {
    let (filesystem_overhead, ignored) =
        effective_overhead(spec.filesystem_overhead.as_ref(), classes, default_overhead);
    let scratch = spec.scratch_space_storage_class.clone().filter(|c| classes.contains(c)).unwrap_or_default();
    let status = CDIConfigStatus {
        upload_proxy_url: spec.upload_proxy_url_override.clone().filter(|u| !u.is_empty()).or(derived_proxy_url),
        upload_proxy_ca: None,
        import_proxy: spec.import_proxy.clone(),
        scratch_space_storage_class: scratch,
        default_pod_resource_requirements: Some(
            spec.pod_resource_requirements.clone().unwrap_or_else(default_pod_resources),
        ),
        filesystem_overhead: Some(filesystem_overhead),
        preallocation: spec.preallocation.unwrap_or(false),
        image_pull_secrets: spec.image_pull_secrets.clone(),
    };
    (status, ignored)
}

/// The global overhead default: `--filesystem-overhead` if CDI would accept it, else CDI's.
pub fn default_overhead(flag: f64) -> String {
    let text = format!("{flag}");
    if parse_overhead(&text).is_some() {
        text
    } else {
        tracing::warn!(
            value = flag,
            default = config_defaults::FILESYSTEM_OVERHEAD,
            "--filesystem-overhead is not a share between 0 and 1 with at most three decimals; using CDI's default"
        );
        config_defaults::FILESYSTEM_OVERHEAD.to_string()
    }
}

/// A fresh `config`: empty spec, as CDI's operator creates it.
fn new_config() -> CDIConfig {
    CDIConfig {
        metadata: ObjectMeta { name: Some(singletons::CDI_CONFIG.into()), ..Default::default() },
        spec: CDIConfigSpec::default(),
        status: None,
    }
}

/// Creates `config` unless it exists (someone else creating it first is fine).
pub async fn ensure_exists(api: &Api<CDIConfig>) -> Result<(), Error> {
    match api.create(&PostParams::default(), &new_config()).await {
        Ok(_) => {
            tracing::info!(name = singletons::CDI_CONFIG, "created the CDIConfig");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("create", "CDIConfig config", e)),
    }
}

/// Keeps `config` in existence: created at start when missing, and again whenever deleted
/// (CDI's operator does the same; clients such as KubeVirt fail without it).
pub async fn keep(client: kube::Client) {
    let api: Api<CDIConfig> = Api::all(client);
    let only = watcher::Config::default().fields(&format!("metadata.name={}", singletons::CDI_CONFIG));
    let mut seen = false;
    let mut events = std::pin::pin!(watcher(api.clone(), only).default_backoff());
    while let Some(event) = events.next().await {
        let missing = match event {
            Ok(watcher::Event::Init) => {
                seen = false;
                false
            }
            Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => {
                seen = true;
                false
            }
            Ok(watcher::Event::InitDone) => !seen,
            Ok(watcher::Event::Delete(_)) => {
                seen = false;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the CDIConfig");
                false
            }
        };
        if missing && let Err(e) = ensure_exists(&api).await {
            tracing::warn!(error = %e, "cannot create the CDIConfig");
        }
    }
}

/// Runs the controller of `config`.
pub async fn run(ctx: Arc<Ctx>) {
    let client = ctx.client.clone();
    let only = watcher::Config::default().fields(&format!("metadata.name={}", singletons::CDI_CONFIG));
    let proxy = watcher::Config::default().fields(&format!("metadata.name={UPLOAD_PROXY_SERVICE}"));
    let config = || Some(ObjectRef::new(singletons::CDI_CONFIG));
    Controller::new(Api::<CDIConfig>::all(client.clone()), only)
        .watches(Api::<StorageClass>::all(client.clone()), watcher::Config::default(), move |_| config())
        .watches(Api::<Service>::namespaced(client.clone(), &ctx.namespace), proxy, move |_| config())
        // Nodes change rarely (heartbeats go to Leases): cheap enough to follow.
        .watches(Api::<Node>::all(client), watcher::Config::default(), move |_| config())
        .run(reconcile, super::error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

async fn reconcile(config: Arc<CDIConfig>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let classes: Vec<String> = Api::<StorageClass>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list", "StorageClasses", e))?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    let derived = derived_proxy_url(&ctx).await;
    let (status, ignored) = desired_status(&config.spec, &classes, &ctx.default_overhead, derived);
    for problem in &ignored {
        tracing::warn!(name = singletons::CDI_CONFIG, "{problem}");
        ctx.event(config.as_ref(), EventType::Warning, INVALID_FILESYSTEM_OVERHEAD, &problem.to_string()).await;
    }
    if config.status.as_ref() != Some(&status) {
        let api: Api<CDIConfig> = Api::all(ctx.client.clone());
        let mut updated = config.as_ref().clone();
        updated.status = Some(status);
        replace_status(&api, &updated).await?;
        tracing::info!(name = singletons::CDI_CONFIG, "CDIConfig status updated");
    }
    Ok(Action::requeue(RESYNC))
}

/// The upload proxy's address from its Service and the Nodes. Unreadable (e.g. RBAC not
/// granting it) is as good as absent: the rest of the status is still written.
async fn derived_proxy_url(ctx: &Ctx) -> Option<String> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let service = match services.get_opt(UPLOAD_PROXY_SERVICE).await {
        Ok(s) => s?,
        Err(e) => {
            tracing::warn!(namespace = %ctx.namespace, service = UPLOAD_PROXY_SERVICE, error = %e, "cannot read the upload proxy Service");
            return None;
        }
    };
    let needs_nodes = service.spec.as_ref().and_then(|s| s.type_.as_deref()).is_some_and(|t| t != "ClusterIP");
    let nodes = if needs_nodes {
        match Api::<Node>::all(ctx.client.clone()).list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the Nodes for the upload proxy's NodePort address");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    upload_proxy_url(Some(&service), &nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overhead_values_follow_cdis_pattern() {
        for (text, want) in
            [("0", Some(0.0)), ("1", Some(1.0)), ("0.06", Some(0.06)), ("0.055", Some(0.055)), ("0.5", Some(0.5))]
        {
            assert_eq!(parse_overhead(text), want, "{text}");
        }
        for bad in ["", "0.", "0.0555", "1.0", "0.5 ", "-0.1", ".5", "2", "0,5", "abc", "00.1", "0.1e1"] {
            assert_eq!(parse_overhead(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_class_gets_an_entry_and_spec_values_win() {
        let spec = FilesystemOverhead {
            global: Some("0.1".into()),
            storage_class: BTreeMap::from([("fast".into(), "0.2".into()), ("gone".into(), "0.3".into())]),
        };
        let (o, ignored) = effective_overhead(Some(&spec), &classes(&["fast", "slow"]), "0.06");
        assert!(ignored.is_empty());
        assert_eq!(o.global.as_deref(), Some("0.1"));
        assert_eq!(o.storage_class, BTreeMap::from([("fast".into(), "0.2".into()), ("slow".into(), "0.1".into())]));

        let (o, _) = effective_overhead(None, &classes(&["a"]), "0.06");
        assert_eq!(o.global.as_deref(), Some("0.06"));
        assert_eq!(o.storage_class["a"], "0.06");
    }

    #[test]
    fn invalid_overheads_are_ignored_and_reported() {
        let spec = FilesystemOverhead {
            global: Some("5%".into()),
            storage_class: BTreeMap::from([("fast".into(), "1.5".into()), ("slow".into(), "0.2".into())]),
        };
        let (o, ignored) = effective_overhead(Some(&spec), &classes(&["fast", "slow"]), "0.06");
        assert_eq!(o.global.as_deref(), Some("0.06"));
        assert_eq!(o.storage_class["fast"], "0.06");
        assert_eq!(o.storage_class["slow"], "0.2");
        let fields: Vec<&str> = ignored.iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["spec.filesystemOverhead.global", "spec.filesystemOverhead.storageClass[fast]"]);
        assert!(ignored[1].to_string().contains("\"1.5\""), "{}", ignored[1]);
    }

    #[test]
    fn status_defaults_follow_cdi() {
        let (status, ignored) = desired_status(&CDIConfigSpec::default(), &classes(&["local"]), "0.06", None);
        assert!(ignored.is_empty());
        assert!(!status.preallocation);
        assert_eq!(status.upload_proxy_url, None);
        assert_eq!(status.scratch_space_storage_class, "");
        let resources = status.default_pod_resource_requirements.unwrap();
        assert_eq!(resources.limits.unwrap()["cpu"].0, "750m");
        assert_eq!(resources.requests.unwrap()["memory"].0, "60M");
        let json = serde_json::to_value(desired_status(&CDIConfigSpec::default(), &[], "0.06", None).0).unwrap();
        assert_eq!(json["filesystemOverhead"], serde_json::json!({"global": "0.06"}));
    }

    #[test]
    fn status_takes_the_spec_where_it_says_something() {
        let spec: CDIConfigSpec = serde_json::from_value(serde_json::json!({
            "uploadProxyURLOverride": "upload.example.com",
            "importProxy": {"HTTPProxy": "http://proxy:3128", "noProxy": ".cluster.local"},
            "scratchSpaceStorageClass": "local",
            "podResourceRequirements": {"limits": {"cpu": 1}},
            "preallocation": true,
            "imagePullSecrets": [{"name": "pull"}],
        }))
        .unwrap();
        let (status, _) = desired_status(&spec, &classes(&["local"]), "0.06", Some("https://10.0.0.1:31001".into()));
        assert_eq!(status.upload_proxy_url.as_deref(), Some("upload.example.com"));
        assert_eq!(status.import_proxy.unwrap().http_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(status.scratch_space_storage_class, "local");
        assert_eq!(status.default_pod_resource_requirements.unwrap().limits.unwrap()["cpu"].0, "1");
        assert!(status.preallocation);
        assert_eq!(status.image_pull_secrets[0].name, "pull");
        // A scratch class that does not exist is not used: the target's class is.
        let (status, _) = desired_status(&spec, &classes(&["other"]), "0.06", None);
        assert_eq!(status.scratch_space_storage_class, "");
    }

    #[test]
    fn the_flag_is_the_global_default_when_cdi_would_accept_it() {
        assert_eq!(default_overhead(0.06), "0.06");
        assert_eq!(default_overhead(0.1), "0.1");
        assert_eq!(default_overhead(0.0555), config_defaults::FILESYSTEM_OVERHEAD);
        assert_eq!(default_overhead(0.0), "0");
    }

    fn service(kind: &str, node_port: Option<i32>, ingress: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "cdi-uploadproxy", "namespace": "cdi-rs"},
            "spec": {"type": kind, "ports": [{"port": 443, "targetPort": 8443, "nodePort": node_port}]},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn node(name: &str, ready: &str, ip: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_port_proxy_is_reached_on_the_first_ready_nodes_internal_ip() {
        let svc = service("NodePort", Some(31001), serde_json::json!(null));
        let nodes = [node("b", "True", "10.0.0.2"), node("a", "False", "10.0.0.1"), node("c", "True", "10.0.0.3")];
        assert_eq!(upload_proxy_url(Some(&svc), &nodes).as_deref(), Some("https://10.0.0.2:31001"));
        assert_eq!(
            upload_proxy_url(Some(&svc), &[node("v6", "True", "fd00::5")]).as_deref(),
            Some("https://[fd00::5]:31001")
        );
        assert_eq!(upload_proxy_url(Some(&svc), &[node("a", "Unknown", "10.0.0.1")]), None, "no ready node");
        assert_eq!(upload_proxy_url(Some(&service("NodePort", None, serde_json::json!(null))), &nodes), None);
    }

    #[test]
    fn a_load_balancer_proxy_is_reached_on_its_first_ingress() {
        let nodes = [node("a", "True", "10.0.0.1")];
        let ip = service("LoadBalancer", Some(31001), serde_json::json!([{"ip": "192.0.2.7"}, {"ip": "192.0.2.8"}]));
        assert_eq!(upload_proxy_url(Some(&ip), &nodes).as_deref(), Some("https://192.0.2.7"));
        let host = service("LoadBalancer", Some(31001), serde_json::json!([{"hostname": "lb.example.com"}]));
        assert_eq!(upload_proxy_url(Some(&host), &nodes).as_deref(), Some("https://lb.example.com"));
        let v6 = service("LoadBalancer", None, serde_json::json!([{"ip": "2001:db8::1"}]));
        assert_eq!(upload_proxy_url(Some(&v6), &nodes).as_deref(), Some("https://[2001:db8::1]"));
        // No ingress yet: its node port, as for a NodePort Service.
        let pending = service("LoadBalancer", Some(31001), serde_json::json!([]));
        assert_eq!(upload_proxy_url(Some(&pending), &nodes).as_deref(), Some("https://10.0.0.1:31001"));
    }

    #[test]
    fn no_service_or_a_cluster_ip_one_gives_no_address_and_the_override_wins() {
        let nodes = [node("a", "True", "10.0.0.1")];
        assert_eq!(upload_proxy_url(None, &nodes), None);
        assert_eq!(upload_proxy_url(Some(&service("ClusterIP", None, serde_json::json!(null))), &nodes), None);
        let derived = Some("https://10.0.0.1:31001".to_string());
        let (status, _) = desired_status(&CDIConfigSpec::default(), &[], "0.06", derived.clone());
        assert_eq!(status.upload_proxy_url, derived);
        let spec = CDIConfigSpec { upload_proxy_url_override: Some("upload.example.com".into()), ..Default::default() };
        let (status, _) = desired_status(&spec, &[], "0.06", derived);
        assert_eq!(status.upload_proxy_url.as_deref(), Some("upload.example.com"));
    }
}
