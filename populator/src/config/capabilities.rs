//! What CDI knows about storage provisioners, as data: the access and volume modes their
//! claims support (a StorageProfile's `claimPropertySets` when its spec says nothing), the
//! clone strategy and the DataImportCron source format they do best.
//!
//! Keys are provisioner names, some qualified by the StorageClass's parameters
//! (`csi.trident.netapp.io/ontap-nas`); [`provisioner_key`] makes the key of a class. The
//! entries are CDI's (its `storagecapabilities` table), plus the provisioners marked
//! "cdi-rs" that CDI leaves to the admin.

use std::collections::BTreeMap;

use crate::api::ClaimPropertySet;
use crate::api::names::profile::{clone_strategy, source_format};

/// A volume mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeMode {
    Filesystem,
    Block,
}

impl VolumeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeMode::Filesystem => "Filesystem",
            VolumeMode::Block => "Block",
        }
    }

    /// `None` for anything but `Filesystem` and `Block`.
    pub fn parse(text: &str) -> Option<VolumeMode> {
        match text {
            "Filesystem" => Some(VolumeMode::Filesystem),
            "Block" => Some(VolumeMode::Block),
            _ => None,
        }
    }
}

/// An access mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// One supported combination; it becomes one claim property set.
type Capability = (AccessMode, VolumeMode);

use AccessMode::{ReadOnlyMany as ROX, ReadWriteMany as RWX, ReadWriteOnce as RWO};
use VolumeMode::{Block as BLOCK, Filesystem as FILE};

const RWO_FILE: &[Capability] = &[(RWO, FILE)];
const RWX_FILE: &[Capability] = &[(RWX, FILE)];
const RWO_BLOCK: &[Capability] = &[(RWO, BLOCK)];
const RWX_FILE_RWO_FILE: &[Capability] = &[(RWX, FILE), (RWO, FILE)];
const RWO_BLOCK_AND_FILE: &[Capability] = &[(RWO, BLOCK), (RWO, FILE)];
const RWX_BLOCK_RWO_ANY: &[Capability] = &[(RWX, BLOCK), (RWO, BLOCK), (RWO, FILE)];
const ALL_BUT_RWX_FILE: &[Capability] = &[(RWX, BLOCK), (RWO, BLOCK), (RWO, FILE), (ROX, BLOCK), (ROX, FILE)];
const ALL_FILE: &[Capability] = &[(RWX, FILE), (RWO, FILE), (ROX, FILE)];
const DELL_BLOCK: &[Capability] = &[(RWX, BLOCK), (RWO, BLOCK), (RWO, FILE), (ROX, BLOCK)];
const ALL: &[Capability] = &[(RWX, BLOCK), (RWX, FILE), (RWO, BLOCK), (RWO, FILE)];

/// The provisioner of the embedded test cluster (e2e/src/cluster.rs): filesystem volumes on
/// directories, block volumes on loop devices, one node each.
pub const EMBEDDED_CLUSTER_PROVISIONER: &str = "local.e2e.cdi.kubevirt.io";

