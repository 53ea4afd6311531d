//! Server-side printing (`meta.k8s.io/v1` `Table`), which `kubectl get` asks for: the
//! columns of the built-in kinds kubectl users expect, and a CRD's printer columns.

use std::sync::Arc;

use serde_json::{Value, json};

use super::registry::ResourceType;
use super::util::{age, meta_str, str_at};

struct Col {
    name: String,
    ty: &'static str,
    priority: u8,
}

fn c(name: &str, ty: &'static str, priority: u8) -> Col {
    Col { name: name.to_string(), ty, priority }
}

fn modes(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| match m.as_str().unwrap_or_default() {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_none(s: &str) -> String {
    if s.is_empty() { "<none>".into() } else { s.into() }
}

fn or_unset(s: &str) -> String {
    if s.is_empty() { "<unset>".into() } else { s.into() }
}

fn pod_status(o: &Value) -> String {
    if !o["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    let waiting = o["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_string)));
    waiting.unwrap_or_else(|| str_at(o, "status.phase").to_string())
}

fn builtin(rt: &ResourceType, o: &Value) -> Option<(Vec<Col>, Vec<Value>)> {
    let name = json!(meta_str(o, "name"));
    let a = json!(age(meta_str(o, "creationTimestamp")));
    Some(match rt.storage.as_str() {
        "admissionregistration.k8s.io/validatingwebhookconfigurations"
        | "admissionregistration.k8s.io/mutatingwebhookconfigurations" => (
            vec![c("Name", "string", 0), c("Webhooks", "integer", 0), c("Age", "string", 0)],
            vec![name, json!(o["webhooks"].as_array().map_or(0, Vec::len)), a],
        ),
        "/pods" => {
            let cs = o["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = cs.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = cs.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
            (
                vec![
                    c("Name", "string", 0),
                    c("Ready", "string", 0),
                    c("Status", "string", 0),
                    c("Restarts", "string", 0),
                    c("Age", "string", 0),
                    c("IP", "string", 1),
                    c("Node", "string", 1),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(o)),
                    json!(restarts.to_string()),
                    a,
                    json!(or_none(str_at(o, "status.podIP"))),
                    json!(or_none(str_at(o, "spec.nodeName"))),
                ],
            )
        }
        "/persistentvolumeclaims" => (
            vec![
                c("Name", "string", 0),
                c("Status", "string", 0),
                c("Volume", "string", 0),
                c("Capacity", "string", 0),
                c("Access Modes", "string", 0),
                c("StorageClass", "string", 0),
                c("VolumeAttributesClass", "string", 0),
                c("Age", "string", 0),
                c("VolumeMode", "string", 1),
            ],
            vec![
                name,
                json!(if o["metadata"]["deletionTimestamp"].is_null() {
                    str_at(o, "status.phase")
                } else {
                    "Terminating"
                }),
                json!(str_at(o, "spec.volumeName")),
                json!(str_at(o, "status.capacity.storage")),
                json!(modes(&o["status"]["accessModes"])),
                json!(str_at(o, "spec.storageClassName")),
                json!(or_unset(str_at(o, "spec.volumeAttributesClassName"))),
                a,
                json!(str_at(o, "spec.volumeMode")),
            ],
        ),
        "/persistentvolumes" => {
            let claim = &o["spec"]["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", str_at(claim, "namespace"), str_at(claim, "name"))
            } else {
                String::new()
            };
            (
                vec![
                    c("Name", "string", 0),
                    c("Capacity", "string", 0),
                    c("Access Modes", "string", 0),
                    c("Reclaim Policy", "string", 0),
                    c("Status", "string", 0),
                    c("Claim", "string", 0),
                    c("StorageClass", "string", 0),
                    c("VolumeAttributesClass", "string", 0),
                    c("Reason", "string", 0),
                    c("Age", "string", 0),
                    c("VolumeMode", "string", 1),
                ],
                vec![
                    name,
                    json!(str_at(o, "spec.capacity.storage")),
                    json!(modes(&o["spec"]["accessModes"])),
                    json!(str_at(o, "spec.persistentVolumeReclaimPolicy")),
                    json!(if o["metadata"]["deletionTimestamp"].is_null() {
                        str_at(o, "status.phase")
                    } else {
                        "Terminating"
                    }),
                    json!(claim),
                    json!(str_at(o, "spec.storageClassName")),
                    json!(or_unset(str_at(o, "spec.volumeAttributesClassName"))),
                    json!(str_at(o, "status.reason")),
                    a,
                    json!(str_at(o, "spec.volumeMode")),
                ],
            )
        }
        "/nodes" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| if c["status"] == "True" { "Ready" } else { "NotReady" });
            (
                vec![
                    c("Name", "string", 0),
                    c("Status", "string", 0),
                    c("Roles", "string", 0),
                    c("Age", "string", 0),
                    c("Version", "string", 0),
                ],
                vec![name, json!(ready), json!("<none>"), a, json!(str_at(o, "status.nodeInfo.kubeletVersion"))],
            )
        }
        "/namespaces" => (
            vec![c("Name", "string", 0), c("Status", "string", 0), c("Age", "string", 0)],
            vec![name, json!(str_at(o, "status.phase")), a],
        ),
        "storage.k8s.io/storageclasses" => {
            let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true";
            (
                vec![
                    c("Name", "string", 0),
                    c("Provisioner", "string", 0),
                    c("ReclaimPolicy", "string", 0),
                    c("VolumeBindingMode", "string", 0),
                    c("AllowVolumeExpansion", "string", 0),
                    c("Age", "string", 0),
                ],
                vec![
                    json!(if default {
                        format!("{} (default)", meta_str(o, "name"))
                    } else {
                        meta_str(o, "name").into()
                    }),
                    json!(str_at(o, "provisioner")),
                    json!(str_at(o, "reclaimPolicy")),
                    json!(str_at(o, "volumeBindingMode")),
                    json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false).to_string()),
                    a,
                ],
            )
        }
        "events" if rt.group.is_empty() => {
            let last = [str_at(o, "lastTimestamp"), str_at(o, "eventTime"), meta_str(o, "creationTimestamp")]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            let io = &o["involvedObject"];
            (
                vec![
                    c("Last Seen", "string", 0),
                    c("Type", "string", 0),
                    c("Reason", "string", 0),
                    c("Object", "string", 0),
                    c("Message", "string", 0),
                ],
                vec![
                    json!(age(last)),
                    json!(str_at(o, "type")),
                    json!(str_at(o, "reason")),
                    json!(format!("{}/{}", str_at(io, "kind").to_lowercase(), str_at(io, "name"))),
                    json!(str_at(o, "message")),
                ],
            )
        }
        "/services" => {
            let ports: Vec<String> = o["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["nodePort"].as_u64() {
                    Some(np) => format!("{}:{np}/{}", p["port"], str_at(p, "protocol")),
                    None => format!("{}/{}", p["port"], str_at(p, "protocol")),
                })
                .collect();
            let selector: Vec<String> = o["spec"]["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            (
                vec![
                    c("Name", "string", 0),
                    c("Type", "string", 0),
                    c("Cluster-IP", "string", 0),
                    c("External-IP", "string", 0),
                    c("Port(s)", "string", 0),
                    c("Age", "string", 0),
                    c("Selector", "string", 1),
                ],
                vec![
                    name,
                    json!(str_at(o, "spec.type")),
                    json!(or_none(str_at(o, "spec.clusterIP"))),
                    json!("<none>"),
                    json!(or_none(&ports.join(","))),
                    a,
                    json!(or_none(&selector.join(","))),
                ],
            )
        }
        "discovery.k8s.io/endpointslices" => {
            let list = |v: &Value, f: &dyn Fn(&Value) -> Vec<String>| -> String {
                let all: Vec<String> = v.as_array().into_iter().flatten().flat_map(f).collect();
                if all.is_empty() { "<unset>".into() } else { all.join(",") }
            };
            (
                vec![
                    c("Name", "string", 0),
                    c("AddressType", "string", 0),
                    c("Ports", "string", 0),
                    c("Endpoints", "string", 0),
                    c("Age", "string", 0),
                ],
                vec![
                    name,
                    json!(str_at(o, "addressType")),
                    json!(list(&o["ports"], &|p| vec![p["port"].to_string()])),
                    json!(list(&o["endpoints"], &|e| e["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect())),
                    a,
                ],
            )
        }
        _ => return None,
    })
}

