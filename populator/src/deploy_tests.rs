//! `deploy/` parses, every object in it is a well-formed Kubernetes object (no field the API
//! would drop or refuse), and the pieces fit together: kustomization lists every file, pods
//! run as ServiceAccounts that exist, selectors match their pod labels, bindings name roles
//! and accounts that exist, the populator's roles grant what the controller does, and the
//! container command lines are those the binaries take.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{Cli, Command};

const NAMESPACE: &str = "cdi-rs";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every object of every manifest listed in the kustomization, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    daemon_sets: Vec<DaemonSet>,
    crds: Vec<CustomResourceDefinition>,
    services: Vec<Service>,
    webhook_configurations: Vec<ValidatingWebhookConfiguration>,
    api_services: Vec<ApiService>,
}

/// `apiregistration.k8s.io/v1` `APIService` (k8s-openapi has no kube-aggregator types):
/// the fields we set, and those we must not.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiService {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ApiServiceSpec,
}

#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiServiceSpec {
    group: String,
    version: String,
    service: ApiServiceReference,
    group_priority_minimum: i32,
    version_priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "insecureSkipTLSVerify")]
    insecure_skip_tls_verify: Option<bool>,
}

#[derive(Serialize, serde::Deserialize)]
struct ApiServiceReference {
    namespace: String,
    name: String,
    port: i32,
}

/// The one object outside cdi-rs that is namespaced: the Role (and its binding) reading the
/// API server's front-proxy settings.
const AUTH_READER: &str = "cdi-populator-authentication-reader";

/// Deserialises `doc` as `K` and checks that serialising it gives `doc` back: a misspelt or
/// misplaced field (which serde would silently skip) fails here.
fn strict<K: Serialize + DeserializeOwned>(doc: &Value, file: &str) -> K {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: {} {} has fields its type does not know (a typo?)",
        doc["kind"], doc["metadata"]["name"]
    );
    typed
}

fn kustomization_resources() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).expect("kustomization.yaml parses");
    assert_eq!(doc["kind"], "Kustomization");
    doc["resources"]
        .as_array()
        .expect("resources list")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_owned())
        .collect()
}

fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in kustomization_resources() {
        let text = std::fs::read_to_string(deploy_dir().join(&file))
            .unwrap_or_else(|e| panic!("{file} listed in kustomization.yaml: {e}"));
        let docs: Vec<Value> =
            serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            match (api_version, doc["kind"].as_str().unwrap_or_default()) {
                ("v1", "Namespace") => m.namespaces.push(strict(doc, &file)),
                ("v1", "ServiceAccount") => m.service_accounts.push(strict(doc, &file)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.cluster_roles.push(strict(doc, &file)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    m.cluster_role_bindings.push(strict(doc, &file))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => m.roles.push(strict(doc, &file)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => m.role_bindings.push(strict(doc, &file)),
                ("apps/v1", "Deployment") => m.deployments.push(strict(doc, &file)),
                ("apps/v1", "DaemonSet") => m.daemon_sets.push(strict(doc, &file)),
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => m.crds.push(strict(doc, &file)),
                ("v1", "Service") => m.services.push(strict(doc, &file)),
                ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                    m.webhook_configurations.push(strict(doc, &file))
                }
                ("apiregistration.k8s.io/v1", "APIService") => m.api_services.push(strict(doc, &file)),
                (api_version, kind) => panic!("{file}: unexpected object {api_version} {kind}"),
            }
        }
    }
    m
}

fn yaml_files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.insert(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("pod template has a spec")
}

fn the_deployment(m: &Manifests) -> &Deployment {
    m.deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("cdi-populator"))
        .expect("Deployment cdi-populator")
}

fn the_daemon_set(m: &Manifests) -> &DaemonSet {
    m.daemon_sets.iter().find(|d| d.metadata.name.as_deref() == Some("cdi-mover")).expect("DaemonSet cdi-mover")
}

fn has_service_account(m: &Manifests, namespace: Option<&str>, name: &str) -> bool {
    m.service_accounts
        .iter()
        .any(|sa| sa.metadata.name.as_deref() == Some(name) && sa.metadata.namespace.as_deref() == namespace)
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|rule| {
        let has = |list: &Option<Vec<String>>, item: &str| {
            list.as_ref().is_some_and(|l| l.iter().any(|x| x == item || x == "*"))
        };
        has(&rule.api_groups, group)
            && has(&rule.resources, resource)
            && rule.verbs.iter().any(|v| v == verb || v == "*")
    })
}