/// Supported claim properties by provisioner key, preferred first.
const CAPABILITIES: &[(&str, &[Capability])] = &[
    // cdi-rs: the embedded test cluster's provisioner.
    (EMBEDDED_CLUSTER_PROVISIONER, &[(RWO, FILE), (RWO, BLOCK)]),
    // cdi-rs: Rancher's local-path provisioner (k3s, kind): node-local directories.
    ("rancher.io/local-path", RWO_FILE),
    // hostpath-provisioner
    ("kubevirt.io.hostpath-provisioner", RWO_FILE),
    ("kubevirt.io/hostpath-provisioner", RWO_FILE),
    ("k8s.io/minikube-hostpath", RWO_FILE),
    // NFS
    ("nfs.csi.k8s.io", RWX_FILE),
    ("k8s-sigs.io/nfs-subdir-external-provisioner", RWX_FILE),
    // Ceph RWX_BLOCK_RWO_ANY
    ("kubernetes.io/rbd", RWX_BLOCK_RWO_ANY),
    ("rbd.csi.ceph.com", RWX_BLOCK_RWO_ANY),
    ("rook-ceph.rbd.csi.ceph.com", RWX_BLOCK_RWO_ANY),
    ("openshift-storage.rbd.csi.ceph.com", RWX_BLOCK_RWO_ANY),
    // CephFS
    ("cephfs.csi.ceph.com", RWX_FILE_RWO_FILE),
    ("rook-ceph.cephfs.csi.ceph.com", RWX_FILE_RWO_FILE),
    ("openshift-storage.cephfs.csi.ceph.com", RWX_FILE_RWO_FILE),
    // LINSTOR
    ("linstor.csi.linbit.com", ALL_BUT_RWX_FILE),
    // Dell
    ("csi-unity.dellemc.com", ALL_BUT_RWX_FILE),
    ("csi-unity.dellemc.com/nfs", ALL_FILE),
    ("csi-vxflexos.dellemc.com", ALL_BUT_RWX_FILE),
    ("csi-vxflexos.dellemc.com/nfs", ALL_FILE),
    ("csi-isilon.dellemc.com", ALL_FILE),
    ("csi-powermax.dellemc.com", DELL_BLOCK),
    ("csi-powermax.dellemc.com/nfs", ALL_FILE),
    ("csi-powerstore.dellemc.com", DELL_BLOCK),
    ("csi-powerstore.dellemc.com/nfs", ALL_FILE),
    // StorageOS
    ("kubernetes.io/storageos", RWO_FILE),
    ("storageos", RWO_FILE),
    // AWS EBS and EFS
    ("kubernetes.io/aws-ebs", RWO_BLOCK),
    ("ebs.csi.aws.com", RWO_BLOCK),
    ("ebs.csi.aws.com/io1", RWO_BLOCK),
    ("ebs.csi.aws.com/io2", RWX_BLOCK_RWO_ANY),
    ("ebs.csi.aws.com/gp", RWO_BLOCK),
    ("efs.csi.aws.com", RWX_FILE_RWO_FILE),
    // Azure
    ("kubernetes.io/azure-disk", RWO_BLOCK),
    ("disk.csi.azure.com", RWO_BLOCK),
    ("kubernetes.io/azure-file", RWX_FILE),
    ("file.csi.azure.com", RWX_FILE),
    // GCE persistent disk
    ("kubernetes.io/gce-pd", RWO_BLOCK),
    ("pd.csi.storage.gke.io", RWO_BLOCK),
    ("pd.csi.storage.gke.io/hyperdisk", RWX_BLOCK_RWO_ANY),
    // Hitachi, HPE, IBM
    ("hspc.csi.hitachi.com", RWX_BLOCK_RWO_ANY),
    ("csi.hpe.com", RWX_BLOCK_RWO_ANY),
    ("spectrumscale.csi.ibm.com", RWX_FILE_RWO_FILE),
    ("block.csi.ibm.com", RWX_BLOCK_RWO_ANY),
    ("vpc.block.csi.ibm.io", RWO_BLOCK_AND_FILE),
    // Portworx
    ("kubernetes.io/portworx-volume/nfs", RWX_FILE_RWO_FILE),
    ("kubernetes.io/portworx-volume", ALL),
    ("pxd.portworx.com/nfs", RWX_FILE_RWO_FILE),
    ("pxd.portworx.com", ALL),
    ("pxd.portworx.com/pure_block", RWX_BLOCK_RWO_ANY),
    ("pxd.portworx.com/pure_fa_file", RWX_FILE_RWO_FILE),
    // NetApp Trident
    ("csi.trident.netapp.io/ontap-nas", RWX_FILE_RWO_FILE),
    ("csi.trident.netapp.io/ontap-san", &[(RWX, BLOCK)]),
    ("csi.trident.netapp.io/gcnv-flex", RWX_FILE_RWO_FILE),
    // TopoLVM
    ("topolvm.cybozu.com", RWO_BLOCK_AND_FILE),
    ("topolvm.io", RWO_BLOCK_AND_FILE),
    // OpenStack
    ("cinder.csi.openstack.org", RWO_BLOCK_AND_FILE),
    ("manila.csi.openstack.org", RWX_FILE),
    // oVirt
    ("csi.ovirt.org", RWO_BLOCK_AND_FILE),
    // Infinidat
    ("infinibox-csi-driver/iscsiorfibrechannel", RWX_BLOCK_RWO_ANY),
    ("infinibox-csi-driver/nvme", RWX_BLOCK_RWO_ANY),
    ("infinibox-csi-driver/nfs", RWX_FILE_RWO_FILE),
    // vSphere
    ("csi.vsphere.vmware.com", RWO_BLOCK_AND_FILE),
    ("csi.vsphere.vmware.com/nfs", &[(RWX, FILE), (RWO, BLOCK), (RWO, FILE)]),
    // Huawei
    ("csi.huawei.com", ALL_BUT_RWX_FILE),
    ("csi.huawei.com/nfs", ALL_FILE),
    // KubeSAN
    ("kubesan.gitlab.io", &[(RWX, BLOCK), (ROX, BLOCK), (RWO, BLOCK), (RWO, FILE)]),
    // Longhorn
    ("driver.longhorn.io", RWO_BLOCK),
    ("driver.longhorn.io/migratable", &[(RWX, BLOCK), (RWO, BLOCK)]),
    ("driver.longhorn.io/nfs", RWX_FILE_RWO_FILE),
    ("driver.longhorn.io/fs", RWO_FILE),
    // Oracle Cloud
    ("blockvolume.csi.oraclecloud.com", RWX_BLOCK_RWO_ANY),
    // Synology
    ("csi.san.synology.com/iscsi", RWX_BLOCK_RWO_ANY),
    ("csi.san.synology.com/nfs", RWX_FILE_RWO_FILE),
    ("csi.san.synology.com/smb", RWX_FILE_RWO_FILE),
];

