//! `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration`: the defaults and
//! validation admissionregistration.k8s.io/v1 gives them (the subset a webhook's behaviour
//! depends on).

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::api::kinds::{Rules, default};
use crate::api::store::Objects;

#[derive(Debug)]
pub struct WebhookConfiguration {
    pub mutating: bool,
}

impl Rules for WebhookConfiguration {
    fn on_create(&self, obj: &mut Value, _objects: &mut Objects) -> Result<(), String> {
        normalize(obj, self.mutating)
    }

    fn on_update(&self, _old: &Value, new: &mut Value) -> Result<(), String> {
        normalize(new, self.mutating)
    }
}

/// Defaults every webhook, then validates it; the first problem is the error.
fn normalize(obj: &mut Value, mutating: bool) -> Result<(), String> {
    let Some(hooks) = obj.get_mut("webhooks").and_then(Value::as_array_mut) else {
        // No webhooks at all is valid (and does nothing).
        return Ok(());
    };
    let mut names = HashSet::new();
    for (i, w) in hooks.iter_mut().enumerate() {
        let at = format!("webhooks[{i}]");
        default(w, "failurePolicy", json!("Fail"));
        default(w, "matchPolicy", json!("Equivalent"));
        default(w, "namespaceSelector", json!({}));
        default(w, "objectSelector", json!({}));
        default(w, "timeoutSeconds", json!(10));
        if mutating {
            default(w, "reinvocationPolicy", json!("Never"));
        }
        if let Some(svc) = w["clientConfig"].get_mut("service").filter(|s| s.is_object()) {
            default(svc, "port", json!(443));
        }
        for r in w["rules"].as_array_mut().into_iter().flatten() {
            default(r, "scope", json!("*"));
        }
        let name = w["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            return Err(format!("{at}.name: Required value"));
        }
        // Kubernetes wants a fully qualified name (at least three DNS labels).
        if name.split('.').count() < 3 || name.split('.').any(str::is_empty) {
            return Err(format!(
                "{at}.name: Invalid value: \"{name}\": should be a domain with at least three segments separated by dots"
            ));
        }
        if !names.insert(name.to_string()) {
            return Err(format!("{at}.name: Duplicate value: \"{name}\""));
        }
        one_of(w, "failurePolicy", &["Fail", "Ignore"], &at)?;
        one_of(w, "matchPolicy", &["Exact", "Equivalent"], &at)?;
        if mutating {
            one_of(w, "reinvocationPolicy", &["Never", "IfNeeded"], &at)?;
        }
        match w["sideEffects"].as_str() {
            None => return Err(format!("{at}.sideEffects: Required value: must specify one of None, NoneOnDryRun")),
            Some("None" | "NoneOnDryRun") => {}
            Some(other) => {
                return Err(format!(
                    "{at}.sideEffects: Unsupported value: \"{other}\": supported values: \"None\", \"NoneOnDryRun\""
                ));
            }
        }
        let versions: Vec<&str> =
            w["admissionReviewVersions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if versions.is_empty() {
            return Err(format!("{at}.admissionReviewVersions: Required value: must specify one of v1, v1beta1"));
        }
        if !versions.iter().any(|v| *v == "v1" || *v == "v1beta1") {
            return Err(format!(
                "{at}.admissionReviewVersions: Invalid value: {versions:?}: must include at least one of v1, v1beta1"
            ));
        }
        let timeout = w["timeoutSeconds"].as_i64().unwrap_or(0);
        if !(1..=30).contains(&timeout) {
            return Err(format!(
                "{at}.timeoutSeconds: Invalid value: {timeout}: the timeout value must be between 1 and 30 seconds"
            ));
        }
        client_config(&w["clientConfig"], &at)?;
        for (j, r) in w["rules"].as_array().into_iter().flatten().enumerate() {
            rule(r, &format!("{at}.rules[{j}]"))?;
        }
    }
    Ok(())
}

