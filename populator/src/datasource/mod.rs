//! DataSources: named golden volumes that DataVolumes clone through `spec.sourceRef`.
//!
//! ```text
//!  watches: DataSources, PVCs ─▶ Controller ─▶ reconcile: resolve() ─▶ status.source, Ready
//!  DataVolume controller ─────────────────────▶ resolve() (the same rules, read at create)
//! ```
//!
//! [`resolve`] follows at most one `dataSource` reference, in the same namespace, as CDI
//! does; the controller writes what it found into `status.source` and a `Ready` condition
//! with CDI's reasons.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::api::names::conditions;
use crate::api::{DataSource, DataSourceSource, DataVolumeCondition};

/// Why a DataSource names no usable volume: CDI's `Ready` condition reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// It names nothing, or what it names does not exist (yet).
    NoSource(String),
    /// A `dataSource` naming another `dataSource`.
    MaxReferenceDepthReached,
    SelfReference,
    CrossNamespaceReference,
}

impl Unresolved {
    pub fn reason(&self) -> &'static str {
        match self {
            Unresolved::NoSource(_) => "NoSource",
            Unresolved::MaxReferenceDepthReached => "MaxReferenceDepthReached",
            Unresolved::SelfReference => "SelfReference",
            Unresolved::CrossNamespaceReference => "CrossNamespaceReference",
        }
    }
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::NoSource(why) => f.write_str(why),
            Unresolved::MaxReferenceDepthReached => {
                f.write_str("a DataSource may refer to a DataSource that names a volume, not to another reference")
            }
            Unresolved::SelfReference => f.write_str("the DataSource refers to itself"),
            Unresolved::CrossNamespaceReference => f.write_str("a DataSource may only refer to one in its namespace"),
        }
    }
}

/// A volume a DataSource resolves to, with its namespace filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Pvc { namespace: String, name: String },
    Snapshot { namespace: String, name: String },
}

impl Resolved {
    /// As `status.source` spells it.
    pub fn to_source(&self) -> DataSourceSource {
        use crate::api::datavolume::{DataVolumeSourcePvc, DataVolumeSourceSnapshot};
        match self {
            Resolved::Pvc { namespace, name } => DataSourceSource {
                pvc: Some(DataVolumeSourcePvc { namespace: Some(namespace.clone()), name: name.clone() }),
                ..Default::default()
            },
            Resolved::Snapshot { namespace, name } => DataSourceSource {
                snapshot: Some(DataVolumeSourceSnapshot { namespace: Some(namespace.clone()), name: name.clone() }),
                ..Default::default()
            },
        }
    }
}

/// What `source` names, in the DataSource's own namespace `namespace` unless it says.
fn named(source: &DataSourceSource, namespace: &str) -> Option<Resolved> {
    let or_own = |ns: &Option<String>| ns.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.to_string());
    if let Some(pvc) = &source.pvc {
        return Some(Resolved::Pvc { namespace: or_own(&pvc.namespace), name: pvc.name.clone() });
    }
    let snapshot = source.snapshot.as_ref()?;
    Some(Resolved::Snapshot { namespace: or_own(&snapshot.namespace), name: snapshot.name.clone() })
}

/// Follows `ds` to a volume; `lookup(namespace, name)` reads another DataSource.
pub async fn resolve<F, Fut>(ds: &DataSource, lookup: F) -> Result<Resolved, Unresolved>
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Option<DataSource>>,
{
    let namespace = ds.namespace().unwrap_or_default();
    if let Some(found) = named(&ds.spec.source, &namespace) {
        return Ok(found);
    }
    let Some(reference) = &ds.spec.source.data_source else {
        return Err(Unresolved::NoSource("spec.source names no pvc, snapshot or dataSource".into()));
    };
    let ref_namespace = reference.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| namespace.clone());
    if ref_namespace != namespace {
        return Err(Unresolved::CrossNamespaceReference);
    }
    if reference.name == ds.name_any() {
        return Err(Unresolved::SelfReference);
    }
    let Some(next) = lookup(ref_namespace.clone(), reference.name.clone()).await else {
        return Err(Unresolved::NoSource(format!("DataSource {ref_namespace}/{} not found", reference.name)));
    };
    if next.spec.source.data_source.is_some() {
        return Err(Unresolved::MaxReferenceDepthReached);
    }
    named(&next.spec.source, &ref_namespace)
        .ok_or_else(|| Unresolved::NoSource(format!("DataSource {ref_namespace}/{} names no volume", reference.name)))
}

/// Reads DataSource `namespace/name`; an API error reads as none (the caller retries).
pub async fn get(client: &kube::Client, namespace: String, name: String) -> Option<DataSource> {
    Api::<DataSource>::namespaced(client.clone(), &namespace).get_opt(&name).await.ok().flatten()
}

/// How often a DataSource is looked at again: what it names may appear without a change
/// of its own that a watch would report (a snapshot, a DataSource it refers to).
const RECHECK: Duration = Duration::from_secs(30);