/// The clone strategy a provisioner does best, where it is not "snapshot if the driver has a
/// VolumeSnapshotClass, else copy".
const CLONE_STRATEGIES: &[(&str, &str)] = &[
    ("csi-vxflexos.dellemc.com", clone_strategy::CSI_CLONE),
    ("csi-isilon.dellemc.com", clone_strategy::CSI_CLONE),
    ("csi-powermax.dellemc.com", clone_strategy::CSI_CLONE),
    ("csi-powerstore.dellemc.com", clone_strategy::COPY),
    ("hspc.csi.hitachi.com", clone_strategy::CSI_CLONE),
    ("csi.hpe.com", clone_strategy::CSI_CLONE),
    ("spectrumscale.csi.ibm.com", clone_strategy::CSI_CLONE),
    ("block.csi.ibm.com", clone_strategy::CSI_CLONE),
    ("vpc.block.csi.ibm.io", clone_strategy::COPY),
    ("rbd.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("rook-ceph.rbd.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("openshift-storage.rbd.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("cephfs.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("rook-ceph.cephfs.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("openshift-storage.cephfs.csi.ceph.com", clone_strategy::CSI_CLONE),
    ("pxd.portworx.com/nfs", clone_strategy::CSI_CLONE),
    ("pxd.portworx.com", clone_strategy::CSI_CLONE),
    ("topolvm.cybozu.com", clone_strategy::COPY),
    ("topolvm.io", clone_strategy::COPY),
    ("infinibox-csi-driver/iscsiorfibrechannel", clone_strategy::CSI_CLONE),
    ("infinibox-csi-driver/nvme", clone_strategy::CSI_CLONE),
    ("infinibox-csi-driver/nfs", clone_strategy::CSI_CLONE),
    ("csi.trident.netapp.io/ontap-nas", clone_strategy::SNAPSHOT),
    ("csi.trident.netapp.io/ontap-san", clone_strategy::SNAPSHOT),
    ("csi.trident.netapp.io/gcnv-flex", clone_strategy::SNAPSHOT),
    ("kubesan.gitlab.io", clone_strategy::CSI_CLONE),
    ("pd.csi.storage.gke.io", clone_strategy::SNAPSHOT),
    ("pd.csi.storage.gke.io/hyperdisk", clone_strategy::SNAPSHOT),
    ("csi.san.synology.com/iscsi", clone_strategy::CSI_CLONE),
    ("csi.san.synology.com/nfs", clone_strategy::CSI_CLONE),
    ("csi.san.synology.com/smb", clone_strategy::CSI_CLONE),
    ("blockvolume.csi.oraclecloud.com", clone_strategy::CSI_CLONE),
];

/// Provisioners whose DataImportCron sources scale better as one VolumeSnapshot.
const SNAPSHOT_SOURCE_FORMAT: &[&str] = &[
    "rook-ceph.rbd.csi.ceph.com",
    "openshift-storage.rbd.csi.ceph.com",
    "csi.trident.netapp.io/ontap-nas",
    "csi.trident.netapp.io/ontap-san",
    "csi.trident.netapp.io/gcnv-flex",
    "pd.csi.storage.gke.io",
    "pd.csi.storage.gke.io/hyperdisk",
];

/// A key no table entry has: the class's parameters name no variant CDI knows.
const UNKNOWN: &str = "UNKNOWN";

/// The table key of a class: its provisioner, qualified by the parameters that change what
/// the driver can do (protocol, backend, disk type).
pub fn provisioner_key(provisioner: &str, parameters: &BTreeMap<String, String>) -> String {
    let param = |k: &str| parameters.get(k).map(String::as_str).unwrap_or_default();
    let fs_type = param("csi.storage.k8s.io/fstype").to_ascii_lowercase();
    let nfs_mount = || {
        let opts: Vec<&str> = param("sharedv4_mount_options").split(',').collect();
        opts.contains(&"vers=3.0") && opts.contains(&"nolock")
    };
    let qualified = |suffix: &str| format!("{provisioner}/{suffix}");
    match provisioner {
        "kubernetes.io/portworx-volume" if nfs_mount() => qualified("nfs"),
        "pxd.portworx.com" => match parameters.get("backend").map(String::as_str) {
            Some(b @ ("pure_block" | "pure_fa_file")) => qualified(b),
            Some(_) => provisioner.to_string(),
            None if nfs_mount() => qualified("nfs"),
            None => provisioner.to_string(),
        },
        "csi.trident.netapp.io" => {
            let backend = param("backendType");
            let selector: Vec<&str> = param("selector").split([';', ',']).map(str::trim).collect();
            if backend.starts_with("ontap-nas") {
                qualified("ontap-nas")
            } else if backend.starts_with("ontap-san") {
                qualified("ontap-san")
            } else if backend == "google-cloud-netapp-volumes" && selector.contains(&"performance=flex") {
                qualified("gcnv-flex")
            } else {
                UNKNOWN.into()
            }
        }
        "infinibox-csi-driver" => match param("storage_protocol") {
            "iscsi" | "fc" => qualified("iscsiorfibrechannel"),
            "nvme" => qualified("nvme"),
            "nfs" | "nfs_treeq" => qualified("nfs"),
            _ => UNKNOWN.into(),
        },
        "csi.vsphere.vmware.com" if fs_type.contains("nfs") => qualified("nfs"),
        "csi-unity.dellemc.com" if param("protocol").eq_ignore_ascii_case("nfs") => qualified("nfs"),
        "csi-powerstore.dellemc.com" | "csi-vxflexos.dellemc.com" | "csi-powermax.dellemc.com" if fs_type == "nfs" => {
            qualified("nfs")
        }
        "csi.huawei.com" if param("protocol") == "nfs" => qualified("nfs"),
        "driver.longhorn.io" if param("migratable") == "true" => qualified("migratable"),
        "driver.longhorn.io" if !param("nfsOptions").is_empty() => qualified("nfs"),
        "driver.longhorn.io" if !param("fsType").is_empty() => qualified("fs"),
        "ebs.csi.aws.com" => match param("type") {
            "io1" => qualified("io1"),
            "io2" => qualified("io2"),
            "gp2" | "gp3" => qualified("gp"),
            _ => provisioner.to_string(),
        },
        "pd.csi.storage.gke.io" => match param("type") {
            "hyperdisk-balanced" | "hyperdisk-balanced-high-availability" => qualified("hyperdisk"),
            _ => provisioner.to_string(),
        },
        "csi.san.synology.com" => match param("protocol") {
            "iscsi" | "" => qualified("iscsi"),
            "smb" => qualified("smb"),
            "nfs" | "nfs_treeq" => qualified("nfs"),
            _ => UNKNOWN.into(),
        },
        _ => provisioner.to_string(),
    }
}

/// The claim property sets of a known key, one per capability (one access mode each), in
/// the table's order.
pub fn claim_property_sets(key: &str) -> Option<Vec<ClaimPropertySet>> {
    let (_, caps) = CAPABILITIES.iter().find(|(k, _)| *k == key)?;
    Some(caps.iter().map(|&(access, volume)| property_set(access.as_str(), volume.as_str())).collect())
}

/// The set for one access mode and one volume mode.
pub fn property_set(access_mode: &str, volume_mode: &str) -> ClaimPropertySet {
    ClaimPropertySet { access_modes: vec![access_mode.to_string()], volume_mode: Some(volume_mode.to_string()) }
}

/// The clone strategy the table advises for a key.
pub fn clone_strategy(key: &str) -> Option<&'static str> {
    CLONE_STRATEGIES.iter().find(|(k, _)| *k == key).map(|(_, s)| *s)
}

/// The DataImportCron source format the table advises for a key.
pub fn source_format(key: &str) -> Option<&'static str> {
    SNAPSHOT_SOURCE_FORMAT.contains(&key).then_some(source_format::SNAPSHOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_are_unique_and_every_advice_names_a_known_key() {
        let mut keys: Vec<&str> = CAPABILITIES.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a provisioner key appears twice");
        for (key, _) in CLONE_STRATEGIES {
            assert!(keys.contains(key), "{key} has a clone strategy but no capabilities");
        }
        for key in SNAPSHOT_SOURCE_FORMAT {
            assert!(keys.contains(key), "{key} has a source format but no capabilities");
        }
        assert!(CAPABILITIES.iter().all(|(_, caps)| !caps.is_empty()));
    }

    #[test]
    fn known_provisioners_give_one_set_per_capability_in_order() {
        let rbd = claim_property_sets("rbd.csi.ceph.com").unwrap();
        assert_eq!(
            rbd,
            vec![
                property_set("ReadWriteMany", "Block"),
                property_set("ReadWriteOnce", "Block"),
                property_set("ReadWriteOnce", "Filesystem"),
            ]
        );
        assert_eq!(claim_property_sets("kubevirt.io/hostpath-provisioner").unwrap().len(), 1);
        let ours = claim_property_sets(EMBEDDED_CLUSTER_PROVISIONER).unwrap();
        assert_eq!(ours[0], property_set("ReadWriteOnce", "Filesystem"));
        assert_eq!(claim_property_sets("example.com/unheard-of"), None);
        assert_eq!(claim_property_sets(UNKNOWN), None);
    }

    #[test]
    fn parameters_qualify_the_key_as_cdi_does() {
        let none = BTreeMap::new();
        assert_eq!(provisioner_key("rbd.csi.ceph.com", &none), "rbd.csi.ceph.com");
        assert_eq!(provisioner_key("ebs.csi.aws.com", &params(&[("type", "gp3")])), "ebs.csi.aws.com/gp");
        assert_eq!(provisioner_key("ebs.csi.aws.com", &params(&[("type", "sc1")])), "ebs.csi.aws.com");
        assert_eq!(
            provisioner_key("csi.trident.netapp.io", &params(&[("backendType", "ontap-nas-economy")])),
            "csi.trident.netapp.io/ontap-nas"
        );
        assert_eq!(
            provisioner_key(
                "csi.trident.netapp.io",
                &params(&[("backendType", "google-cloud-netapp-volumes"), ("selector", "a=b; performance=flex")])
            ),
            "csi.trident.netapp.io/gcnv-flex"
        );
        assert_eq!(provisioner_key("csi.trident.netapp.io", &none), UNKNOWN);
        assert_eq!(
            provisioner_key("pxd.portworx.com", &params(&[("sharedv4_mount_options", "vers=3.0,nolock")])),
            "pxd.portworx.com/nfs"
        );
        assert_eq!(
            provisioner_key("pxd.portworx.com", &params(&[("backend", "pure_block")])),
            "pxd.portworx.com/pure_block"
        );
        assert_eq!(
            provisioner_key("csi.vsphere.vmware.com", &params(&[("csi.storage.k8s.io/fstype", "NFS4")])),
            "csi.vsphere.vmware.com/nfs"
        );
        assert_eq!(
            provisioner_key("driver.longhorn.io", &params(&[("migratable", "true"), ("fsType", "ext4")])),
            "driver.longhorn.io/migratable"
        );
        assert_eq!(provisioner_key("csi.san.synology.com", &none), "csi.san.synology.com/iscsi");
    }

    #[test]
    fn advice_for_clone_strategy_and_source_format() {
        assert_eq!(clone_strategy("rook-ceph.rbd.csi.ceph.com"), Some(clone_strategy::CSI_CLONE));
        assert_eq!(clone_strategy("topolvm.io"), Some(clone_strategy::COPY));
        assert_eq!(clone_strategy(EMBEDDED_CLUSTER_PROVISIONER), None);
        assert_eq!(source_format("pd.csi.storage.gke.io"), Some(source_format::SNAPSHOT));
        assert_eq!(source_format("topolvm.io"), None);
    }
}
