//! How a clone is made: CDI's strategy choice, as a pure function of what the cluster says.
//!
//! The strategy asked for is the CDI object's `cloneStrategyOverride`, else the target
//! class's StorageProfile `cloneStrategy` (CDI's default: `snapshot`). A smart strategy (`csi-clone`, `snapshot`) needs what the storage
//! driver can do; where it cannot, the clone falls back to a host-assisted copy with CDI's
//! fallback reason, rather than failing (a frequent complaint about CDI). Each way is
//! checked before anything is created, so a fallback never leaves half a smart clone.

use crate::api::names::profile::clone_strategy;

/// The way chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Host-assisted: one mover reads the source, another writes the target.
    Copy,
    /// The CSI driver clones the source claim.
    CsiClone,
    /// A VolumeSnapshot of the source, restored into the target.
    Snapshot,
}

impl Strategy {
    /// CDI's name, as in `cloneStrategy` and the `cloneType` annotation.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Copy => clone_strategy::COPY,
            Strategy::CsiClone => clone_strategy::CSI_CLONE,
            Strategy::Snapshot => clone_strategy::SNAPSHOT,
        }
    }

    /// Reads CDI's name back; `None` for anything else.
    pub fn parse(text: &str) -> Option<Strategy> {
        match text {
            clone_strategy::COPY => Some(Strategy::Copy),
            clone_strategy::CSI_CLONE => Some(Strategy::CsiClone),
            clone_strategy::SNAPSHOT => Some(Strategy::Snapshot),
            _ => None,
        }
    }
}

/// What the choice looks at, read by the reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The CDI object's `cloneStrategyOverride`, else the target class's StorageProfile
    /// `status.cloneStrategy`; `None`: CDI's default.
    pub profile_strategy: Option<String>,
    pub source_class: String,
    pub target_class: String,
    /// The provisioners of the two classes (empty when a class is unknown).
    pub source_provisioner: String,
    pub target_provisioner: String,
    pub source_block: bool,
    pub target_block: bool,
    /// Bytes requested by each claim.
    pub source_size: u64,
    pub target_size: u64,
    /// The target class allows expansion (a smart clone into a larger claim needs it).
    pub allow_expansion: bool,
    /// A VolumeSnapshotClass for the source's driver.
    pub snapshot_class: Option<String>,
}

/// The way, and when it is not the one asked for, CDI's fallback reason and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub strategy: Strategy,
    pub fallback: Option<(&'static str, String)>,
}

/// CDI's choice. A smart clone across namespaces is made in the source's namespace (the
/// driver clones and restores within one) and its volume handed over to the target, as CDI
/// does: the namespaces do not enter the choice.
pub fn choose(i: &Inputs) -> Choice {
    let asked = i.profile_strategy.as_deref().unwrap_or(clone_strategy::SNAPSHOT);
    let copy = |reason: &'static str, why: String| Choice { strategy: Strategy::Copy, fallback: Some((reason, why)) };
    let smart = match asked {
        clone_strategy::CSI_CLONE => Strategy::CsiClone,
        clone_strategy::SNAPSHOT => match &i.snapshot_class {
            Some(_) => Strategy::Snapshot,
            None if i.profile_strategy.is_none() => return Choice { strategy: Strategy::Copy, fallback: None },
            None => {
                let why = format!("no VolumeSnapshotClass for driver {:?}", i.source_provisioner);
                return copy("NoVolumeSnapshotClass", why);
            }
        },
        _ => return Choice { strategy: Strategy::Copy, fallback: None },
    };
    if i.source_provisioner.is_empty() || i.source_provisioner != i.target_provisioner {
        let why = format!(
            "source provisioner {:?} and target provisioner {:?} differ",
            i.source_provisioner, i.target_provisioner
        );
        return copy("IncompatibleProvisioners", why);
    }
    if smart == Strategy::CsiClone && i.source_class != i.target_class {
        let why = format!("a CSI clone stays within one storage class ({:?} ≠ {:?})", i.source_class, i.target_class);
        return copy("IncompatibleStorageClasses", why);
    }
    if i.source_block != i.target_block {
        return copy("IncompatibleVolumeModes", "source and target volume modes differ".into());
    }
    // The webhook refuses smaller targets for DataVolumes; a bare claim can still ask.
    if let Some((reason, why)) = misfit(i.source_size, i.target_size, i.allow_expansion, &i.target_class) {
        return copy(reason, why);
    }
    Choice { strategy: smart, fallback: None }
}

/// Why a volume of `source` bytes cannot become the target's of `target` bytes, if it
/// cannot: no shrinking, and growing only where the target's class allows expansion.
fn misfit(source: u64, target: u64, allow_expansion: bool, target_class: &str) -> Option<(&'static str, String)> {
    if target < source {
        return Some((
            "IncompatibleSize",
            format!("the target ({target} bytes) is smaller than the source ({source})"),
        ));
    }
    if target > source && !allow_expansion {
        return Some(("NoVolumeExpansion", format!("storage class {target_class:?} does not allow volume expansion")));
    }
    None
}