#[test]
fn kustomization_lists_every_manifest_and_every_manifest_parses_strictly() {
    let listed: BTreeSet<String> = kustomization_resources().into_iter().collect();
    let mut on_disk = BTreeSet::new();
    yaml_files(&deploy_dir(), &deploy_dir(), &mut on_disk);
    on_disk.remove("kustomization.yaml");
    assert_eq!(listed, on_disk, "kustomization.yaml resources vs deploy/*.yaml");
    let m = load();
    assert_eq!(m.crds, crate::crds::all(), "deploy/crds as generated");
}

#[test]
fn namespaced_objects_live_in_the_cdi_rs_namespace() {
    let m = load();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.namespaces[0].metadata.name.as_deref(), Some(NAMESPACE));
    let namespaced = m
        .service_accounts
        .iter()
        .map(|o| &o.metadata)
        .chain(m.roles.iter().map(|o| &o.metadata))
        .chain(m.role_bindings.iter().map(|o| &o.metadata))
        .chain(m.deployments.iter().map(|o| &o.metadata))
        .chain(m.daemon_sets.iter().map(|o| &o.metadata))
        .chain(m.services.iter().map(|o| &o.metadata));
    for meta in namespaced {
        if meta.name.as_deref() == Some(AUTH_READER) {
            assert_eq!(meta.namespace.as_deref(), Some("kube-system"), "{AUTH_READER} is where the ConfigMap is");
            continue;
        }
        assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{:?}", meta.name);
    }
}

#[test]
fn workloads_run_as_existing_service_accounts_and_select_their_own_pods() {
    let m = load();
    let workloads = m
        .deployments
        .iter()
        .map(|d| (&d.metadata, d.spec.as_ref().map(|s| (&s.selector, &s.template))))
        .chain(m.daemon_sets.iter().map(|d| (&d.metadata, d.spec.as_ref().map(|s| (&s.selector, &s.template)))));
    for (meta, spec) in workloads {
        let name = meta.name.as_deref().unwrap_or_default();
        let (selector, template) = spec.unwrap_or_else(|| panic!("{name} has a spec"));
        let account = pod_spec(template)
            .service_account_name
            .as_deref()
            .unwrap_or_else(|| panic!("{name} names its ServiceAccount"));
        assert!(
            has_service_account(&m, meta.namespace.as_deref(), account),
            "{name} runs as ServiceAccount {account}, which deploy/ does not define"
        );
        assert!(selector.match_expressions.is_none(), "{name}: keep selectors to labels");
        let wanted = selector.match_labels.as_ref().filter(|l| !l.is_empty());
        let wanted = wanted.unwrap_or_else(|| panic!("{name} selects by labels"));
        let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
        let labels = labels.unwrap_or_else(|| panic!("{name}: pod template has labels"));
        for (key, value) in wanted {
            assert_eq!(labels.get(key), Some(value), "{name}: selector {key}={value} vs pod labels");
        }
    }
}

#[test]
fn bindings_name_roles_and_service_accounts_that_exist() {
    let m = load();
    let cluster_roles: BTreeSet<_> = m.cluster_roles.iter().filter_map(|r| r.metadata.name.clone()).collect();
    let roles: BTreeSet<_> = m.roles.iter().filter_map(|r| r.metadata.name.clone()).collect();
    let bindings = m
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects, None))
        .chain(m.role_bindings.iter().map(|b| (&b.role_ref, &b.subjects, b.metadata.namespace.as_deref())));
    for (role_ref, subjects, namespace) in bindings {
        let known = match role_ref.kind.as_str() {
            "ClusterRole" => &cluster_roles,
            "Role" => &roles,
            other => panic!("roleRef kind {other}"),
        };
        assert!(known.contains(&role_ref.name), "binding to missing {} {}", role_ref.kind, role_ref.name);
        for subject in subjects.as_deref().unwrap_or_default() {
            // Groups only for what every user may read (CDI's config-reader).
            if subject.kind == "Group" {
                assert_eq!(subject.name, "system:authenticated");
                assert_eq!(role_ref.name, "cdi.kubevirt.io:config-reader");
                continue;
            }
            assert_eq!(subject.kind, "ServiceAccount");
            let subject_ns = subject.namespace.as_deref().or(namespace);
            assert!(
                has_service_account(&m, subject_ns, &subject.name),
                "binding subject {:?}/{} is not defined",
                subject_ns,
                subject.name
            );
        }
    }
}

