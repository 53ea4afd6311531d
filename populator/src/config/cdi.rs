//! The `CDI` object. CDI's operator installs CDI from it and reports through its status;
//! cdi-rs is installed from `deploy/` instead, so the populator only keeps one object
//! (`cdi`, created at start when there is none; one an admin created is kept) and reports
//! it `Deployed` and `Available` once the controllers run. Clients check for exactly one
//! CDI object (KubeVirt then reads `config`'s filesystem overhead). Like CDI's operator,
//! only the first CDI object is in effect; any other is reported in phase `Error`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

use super::{Ctx, Error, replace_status};
use crate::api::names::{cdi_conditions, cdi_phases, singletons};
use crate::api::{CDI, CDISpec, CDIStatus, OperatorCondition};

/// The version the populator reports as operator, target and observed version.
pub fn version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Creates `cdi` when no CDI object exists (an admin's, of any name, is kept).
pub async fn ensure_one(client: &kube::Client) {
    let api: Api<CDI> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(list) if !list.items.is_empty() => {}
        Ok(_) => {
            let cdi = CDI {
                metadata: ObjectMeta { name: Some(singletons::CDI.into()), ..Default::default() },
                spec: CDISpec::default(),
                status: None,
            };
            match api.create(&PostParams::default(), &cdi).await {
                Ok(_) => tracing::info!(name = singletons::CDI, "created the CDI object"),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => tracing::warn!(error = %e, "cannot create the CDI object"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list CDI objects"),
    }
}

/// The clone strategy the CDI object in effect sets for every class
/// (`spec.cloneStrategyOverride`), if it sets one.
pub async fn clone_strategy_override(client: &kube::Client) -> Result<Option<String>, kube::Error> {
    let all: Vec<Arc<CDI>> =
        Api::<CDI>::all(client.clone()).list(&ListParams::default()).await?.items.into_iter().map(Arc::new).collect();
    let in_effect = all.iter().find(|c| is_first(c, &all));
    Ok(in_effect.and_then(|c| c.spec.clone_strategy_override.clone()).filter(|s| !s.is_empty()))
}

/// Whether a CDI object is the one in effect: the oldest, the name breaking ties.
fn is_first(cdi: &CDI, all: &[Arc<CDI>]) -> bool {
    let key = |c: &CDI| (c.metadata.creation_timestamp.clone().map(|t| t.0), c.name_any());
    all.iter().all(|other| key(cdi) <= key(other))
}

/// The status of a CDI object: `Deployed` and healthy for the one in effect, `Error` for
/// any other. Conditions whose status does not change keep their timestamps, so a status
/// that is already right is left alone.
pub fn desired_status(current: Option<&CDIStatus>, in_effect: Option<&str>, now: &str) -> CDIStatus {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        let old = current.and_then(|c| c.conditions.iter().find(|c| c.type_ == type_));
        let same = old.filter(|o| o.status == status && o.reason.as_deref().unwrap_or("") == reason);
        let stamp = |t: Option<&String>| Some(t.cloned().unwrap_or_else(|| now.to_string()));
        OperatorCondition {
            type_: type_.into(),
            status: status.into(),
            reason: (!reason.is_empty()).then(|| reason.into()),
            message: (!message.is_empty()).then(|| message.into()),
            last_heartbeat_time: stamp(same.and_then(|o| o.last_heartbeat_time.as_ref())),
            last_transition_time: stamp(same.and_then(|o| o.last_transition_time.as_ref())),
        }
    };
    let version = Some(version());
    match in_effect {
        None => CDIStatus {
            phase: Some(cdi_phases::DEPLOYED.into()),
            conditions: vec![
                condition(
                    cdi_conditions::AVAILABLE,
                    "True",
                    cdi_conditions::DEPLOY_COMPLETED,
                    cdi_conditions::DEPLOY_COMPLETED_MESSAGE,
                ),
                condition(cdi_conditions::PROGRESSING, "False", "", ""),
                condition(cdi_conditions::DEGRADED, "False", "", ""),
            ],
            operator_version: version.clone(),
            target_version: version.clone(),
            observed_version: version,
        },
        Some(first) => {
            let message = format!("CDI object {first} is the one in effect; delete this one");
            CDIStatus {
                phase: Some(cdi_phases::ERROR.into()),
                conditions: vec![
                    condition(cdi_conditions::AVAILABLE, "False", "ConfigError", &message),
                    condition(cdi_conditions::PROGRESSING, "False", "", ""),
                    condition(cdi_conditions::DEGRADED, "True", "ConfigError", &message),
                ],
                operator_version: version,
                target_version: None,
                observed_version: None,
            }
        }
    }
}

/// Runs the controller of the CDI objects.
pub async fn run(ctx: Arc<Ctx>) {
    let controller = Controller::new(Api::<CDI>::all(ctx.client.clone()), watcher::Config::default());
    let store = controller.store();
    controller
        .run(
            move |cdi, ctx| {
                let all = store.state();
                async move { reconcile(cdi, &all, ctx).await }
            },
            super::error_policy,
            ctx,
        )
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

async fn reconcile(cdi: Arc<CDI>, all: &[Arc<CDI>], ctx: Arc<Ctx>) -> Result<Action, Error> {
    if cdi.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let first = all.iter().find(|c| is_first(c, all)).map(|c| c.name_any());
    let in_effect = first.as_deref().filter(|f| *f != cdi.name_any());
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = desired_status(cdi.status.as_ref(), in_effect, &now);
    if cdi.status.as_ref() != Some(&status) {
        let mut updated = cdi.as_ref().clone();
        updated.status = Some(status);
        replace_status(&Api::<CDI>::all(ctx.client.clone()), &updated).await?;
        tracing::info!(name = %cdi.name_any(), phase = ?updated.status.and_then(|s| s.phase), "CDI status updated");
    }
    // Another CDI object coming or going changes which one is in effect: look again now and then.
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(s: &'a CDIStatus, t: &str) -> &'a OperatorCondition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn the_cdi_in_effect_is_deployed_and_available() {
        let s = desired_status(None, None, "2025-01-01T00:00:00Z");
        assert_eq!(s.phase.as_deref(), Some("Deployed"));
        let available = find(&s, "Available");
        assert_eq!(available.status, "True");
        assert_eq!(available.reason.as_deref(), Some("DeployCompleted"));
        assert_eq!(find(&s, "Progressing").status, "False");
        assert_eq!(find(&s, "Degraded").status, "False");
        assert_eq!(s.observed_version, Some(version()));
    }

    #[test]
    fn a_right_status_is_stable_and_a_change_moves_the_timestamps() {
        let first = desired_status(None, None, "2025-01-01T00:00:00Z");
        let again = desired_status(Some(&first), None, "2025-06-01T00:00:00Z");
        assert_eq!(first, again, "nothing to write when nothing changed");
        let demoted = desired_status(Some(&first), Some("cdi"), "2025-06-01T00:00:00Z");
        assert_eq!(demoted.phase.as_deref(), Some("Error"));
        let degraded = find(&demoted, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.last_transition_time.as_deref(), Some("2025-06-01T00:00:00Z"));
        assert!(degraded.message.as_deref().unwrap().contains("cdi is the one in effect"));
        // Progressing stayed False: its transition time is kept.
        assert_eq!(find(&demoted, "Progressing").last_transition_time.as_deref(), Some("2025-01-01T00:00:00Z"));
    }

    #[test]
    fn the_oldest_cdi_object_is_in_effect() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let make = |name: &str, secs: i64| {
            let mut c = CDI::new(name, CDISpec::default());
            c.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(secs).unwrap()));
            Arc::new(c)
        };
        let all = vec![make("b", 10), make("a", 20), make("c", 10)];
        assert!(is_first(&all[0], &all));
        assert!(!is_first(&all[1], &all));
        assert!(!is_first(&all[2], &all), "same age: the name decides");
    }
}
