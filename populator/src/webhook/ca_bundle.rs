//! The leader keeps the `caBundle` of our `ValidatingWebhookConfiguration` equal to the CA
//! that signed the serving certificate: `deploy/` ships the configuration without one (the
//! CA is made in the cluster), and a re-created configuration loses it.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::WebhookConfig;

/// How often the leader checks the configuration again (it may only `get` it by name, not
/// watch it).
const RESYNC: Duration = Duration::from_secs(30);

/// What [`ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every webhook calling our Service had the CA already.
    Unchanged,
    /// This many webhooks got the CA.
    Patched(usize),
    /// No such configuration (not installed from `deploy/`?).
    Missing,
}

/// The JSON patch that sets `ca` as the `caBundle` of each webhook of `config` whose
/// `clientConfig.service` is `namespace/service` and whose bundle differs; `None` when
/// none needs it. Each change is guarded by a `test` of the webhook's name, so a
/// configuration reordered meanwhile makes the patch fail rather than touch another webhook.
pub fn patch_for(config: &ValidatingWebhookConfiguration, ca: &[u8], namespace: &str, service: &str) -> Option<Value> {
    let bundle = serde_json::to_value(ByteString(ca.to_vec())).ok()?;
    let mut ops = Vec::new();
    for (i, hook) in config.webhooks.iter().flatten().enumerate() {
        let ours = hook.client_config.service.as_ref().is_some_and(|s| s.namespace == namespace && s.name == service);
        if !ours || hook.client_config.ca_bundle.as_ref().is_some_and(|b| b.0 == ca) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook.name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}));
    }
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// Sets the CA where it is missing or stale.
///
/// # Errors
/// The API refused the read or the patch.
pub async fn ensure(client: kube::Client, cfg: &WebhookConfig, ca: &[u8]) -> Result<Outcome, kube::Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let Some(config) = api.get_opt(&cfg.configuration).await? else { return Ok(Outcome::Missing) };
    let Some(patch) = patch_for(&config, ca, &cfg.namespace, &cfg.service) else { return Ok(Outcome::Unchanged) };
    let count = patch.as_array().map_or(0, |ops| ops.len() / 2);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(&cfg.configuration, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
    Ok(Outcome::Patched(count))
}

/// Keeps the CA in place for as long as it runs (the leader runs it).
pub async fn keep(client: kube::Client, cfg: WebhookConfig, ca: Vec<u8>) {
    let mut last = None;
    loop {
        match ensure(client.clone(), &cfg, &ca).await {
            Ok(outcome) if last != Some(outcome) || matches!(outcome, Outcome::Patched(_)) => {
                match outcome {
                    Outcome::Patched(n) => {
                        tracing::info!(configuration = %cfg.configuration, webhooks = n, "set the webhook caBundle");
                    }
                    Outcome::Missing => tracing::warn!(
                        configuration = %cfg.configuration,
                        "no ValidatingWebhookConfiguration of that name: DataVolumes are not validated (install from deploy/)"
                    ),
                    Outcome::Unchanged => {}
                }
                last = Some(outcome);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(configuration = %cfg.configuration, error = %e, "cannot set the webhook caBundle"),
        }
        tokio::time::sleep(RESYNC).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::{ServiceReference, ValidatingWebhook, WebhookClientConfig};

    use super::*;

    fn hook(name: &str, service: &str, bundle: Option<&[u8]>) -> ValidatingWebhook {
        ValidatingWebhook {
            name: name.into(),
            client_config: WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: "cdi-rs".into(),
                    name: service.into(),
                    ..Default::default()
                }),
                ca_bundle: bundle.map(|b| ByteString(b.to_vec())),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_our_webhooks_without_the_ca_are_patched_each_guarded_by_its_name() {
        let config = ValidatingWebhookConfiguration {
            webhooks: Some(vec![
                hook("a.cdi.kubevirt.io", "cdi-populator-webhook", None),
                hook("b.example.com", "someone-else", None),
                hook("c.cdi.kubevirt.io", "cdi-populator-webhook", Some(b"CA")),
                hook("d.cdi.kubevirt.io", "cdi-populator-webhook", Some(b"old CA")),
            ]),
            ..Default::default()
        };
        let patch = patch_for(&config, b"CA", "cdi-rs", "cdi-populator-webhook").unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "a.cdi.kubevirt.io"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E="},
                {"op": "test", "path": "/webhooks/3/name", "value": "d.cdi.kubevirt.io"},
                {"op": "add", "path": "/webhooks/3/clientConfig/caBundle", "value": "Q0E="},
            ])
        );
        let done = ValidatingWebhookConfiguration {
            webhooks: Some(vec![hook("a.cdi.kubevirt.io", "cdi-populator-webhook", Some(b"CA"))]),
            ..Default::default()
        };
        assert_eq!(patch_for(&done, b"CA", "cdi-rs", "cdi-populator-webhook"), None);
    }
}
