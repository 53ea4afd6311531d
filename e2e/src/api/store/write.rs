//! The verbs on the store's objects — create, update, patch, delete — with Kubernetes' generic
//! semantics (names, resourceVersions and preconditions, generation, managed fields,
//! finalizers and deletionTimestamp, propagation), calling the kind's rules (`api::kinds`)
//! where a kind differs.

use std::sync::Arc;

use serde_json::{Value, json};

use super::objects::Objects;
use super::{Change, DeleteOptions, EventType, Outcome, PatchType, Propagation, Sub, WriteOptions, intake, present};
use crate::api::error::ApiError;
use crate::api::fields::{self, Writer};
use crate::api::kinds::{self, FOREGROUND};
use crate::api::patch::strategic_merge;
use crate::api::registry::ResourceType;
use crate::api::util::{meta_str, name_suffix, new_uid, now, now_plus};

impl Objects {
    pub(super) fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
        applied: Option<&Value>,
    ) -> Result<Outcome, ApiError> {
        let mut obj = intake(rt, obj);
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        let body_ns = meta_str(&obj, "namespace").to_string();
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut name = meta_str(&obj, "name").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{}", name_suffix());
        }
        self.check_namespace(rt, ns, &name)?;
        let ns = if rt.namespaced { ns } else { "" };
        if self.buckets.get(&rt.storage).is_some_and(|b| b.contains_key(&(ns.to_string(), name.clone()))) {
            return Err(ApiError::already_exists(rt, &name));
        }
        if rt.status {
            strip_status(&mut obj);
            // kube-apiserver serialises a built-in kind's status struct even when empty, so
            // clients (the Python one among them) read `status` as an object, never null.
            if !rt.custom {
                obj["status"] = json!({});
            }
        }
        kinds::of(&rt.storage).on_create(&mut obj, self).map_err(|m| ApiError::invalid(rt, &name, m))?;
        let rv = self.next_rv();
        let t = now();
        let uid = new_uid();
        // An apply whose result admission webhooks changed arrives with its fields already tracked.
        let kept = opts.keep_managed_fields.then(|| obj["metadata"]["managedFields"].clone()).filter(Value::is_array);
        {
            let meta = &mut obj["metadata"];
            meta["name"] = json!(name);
            if rt.namespaced {
                meta["namespace"] = json!(ns);
            } else if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            meta["uid"] = json!(uid);
            meta["resourceVersion"] = json!(rv.to_string());
            meta["creationTimestamp"] = json!(t);
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"] {
                if let Some(m) = meta.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        if obj.get("spec").is_some() || rt.custom {
            obj["metadata"]["generation"] = json!(1);
        }
        let av = rt.api_version();
        let w = writer(opts, Sub::Main, &av, &t);
        match applied {
            Some(a) => {
                let merged =
                    fields::apply(&json!({}), a, &w, true).map_err(|_| ApiError::internal("apply on create"))?;
                obj["metadata"]["managedFields"] = merged["metadata"]["managedFields"].clone();
            }
            None => match kept {
                Some(m) => obj["metadata"]["managedFields"] = m,
                None => fields::track_update(None, &mut obj, &w),
            },
        }
        obj["apiVersion"] = json!(self.storage_api_version(rt));
        obj["kind"] = json!(rt.kind);
        let obj = Arc::new(obj);
        self.bucket(&rt.storage).insert((ns.to_string(), name), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Added, obj.clone(), None);
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        new: Value,
        sub: Sub,
        opts: &WriteOptions,
        internal: bool,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let old = self.get(rt, ns, name)?.clone();
        if !new.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = meta_str(&new, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(rt, name));
        }
        let mut obj = match sub {
            Sub::Status => {
                let mut o = (*old).clone();
                o["status"] = new["status"].clone();
                if opts.keep_managed_fields {
                    o["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
                }
                o
            }
            Sub::Main => {
                let mut o = new;
                if rt.status {
                    o["status"] = old["status"].clone();
                }
                // Identity and server-owned metadata are not the client's to change.
                for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                    match old["metadata"].get(k) {
                        Some(v) => o["metadata"][k] = v.clone(),
                        None => {
                            if let Some(m) = o["metadata"].as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
                if o["metadata"].get("managedFields").is_none() || !opts.keep_managed_fields {
                    o["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
                }
                o
            }
        };
        obj["metadata"]["name"] = json!(name);
        if rt.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["apiVersion"] = old["apiVersion"].clone();
        obj["kind"] = old["kind"].clone();
        if obj["status"].is_null()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if !internal && sub == Sub::Main {
            kinds::of(&rt.storage).on_update(&old, &mut obj).map_err(|m| ApiError::invalid(rt, name, m))?;
        }
        let deleting = !old["metadata"]["deletionTimestamp"].is_null();
        if deleting {
            let before = old["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            let after = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            if after.iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if spec_part(&obj) != spec_part(&old) && !old["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        let t = now();
        let av = rt.api_version();
        if !opts.keep_managed_fields {
            let w = writer(opts, sub, &av, &t);
            fields::track_update(Some(&old), &mut obj, &w);
        }
        let finalizers_gone = obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
        if deleting && finalizers_gone && !kinds::of(&rt.storage).held_after_finalizers(&obj) {
            return Ok(self.remove(rt, ns, name, obj));
        }
        if same_ignoring_times(&obj, &old) {
            return Ok(Outcome { value: present(rt, &old), changes: vec![] });
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = Arc::new(obj);
        self.bucket(&rt.storage).insert((ns.to_string(), name.to_string()), obj.clone());
        let change = self.record(&rt.storage, ns, EventType::Modified, obj.clone(), Some(old));
        Ok(Outcome { value: present(rt, &obj), changes: vec![change] })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ty: PatchType,
        body: &Value,
        sub: Sub,
        opts: &WriteOptions,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        if ty == PatchType::Apply && opts.field_manager.is_empty() {
            return Err(ApiError::bad_request("PATCH, fieldManager is required for apply requests"));
        }
        let current = match self.get(rt, ns, name) {
            Ok(o) => present(rt, o),
            // Apply to a missing object creates it.
            Err(_) if ty == PatchType::Apply && sub == Sub::Main => {
                let mut obj = body.clone();
                obj["metadata"]["name"] = json!(name);
                return self.create(rt, ns, obj, opts, Some(body));
            }
            Err(e) => return Err(e),
        };
        let patched = match ty {
            PatchType::Json => {
                let p: json_patch::Patch = serde_json::from_value(body.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                let mut doc = current.clone();
                json_patch::patch(&mut doc, &p).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!("the server rejected our request due to an error in our request: {e}"),
                    details: None,
                })?;
                doc
            }
            PatchType::Merge => {
                let mut doc = current.clone();
                json_patch::merge(&mut doc, body);
                doc
            }
            PatchType::Strategic => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                let mut doc = current.clone();
                strategic_merge(&mut doc, body);
                doc
            }
            PatchType::Apply => {
                let mut applied = body.clone();
                // Apply to the main resource ignores status, and to /status only status counts.
                match sub {
                    Sub::Main if rt.status => strip_status(&mut applied),
                    Sub::Status => {
                        applied = json!({"metadata": {}, "status": applied["status"].clone()});
                    }
                    Sub::Main => {}
                }
                let t = now();
                let av = rt.api_version();
                let w = writer(opts, sub, &av, &t);
                let merged = fields::apply(&current, &applied, &w, opts.force).map_err(|conflicts| {
                    let list: Vec<String> =
                        conflicts.iter().map(|c| format!("conflict with \"{}\": .{}", c.manager, c.path)).collect();
                    ApiError::conflict(
                        rt,
                        name,
                        &format!("Apply failed with {} conflict(s): {}", conflicts.len(), list.join(", ")),
                    )
                })?;
                let mut merged = intake(rt, merged);
                merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                let keep = WriteOptions { keep_managed_fields: true, ..opts.clone() };
                return self.update(rt, ns, name, merged, sub, &keep, false);
            }
        };
        let mut patched = intake(rt, patched);
        // A patch is a write at the current version unless it names one itself.
        if meta_str(&patched, "resourceVersion").is_empty() {
            patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        }
        self.update(rt, ns, name, patched, sub, opts, false)
    }

    pub(super) fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Outcome, ApiError> {
        let ns = if rt.namespaced { ns } else { "" };
        let mut obj = (**self.get(rt, ns, name)?).clone();
        if opts.uid.as_deref().is_some_and(|u| u != meta_str(&obj, "uid")) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.uid.as_deref().unwrap_or_default(),
                    meta_str(&obj, "uid")
                ),
            ));
        }
        if opts.resource_version.as_deref().is_some_and(|r| r != meta_str(&obj, "resourceVersion")) {
            return Err(ApiError::stale(rt, name));
        }
        let finalizers = obj["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let deleting = !obj["metadata"]["deletionTimestamp"].is_null();
        let rules = kinds::of(&rt.storage);
        let kinds::Deletion { grace, always_held } = rules.deletion(&obj, opts);
        if deleting {
            // Only a shorter grace period (a kubelet's final zero-grace delete) changes anything.
            let current = obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
            if grace < current {
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                if finalizers.is_empty() && grace == 0 {
                    return Ok(self.remove(rt, ns, name, obj));
                }
                return self.store_modified(rt, ns, name, obj);
            }
            return Ok(Outcome { value: present(rt, &obj), changes: vec![] });
        }
        let propagation = opts.propagation.unwrap_or_default();
        let mut changes = Vec::new();
        if propagation == Propagation::Orphan {
            changes.extend(self.orphan_dependents(meta_str(&obj, "uid")));
        }
        let mut finalizers = finalizers;
        if propagation == Propagation::Foreground && !finalizers.iter().any(|f| f == FOREGROUND) {
            finalizers.push(json!(FOREGROUND));
        }
        if finalizers.is_empty() && grace == 0 && !always_held {
            let mut out = self.remove(rt, ns, name, obj);
            changes.append(&mut out.changes);
            return Ok(Outcome { value: out.value, changes });
        }
        obj["metadata"]["finalizers"] = json!(finalizers);
        obj["metadata"]["deletionTimestamp"] = json!(now_plus(grace));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if rt.storage == "/namespaces" {
            kinds::namespace::mark_terminating(&mut obj);
        }
        let mut out = self.store_modified(rt, ns, name, obj)?;
        changes.append(&mut out.changes);
        Ok(Outcome { value: out.value, changes })
    }

    /// Removes owner references to `uid` from every object (the Orphan policy).
    pub(super) fn orphan_dependents(&mut self, uid: &str) -> Vec<Arc<Change>> {
        let mut targets = Vec::new();
        for (storage, bucket) in &self.buckets {
            for (k, o) in bucket.iter() {
                if o["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|r| r["uid"] == uid)) {
                    targets.push((storage.clone(), k.clone()));
                }
            }
        }
        let mut changes = Vec::new();
        for (storage, (ns, name)) in targets {
            let Some(rt) = self.registry.by_storage(&storage).cloned() else { continue };
            let Ok(old) = self.get(&rt, &ns, &name) else { continue };
            let mut o = (**old).clone();
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != uid);
            }
            if let Ok(mut out) = self.store_modified(&rt, &ns, &name, o) {
                changes.append(&mut out.changes);
            }
        }
        changes
    }
}

/// Equal apart from `managedFields` timestamps: such a write is a no-op.
fn same_ignoring_times(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(mf) = v["metadata"]["managedFields"].as_array_mut() {
            for e in mf {
                e["time"] = Value::Null;
            }
        }
        v
    };
    strip(a) == strip(b)
}

fn strip_status(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
    }
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

fn writer<'a>(opts: &'a WriteOptions, sub: Sub, api_version: &'a str, time: &'a str) -> Writer<'a> {
    Writer {
        manager: if opts.field_manager.is_empty() { "unknown" } else { &opts.field_manager },
        subresource: (sub == Sub::Status).then_some("status"),
        api_version,
        time,
    }
}
