//! The StorageProfile controller: one profile per StorageClass, of the same name, whose
//! `status` says what claims of the class get (access and volume modes), how they are cloned
//! and with which VolumeSnapshotClass. Resolution, most specific first:
//!
//! - claim property sets: the profile's spec; for statically provisioned classes, what
//!   their PersistentVolumes offer; else the provisioner table ([`super::capabilities`]);
//! - clone strategy: spec, the class's `cdi.kubevirt.io/clone-strategy` annotation, the
//!   table, `snapshot` when the class's driver has a VolumeSnapshotClass, else `copy`;
//! - DataImportCron source format: spec, the table, else `pvc`.
//!
//! The profile has the class as owner (CDI sets none, and deletes the profile itself when
//! the class goes); here the garbage collector does that, even while the populator is down.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};

use super::capabilities::{self, property_set};
use super::{Ctx, Error, replace_status};
use crate::api::names::{annotations, kinds, profile};
use crate::api::{ClaimPropertySet, StorageProfile, StorageProfileSpec, StorageProfileStatus};

/// Look again this often even without a change (CDI's informer resync).
const RESYNC: Duration = Duration::from_secs(600);

/// A VolumeSnapshotClass, as far as profiles care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotClass {
    pub name: String,
    pub driver: String,
    /// Annotated as its driver's default.
    pub is_default: bool,
}

impl SnapshotClass {
    fn from_dynamic(o: &DynamicObject) -> Option<SnapshotClass> {
        Some(SnapshotClass {
            name: o.metadata.name.clone()?,
            driver: o.data.get("driver")?.as_str()?.to_string(),
            is_default: o.annotations().get(annotations::DEFAULT_SNAPSHOT_CLASS).is_some_and(|v| v == "true"),
        })
    }
}

/// The snapshot class for a driver: its default, else the first by name.
pub fn snapshot_class_for<'a>(driver: &str, classes: &'a [SnapshotClass]) -> Option<&'a SnapshotClass> {
    let mut of_driver: Vec<&SnapshotClass> = classes.iter().filter(|c| c.driver == driver).collect();
    of_driver.sort_by(|a, b| b.is_default.cmp(&a.is_default).then_with(|| a.name.cmp(&b.name)));
    of_driver.first().copied()
}

/// What the PersistentVolumes of a statically provisioned class offer: one set per access
/// mode and volume mode seen, in the order first seen.
pub fn static_property_sets(class: &str, pvs: &[PersistentVolume]) -> Vec<ClaimPropertySet> {
    let mut sets: Vec<ClaimPropertySet> = Vec::new();
    for spec in pvs.iter().filter_map(|pv| pv.spec.as_ref()) {
        if spec.storage_class_name.as_deref() != Some(class) {
            continue;
        }
        let mode = spec.volume_mode.as_deref().unwrap_or("Filesystem");
        for access in spec.access_modes.iter().flatten() {
            let set = property_set(access, mode);
            if !sets.contains(&set) {
                sets.push(set);
            }
        }
    }
    sets
}

/// The profile status of `class`, given the profile's spec, the snapshot classes and (for
/// statically provisioned classes) what their volumes offer.
pub fn resolve(
    spec: &StorageProfileSpec,
    class: &StorageClass,
    snapshot_classes: &[SnapshotClass],
    static_sets: &[ClaimPropertySet],
) -> StorageProfileStatus {
    let provisioner = class.provisioner.as_str();
    let key = capabilities::provisioner_key(provisioner, &class.parameters.clone().unwrap_or_default());
    let claim_property_sets = if !spec.claim_property_sets.is_empty() {
        spec.claim_property_sets.clone()
    } else if provisioner == profile::NO_PROVISIONER {
        static_sets.to_vec()
    } else {
        capabilities::claim_property_sets(&key).unwrap_or_default()
    };
    let snapshot_class = spec
        .snapshot_class
        .clone()
        .or_else(|| snapshot_class_for(provisioner, snapshot_classes).map(|c| c.name.clone()));
    let annotated = class.metadata.annotations.as_ref().and_then(|a| a.get(annotations::CLONE_STRATEGY));
    let clone_strategy = spec
        .clone_strategy
        .clone()
        .or_else(|| annotated.cloned())
        .or_else(|| capabilities::clone_strategy(&key).map(str::to_string))
        .unwrap_or_else(|| {
            let strategy = if snapshot_class.is_some() {
                profile::clone_strategy::SNAPSHOT
            } else {
                profile::clone_strategy::COPY
            };
            strategy.to_string()
        });
    let data_import_cron_source_format = spec
        .data_import_cron_source_format
        .clone()
        .or_else(|| capabilities::source_format(&key).map(str::to_string))
        .unwrap_or_else(|| profile::source_format::PVC.to_string());
    StorageProfileStatus {
        storage_class: Some(class.name_any()),
        provisioner: Some(provisioner.to_string()),
        clone_strategy: Some(clone_strategy),
        claim_property_sets,
        data_import_cron_source_format: Some(data_import_cron_source_format),
        snapshot_class,
    }
}