/// A tiny JSONPath for printer columns: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`.
fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = o;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}').trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = &r[..end];
            rest = r[end + 1..].trim_start_matches('.');
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (k, v) = filter.split_once("==")?;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                cur = cur.as_array()?.iter().find(|i| i[k.trim()].as_str() == Some(v))?;
            } else {
                cur = cur.get(inner.parse::<usize>().ok()?)?;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        cur = cur.get(&rest[..end])?;
        rest = rest[end..].trim_start_matches('.');
    }
    Some(cur)
}

fn cell(v: Option<&Value>, ty: &str, col: &str) -> Value {
    match v {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) if ty == "date" || col == "Age" => json!(age(s)),
        Some(Value::String(s)) => json!(s),
        Some(other) => other.clone(),
    }
}

/// Converts objects to a `Table`. `include_object` is the `includeObject` query parameter.
pub fn to_table(rt: &ResourceType, items: &[Arc<Value>], rv: &str, cont: Option<&str>, include_object: &str) -> Value {
    let mut defs: Option<Vec<Value>> = None;
    let mut rows = Vec::new();
    for o in items {
        let (cols, cells) = match builtin(rt, o) {
            Some(x) => x,
            None if !rt.printer_columns.is_empty() => {
                let mut cols = vec![c("Name", "string", 0)];
                let mut cells = vec![json!(meta_str(o, "name"))];
                for pc in &rt.printer_columns {
                    let ty: &'static str = if pc.type_ == "date" { "date" } else { "string" };
                    cols.push(c(&pc.name, ty, 0));
                    cells.push(cell(json_path(o, &pc.json_path), &pc.type_, &pc.name));
                }
                if !rt.printer_columns.iter().any(|p| p.name == "Age") {
                    cols.push(c("Age", "date", 0));
                    cells.push(json!(age(meta_str(o, "creationTimestamp"))));
                }
                (cols, cells)
            }
            None => (
                vec![c("Name", "string", 0), c("Age", "string", 0)],
                vec![json!(meta_str(o, "name")), json!(age(meta_str(o, "creationTimestamp")))],
            ),
        };
        if defs.is_none() {
            defs = Some(
                cols.iter()
                    .map(|c| {
                        json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                               "description": "", "priority": c.priority})
                    })
                    .collect(),
            );
        }
        let object = match include_object {
            "Object" => (**o).clone(),
            "None" => Value::Null,
            _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}),
        };
        rows.push(json!({"cells": cells, "object": object}));
    }
    let defs = defs.unwrap_or_else(|| {
        let empty = builtin(rt, &json!({}))
            .map(|(c, _)| c)
            .unwrap_or_else(|| vec![c("Name", "string", 0), c("Age", "string", 0)]);
        empty
            .iter()
            .map(|c| json!({"name": c.name, "type": c.ty, "format": "", "description": "", "priority": c.priority}))
            .collect()
    });
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}
