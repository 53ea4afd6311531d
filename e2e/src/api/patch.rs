//! The four patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge
//! patch for the built-in list fields the project and kubectl touch, and the merge step of
//! server-side apply (field ownership lives in `fields.rs`).

use serde_json::{Map, Value};

/// How a list field merges, as the built-in types' `patchStrategy`/`patchMergeKey` (and the
/// matching `x-kubernetes-list-type`) declare it. Unknown lists are atomic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListKind {
    /// Items are objects merged by this key.
    Map(&'static str),
    /// Items are scalars kept as a set.
    Set,
    Atomic,
}

/// The list strategy of field `field` whose parent object sits at `path` (field names only).
pub fn list_kind(path: &[String], field: &str) -> ListKind {
    let parent = path.last().map(String::as_str).unwrap_or("");
    match field {
        "finalizers" if parent == "metadata" => ListKind::Set,
        "ownerReferences" if parent == "metadata" => ListKind::Map("uid"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims" => ListKind::Map("name"),
        "volumeMounts" => ListKind::Map("mountPath"),
        "volumeDevices" => ListKind::Map("devicePath"),
        // A container's ports merge by containerPort; a Service's by port.
        "ports" if path.iter().any(|p| p.ends_with("ontainers")) => ListKind::Map("containerPort"),
        "ports" if parent == "spec" => ListKind::Map("port"),
        "conditions" | "addresses" => ListKind::Map("type"),
        "hostAliases" => ListKind::Map("ip"),
        "containerStatuses" | "initContainerStatuses" => ListKind::Map("name"),
        // Admission webhook configurations, and their webhooks' match conditions.
        "webhooks" if path.is_empty() => ListKind::Map("name"),
        "matchConditions" => ListKind::Map("name"),
        _ => ListKind::Atomic,
    }
}

/// Applies a strategic merge patch (with its `$patch`, `$setElementOrder`,
/// `$deleteFromPrimitiveList` and `$retainKeys` directives) to `target`.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let mut path = Vec::new();
    merge_object(target, patch, &mut path, true);
}

/// The merge step of server-side apply: maps merge, keyed lists merge by key, set lists
/// union, everything else is replaced by the applied value.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    let mut path = Vec::new();
    merge_object(target, applied, &mut path, false);
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_object(target: &mut Value, patch: &Value, path: &mut Vec<String>, directives: bool) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if directives && pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in pm {
        if directives {
            if let Some(field) = k.strip_prefix("$setElementOrder/") {
                orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
                continue;
            }
            if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                if let (Some(list), Some(del)) = (target.get_mut(field).and_then(Value::as_array_mut), v.as_array()) {
                    list.retain(|x| !del.contains(x));
                }
                continue;
            }
            if k.starts_with('$') {
                continue;
            }
        }
        let tm = target.as_object_mut().expect("made an object above");
        match v {
            Value::Null => {
                tm.remove(k);
            }
            Value::Object(_) => {
                let slot = tm.entry(k.clone()).or_insert(Value::Null);
                path.push(k.clone());
                merge_object(slot, v, path, directives);
                path.pop();
            }
            Value::Array(items) => {
                let kind = list_kind(path, k);
                let slot = tm.entry(k.clone()).or_insert(Value::Array(vec![]));
                path.push(k.clone());
                merge_list(slot, items, kind, path, directives);
                path.pop();
            }
            scalar => {
                tm.insert(k.clone(), scalar.clone());
            }
        }
    }
    if directives {
        if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
            let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
            target.as_object_mut().expect("object").retain(|k, _| keep.contains(&k.as_str()));
        }
        for (field, order) in orders {
            let kind = list_kind(path, &field);
            if let Some(list) = target.get_mut(&field).and_then(Value::as_array_mut) {
                reorder(list, &order, kind);
            }
        }
    }
}

fn key_of(item: &Value, kind: ListKind) -> Option<&Value> {
    match kind {
        ListKind::Map(key) => item.get(key),
        ListKind::Set => Some(item),
        ListKind::Atomic => None,
    }
}

fn merge_list(target: &mut Value, items: &[Value], kind: ListKind, path: &mut Vec<String>, directives: bool) {
    let replace_all = directives && items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if kind == ListKind::Atomic || replace_all || !target.is_array() {
        let kept: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("replace"))
            .map(|i| if directives { strip_directives(i) } else { i.clone() })
            .collect();
        *target = Value::Array(kept);
        return;
    }
    let list = target.as_array_mut().expect("checked above");
    for item in items {
        let Some(key) = key_of(item, kind).cloned() else {
            list.push(item.clone());
            continue;
        };
        let pos = list.iter().position(|x| key_of(x, kind) == Some(&key));
        let delete = directives && item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if kind != ListKind::Set {
                    merge_object(&mut list[i], item, path, directives);
                }
            }
            (None, false) => list.push(if directives { strip_directives(item) } else { item.clone() }),
        }
    }
}

fn reorder(list: &mut Vec<Value>, order: &[Value], kind: ListKind) {
    let mut rest = std::mem::take(list);
    for o in order {
        let want = match kind {
            ListKind::Map(key) => o.get(key),
            _ => Some(o),
        };
        if let Some(i) = rest.iter().position(|x| key_of(x, kind) == want && want.is_some()) {
            list.push(rest.remove(i));
        }
    }
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_finalizers_as_a_set() {
        let mut pod = json!({
            "metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
            "spec": {"containers": [{"name": "c1", "image": "i1"}, {"name": "c2", "image": "i2"}]}
        });
        strategic_merge(
            &mut pod,
            &json!({
                "metadata": {"finalizers": ["b", "a"], "labels": {"x": null}},
                "spec": {"containers": [{"name": "c2", "image": "new"}, {"name": "c1", "$patch": "delete"}]}
            }),
        );
        assert_eq!(pod["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(pod["metadata"]["labels"], json!({}));
        assert_eq!(pod["spec"]["containers"], json!([{"name": "c2", "image": "new"}]));
    }

    #[test]
    fn strategic_merge_honours_delete_from_primitive_list_and_element_order() {
        let mut o = json!({"metadata": {"finalizers": ["a", "b", "c"]}});
        strategic_merge(
            &mut o,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "$setElementOrder/finalizers": ["c", "a"]}}),
        );
        assert_eq!(o["metadata"]["finalizers"], json!(["c", "a"]));
    }

    #[test]
    fn unknown_lists_are_replaced() {
        let mut o = json!({"spec": {"accessModes": ["ReadWriteOnce"]}});
        strategic_merge(&mut o, &json!({"spec": {"accessModes": ["ReadWriteMany"]}}));
        assert_eq!(o["spec"]["accessModes"], json!(["ReadWriteMany"]));
    }
}
