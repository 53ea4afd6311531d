//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! A field set is kept as the set of its leaf paths, each path a list of `fieldsV1` path
//! elements (`f:spec`, `k:{"name":"c"}`, `v:"x"`, `.`), and written back in the `FieldsV1`
//! tree form the real API server uses. Apply follows Kubernetes' rules where they matter
//! to a single-manager controller and to `kubectl apply --server-side`:
//! - the applier owns exactly the fields of its last applied configuration;
//! - fields it applied before and no longer applies are removed unless another manager owns
//!   them;
//! - changing a value owned by another manager is a conflict (409) unless `force`, which
//!   takes the ownership over;
//! - non-apply writes (create, update, patch) give their manager the fields they changed.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::patch::{ListKind, apply_merge, list_kind};

type Path = Vec<String>;
/// A set of owned fields, as leaf paths.
pub type FieldSet = BTreeSet<Path>;

/// The fields of an object that ownership is tracked for: everything but identity and
/// server-managed metadata.
pub fn field_set(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else { return out };
    let mut path = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                let Some(meta) = v.as_object() else { continue };
                path.push("f:metadata".to_string());
                let mut names = vec!["metadata".to_string()];
                for (mk, mv) in meta {
                    if matches!(mk.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences") {
                        collect_field(mk, mv, &mut path, &mut names, &mut out);
                    }
                }
                path.pop();
            }
            _ => collect_field(k, v, &mut path, &mut Vec::new(), &mut out),
        }
    }
    out
}

fn item_key(item: &Value, kind: ListKind) -> Option<String> {
    match kind {
        ListKind::Map(key) => item.get(key).map(|v| format!("k:{}", json!({ key: v }))),
        ListKind::Set => Some(format!("v:{item}")),
        ListKind::Atomic => None,
    }
}