struct Ctx {
    client: kube::Client,
}

/// Runs the DataSource controller until its stream ends.
pub async fn run(client: kube::Client) {
    let ctx = Arc::new(Ctx { client: client.clone() });
    let controller = Controller::new(Api::<DataSource>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    controller
        // A claim that appears, binds or goes: the DataSources naming it.
        .watches(Api::<PersistentVolumeClaim>::all(client), watcher::Config::default(), move |pvc| {
            let (namespace, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
            store
                .state()
                .into_iter()
                .filter(|ds| {
                    let own = ds.namespace().unwrap_or_default();
                    named(&ds.spec.source, &own)
                        == Some(Resolved::Pvc { namespace: namespace.clone(), name: name.clone() })
                })
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(5)), ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

async fn reconcile(ds: Arc<DataSource>, ctx: Arc<Ctx>) -> Result<Action, crate::api_error::ApiError> {
    let client = ctx.client.clone();
    let resolved = resolve(&ds, |ns, name| get(&client, ns, name)).await;
    let (source, ready) = match &resolved {
        Ok(found @ Resolved::Pvc { namespace, name }) => {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
            let claim =
                claims.get_opt(name).await.map_err(|e| crate::api_error::ApiError::kube("read PVC", name, e))?;
            let bound = claim.as_ref().and_then(|c| c.status.as_ref()?.phase.as_deref()) == Some("Bound");
            let ready = if bound {
                condition("True", "Ready", "")
            } else {
                condition("False", "NoSource", &format!("PVC {namespace}/{name} not found or not bound"))
            };
            (Some(found.to_source()), ready)
        }
        // Snapshots are not followed yet: named, not judged.
        Ok(found @ Resolved::Snapshot { .. }) => (Some(found.to_source()), condition("True", "Ready", "")),
        Err(why) => (None, condition("False", why.reason(), &why.to_string())),
    };
    let old = ds.status.clone().unwrap_or_default();
    let same_ready = old.conditions.iter().find(|c| c.type_ == conditions::READY).is_some_and(|c| {
        c.status == ready.status && c.reason.as_deref() == ready.reason.as_deref() && c.message == ready.message
    });
    if old.source != source || !same_ready {
        let patch = serde_json::json!({"status": {"source": source, "conditions": [ready]}});
        Api::<DataSource>::namespaced(ctx.client.clone(), &ds.namespace().unwrap_or_default())
            .patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| crate::api_error::ApiError::kube("write the status of DataSource", &ds.name_any(), e))?;
    }
    Ok(Action::requeue(RECHECK))
}

fn condition(status: &str, reason: &str, message: &str) -> DataVolumeCondition {
    let now = Time(jiff::Timestamp::now());
    DataVolumeCondition {
        type_: conditions::READY.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(name: &str, source: serde_json::Value) -> DataSource {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
            "metadata": {"name": name, "namespace": "golden"}, "spec": {"source": source},
        }))
        .unwrap()
    }

    async fn resolved(d: &DataSource, others: &[DataSource]) -> Result<Resolved, Unresolved> {
        resolve(d, |ns, name| {
            let found = others.iter().find(|o| o.namespace().as_deref() == Some(&ns) && o.name_any() == name).cloned();
            async move { found }
        })
        .await
    }

    #[tokio::test]
    async fn a_data_source_resolves_to_its_volume_through_at_most_one_reference() {
        let fedora = ds("fedora", json!({"pvc": {"name": "fedora-42"}}));
        let pvc = Resolved::Pvc { namespace: "golden".into(), name: "fedora-42".into() };
        assert_eq!(resolved(&fedora, &[]).await, Ok(pvc.clone()));
        let latest = ds("latest", json!({"dataSource": {"name": "fedora"}}));
        assert_eq!(resolved(&latest, std::slice::from_ref(&fedora)).await, Ok(pvc));
        let chained = ds("chained", json!({"dataSource": {"name": "latest"}}));
        assert_eq!(resolved(&chained, &[latest]).await, Err(Unresolved::MaxReferenceDepthReached));
        let own = ds("own", json!({"dataSource": {"name": "own"}}));
        assert_eq!(resolved(&own, &[]).await, Err(Unresolved::SelfReference));
        let away = ds("away", json!({"dataSource": {"namespace": "other", "name": "fedora"}}));
        assert_eq!(resolved(&away, &[]).await, Err(Unresolved::CrossNamespaceReference));
        let dangling = ds("dangling", json!({"dataSource": {"name": "nothing"}}));
        assert_eq!(resolved(&dangling, &[]).await.unwrap_err().reason(), "NoSource");
        let snap = ds("snap", json!({"snapshot": {"namespace": "snaps", "name": "s"}}));
        assert_eq!(resolved(&snap, &[]).await, Ok(Resolved::Snapshot { namespace: "snaps".into(), name: "s".into() }));
        assert_eq!(resolved(&ds("empty", json!({})), &[]).await.unwrap_err().reason(), "NoSource");
    }
}
