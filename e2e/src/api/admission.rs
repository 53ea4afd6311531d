//! Per-kind defaulting and validation done on write, standing in for the API server's
//! registry strategies and the default admission plugins (DefaultStorageClass,
//! StorageObjectInUseProtection). Only what the project's flows and kubectl observe.

use serde_json::{Value, json};

use super::util::{base64, now};

/// Finalizers the protection controllers own.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
pub const CRD_CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

fn add_finalizer(obj: &mut Value, f: &str) {
    let list = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    if !list.iter().any(|x| x == f) {
        let mut list = list;
        list.push(json!(f));
        obj["metadata"]["finalizers"] = Value::Array(list);
    }
}

fn default(obj: &mut Value, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

/// Context the defaults need from the rest of the store.
#[derive(Debug, Default)]
pub struct CreateContext {
    /// The StorageClass annotated as default, if exactly one is.
    pub default_class: Option<String>,
    /// A ClusterIP not yet handed out.
    pub next_cluster_ip: String,
}

/// Fills defaults on a new object of the bucket `storage` and validates it.
///
/// # Errors
/// The validation message (the caller wraps it in a 422 Invalid).
pub fn on_create(storage: &str, obj: &mut Value, ctx: &CreateContext) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match storage {
        "/namespaces" => {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        "/pods" => {
            let spec = &mut obj["spec"];
            let containers = spec["containers"].as_array_mut().filter(|c| !c.is_empty());
            let Some(containers) = containers else { return Err("spec.containers: Required value".into()) };
            for c in containers.iter_mut() {
                if c["name"].as_str().is_none_or(str::is_empty) {
                    return Err("spec.containers[0].name: Required value".into());
                }
                if c["image"].as_str().is_none_or(str::is_empty) {
                    return Err("spec.containers[0].image: Required value".into());
                }
                let latest = c["image"].as_str().is_some_and(|i| !i.contains(':') || i.ends_with(":latest"));
                default(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
                default(c, "terminationMessagePath", json!("/dev/termination-log"));
                default(c, "terminationMessagePolicy", json!("File"));
                default(c, "resources", json!({}));
            }
            default(spec, "restartPolicy", json!("Always"));
            default(spec, "schedulerName", json!("default-scheduler"));
            default(spec, "terminationGracePeriodSeconds", json!(30));
            default(spec, "dnsPolicy", json!("ClusterFirst"));
            default(spec, "securityContext", json!({}));
            default(spec, "enableServiceLinks", json!(true));
            default(spec, "serviceAccountName", json!("default"));
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        "apps/deployments" | "apps/replicasets" | "apps/daemonsets" => workload_defaults(storage, obj)?,
        "/persistentvolumeclaims" => {
            let spec = &mut obj["spec"];
            if spec["accessModes"].as_array().is_none_or(Vec::is_empty) {
                return Err("spec.accessModes: Required value: at least 1 access mode is required".into());
            }
            if spec["resources"]["requests"]["storage"].is_null() {
                return Err("spec.resources[storage]: Required value".into());
            }
            default(spec, "volumeMode", json!("Filesystem"));
            // DefaultStorageClass admission: only an absent class is defaulted; "" means none.
            if spec.get("storageClassName").is_none_or(Value::is_null)
                && let Some(c) = &ctx.default_class
            {
                spec["storageClassName"] = json!(c);
            }
            // dataSource and dataSourceRef mirror each other for the kinds both accept.
            if spec.get("dataSourceRef").is_none_or(Value::is_null) && spec["dataSource"].is_object() {
                spec["dataSourceRef"] = spec["dataSource"].clone();
            } else if spec.get("dataSource").is_none_or(Value::is_null) && spec["dataSourceRef"].is_object() {
                let r = &spec["dataSourceRef"];
                let group = r["apiGroup"].as_str().unwrap_or_default();
                let kind = r["kind"].as_str().unwrap_or_default();
                if r["namespace"].is_null()
                    && ((group.is_empty() && kind == "PersistentVolumeClaim")
                        || (group == "snapshot.storage.k8s.io" && kind == "VolumeSnapshot"))
                {
                    let mut ds = r.clone();
                    ds.as_object_mut().map(|m| m.remove("namespace"));
                    spec["dataSource"] = ds;
                }
            }
            add_finalizer(obj, PVC_PROTECTION);
            obj["status"] = json!({"phase": "Pending"});
        }
        "/persistentvolumes" => {
            let spec = &mut obj["spec"];
            if spec["capacity"]["storage"].is_null() {
                return Err("spec.capacity: Required value".into());
            }
            default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            default(spec, "volumeMode", json!("Filesystem"));
            add_finalizer(obj, PV_PROTECTION);
            obj["status"] = json!({"phase": "Pending"});
        }
        "storage.k8s.io/storageclasses" => {
            if obj["provisioner"].as_str().is_none_or(str::is_empty) {
                return Err("provisioner: Required value".into());
            }
            default(obj, "reclaimPolicy", json!("Delete"));
            default(obj, "volumeBindingMode", json!("Immediate"));
        }
        "storage.k8s.io/csidrivers" => {
            let spec = &mut obj["spec"];
            default(spec, "attachRequired", json!(true));
            default(spec, "podInfoOnMount", json!(false));
            default(spec, "volumeLifecycleModes", json!(["Persistent"]));
            default(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
            default(spec, "requiresRepublish", json!(false));
            default(spec, "storageCapacity", json!(false));
            default(spec, "seLinuxMount", json!(false));
        }
        "/secrets" => {
            default(obj, "type", json!("Opaque"));
            fold_string_data(obj);
        }
        "/services" => {
            let spec = &mut obj["spec"];
            default(spec, "type", json!("ClusterIP"));
            default(spec, "sessionAffinity", json!("None"));
            if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
                spec["clusterIP"] = json!(ctx.next_cluster_ip);
                spec["clusterIPs"] = json!([ctx.next_cluster_ip]);
            }
            if let Some(ports) = spec["ports"].as_array_mut() {
                for p in ports {
                    default(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    default(p, "targetPort", port);
                }
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        "apiextensions.k8s.io/customresourcedefinitions" => {
            let names = obj["spec"]["names"].clone();
            let t = now();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter()
                    .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            });
            add_finalizer(obj, CRD_CLEANUP);
        }
        _ => {}
    }
    Ok(())
}

/// `stringData` is write-only: it is folded into `data` on every write.
pub fn fold_string_data(obj: &mut Value) {
    if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
        && let Some(sd) = sd.as_object()
    {
        for (k, v) in sd {
            obj["data"][k] = json!(base64(v.as_str().unwrap_or_default().as_bytes()));
        }
    }
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

/// Validates an update of the main resource against the stored object.
///
/// # Errors
/// The validation message (422 Invalid).
pub fn on_update(storage: &str, old: &Value, new: &mut Value) -> Result<(), String> {
    match storage {
        "/persistentvolumeclaims" => {
            let mut o = without(&old["spec"], &["resources", "volumeAttributesClassName"]);
            let n = without(&new["spec"], &["resources", "volumeAttributesClassName"]);
            // volumeName may be set once, by the binder.
            if o["volumeName"].as_str().is_none_or(str::is_empty) && !n["volumeName"].is_null() {
                o["volumeName"] = n["volumeName"].clone();
            }
            if o != n {
                return Err("spec: Forbidden: spec is immutable after creation except resources.requests and \
                            volumeAttributesClassName for bound claims"
                    .into());
            }
        }
        "/pods" => {
            let mask = |spec: &Value| {
                let mut s = without(spec, &["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"]);
                for field in ["containers", "initContainers"] {
                    if let Some(cs) = s[field].as_array_mut() {
                        for c in cs {
                            c["image"] = Value::Null;
                        }
                    }
                }
                s
            };
            if mask(&old["spec"]) != mask(&new["spec"]) {
                return Err("spec: Forbidden: pod updates may not change fields other than \
                            `spec.containers[*].image`,`spec.initContainers[*].image`,\
                            `spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
                            tolerations),`spec.terminationGracePeriodSeconds`"
                    .into());
            }
        }
        "storage.k8s.io/storageclasses" => {
            for f in ["provisioner", "parameters", "reclaimPolicy", "volumeBindingMode"] {
                if old[f] != new[f] {
                    return Err(format!("{f}: Forbidden: updates to {f} are forbidden."));
                }
            }
        }
        "/secrets" => fold_string_data(new),
        _ => {}
    }
    Ok(())
}

/// core/v1 Event → events.k8s.io/v1 Event (both APIs share one bucket, kept in core form).
pub fn event_to_events_v1(core: &Value) -> Value {
    let mut e = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": core["metadata"],
    });
    let map = [
        ("involvedObject", "regarding"),
        ("message", "note"),
        ("reason", "reason"),
        ("type", "type"),
        ("action", "action"),
        ("related", "related"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingComponent", "reportingController"),
        ("reportingInstance", "reportingInstance"),
        ("source", "deprecatedSource"),
        ("count", "deprecatedCount"),
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
    ];
    for (from, to) in map {
        if !core[from].is_null() {
            e[to] = core[from].clone();
        }
    }
    e
}

/// events.k8s.io/v1 Event → core/v1 Event.
pub fn event_from_events_v1(new: &Value) -> Value {
    let mut e = json!({"apiVersion": "v1", "kind": "Event", "metadata": new["metadata"]});
    let map = [
        ("regarding", "involvedObject"),
        ("note", "message"),
        ("reason", "reason"),
        ("type", "type"),
        ("action", "action"),
        ("related", "related"),
        ("eventTime", "eventTime"),
        ("series", "series"),
        ("reportingController", "reportingComponent"),
        ("reportingInstance", "reportingInstance"),
        ("deprecatedSource", "source"),
        ("deprecatedCount", "count"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
    ];
    for (from, to) in map {
        if !new[from].is_null() {
            e[to] = new[from].clone();
        }
    }
    // core readers (kubectl describe) show source.component when it is set.
    if e["source"].is_null() && !new["reportingController"].is_null() {
        e["source"] = json!({"component": new["reportingController"]});
    }
    e
}

/// The defaults and checks of the workload kinds: a selector that selects the template's
/// pods, the rollout strategy and history limits Kubernetes fills in.
fn workload_defaults(storage: &str, obj: &mut Value) -> Result<(), String> {
    let spec = &mut obj["spec"];
    if !spec["selector"].is_object() {
        return Err("spec.selector: Required value".into());
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let selects =
        spec["selector"]["matchLabels"].as_object().into_iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    if !selects {
        return Err(format!(
            "spec.template.metadata.labels: Invalid value: {labels}: `selector` does not match template `labels`"
        ));
    }
    match storage {
        "apps/deployments" => {
            default(spec, "replicas", json!(1));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if spec["strategy"]["type"] == "RollingUpdate" {
                default(&mut spec["strategy"], "rollingUpdate", json!({"maxSurge": "25%", "maxUnavailable": "25%"}));
            }
        }
        "apps/daemonsets" => {
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                default(&mut spec["updateStrategy"], "rollingUpdate", json!({"maxUnavailable": 1, "maxSurge": 0}));
            }
        }
        _ => default(spec, "replicas", json!(1)),
    }
    Ok(())
}