#[test]
fn the_populator_may_do_what_the_populate_flow_needs() {
    let m = load();
    let cluster = &m.cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some("cdi-populator")).unwrap();
    let cluster = cluster.rules.as_deref().unwrap_or_default();
    let own = &m.roles.iter().find(|r| r.metadata.name.as_deref() == Some("cdi-populator")).unwrap();
    let own = own.rules.as_deref().unwrap_or_default();
    let everywhere: &[(&str, &str, &[&str])] = &[
        ("", "persistentvolumeclaims", &["get", "list", "watch", "create", "update", "patch", "delete"]),
        ("", "persistentvolumeclaims/finalizers", &["update"]),
        ("", "persistentvolumes", &["get", "list", "watch", "patch", "update"]),
        ("", "pods", &["get", "list", "watch", "create", "delete"]),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "secrets", &["get", "list", "watch"]),
        ("", "configmaps", &["get", "list", "watch"]),
        ("storage.k8s.io", "storageclasses", &["get", "list", "watch"]),
        ("cdi.kubevirt.io", "volumeimportsources", &["get", "list", "watch"]),
        ("cdi.kubevirt.io", "volumeuploadsources", &["get", "list", "watch"]),
        ("cdi.kubevirt.io", "volumeclonesources", &["get", "list", "watch"]),
        ("cdi.kubevirt.io", "storageprofiles", &["get", "list", "watch", "create", "update", "patch"]),
        ("cdi.kubevirt.io", "cdiconfigs", &["get", "list", "watch", "create", "update", "patch"]),
        ("cdi.kubevirt.io", "cdis", &["get", "list", "watch", "create", "update", "patch"]),
        ("cdi.kubevirt.io", "storageprofiles/status", &["get", "update", "patch"]),
        ("cdi.kubevirt.io", "cdiconfigs/status", &["get", "update", "patch"]),
        ("cdi.kubevirt.io", "cdis/status", &["get", "update", "patch"]),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", &["get", "list", "watch"]),
        // The DataVolume controller.
        ("cdi.kubevirt.io", "volumeimportsources", &["create", "update", "patch", "delete"]),
        ("cdi.kubevirt.io", "datavolumes", &["get", "list", "watch", "update", "patch"]),
        ("cdi.kubevirt.io", "datavolumes/status", &["get", "update", "patch"]),
        ("cdi.kubevirt.io", "datavolumes/finalizers", &["update"]),
        ("cdi.kubevirt.io", "datasources", &["get", "list", "watch"]),
        ("cdi.kubevirt.io", "datasources/status", &["get", "update", "patch"]),
    ];
    for (group, resource, verbs) in everywhere {
        for verb in *verbs {
            assert!(allows(cluster, group, resource, verb), "ClusterRole: {verb} {group}/{resource}");
        }
    }
    // Writing Secrets stays confined to our namespace: cluster-wide, they are read-only.
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!allows(cluster, "", "secrets", verb), "ClusterRole must not {verb} secrets");
    }
    let in_namespace: &[(&str, &str, &[&str])] = &[
        ("", "secrets", &["create", "update"]),
        ("", "configmaps", &["create", "update"]),
        ("coordination.k8s.io", "leases", &["get", "create", "update"]),
    ];
    for (group, resource, verbs) in in_namespace {
        for verb in *verbs {
            assert!(allows(own, group, resource, verb), "Role: {verb} {group}/{resource}");
        }
    }
}