/// `VolumeSnapshotClass` (snapshot.storage.k8s.io/v1), which k8s-openapi does not carry.
fn snapshot_class_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(kinds::SNAPSHOT_GROUP, "v1", kinds::VOLUME_SNAPSHOT_CLASS);
    ApiResource::from_gvk_with_plural(&gvk, kinds::VOLUME_SNAPSHOT_CLASSES)
}

/// The class as the profile's owner: its deletion takes the profile along.
fn owner(class: &StorageClass) -> OwnerReference {
    OwnerReference {
        api_version: StorageClass::api_version(&()).into(),
        kind: StorageClass::kind(&()).into(),
        name: class.name_any(),
        uid: class.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// Runs the controller: StorageClasses are the primary objects; a profile's change, and a
/// VolumeSnapshotClass's (for the classes of its driver), reconcile the class.
pub async fn run(ctx: Arc<Ctx>) {
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<StorageClass>::all(client.clone()), watcher::Config::default());
    let classes = controller.store();
    let resource = snapshot_class_resource();
    controller
        .watches(Api::<StorageProfile>::all(client.clone()), watcher::Config::default(), |profile| {
            Some(ObjectRef::new(&profile.name_any()))
        })
        .watches_with(
            Api::<DynamicObject>::all_with(client, &resource),
            resource.clone(),
            watcher::Config::default(),
            move |snapshot_class| {
                let driver = snapshot_class.data.get("driver").and_then(|d| d.as_str()).unwrap_or_default().to_string();
                classes
                    .state()
                    .into_iter()
                    .filter(|c| c.provisioner == driver)
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile, super::error_policy, ctx)
        .for_each(|_| futures_util::future::ready(()))
        .await;
}

async fn reconcile(class: Arc<StorageClass>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if class.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = class.name_any();
    let api: Api<StorageProfile> = Api::all(ctx.client.clone());
    let profile = ensure_profile(&api, &class).await?;
    let snapshot_classes = list_snapshot_classes(&ctx.client).await?;
    let static_sets = if class.provisioner == profile::NO_PROVISIONER {
        let pvs = Api::<PersistentVolume>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::kube("list", "PersistentVolumes", e))?;
        static_property_sets(&name, &pvs.items)
    } else {
        Vec::new()
    };
    let status = resolve(&profile.spec, &class, &snapshot_classes, &static_sets);
    if status.claim_property_sets.is_empty() {
        tracing::info!(
            storage_class = %name,
            provisioner = %class.provisioner,
            "unknown provisioner: set spec.claimPropertySets of StorageProfile {name} for DataVolumes to get access and volume modes"
        );
    }
    if profile.status.as_ref() != Some(&status) {
        let mut updated = profile.clone();
        updated.status = Some(status);
        replace_status(&api, &updated).await?;
        tracing::info!(storage_class = %name, "StorageProfile status updated");
    }
    Ok(Action::requeue(RESYNC))
}

/// The class's profile, created (empty spec) when missing, and owned by the class.
async fn ensure_profile(api: &Api<StorageProfile>, class: &StorageClass) -> Result<StorageProfile, Error> {
    let name = class.name_any();
    let owner = owner(class);
    let Some(profile) =
        api.get_opt(&name).await.map_err(|e| Error::kube("read", &format!("StorageProfile {name}"), e))?
    else {
        let mut profile = StorageProfile::new(&name, StorageProfileSpec::default());
        profile.metadata.owner_references = Some(vec![owner]);
        let created = api
            .create(&PostParams::default(), &profile)
            .await
            .map_err(|e| Error::kube("create", &format!("StorageProfile {name}"), e))?;
        tracing::info!(storage_class = %name, "created StorageProfile");
        return Ok(created);
    };
    let owned = profile.owner_references().iter().any(|o| o.uid == owner.uid);
    if owned {
        return Ok(profile);
    }
    // A profile made before its class (by an admin, or for a class of the same name since
    // deleted): adopt it, keeping its spec, dropping owners that are gone.
    let mut owners: Vec<OwnerReference> =
        profile.owner_references().iter().filter(|o| o.kind != owner.kind).cloned().collect();
    owners.push(owner);
    let patch =
        serde_json::json!({"metadata": {"ownerReferences": owners, "resourceVersion": profile.resource_version()}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("adopt", &format!("StorageProfile {name}"), e))
}

/// Every VolumeSnapshotClass; none where the snapshot API is not installed.
async fn list_snapshot_classes(client: &kube::Client) -> Result<Vec<SnapshotClass>, Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &snapshot_class_resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.iter().filter_map(SnapshotClass::from_dynamic).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::kube("list", "VolumeSnapshotClasses", e)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use k8s_openapi::api::core::v1::PersistentVolumeSpec;

    fn class(name: &str, provisioner: &str, annotations: &[(&str, &str)]) -> StorageClass {
        let mut sc = StorageClass { provisioner: provisioner.into(), ..Default::default() };
        sc.metadata.name = Some(name.into());
        sc.metadata.annotations =
            Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>());
        sc
    }

    fn snap(name: &str, driver: &str, is_default: bool) -> SnapshotClass {
        SnapshotClass { name: name.into(), driver: driver.into(), is_default }
    }

    #[test]
    fn a_known_provisioner_gets_the_tables_claim_properties() {
        let status = resolve(&StorageProfileSpec::default(), &class("ceph", "rbd.csi.ceph.com", &[]), &[], &[]);
        assert_eq!(status.storage_class.as_deref(), Some("ceph"));
        assert_eq!(status.provisioner.as_deref(), Some("rbd.csi.ceph.com"));
        assert_eq!(status.claim_property_sets, capabilities::claim_property_sets("rbd.csi.ceph.com").unwrap());
        assert_eq!(status.clone_strategy.as_deref(), Some("csi-clone"));
        assert_eq!(status.data_import_cron_source_format.as_deref(), Some("pvc"));
        assert_eq!(status.snapshot_class, None);

        let unknown = resolve(&StorageProfileSpec::default(), &class("x", "example.com/x", &[]), &[], &[]);
        assert!(unknown.claim_property_sets.is_empty());
        assert_eq!(unknown.clone_strategy.as_deref(), Some("copy"));
    }

    #[test]
    fn the_spec_wins_over_everything() {
        let spec = StorageProfileSpec {
            clone_strategy: Some("copy".into()),
            claim_property_sets: vec![property_set("ReadWriteMany", "Block")],
            data_import_cron_source_format: Some("snapshot".into()),
            snapshot_class: Some("mine".into()),
        };
        let sc = class("gke", "pd.csi.storage.gke.io", &[(annotations::CLONE_STRATEGY, "csi-clone")]);
        let status = resolve(&spec, &sc, &[snap("theirs", "pd.csi.storage.gke.io", true)], &[]);
        assert_eq!(status.claim_property_sets, spec.claim_property_sets);
        assert_eq!(status.clone_strategy.as_deref(), Some("copy"));
        assert_eq!(status.data_import_cron_source_format.as_deref(), Some("snapshot"));
        assert_eq!(status.snapshot_class.as_deref(), Some("mine"));
    }

    #[test]
    fn clone_strategy_falls_from_annotation_to_table_to_snapshot_class_to_copy() {
        let none = StorageProfileSpec::default();
        let annotated = class("a", "topolvm.io", &[(annotations::CLONE_STRATEGY, "snapshot")]);
        assert_eq!(resolve(&none, &annotated, &[], &[]).clone_strategy.as_deref(), Some("snapshot"));
        let table = class("t", "topolvm.io", &[]);
        let snaps = [snap("lvm", "topolvm.io", false)];
        assert_eq!(resolve(&none, &table, &snaps, &[]).clone_strategy.as_deref(), Some("copy"));
        let ours = class("local", capabilities::EMBEDDED_CLUSTER_PROVISIONER, &[]);
        let snaps = [
            snap("b", capabilities::EMBEDDED_CLUSTER_PROVISIONER, false),
            snap("z", capabilities::EMBEDDED_CLUSTER_PROVISIONER, true),
            snap("a", "other", true),
        ];
        let status = resolve(&none, &ours, &snaps, &[]);
        assert_eq!(status.clone_strategy.as_deref(), Some("snapshot"));
        assert_eq!(status.snapshot_class.as_deref(), Some("z"), "the driver's default class");
        assert_eq!(resolve(&none, &ours, &[], &[]).clone_strategy.as_deref(), Some("copy"));
    }

    #[test]
    fn snapshot_class_without_a_default_is_the_first_by_name() {
        let snaps = [snap("b", "d", false), snap("a", "d", false), snap("0", "e", true)];
        assert_eq!(snapshot_class_for("d", &snaps).map(|c| c.name.as_str()), Some("a"));
        assert_eq!(snapshot_class_for("f", &snaps), None);
    }

    #[test]
    fn source_format_comes_from_the_table() {
        let sc = class("gke", "pd.csi.storage.gke.io", &[]);
        let status = resolve(&StorageProfileSpec::default(), &sc, &[], &[]);
        assert_eq!(status.data_import_cron_source_format.as_deref(), Some("snapshot"));
    }

    #[test]
    fn static_classes_offer_what_their_volumes_offer() {
        let pv = |class: &str, modes: &[&str], mode: Option<&str>| PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                storage_class_name: Some(class.into()),
                access_modes: Some(modes.iter().map(|m| m.to_string()).collect()),
                volume_mode: mode.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pvs = [
            pv("local", &["ReadWriteOnce"], None),
            pv("local", &["ReadWriteOnce", "ReadOnlyMany"], Some("Block")),
            pv("local", &["ReadWriteOnce"], Some("Filesystem")),
            pv("other", &["ReadWriteMany"], None),
        ];
        let sets = static_property_sets("local", &pvs);
        assert_eq!(
            sets,
            vec![
                property_set("ReadWriteOnce", "Filesystem"),
                property_set("ReadWriteOnce", "Block"),
                property_set("ReadOnlyMany", "Block"),
            ]
        );
        let sc = class("local", profile::NO_PROVISIONER, &[]);
        assert_eq!(resolve(&StorageProfileSpec::default(), &sc, &[], &sets).claim_property_sets, sets);
    }
}