/// What a restore of a DataVolume's `snapshot` source looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInputs {
    /// The driver that took the snapshot (its VolumeSnapshotContent's).
    pub driver: String,
    pub target_provisioner: String,
    pub target_class: String,
    /// The snapshotted volume's mode, when the snapshot says.
    pub source_block: Option<bool>,
    pub target_block: bool,
    pub restore_size: u64,
    pub target_size: u64,
    pub allow_expansion: bool,
}

/// CDI's checks before a snapshot is restored into the target. What fails them is restored
/// into a temporary claim of the snapshot's own driver, in its namespace, and copied from
/// there (host-assisted), with CDI's fallback reason.
pub fn choose_restore(i: &RestoreInputs) -> Choice {
    let copy = |reason: &'static str, why: String| Choice { strategy: Strategy::Copy, fallback: Some((reason, why)) };
    if i.driver.is_empty() || i.driver != i.target_provisioner {
        let why = format!(
            "the snapshot was taken by driver {:?} and storage class {:?} provisions with {:?}",
            i.driver, i.target_class, i.target_provisioner
        );
        return copy("NoProvisionerMatch", why);
    }
    if i.source_block.is_some_and(|block| block != i.target_block) {
        return copy("IncompatibleVolumeModes", "the snapshot's volume mode and the target's differ".into());
    }
    if let Some((reason, why)) = misfit(i.restore_size, i.target_size, i.allow_expansion, &i.target_class) {
        return copy(reason, why);
    }
    Choice { strategy: Strategy::Snapshot, fallback: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(strategy: Option<&str>) -> Inputs {
        Inputs {
            profile_strategy: strategy.map(str::to_string),
            source_class: "fast".into(),
            target_class: "fast".into(),
            source_provisioner: "csi.example.com".into(),
            target_provisioner: "csi.example.com".into(),
            source_block: true,
            target_block: true,
            source_size: 1 << 30,
            target_size: 1 << 30,
            allow_expansion: false,
            snapshot_class: Some("snaps".into()),
        }
    }

    #[test]
    fn the_profile_asks_and_the_driver_decides() {
        assert_eq!(choose(&inputs(Some("csi-clone"))).strategy, Strategy::CsiClone);
        assert_eq!(choose(&inputs(Some("copy"))), Choice { strategy: Strategy::Copy, fallback: None });
        assert_eq!(choose(&inputs(None)).strategy, Strategy::Snapshot);
        let no_class = Inputs { snapshot_class: None, ..inputs(Some("snapshot")) };
        assert_eq!(choose(&no_class).fallback.unwrap().0, "NoVolumeSnapshotClass");
        // CDI's default without a snapshot class is a plain copy, not a fallback worth a warning.
        assert_eq!(choose(&Inputs { snapshot_class: None, ..inputs(None) }).fallback, None);
    }

    #[test]
    fn a_smart_clone_the_driver_cannot_make_falls_back_to_a_copy_with_cdis_reason() {
        let reason = |i: Inputs| choose(&i).fallback.map(|f| f.0);
        let csi = || inputs(Some("csi-clone"));
        assert_eq!(reason(Inputs { target_class: "slow".into(), ..csi() }), Some("IncompatibleStorageClasses"));
        assert_eq!(reason(Inputs { target_provisioner: "other".into(), ..csi() }), Some("IncompatibleProvisioners"));
        assert_eq!(reason(Inputs { target_block: false, ..csi() }), Some("IncompatibleVolumeModes"));
        assert_eq!(reason(Inputs { target_size: 2 << 30, ..csi() }), Some("NoVolumeExpansion"));
        assert_eq!(reason(Inputs { target_size: 2 << 30, allow_expansion: true, ..csi() }), None);
        // A snapshot may be restored into another class of the same driver.
        assert_eq!(reason(Inputs { target_class: "slow".into(), ..inputs(Some("snapshot")) }), None);
    }

    #[test]
    fn a_snapshot_the_target_cannot_restore_is_copied_with_cdis_reason() {
        let fits = RestoreInputs {
            driver: "csi.example.com".into(),
            target_provisioner: "csi.example.com".into(),
            target_class: "fast".into(),
            source_block: Some(false),
            target_block: false,
            restore_size: 1 << 30,
            target_size: 1 << 30,
            allow_expansion: false,
        };
        assert_eq!(choose_restore(&fits), Choice { strategy: Strategy::Snapshot, fallback: None });
        let reason = |i: RestoreInputs| choose_restore(&i).fallback.map(|f| f.0);
        assert_eq!(
            reason(RestoreInputs { target_provisioner: "other".into(), ..fits.clone() }),
            Some("NoProvisionerMatch")
        );
        assert_eq!(reason(RestoreInputs { target_block: true, ..fits.clone() }), Some("IncompatibleVolumeModes"));
        // A snapshot that does not say its mode is left to the driver.
        assert_eq!(reason(RestoreInputs { source_block: None, target_block: true, ..fits.clone() }), None);
        assert_eq!(reason(RestoreInputs { target_size: 1 << 20, ..fits.clone() }), Some("IncompatibleSize"));
        assert_eq!(reason(RestoreInputs { target_size: 2 << 30, ..fits.clone() }), Some("NoVolumeExpansion"));
        assert_eq!(reason(RestoreInputs { target_size: 2 << 30, allow_expansion: true, ..fits }), None);
    }
}