#[test]
fn the_populator_deployment_runs_one_unprivileged_leader_elected_replica() {
    let m = load();
    let deployment = the_deployment(&m);
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let pod = pod_spec(&spec.template);
    assert!(pod.volumes.is_none(), "the populator mounts nothing");
    assert_ne!(pod.host_network, Some(true));
    let [container] = pod.containers.as_slice() else { panic!("one container") };
    assert_eq!(container.image.as_deref(), Some("cdi-rs/populator"));
    let security = container.security_context.as_ref().unwrap();
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    // The command line is one `cdi-populator` accepts.
    let argv = container.command.iter().flatten().chain(container.args.iter().flatten());
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("Deployment command line: {e}"));
    let Command::Run(run) = cli.command else { panic!("the Deployment runs `run`") };

    // Probes and ports point where `run` listens: liveness at the metrics server, readiness
    // at the webhook (it listens once it has its certificate, so ready means it answers).
    let ports = container.ports.as_deref().unwrap_or_default();
    let port = |name: &str| ports.iter().find(|p| p.name.as_deref() == Some(name)).unwrap().container_port;
    assert_eq!(port("http-metrics"), i32::from(run.metrics_listen.port()));
    assert_eq!(port("https-webhook"), i32::from(run.webhook_listen.port()));
    for (probe, port, scheme) in [
        (&container.liveness_probe, "http-metrics", None),
        (&container.readiness_probe, "https-webhook", Some("HTTPS")),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some("/healthz"));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(port.into()));
        assert_eq!(get.scheme.as_deref(), scheme);
    }

    // Leader election reads its namespace and identity from the downward API.
    let env = container.env.as_deref().unwrap_or_default();
    for (name, path) in [("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")] {
        let var = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("env {name}"));
        let field = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(field, Some(path), "env {name}");
    }
}

#[test]
fn the_mover_daemon_set_reaches_kubelet_volumes_and_its_certificates() {
    let m = load();
    let daemon_set = the_daemon_set(&m);
    let template = &daemon_set.spec.as_ref().unwrap().template;
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref()).unwrap();
    assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("cdi-mover"));
    let pod = pod_spec(template);
    assert_eq!(pod.host_network, Some(false));
    let [container] = pod.containers.as_slice() else { panic!("one container") };
    assert_eq!(container.image.as_deref(), Some("cdi-rs/mover"));
    assert_eq!(container.security_context.as_ref().and_then(|s| s.privileged), Some(true));

    let argv: Vec<&str> =
        container.command.iter().flatten().chain(container.args.iter().flatten()).map(String::as_str).collect();
    assert_eq!(
        argv,
        [
            "cdi-mover",
            "serve",
            "--listen",
            "$(POD_IP):7443",
            "--tls-cert",
            "/etc/cdi-mover/tls/tls.crt",
            "--tls-key",
            "/etc/cdi-mover/tls/tls.key",
            "--client-ca",
            "/etc/cdi-mover/tls/ca.crt",
            "--kubelet-root",
            "/var/lib/kubelet",
            "--metrics-listen",
            "$(POD_IP):9102",
        ]
    );
    let env = container.env.as_deref().unwrap_or_default();
    let node = env.iter().find(|e| e.name == "NODE_NAME").expect("env NODE_NAME");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"));

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let mount_of = |path: &str| {
        let mount = mounts.iter().find(|m| m.mount_path == path).unwrap_or_else(|| panic!("mount at {path}"));
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap_or_else(|| panic!("volume {}", mount.name));
        (mount, volume)
    };
    let (mount, volume) = mount_of("/var/lib/kubelet");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/var/lib/kubelet"));
    let (_, volume) = mount_of("/dev");
    assert_eq!(volume.host_path.as_ref().map(|h| h.path.as_str()), Some("/dev"));
    let (mount, volume) = mount_of("/etc/cdi-mover/tls");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(volume.secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("cdi-mover-tls"));
    // Every volume is mounted (no leftovers) and every port has a name.
    for volume in volumes {
        assert!(mounts.iter().any(|m| m.name == volume.name), "volume {} unused", volume.name);
    }
    let ports: BTreeSet<_> = container.ports.iter().flatten().map(|p| (p.name.clone(), p.container_port)).collect();
    assert!(ports.contains(&(Some("grpc".into()), 7443)) && ports.contains(&(Some("http-metrics".into()), 9102)));
}

