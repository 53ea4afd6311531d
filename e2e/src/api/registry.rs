//! Which resource types the server knows: the built-in kinds, plus every CustomResourceDefinition
//! registered at run time. Discovery, OpenAPI, routing and the store all read this one table.

use serde_json::{Value, json};

/// A printer column of a CRD (`additionalPrinterColumns`), evaluated on `kubectl get`.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
}

/// One served resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource: writes to the main resource keep the stored status, and
    /// writes to `/status` change nothing else.
    pub status: bool,
    /// Pods only: the `binding` subresource the scheduler posts to.
    pub binding: bool,
    /// Served from a CustomResourceDefinition (no strategic merge patch, CRD printer columns).
    pub custom: bool,
    pub printer_columns: Vec<PrinterColumn>,
    /// Where objects live in the store: one bucket may be served at several group/versions
    /// (core and events.k8s.io Events share one).
    pub storage: String,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `pods`, `customresourcedefinitions.apiextensions.k8s.io`: the name used in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        // The reviews are create-only and never stored (see `auth::reviews`); CRDs cannot
        // be served in these groups.
        if !self.custom && matches!(self.group.as_str(), "authentication.k8s.io" | "authorization.k8s.io") {
            return vec!["create"];
        }
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }

    pub fn is(&self, group: &str, plural: &str) -> bool {
        self.group == group && self.plural == plural
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
) -> Builtin {
    Builtin { group, version, kind, plural, namespaced, short, status }
}

/// The built-in kinds: what cdi-rs uses, what its deploy manifests carry, and the workload
/// kinds the stand-in controllers run (Deployment, ReplicaSet, DaemonSet).
const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], true),
    b("", "v1", "Node", "nodes", false, &["no"], true),
    b("", "v1", "Pod", "pods", true, &["po"], true),
    b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"], true),
    b("", "v1", "PersistentVolume", "persistentvolumes", false, &["pv"], true),
    b("", "v1", "Secret", "secrets", true, &[], false),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
    b("", "v1", "Event", "events", true, &["ev"], false),
    b("", "v1", "Service", "services", true, &["svc"], true),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false),
    b("events.k8s.io", "v1", "Event", "events", true, &["ev"], false),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false),
    b("storage.k8s.io", "v1", "StorageClass", "storageclasses", false, &["sc"], false),
    b("storage.k8s.io", "v1", "CSIDriver", "csidrivers", false, &[], false),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        true,
    ),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false),
    // Create-only reviews, answered by `auth::reviews` before dispatch.
    b("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", false, &[], false),
    b("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", false, &[], false),
    b("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", false, &[], false),
    b("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, &[], false),
    b("authorization.k8s.io", "v1", "LocalSubjectAccessReview", "localsubjectaccessreviews", true, &[], false),
    b("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false, &[], false),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"], true),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
    b("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"], true),
    b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, &[], false),
    b("apiregistration.k8s.io", "v1", "APIService", "apiservices", false, &[], true),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        &[],
        false,
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
        &[],
        false,
    ),
];

/// The table of served resources.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        let types = BUILTINS
            .iter()
            .map(|b| ResourceType {
                group: b.group.into(),
                version: b.version.into(),
                kind: b.kind.into(),
                plural: b.plural.into(),
                singular: b.kind.to_lowercase(),
                namespaced: b.namespaced,
                short_names: b.short.iter().map(|s| s.to_string()).collect(),
                categories: if matches!(b.plural, "pods" | "services" | "deployments" | "daemonsets") {
                    vec!["all".into()]
                } else {
                    vec![]
                },
                status: b.status,
                binding: b.plural == "pods",
                custom: false,
                printer_columns: vec![],
                // Both Event APIs read and write one bucket, as in Kubernetes.
                storage: if b.plural == "events" { "events".into() } else { format!("{}/{}", b.group, b.plural) },
            })
            .collect();
        Registry { types }
    }
}

impl Registry {
    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The preferred (first listed) version of a resource in a group.
    pub fn preferred(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural)
    }

    pub fn by_storage(&self, storage: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.storage == storage)
    }

    /// Groups in discovery order, each with its versions (preferred first).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, vs)) => {
                    if !vs.contains(&t.version) {
                        vs.push(t.version.clone())
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// Replaces the types served for one CRD with what its spec says. Returns an error message
    /// when the CRD cannot be served (names clash with a built-in).
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        let plural = names["plural"].as_str().unwrap_or_default().to_string();
        if group.is_empty() || plural.is_empty() {
            return Err("spec.group and spec.names.plural are required".into());
        }
        if self.types.iter().any(|t| !t.custom && t.group == group) {
            return Err(format!("group {group} is served by a built-in API"));
        }
        self.unregister_crd(&group, &plural);
        let kind = names["kind"].as_str().unwrap_or_default().to_string();
        let singular = names["singular"].as_str().map(str::to_string).unwrap_or_else(|| kind.to_lowercase());
        let str_list = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        // Storage version first is not required by Kubernetes; discovery prefers the first
        // served version in the order given, which is what we keep.
        for v in versions.iter().filter(|v| v["served"].as_bool().unwrap_or(true)) {
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: c["name"].as_str().unwrap_or_default().into(),
                            type_: c["type"].as_str().unwrap_or("string").into(),
                            json_path: c["jsonPath"].as_str().unwrap_or_default().into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.types.push(ResourceType {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or_default().into(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: str_list(&names["shortNames"]),
                categories: str_list(&names["categories"]),
                status: v["subresources"].get("status").is_some(),
                binding: false,
                custom: true,
                printer_columns: columns,
                storage: format!("{group}/{plural}"),
            });
        }
        Ok(())
    }

    pub fn unregister_crd(&mut self, group: &str, plural: &str) {
        self.types.retain(|t| !(t.custom && t.group == group && t.plural == plural));
    }
}

/// `{"group":…,"version":…,"kind":…}` as discovery and OpenAPI write it.
pub fn gvk_json(t: &ResourceType) -> Value {
    json!({"group": t.group, "version": t.version, "kind": t.kind})
}
