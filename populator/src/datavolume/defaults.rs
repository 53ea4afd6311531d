//! What a DataVolume's `spec.storage` leaves to the cluster: access modes and volume mode
//! (CDI reads them from the class's StorageProfile), the filesystem overhead (CDIConfig),
//! preallocation (CDIConfig), and the storage class itself (the cluster's default).
//!
//! The profile and config lookups sit behind [`StorageDefaults`], so the controller does not
//! care where they come from: the configuration's caches ([`crate::config::Defaults`]) in the
//! populator, [`ConfigDefaults`] (fixed answers) in tests.

use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;

use crate::api::names::annotations::{DEFAULT_STORAGE_CLASS, DEFAULT_VIRT_STORAGE_CLASS};

/// A claim's access modes and volume mode, as a StorageProfile's `claimPropertySets` entry
/// gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimProperties {
    pub access_modes: Vec<String>,
    pub volume_mode: VolumeMode,
}

/// A PVC's `volumeMode`: the one the StorageProfile table speaks.
pub use crate::config::capabilities::VolumeMode;

/// The per-class defaults a DataVolume's `spec.storage` is completed with.
pub trait StorageDefaults: Send + Sync {
    /// The first claim property set of the class's profile; `None` when the class has none
    /// (the DataVolume must then name both itself).
    fn claim_properties(&self, storage_class: &str) -> Option<ClaimProperties>;
    /// The filesystem overhead of the class (a fraction, e.g. 0.06).
    fn filesystem_overhead(&self, storage_class: &str) -> f64;
    /// Whether imports preallocate when a DataVolume does not say.
    fn default_preallocation(&self) -> bool;
}

/// Defaults from the populator's flags: every class is ReadWriteOnce + Filesystem, one
/// overhead for all, no preallocation.
#[derive(Debug, Clone)]
pub struct ConfigDefaults {
    pub filesystem_overhead: f64,
}

impl StorageDefaults for ConfigDefaults {
    fn claim_properties(&self, _storage_class: &str) -> Option<ClaimProperties> {
        Some(ClaimProperties { access_modes: vec!["ReadWriteOnce".into()], volume_mode: VolumeMode::Filesystem })
    }

    fn filesystem_overhead(&self, _storage_class: &str) -> f64 {
        self.filesystem_overhead
    }

    fn default_preallocation(&self) -> bool {
        false
    }
}

/// The live answers: CDIConfig's status and the StorageProfiles, from the configuration
/// controllers' caches.
impl StorageDefaults for crate::config::Defaults {
    fn claim_properties(&self, storage_class: &str) -> Option<ClaimProperties> {
        let (access_modes, mode) = crate::config::Defaults::claim_properties(self, storage_class)?;
        Some(ClaimProperties { access_modes, volume_mode: VolumeMode::parse(&mode)? })
    }

    fn filesystem_overhead(&self, storage_class: &str) -> f64 {
        crate::config::Defaults::filesystem_overhead(self, storage_class)
    }

    fn default_preallocation(&self) -> bool {
        crate::config::Defaults::default_preallocation(self)
    }
}

/// The class a DataVolume without one gets: for VM disks (`kubevirt` content) the virt
/// default first, then the Kubernetes default. Among several defaults the newest wins, then
/// the name, as Kubernetes and CDI choose.
pub fn default_class(classes: &[StorageClass], kubevirt_content: bool) -> Option<String> {
    let marked = |key: &str| {
        classes
            .iter()
            .filter(|c| c.annotations().get(key).map(String::as_str) == Some("true"))
            .max_by(|a, b| {
                let created = |c: &StorageClass| c.metadata.creation_timestamp.clone().map(|t| t.0);
                created(a).cmp(&created(b)).then_with(|| b.name_any().cmp(&a.name_any()))
            })
            .map(ResourceExt::name_any)
    };
    kubevirt_content.then(|| marked(DEFAULT_VIRT_STORAGE_CLASS)).flatten().or_else(|| marked(DEFAULT_STORAGE_CLASS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, created: &str, annotations: &[(&str, &str)]) -> StorageClass {
        let annotations: serde_json::Map<String, serde_json::Value> =
            annotations.iter().map(|(k, v)| ((*k).to_string(), (*v).into())).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
            "provisioner": "p",
        }))
        .unwrap()
    }

    #[test]
    fn the_virt_default_wins_for_vm_disks_only() {
        let classes = [
            class("plain", "2026-01-01T00:00:00Z", &[]),
            class("k8s", "2026-01-01T00:00:00Z", &[(DEFAULT_STORAGE_CLASS, "true")]),
            class("virt", "2026-01-01T00:00:00Z", &[(DEFAULT_VIRT_STORAGE_CLASS, "true")]),
        ];
        assert_eq!(default_class(&classes, true).as_deref(), Some("virt"));
        assert_eq!(default_class(&classes, false).as_deref(), Some("k8s"));
        assert_eq!(default_class(&classes[..2], true).as_deref(), Some("k8s"));
        assert_eq!(default_class(&classes[..1], true), None);
    }

    #[test]
    fn among_several_defaults_the_newest_then_the_first_name_wins() {
        let classes = [
            class("old", "2025-01-01T00:00:00Z", &[(DEFAULT_STORAGE_CLASS, "true")]),
            class("b", "2026-01-01T00:00:00Z", &[(DEFAULT_STORAGE_CLASS, "true")]),
            class("a", "2026-01-01T00:00:00Z", &[(DEFAULT_STORAGE_CLASS, "true")]),
            class("off", "2027-01-01T00:00:00Z", &[(DEFAULT_STORAGE_CLASS, "false")]),
        ];
        assert_eq!(default_class(&classes, false).as_deref(), Some("a"));
    }

    #[test]
    fn config_defaults_are_rwo_filesystem_with_the_flag_overhead() {
        let d = ConfigDefaults { filesystem_overhead: 0.055 };
        let props = d.claim_properties("any").unwrap();
        assert_eq!(props.access_modes, ["ReadWriteOnce"]);
        assert_eq!(props.volume_mode, VolumeMode::Filesystem);
        assert!((d.filesystem_overhead("any") - 0.055).abs() < f64::EPSILON);
        assert!(!d.default_preallocation());
    }
}