#[test]
fn the_webhook_configuration_reaches_the_populators_webhook_through_its_service() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use crate::api::names::webhooks::{DATAVOLUME_VALIDATE, DATAVOLUME_VALIDATE_PATH};
    let m = load();
    let deployment = the_deployment(&m);
    let container = &pod_spec(&deployment.spec.as_ref().unwrap().template).containers[0];
    let argv = container.command.iter().flatten().chain(container.args.iter().flatten());
    let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else { panic!("run") };

    let [config] = m.webhook_configurations.as_slice() else { panic!("one ValidatingWebhookConfiguration") };
    assert_eq!(config.metadata.name.as_deref(), Some(run.webhook_configuration.as_str()));
    let [hook] = config.webhooks.as_deref().unwrap_or_default() else { panic!("one webhook") };
    assert_eq!(hook.name, DATAVOLUME_VALIDATE);
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert!(hook.client_config.ca_bundle.is_none(), "the populator fills in the caBundle");
    let [rule] = hook.rules.as_deref().unwrap_or_default() else { panic!("one rule") };
    assert_eq!(rule.api_groups.as_deref(), Some(&["cdi.kubevirt.io".to_string()][..]));
    assert_eq!(rule.api_versions.as_deref(), Some(&["v1beta1".to_string()][..]));
    assert_eq!(rule.resources.as_deref(), Some(&["datavolumes".to_string()][..]));
    assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_string(), "UPDATE".to_string()][..]));

    // The webhook calls the Service the certificate is made for, on the path served.
    let reference = hook.client_config.service.as_ref().expect("a Service reference");
    assert_eq!(reference.path.as_deref(), Some(DATAVOLUME_VALIDATE_PATH));
    assert_eq!((reference.namespace.as_str(), reference.name.as_str()), (NAMESPACE, run.webhook_service.as_str()));
    let service = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(reference.name.as_str()))
        .expect("the webhook's Service");
    let spec = service.spec.as_ref().unwrap();
    let pod_labels = deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in spec.selector.as_ref().expect("a selector") {
        assert_eq!(pod_labels.get(k), Some(v), "the Service selects the populator pods by {k}={v}");
    }
    let port = spec.ports.iter().flatten().find(|p| Some(p.port) == reference.port).expect("the webhook's port");
    assert_eq!(port.target_port, Some(IntOrString::String("https-webhook".into())));

    // The populator may read and patch that configuration, and only it.
    let role = m.cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some("cdi-populator-webhook")).unwrap();
    let rules = role.rules.as_deref().unwrap_or_default();
    for verb in ["get", "patch"] {
        assert!(allows(rules, "admissionregistration.k8s.io", "validatingwebhookconfigurations", verb), "{verb}");
    }
    for rule in rules.iter().filter(|r| r.resources.iter().flatten().any(|r| r == "validatingwebhookconfigurations")) {
        assert_eq!(rule.resource_names.as_deref(), Some(&[run.webhook_configuration.clone()][..]));
    }
    let bound = m.cluster_role_bindings.iter().any(|b| {
        b.role_ref.name == "cdi-populator-webhook"
            && b.subjects
                .iter()
                .flatten()
                .any(|s| s.name == "cdi-populator" && s.namespace.as_deref() == Some(NAMESPACE))
    });
    assert!(bound, "the populator's ServiceAccount has the webhook role");
}

fn run_args(m: &Manifests) -> crate::cli::RunArgs {
    let deployment = the_deployment(m);
    let container = &pod_spec(&deployment.spec.as_ref().unwrap().template).containers[0];
    let argv = container.command.iter().flatten().chain(container.args.iter().flatten());
    let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else { panic!("run") };
    run
}

fn bound_to_populator(m: &Manifests, kind: &str, role: &str) -> bool {
    let is_populator = |s: &k8s_openapi::api::rbac::v1::Subject| {
        s.kind == "ServiceAccount" && s.name == "cdi-populator" && s.namespace.as_deref() == Some(NAMESPACE)
    };
    let cluster = m.cluster_role_bindings.iter().map(|b| (&b.role_ref, &b.subjects));
    let namespaced = m.role_bindings.iter().map(|b| (&b.role_ref, &b.subjects));
    cluster
        .chain(namespaced)
        .any(|(r, subjects)| r.kind == kind && r.name == role && subjects.iter().flatten().any(is_populator))
}