fn one_of(w: &Value, field: &str, allowed: &[&str], at: &str) -> Result<(), String> {
    let v = w[field].as_str().unwrap_or_default();
    if allowed.contains(&v) {
        return Ok(());
    }
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    Err(format!("{at}.{field}: Unsupported value: \"{v}\": supported values: {}", list.join(", ")))
}

fn client_config(cc: &Value, at: &str) -> Result<(), String> {
    let at = format!("{at}.clientConfig");
    match (cc.get("url").and_then(Value::as_str), cc.get("service").filter(|s| s.is_object())) {
        (Some(_), Some(_)) => Err(format!("{at}: Required value: exactly one of url or service is required")),
        (None, None) => Err(format!("{at}: Required value: exactly one of url or service is required")),
        (Some(url), None) => {
            let uri: http::Uri = url.parse().map_err(|e| format!("{at}.url: Invalid value: \"{url}\": {e}"))?;
            if uri.scheme_str() != Some("https") {
                return Err(format!("{at}.url: Invalid value: \"{url}\": 'https' is the only allowed URL scheme"));
            }
            if uri.host().is_none_or(str::is_empty) {
                return Err(format!("{at}.url: Invalid value: \"{url}\": host must be specified"));
            }
            Ok(())
        }
        (None, Some(svc)) => {
            for f in ["namespace", "name"] {
                if svc[f].as_str().is_none_or(str::is_empty) {
                    return Err(format!("{at}.service.{f}: Required value: service {f} is required"));
                }
            }
            if let Some(p) = svc["path"].as_str()
                && !p.starts_with('/')
            {
                return Err(format!("{at}.service.path: Invalid value: \"{p}\": must start with a '/'"));
            }
            let port = svc["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                return Err(format!("{at}.service.port: Invalid value: {port}: port is not valid: must be 1-65535"));
            }
            Ok(())
        }
    }
}

fn rule(r: &Value, at: &str) -> Result<(), String> {
    for f in ["operations", "apiGroups", "apiVersions", "resources"] {
        if r[f].as_array().is_none_or(Vec::is_empty) {
            return Err(format!("{at}.{f}: Required value"));
        }
    }
    for op in r["operations"].as_array().into_iter().flatten() {
        let op = op.as_str().unwrap_or_default();
        if !matches!(op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
            return Err(format!(
                "{at}.operations: Unsupported value: \"{op}\": supported values: \"*\", \"CONNECT\", \"CREATE\", \
                 \"DELETE\", \"UPDATE\""
            ));
        }
    }
    one_of(r, "scope", &["*", "Cluster", "Namespaced"], at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Value {
        json!({"name": "deny.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"namespace": "default", "name": "hook"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]})
    }

    #[test]
    fn defaults_are_kubernetes_ones() {
        let mut c = json!({"webhooks": [hook()]});
        normalize(&mut c, true).unwrap();
        let w = &c["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(w["clientConfig"]["service"]["port"], 443);
        assert_eq!(w["rules"][0]["scope"], "*");
        assert_eq!(w["namespaceSelector"], json!({}));
    }

    #[test]
    fn invalid_webhooks_are_refused_with_the_field_path() {
        let cases = [
            ("timeoutSeconds", json!(31), "webhooks[0].timeoutSeconds: Invalid value: 31"),
            ("sideEffects", json!("Some"), "webhooks[0].sideEffects: Unsupported value: \"Some\""),
            ("name", json!("short"), "webhooks[0].name: Invalid value: \"short\""),
            ("clientConfig", json!({"url": "http://x.example.com/"}), "'https' is the only allowed URL scheme"),
            ("failurePolicy", json!("Maybe"), "webhooks[0].failurePolicy: Unsupported value"),
        ];
        for (field, value, want) in cases {
            let mut w = hook();
            w[field] = value;
            let err = normalize(&mut json!({"webhooks": [w]}), false).unwrap_err();
            assert!(err.contains(want), "{field}: {err}");
        }
    }
}