fn collect_field(k: &str, v: &Value, path: &mut Path, names: &mut Vec<String>, out: &mut FieldSet) {
    path.push(format!("f:{k}"));
    match v {
        Value::Object(m) if !m.is_empty() => {
            names.push(k.to_string());
            for (ck, cv) in m {
                collect_field(ck, cv, path, names, out);
            }
            names.pop();
        }
        Value::Array(items) if !items.is_empty() => {
            let kind = list_kind(names, k);
            if kind == ListKind::Atomic {
                out.insert(path.clone());
            } else {
                names.push(k.to_string());
                for item in items {
                    let Some(key) = item_key(item, kind) else { continue };
                    path.push(key);
                    if let (ListKind::Map(_), Some(fields)) = (kind, item.as_object()) {
                        let mut dot = path.clone();
                        dot.push(".".into());
                        out.insert(dot);
                        for (ck, cv) in fields {
                            collect_field(ck, cv, path, names, out);
                        }
                    } else {
                        out.insert(path.clone());
                    }
                    path.pop();
                }
                names.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
    path.pop();
}

/// The `FieldsV1` tree of a field set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for el in p {
            cur = cur.entry(el.clone()).or_insert_with(|| Value::Object(Map::new())).as_object_mut().expect("tree");
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(tree: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v.as_object() {
            Some(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = FieldSet::new();
    walk(tree, &mut Vec::new(), &mut out);
    out.remove(&Vec::new());
    out
}

/// The value a path names in an object (for `.`, the list item itself).
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        if el == "." {
            continue;
        }
        cur = if let Some(f) = el.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = el.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?.iter().find(|i| want.iter().all(|(wk, wv)| i.get(wk) == Some(wv)))?
        } else if let Some(v) = el.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|i| **i == want)?
        } else {
            return None;
        };
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let (last, parent_path) = match path.split_last() {
        Some((l, rest)) if l == "." => match rest.split_last() {
            Some((item, parent)) => (item, parent),
            None => return,
        },
        Some((l, rest)) => (l, rest),
        None => return,
    };
    let mut cur = obj;
    for el in parent_path {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else if el.starts_with("k:") || el.starts_with("v:") {
            let idx = value_at(cur, std::slice::from_ref(el))
                .and_then(|item| cur.as_array().and_then(|a| a.iter().position(|x| std::ptr::eq(x, item))));
            match idx {
                Some(i) => cur.get_mut(i),
                None => None,
            }
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(item) = value_at(cur, std::slice::from_ref(last)) {
        let ptr: *const Value = item;
        if let Some(a) = cur.as_array_mut() {
            a.retain(|x| !std::ptr::eq(x, ptr));
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    set: FieldSet,
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e["manager"].as_str().unwrap_or_default().into(),
                    operation: e["operation"].as_str().unwrap_or("Update").into(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
                    time: e["time"].as_str().unwrap_or_default().into(),
                    subresource: e["subresource"].as_str().map(str::to_string),
                    set: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.set),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, for ownership.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
    pub time: &'a str,
}

/// A field another manager owns with a different value: the apply is refused unless forced.
#[derive(Debug, Clone)]
pub struct ApplyConflict {
    pub manager: String,
    pub path: String,
}

fn show_path(p: &[String]) -> String {
    p.iter().filter(|e| *e != ".").map(|e| e.trim_start_matches("f:")).collect::<Vec<_>>().join(".")
}

/// Server-side apply of `applied` onto `current` (an empty object when creating). Returns the
/// merged object with `managedFields` updated.
///
/// # Errors
/// The conflicting fields when another manager owns a field whose value would change and
/// `force` is off.
pub fn apply(current: &Value, applied: &Value, w: &Writer<'_>, force: bool) -> Result<Value, Vec<ApplyConflict>> {
    let applied_set = field_set(applied);
    let mut entries = read_entries(current);
    let mine =
        |e: &Entry| e.manager == w.manager && e.operation == "Apply" && e.subresource.as_deref() == w.subresource;

    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        let clashing: Vec<Path> = e
            .set
            .intersection(&applied_set)
            .filter(|p| p.last().is_some_and(|l| l != "."))
            .filter(|p| value_at(applied, p) != value_at(current, p))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                e.set.remove(p);
            }
        } else {
            conflicts.extend(clashing.iter().map(|p| ApplyConflict { manager: e.manager.clone(), path: show_path(p) }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    let previous: FieldSet = entries.iter().filter(|e| mine(e)).flat_map(|e| e.set.iter().cloned()).collect();
    let others: FieldSet = entries.iter().filter(|e| !mine(e)).flat_map(|e| e.set.iter().cloned()).collect();
    let mut result = current.clone();
    // Deepest first, so an item's fields go before the item.
    let mut dropped: Vec<&Path> = previous.difference(&applied_set).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        let prefix = if p.last().is_some_and(|l| l == ".") { &p[..p.len() - 1] } else { &p[..] };
        if !others.iter().any(|o| o.starts_with(prefix)) {
            remove_at(&mut result, p);
        }
    }
    apply_merge(&mut result, applied);

    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: w.manager.into(),
        operation: "Apply".into(),
        api_version: w.api_version.into(),
        time: w.time.into(),
        subresource: w.subresource.map(str::to_string),
        set: applied_set,
    });
    let live = field_set(&result);
    for e in &mut entries {
        e.set.retain(|p| live.contains(p));
    }
    write_entries(&mut result, entries);
    Ok(result)
}

/// Records a non-apply write (`old` is `None` on create): the writer owns what it changed,
/// and nobody owns fields that no longer exist.
pub fn track_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let live = field_set(new);
    let changed: FieldSet = live
        .iter()
        .filter(|p| match old {
            None => true,
            Some(o) => value_at(o, p) != value_at(new, p),
        })
        .cloned()
        .collect();
    let mine =
        |e: &Entry| e.manager == w.manager && e.operation == "Update" && e.subresource.as_deref() == w.subresource;
    for e in &mut entries {
        e.set.retain(|p| live.contains(p));
        if !mine(e) {
            e.set.retain(|p| !changed.contains(p));
        }
    }
    match entries.iter_mut().find(|e| mine(e)) {
        Some(e) if !changed.is_empty() => {
            e.set.extend(changed);
            e.time = w.time.into();
            e.api_version = w.api_version.into();
        }
        Some(_) => {}
        None if !changed.is_empty() => entries.push(Entry {
            manager: w.manager.into(),
            operation: "Update".into(),
            api_version: w.api_version.into(),
            time: w.time.into(),
            subresource: w.subresource.map(str::to_string),
            set: changed,
        }),
        None => {}
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(m: &str) -> Writer<'_> {
        Writer { manager: m, subresource: None, api_version: "v1", time: "2026-01-01T00:00:00Z" }
    }

    #[test]
    fn fields_v1_round_trips_keyed_lists() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let set = field_set(&pod);
        let tree = to_fields_v1(&set);
        assert_eq!(
            tree,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(from_fields_v1(&tree), set);
    }

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying_and_conflicts_with_other_owners() {
        let cm = json!({"metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}});
        let obj = apply(&json!({"metadata": {"name": "x"}}), &cm, &w("one"), false).unwrap();
        let obj = apply(&obj, &json!({"metadata": {"name": "x"}, "data": {"a": "1"}}), &w("one"), false).unwrap();
        assert_eq!(obj["data"], json!({"a": "1"}));
        let err = apply(&obj, &json!({"data": {"a": "9"}}), &w("two"), false).unwrap_err();
        assert_eq!(err[0].manager, "one");
        assert_eq!(err[0].path, "data.a");
        let forced = apply(&obj, &json!({"data": {"a": "9"}}), &w("two"), true).unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let owners = read_entries(&forced);
        assert!(owners.iter().all(|e| e.manager == "two"), "ownership moved: {owners:?}");
    }

    #[test]
    fn updates_take_over_the_fields_they_change() {
        let old = json!({"metadata": {"name": "x"}, "data": {"a": "1"}});
        let mut created = old.clone();
        track_update(None, &mut created, &w("creator"));
        let mut new = created.clone();
        new["data"]["a"] = json!("2");
        track_update(Some(&created), &mut new, &w("editor"));
        let e = read_entries(&new);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].manager, "editor");
    }
}