#[test]
fn the_apiservice_reaches_the_populators_upload_api_through_its_service() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use crate::api::uploadtoken::{GROUP, PLURAL, VERSION};
    let m = load();
    let run = run_args(&m);
    let [apiservice] = m.api_services.as_slice() else { panic!("one APIService") };
    assert_eq!(apiservice.metadata.name.as_deref(), Some(run.api_apiservice.as_str()));
    assert_eq!(run.api_apiservice, format!("{VERSION}.{GROUP}"), "kube names an APIService <version>.<group>");
    let spec = &apiservice.spec;
    assert_eq!((spec.group.as_str(), spec.version.as_str()), (GROUP, VERSION));
    assert_eq!((spec.group_priority_minimum, spec.version_priority), (1000, 15), "CDI's priorities");
    assert!(spec.ca_bundle.is_none(), "the populator fills in the caBundle");
    assert_ne!(spec.insecure_skip_tls_verify, Some(true));
    assert_eq!((spec.service.namespace.as_str(), spec.service.name.as_str()), (NAMESPACE, run.api_service.as_str()));
    assert!(
        m.crds.iter().all(|c| c.spec.group != GROUP && c.spec.names.plural != PLURAL),
        "UploadTokenRequest is served, not stored: no CRD"
    );

    // The Service selects the populator pods and targets the port --api-listen binds.
    let service = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(run.api_service.as_str()))
        .expect("Service cdi-api");
    let svc = service.spec.as_ref().unwrap();
    let pod_labels =
        the_deployment(&m).spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in svc.selector.as_ref().expect("a selector") {
        assert_eq!(pod_labels.get(k), Some(v), "the Service selects the populator pods by {k}={v}");
    }
    let port = svc.ports.iter().flatten().find(|p| p.port == spec.service.port).expect("the APIService's port");
    assert_eq!(port.target_port, Some(IntOrString::String("https-api".into())));
    let container = &pod_spec(&the_deployment(&m).spec.as_ref().unwrap().template).containers[0];
    let container_port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("https-api"));
    assert_eq!(container_port.map(|p| p.container_port), Some(i32::from(run.api_listen.port())));
    assert_eq!(run.api_listen.port(), 8444);

    // The populator may get and patch that APIService only, and read the front-proxy settings.
    let role = m.cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some("cdi-populator-api")).unwrap();
    let rules = role.rules.as_deref().unwrap_or_default();
    for verb in ["get", "patch"] {
        assert!(allows(rules, "apiregistration.k8s.io", "apiservices", verb), "{verb} apiservices");
    }
    for rule in rules {
        assert_eq!(rule.resource_names.as_deref(), Some(&[run.api_apiservice.clone()][..]));
    }
    assert!(bound_to_populator(&m, "ClusterRole", "cdi-populator-api"));
    let reader = m.roles.iter().find(|r| r.metadata.name.as_deref() == Some(AUTH_READER)).unwrap();
    let rules = reader.rules.as_deref().unwrap_or_default();
    assert!(allows(rules, "", "configmaps", "get"));
    assert_eq!(rules[0].resource_names.as_deref(), Some(&["extension-apiserver-authentication".to_string()][..]));
    assert!(bound_to_populator(&m, "Role", AUTH_READER));
}

#[test]
fn users_get_cdis_roles_with_upload_tokens_for_admin_and_edit() {
    let m = load();
    let role = |name: &str| {
        let r = m.cluster_roles.iter().find(|r| r.metadata.name.as_deref() == Some(name));
        r.unwrap_or_else(|| panic!("ClusterRole {name}"))
    };
    for (name, aggregate) in [("cdi.kubevirt.io:admin", "admin"), ("cdi.kubevirt.io:edit", "edit")] {
        let r = role(name);
        let label = format!("rbac.authorization.k8s.io/aggregate-to-{aggregate}");
        assert_eq!(r.metadata.labels.as_ref().and_then(|l| l.get(&label)).map(String::as_str), Some("true"), "{name}");
        let rules = r.rules.as_deref().unwrap_or_default();
        assert!(allows(rules, "upload.cdi.kubevirt.io", "uploadtokenrequests", "create"), "{name}");
        for resource in
            ["datavolumes", "datasources", "volumeuploadsources", "volumeimportsources", "volumeclonesources"]
        {
            assert!(allows(rules, "cdi.kubevirt.io", resource, "delete"), "{name}: {resource}");
        }
        assert!(allows(rules, "cdi.kubevirt.io", "datavolumes/source", "create"), "{name}");
    }
    let view = role("cdi.kubevirt.io:view");
    let label = view.metadata.labels.as_ref().and_then(|l| l.get("rbac.authorization.k8s.io/aggregate-to-view"));
    assert_eq!(label.map(String::as_str), Some("true"));
    let rules = view.rules.as_deref().unwrap_or_default();
    assert!(allows(rules, "cdi.kubevirt.io", "datavolumes", "watch"));
    assert!(!allows(rules, "upload.cdi.kubevirt.io", "uploadtokenrequests", "create"), "view gets no upload tokens");
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!allows(rules, "cdi.kubevirt.io", "datavolumes", verb), "view must not {verb}");
    }
}
