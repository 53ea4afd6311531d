//! Well-known names, each defined once: API group and kinds, the annotations CDI keeps on
//! PVCs, labels, event reasons, condition types and reasons, Secret keys.
//!
//! They are CDI's, because tools written for CDI (KubeVirt, Forklift, dashboards, scripts)
//! read them. Each module lists first what the populate controller (issue 5) uses; names CDI
//! defines that nothing here acts on yet sit in a `reserved` submodule, so that later work
//! reuses the right spelling instead of inventing one.

/// The API group and version of our kinds.
pub mod api {
    /// API group of CDI's kinds.
    pub const GROUP: &str = "cdi.kubevirt.io";
    /// The one served (and stored) version.
    pub const VERSION: &str = "v1beta1";
    /// `apiVersion` of our objects.
    pub const API_VERSION: &str = "cdi.kubevirt.io/v1beta1";
}

/// Kinds: ours, and those a `dataSourceRef` or a clone source names.
pub mod kinds {
    /// A PVC and where its data comes from.
    pub const DATA_VOLUME: &str = "DataVolume";
    /// A named golden volume.
    pub const DATA_SOURCE: &str = "DataSource";
    /// Import populator source.
    pub const VOLUME_IMPORT_SOURCE: &str = "VolumeImportSource";
    /// Upload populator source.
    pub const VOLUME_UPLOAD_SOURCE: &str = "VolumeUploadSource";
    /// Clone populator source.
    pub const VOLUME_CLONE_SOURCE: &str = "VolumeCloneSource";
    /// A clone source kind (core group).
    pub const PERSISTENT_VOLUME_CLAIM: &str = "PersistentVolumeClaim";
    /// A clone source kind (group [`SNAPSHOT_GROUP`]).
    pub const VOLUME_SNAPSHOT: &str = "VolumeSnapshot";
    /// API group of `VolumeSnapshot`.
    pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
    /// What CDI knows about a StorageClass (cluster-scoped, one per class, same name).
    pub const STORAGE_PROFILE: &str = "StorageProfile";
    /// CDI's cluster-wide settings (cluster-scoped singleton).
    pub const CDI_CONFIG: &str = "CDIConfig";
    /// CDI's install object (cluster-scoped).
    pub const CDI: &str = "CDI";
    /// The snapshot classes (group [`SNAPSHOT_GROUP`], version `v1`).
    pub const VOLUME_SNAPSHOT_CLASS: &str = "VolumeSnapshotClass";
    /// Plural of [`VOLUME_SNAPSHOT_CLASS`].
    pub const VOLUME_SNAPSHOT_CLASSES: &str = "volumesnapshotclasses";
}

/// Names of CDI's cluster-wide objects.
pub mod singletons {
    /// The one CDIConfig.
    pub const CDI_CONFIG: &str = "config";
    /// The CDI object the populator creates when there is none.
    pub const CDI: &str = "cdi";
}

/// Annotation keys. Unless said otherwise they sit on the target PVC (the claim the user
/// created) and/or the prime PVC (`prime-<target uid>`, the claim actually filled).
pub mod annotations {
    // ---- scheduling inputs (read) ----

    /// Set by the scheduler on a WaitForFirstConsumer claim: the node its consumer will run
    /// on. Read on the target; copied to the prime PVC.
    pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
    /// Present (any value) on a target under WaitForFirstConsumer: populate now, without
    /// waiting for a consumer. The prime PVC always carries it (value `""`).
    pub const BIND_IMMEDIATE_REQUESTED: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
    /// On a claim provisioned by a CSI driver through CSI migration of an in-tree plugin:
    /// such claims are populated, other in-tree (`kubernetes.io/*`) ones are not.
    pub const MIGRATED_TO: &str = "pv.kubernetes.io/migrated-to";
    /// `"true"`: keep the prime PVC (Lost) after success, for debugging.
    pub const POD_RETAIN_AFTER_COMPLETION: &str = "cdi.kubevirt.io/storage.pod.retainAfterCompletion";

    // ---- what is being populated (written on the prime PVC, as CDI does) ----

    /// The source kind, e.g. `VolumeImportSource`.
    pub const POPULATOR_KIND: &str = "cdi.kubevirt.io/storage.populator.kind";
    /// `http`, `s3`, `gcs`, `registry`, `imageio`, `vddk`, or `none` (blank); see
    /// [`super::values::import_source`].
    pub const IMPORT_SOURCE: &str = "cdi.kubevirt.io/storage.import.source";
    /// The source URL.
    pub const IMPORT_ENDPOINT: &str = "cdi.kubevirt.io/storage.import.endpoint";
    /// Name of the credentials Secret.
    pub const IMPORT_SECRET_NAME: &str = "cdi.kubevirt.io/storage.import.secretName";
    /// Name of the CA ConfigMap.
    pub const IMPORT_CERT_CONFIG_MAP: &str = "cdi.kubevirt.io/storage.import.certConfigMap";
    /// `"true"` when TLS verification is off.
    pub const IMPORT_INSECURE_SKIP_VERIFY: &str = "cdi.kubevirt.io/storage.import.insecureSkipVerify";
    /// The expected `algorithm:hex` checksum.
    pub const IMPORT_CHECKSUM: &str = "cdi.kubevirt.io/storage.import.checksum";
    /// Prefix of `<prefix>.<index>` keys, one per extra header; see [`extra_header`].
    pub const IMPORT_EXTRA_HEADERS: &str = "cdi.kubevirt.io/storage.import.extraHeaders";
    /// Prefix of `<prefix>.<index>` keys, one per secret header Secret name.
    pub const IMPORT_SECRET_EXTRA_HEADERS: &str = "cdi.kubevirt.io/storage.import.secretExtraHeaders";
    /// Registry pull method, `pod` or `node`.
    pub const IMPORT_REGISTRY_METHOD: &str = "cdi.kubevirt.io/storage.import.registryImportMethod";
    /// `"true"` when the registry endpoint is an (OpenShift) image stream name.
    pub const IMPORT_REGISTRY_IMAGE_STREAM: &str = "cdi.kubevirt.io/storage.import.registryImageStream";
    /// Which architecture of a multi-platform registry image to import.
    pub const IMPORT_REGISTRY_ARCHITECTURE: &str = "cdi.kubevirt.io/storage.import.registryImageArchitecture";
    /// `kubevirt` or `archive`.
    pub const CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
    /// `"true"`/`"false"`: whether preallocation was asked for.
    pub const PREALLOCATION_REQUESTED: &str = "cdi.kubevirt.io/storage.preallocation.requested";

    // ---- DataVolumes ----

    /// On a DataVolume, `"true"`: a PVC of the same name that already exists is taken over
    /// as already populated instead of refused (KubeVirt sets it on every DataVolume it
    /// creates from `dataVolumeTemplates`).
    pub const ALLOW_CLAIM_ADOPTION: &str = "cdi.kubevirt.io/allowClaimAdoption";
    /// On a PVC: the name of the DataVolume it was populated for (set when adopting one),
    /// so the DataVolume counts it as populated.
    pub const POPULATED_FOR_DATA_VOLUME: &str = "cdi.kubevirt.io/storage.populatedFor";
    /// On a StorageClass, `"true"`: the cluster's default class (Kubernetes').
    pub const DEFAULT_STORAGE_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
    /// On a StorageClass, `"true"`: the default class for VM disks; wins over
    /// [`DEFAULT_STORAGE_CLASS`] for `kubevirt` content.
    pub const DEFAULT_VIRT_STORAGE_CLASS: &str = "storageclass.kubevirt.io/is-default-virt-class";
    /// On a DataVolume's PVC: the DataVolume's UID.
    pub const CREATED_FOR_DATA_VOLUME: &str = "cdi.kubevirt.io/createdForDataVolume";
    /// On a DataVolume's PVC: `spec.priorityClassName` of the DataVolume.
    pub const POD_PRIORITY_CLASS_NAME: &str = "cdi.kubevirt.io/storage.pod.priorityclassname";
    /// On a DataVolume's PVC: `spec.serviceAccountName` of the DataVolume.
    pub const POD_SERVICE_ACCOUNT_NAME: &str = "cdi.kubevirt.io/storage.pod.serviceAccountName";

    // ---- status outputs (written on the target PVC, mirrored from the prime PVC) ----

    /// Progress, `"NN.NN%"`, `"N/A"` before it is known, `"100.0%"` when done; see
    /// [`super::values::progress`].
    pub const POPULATOR_PROGRESS: &str = "cdi.kubevirt.io/storage.populator.progress";
    /// Name of the prime PVC.
    pub const POPULATOR_PVC_PRIME: &str = "cdi.kubevirt.io/storage.populator.pvcPrime";
    /// A core PodPhase (`Pending`, `Running`, `Succeeded`, `Failed`) for the transfer;
    /// `Succeeded` is what downstream controllers wait for.
    pub const POD_PHASE: &str = "cdi.kubevirt.io/storage.pod.phase";
    /// `"true"`/`"false"`: the transfer is up and running.
    pub const POD_READY: &str = "cdi.kubevirt.io/storage.pod.ready";
    /// Number of retries so far (a DataVolume shows it as `status.restartCount`).
    pub const POD_RESTARTS: &str = "cdi.kubevirt.io/storage.pod.restarts";
    /// `"false"` when the transfer cannot be scheduled (DataVolume reason `Unschedulable`).
    pub const POD_SCHEDULABLE: &str = "cdi.kubevirt.io/storage.pod.schedulable";
    /// On a golden PVC (one imported in place from its `storage.import.*` annotations, as
    /// the 2022 design note has it): where the import stands; see
    /// [`super::values::import_status`].
    pub const IMPORT_STATUS: &str = "cdi.kubevirt.io/storage.import.status";
    /// `"true"` after a terminal failure: no retry until the spec changes.
    pub const IMPORT_FATAL_ERROR: &str = "cdi.kubevirt.io/storage.import.fatalError";
    /// `"true"` once preallocation was actually applied.
    pub const PREALLOCATION_APPLIED: &str = "cdi.kubevirt.io/storage.preallocation";
    /// `"true"`/`"false"`: the DataVolume `Running` condition's status.
    pub const RUNNING_CONDITION: &str = "cdi.kubevirt.io/storage.condition.running";
    /// The `Running` condition's message.
    pub const RUNNING_CONDITION_MESSAGE: &str = "cdi.kubevirt.io/storage.condition.running.message";
    /// The `Running` condition's reason; see [`super::condition_reasons`].
    pub const RUNNING_CONDITION_REASON: &str = "cdi.kubevirt.io/storage.condition.running.reason";
    /// `"true"`/`"false"`: overrides the DataVolume `Bound` condition's status.
    pub const BOUND_CONDITION: &str = "cdi.kubevirt.io/storage.condition.bound";
    /// The `Bound` condition's message.
    pub const BOUND_CONDITION_MESSAGE: &str = "cdi.kubevirt.io/storage.condition.bound.message";
    /// The `Bound` condition's reason.
    pub const BOUND_CONDITION_REASON: &str = "cdi.kubevirt.io/storage.condition.bound.reason";

    /// The key of the `index`th extra header (`<IMPORT_EXTRA_HEADERS>.<index>`).
    pub fn extra_header(index: usize) -> String {
        format!("{IMPORT_EXTRA_HEADERS}.{index}")
    }

    /// The key of the `index`th secret header (`<IMPORT_SECRET_EXTRA_HEADERS>.<index>`).
    pub fn secret_extra_header(index: usize) -> String {
        format!("{IMPORT_SECRET_EXTRA_HEADERS}.{index}")
    }

    // ---- on StorageClasses and VolumeSnapshotClasses (read) ----

    /// On a StorageClass: its clone strategy (`copy`, `snapshot`, `csi-clone`), below a
    /// StorageProfile's spec and above the provisioner table.
    pub const CLONE_STRATEGY: &str = "cdi.kubevirt.io/clone-strategy";
    /// `"true"` on the preferred VolumeSnapshotClass of a driver.
    pub const DEFAULT_SNAPSHOT_CLASS: &str = "snapshot.storage.kubernetes.io/is-default-class";

    /// CDI annotations nothing acts on yet (DataVolumes, registry/VDDK/ImageIO sources,
    /// multi-stage imports, clones, uploads).
    pub mod reserved {
        /// On a DataVolume: `"true"`/`"false"` forces the populator path on or off.
        pub const USE_POPULATOR: &str = "cdi.kubevirt.io/storage.usePopulator";
        /// Clone across namespaces: the source's namespace (on the target PVC).
        pub const DATA_SOURCE_NAMESPACE: &str = "cdi.kubevirt.io/dataSourceNamespace";
        /// ImageIO disk id.
        pub const IMPORT_DISK_ID: &str = "cdi.kubevirt.io/storage.import.diskId";
        /// VDDK VM UUID.
        pub const IMPORT_UUID: &str = "cdi.kubevirt.io/storage.import.uuid";
        /// VDDK backing file.
        pub const IMPORT_BACKING_FILE: &str = "cdi.kubevirt.io/storage.import.backingFile";
        /// VDDK host thumbprint.
        pub const IMPORT_VDDK_THUMBPRINT: &str = "cdi.kubevirt.io/storage.import.vddk.thumbprint";
        /// VDDK library image.
        pub const VDDK_INIT_IMAGE_URL: &str = "cdi.kubevirt.io/storage.pod.vddk.initimageurl";
        /// VDDK extra-args ConfigMap.
        pub const VDDK_EXTRA_ARGS: &str = "cdi.kubevirt.io/storage.pod.vddk.extraargs";
        /// Multi-stage: previous checkpoint.
        pub const CHECKPOINT_PREVIOUS: &str = "cdi.kubevirt.io/storage.checkpoint.previous";
        /// Multi-stage: current checkpoint.
        pub const CHECKPOINT_CURRENT: &str = "cdi.kubevirt.io/storage.checkpoint.current";
        /// Multi-stage: `"true"` on the final checkpoint.
        pub const CHECKPOINT_FINAL: &str = "cdi.kubevirt.io/storage.checkpoint.final";
        /// Multi-stage: all stages copied.
        pub const CHECKPOINT_DONE: &str = "cdi.kubevirt.io/storage.checkpoint.done";
        /// Host-assisted clone: the source side's `Running` condition.
        pub const SOURCE_RUNNING_CONDITION: &str = "cdi.kubevirt.io/storage.condition.source.running";
        /// Clone: the clone phase.
        pub const CLONE_PHASE: &str = "cdi.kubevirt.io/clonePhase";
        /// Clone: the strategy used (`copy`, `snapshot`, `csi-clone`).
        pub const CLONE_TYPE: &str = "cdi.kubevirt.io/cloneType";
        /// Upload: marks an upload target.
        pub const UPLOAD_TARGET: &str = "cdi.kubevirt.io/storage.upload.target";
    }
}

/// Labels.
pub mod labels {
    /// Key of the label CDI puts on everything it creates (prime PVCs, worker pods).
    pub const APP: &str = "app";
    /// Its value.
    pub const APP_CDI: &str = "containerized-data-importer";
    /// Set to `"true"` on prime PVCs: a backup must not capture a half-filled volume.
    pub const EXCLUDE_FROM_BACKUP: &str = "velero.io/exclude-from-backup";
}

/// Annotation values and their formats.
pub mod values {
    /// [`super::annotations::POPULATOR_PROGRESS`] before the total is known.
    pub const PROGRESS_UNKNOWN: &str = "N/A";
    /// [`super::annotations::POPULATOR_PROGRESS`] on success (one decimal, as CDI writes it).
    pub const PROGRESS_DONE: &str = "100.0%";

    /// [`super::annotations::POPULATOR_PROGRESS`] for `percent` done: `"NN.NN%"`. CDI holds
    /// 100 back until the transfer has succeeded, so values at or above 100 read `"99.99%"`
    /// here; write [`PROGRESS_DONE`] on success. Not a number reads [`PROGRESS_UNKNOWN`].
    pub fn progress(percent: f64) -> String {
        if percent.is_nan() {
            return PROGRESS_UNKNOWN.to_owned();
        }
        format!("{:.2}%", percent.clamp(0.0, 99.99))
    }

    /// Values of [`super::annotations::IMPORT_STATUS`].
    pub mod import_status {
        /// Scheduled or running (retries included).
        pub const IN_PROCESS: &str = "In process";
        /// The claim holds the data.
        pub const SUCCESS: &str = "Success";
        /// Terminal: not tried again until the import annotations change.
        pub const FAILED: &str = "Failed";
    }

    /// Values of [`super::annotations::IMPORT_SOURCE`].
    pub mod import_source {
        #![allow(missing_docs)]
        pub const HTTP: &str = "http";
        pub const S3: &str = "s3";
        pub const GCS: &str = "gcs";
        pub const REGISTRY: &str = "registry";
        pub const IMAGEIO: &str = "imageio";
        pub const VDDK: &str = "vddk";
        /// A blank disk.
        pub const NONE: &str = "none";
    }
}

/// Values of StorageProfile fields.
pub mod profile {
    /// Clone strategies (`cloneStrategy`).
    pub mod clone_strategy {
        /// Host-assisted: one mover reads, another writes.
        pub const COPY: &str = "copy";
        /// Through a VolumeSnapshot of the source.
        pub const SNAPSHOT: &str = "snapshot";
        /// The CSI driver's own clone.
        pub const CSI_CLONE: &str = "csi-clone";
    }
    /// DataImportCron source formats (`dataImportCronSourceFormat`).
    pub mod source_format {
        /// Keep the imported PVC.
        pub const PVC: &str = "pvc";
        /// Keep a VolumeSnapshot of it.
        pub const SNAPSHOT: &str = "snapshot";
    }
    /// The provisioner of statically provisioned classes: their claim properties come from
    /// the class's PersistentVolumes.
    pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
}

/// CDIConfig defaults (what `status` shows where `spec` says nothing).
pub mod config_defaults {
    /// Filesystem overhead, global.
    pub const FILESYSTEM_OVERHEAD: &str = "0.06";
    /// Worker containers' CPU limit.
    pub const POD_LIMIT_CPU: &str = "750m";
    /// Worker containers' memory limit.
    pub const POD_LIMIT_MEMORY: &str = "600M";
    /// Worker containers' CPU request.
    pub const POD_REQUEST_CPU: &str = "100m";
    /// Worker containers' memory request.
    pub const POD_REQUEST_MEMORY: &str = "60M";
}

/// `status.phase` of a CDI object (the operator SDK's phases).
pub mod cdi_phases {
    /// CDI is installed and running.
    pub const DEPLOYED: &str = "Deployed";
    /// Being installed.
    pub const DEPLOYING: &str = "Deploying";
    /// Not in effect (CDI's operator says so of every CDI object but the first).
    pub const ERROR: &str = "Error";
}

/// Condition types and reasons of a CDI object (the operator SDK's).
pub mod cdi_conditions {
    /// CDI serves its APIs.
    pub const AVAILABLE: &str = "Available";
    /// An install or upgrade is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong.
    pub const DEGRADED: &str = "Degraded";
    /// Reason of `Available` once deployed.
    pub const DEPLOY_COMPLETED: &str = "DeployCompleted";
    /// Message of `Available` once deployed.
    pub const DEPLOY_COMPLETED_MESSAGE: &str = "Deployment Completed";
}

/// Prime PVC naming.
pub mod prime {
    /// Prefix of the prime PVC's name.
    pub const PVC_PREFIX: &str = "prime-";

    /// `prime-<target uid>`: unique per target, and recomputable after a restart.
    pub fn pvc_name(target_uid: &str) -> String {
        format!("{PVC_PREFIX}{target_uid}")
    }
}

/// Importer pod naming: CDI names the pod that fills a claim `importer-<claim name>`; users
/// and scripts look for it (`kubectl logs importer-…`).
pub mod importer {
    /// Prefix of the importer pod's name.
    pub const POD_PREFIX: &str = "importer-";
    /// The longest pod name that is also a valid label value and DNS label.
    const MAX_NAME: usize = 63;
    /// Bytes of the short hash that keeps a shortened name unique (hex digits).
    const HASH_LEN: usize = 8;

    /// `importer-<claim>`; when that is longer than 63 characters, the claim's name is cut
    /// and a hash of the whole name appended (`importer-<head>-<8 hex>`), so the name is
    /// still unique per claim and recomputable after a restart.
    pub fn pod_name(claim: &str) -> String {
        let full = format!("{POD_PREFIX}{claim}");
        if full.len() <= MAX_NAME {
            return full;
        }
        let keep = MAX_NAME - HASH_LEN - 1;
        // Claim names are ASCII (DNS subdomains); cut at a char boundary all the same, and
        // never end the head with a separator.
        let mut end = keep;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        let head = full[..end].trim_end_matches(['-', '.']);
        format!("{head}-{:08x}", fnv1a32(full.as_bytes()))
    }

    /// FNV-1a, 32 bits: stable across versions and platforms (a std hasher is not).
    fn fnv1a32(bytes: &[u8]) -> u32 {
        bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
    }

    /// The importer pod's emptyDir that the node mover writes the import's log into, and
    /// where the pod's `cdi-mover hold --log` reads it.
    pub const LOG_VOLUME: &str = "cdi-log";
    /// Where the log volume is mounted in the importer pod.
    pub const LOG_MOUNT: &str = "/var/log/cdi";
    /// The log's file name in that volume.
    pub const LOG_FILE: &str = "import.log";
}

/// Keys inside the Secrets a source names.
pub mod secret_keys {
    /// Basic-auth user name (HTTP), access key (S3), registry user.
    pub const ACCESS_KEY_ID: &str = "accessKeyId";
    /// Basic-auth password (HTTP), secret key (S3), registry password.
    pub const SECRET_KEY: &str = "secretKey";
    /// One `"Name: value"` header, in each Secret of `secretExtraHeaders`.
    pub const SECRET_HEADER: &str = "secretHeader";
    /// A GCS service-account key file (CDI mounts the Secret for Google's client library).
    pub const GCS_CREDENTIALS: &str = "credentials.json";
}

/// Event reasons, on the target PVC unless said otherwise.
pub mod event_reasons {
    /// The prime PVC was created.
    pub const CREATED_PVC_PRIME_SUCCESSFULLY: &str = "CreatedPVCPrimeSuccessfully";
    /// Creating the prime PVC failed (warning).
    pub const ERR_CREATING_PVC_PRIME: &str = "ErrCreatingPVCPrime";
    /// The prime PVC was kept (Lost) for debugging (warning, on the prime PVC).
    pub const RETAINED_PVC_PRIME: &str = "RetainedPVCPrime";
    /// The transfer was started and waits to run.
    pub const IMPORT_SCHEDULED: &str = "ImportScheduled";
    /// The transfer is running.
    pub const IMPORT_IN_PROGRESS: &str = "ImportInProgress";
    /// The volume holds the data.
    pub const IMPORT_SUCCEEDED: &str = "ImportSucceeded";
    /// The import failed (warning).
    pub const IMPORT_FAILED: &str = "ImportFailed";
    /// An attempt failed and will be retried (warning; CDI emits it on the prime PVC).
    pub const ERR_IMPORT_FAILED: &str = "ErrImportFailed";
    /// The claim cannot be populated as specified (warning).
    pub const ERR_CLAIM_NOT_VALID: &str = "ErrClaimNotValid";
    /// A PVC or pod could not be created for lack of quota (warning).
    pub const ERR_EXCEEDED_QUOTA: &str = "ErrExceededQuota";
    /// The volume was bound to another claim than the one expected (warning).
    pub const CLAIM_MISBOUND: &str = "ClaimMisbound";
    /// A DataVolume's PVC name is taken by a PVC that is not the DataVolume's.
    pub const ERR_RESOURCE_EXISTS: &str = "ErrResourceExists";
    /// A DataVolume's PVC lost its volume.
    pub const ERR_CLAIM_LOST: &str = "ErrClaimLost";

    /// Reasons for later work (uploads, clones, multi-stage imports).
    pub mod reserved {
        #![allow(missing_docs)]
        /// Multi-stage import waiting for its next checkpoint.
        pub const IMPORT_PAUSED: &str = "ImportPaused";
        pub const UPLOAD_SCHEDULED: &str = "UploadScheduled";
        pub const UPLOAD_READY: &str = "UploadReady";
        pub const UPLOAD_SUCCEEDED: &str = "UploadSucceeded";
        pub const UPLOAD_FAILED: &str = "UploadFailed";
        pub const CLONE_SCHEDULED: &str = "CloneScheduled";
        pub const CLONE_IN_PROGRESS: &str = "CloneInProgress";
        pub const CLONE_SUCCEEDED: &str = "CloneSucceeded";
        pub const CLONE_FAILED: &str = "CloneFailed";
        pub const CLONE_SOURCE_IN_USE: &str = "CloneSourceInUse";
    }
}

/// Condition types of a DataVolume, fed from the PVC annotations above.
pub mod conditions {
    /// The claim is bound.
    pub const BOUND: &str = "Bound";
    /// The data is in place (phase Succeeded).
    pub const READY: &str = "Ready";
    /// The transfer is running.
    pub const RUNNING: &str = "Running";
}

/// Condition reasons (also the values of the `…condition.*.reason` annotations).
pub mod condition_reasons {
    /// `Running` true. CDI's wording, spaces included.
    pub const POD_RUNNING: &str = "Pod is running";
    /// `Running` false: the transfer completed.
    pub const COMPLETED: &str = "Completed";
    /// `Running` false: the transfer failed.
    pub const ERROR: &str = "Error";
    /// `Running` false: the source's digest did not match `checksum`.
    pub const CHECKSUM_ERROR: &str = "ChecksumError";
    /// `Running` false: the transfer cannot be scheduled.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// `Ready` false while the transfer runs.
    pub const TRANSFER_RUNNING: &str = "TransferRunning";
    /// `Bound` true.
    pub const BOUND: &str = "Bound";
    /// `Bound` false: the claim waits for a volume.
    pub const PENDING: &str = "Pending";
    /// `Bound` false: the claim lost its volume.
    pub const CLAIM_LOST: &str = "ClaimLost";
    /// `Bound` false: no claim.
    pub const NOT_FOUND: &str = "NotFound";

    /// Reasons for later work.
    pub mod reserved {
        /// `Running` false: pulling the worker (or registry source) image failed.
        pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
        /// `Bound` false: CDI creates a scratch volume (we never need one).
        pub const CREATING_SCRATCH_SPACE: &str = "CreatingScratchSpace";
    }
}

/// CDI's admission webhooks, as its API server serves them.
pub mod webhooks {
    /// Path of the DataVolume validating webhook.
    pub const DATAVOLUME_VALIDATE_PATH: &str = "/datavolume-validate";
    /// Its name in the `ValidatingWebhookConfiguration`: what a denial quotes
    /// (`admission webhook "…" denied the request: …`).
    pub const DATAVOLUME_VALIDATE: &str = "datavolume-validate.cdi.kubevirt.io";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_formatted_like_cdi_and_never_claims_done_early() {
        assert_eq!(values::progress(0.0), "0.00%");
        assert_eq!(values::progress(45.678), "45.68%");
        assert_eq!(values::progress(100.0), "99.99%");
        assert_eq!(values::progress(-3.0), "0.00%");
        assert_eq!(values::progress(f64::NAN), values::PROGRESS_UNKNOWN);
    }

    #[test]
    fn indexed_header_keys_follow_cdi() {
        assert_eq!(annotations::extra_header(0), "cdi.kubevirt.io/storage.import.extraHeaders.0");
        assert_eq!(annotations::secret_extra_header(2), "cdi.kubevirt.io/storage.import.secretExtraHeaders.2");
        assert_eq!(prime::pvc_name("1234-abcd"), "prime-1234-abcd");
    }

    #[test]
    fn importer_pods_are_named_as_cdi_names_them_and_fit_a_dns_label() {
        assert_eq!(importer::pod_name("disk"), "importer-disk");
        let prime = prime::pvc_name("0b7e4b1c-6d0e-4a39-9f3e-5a1c2d3e4f50");
        assert_eq!(importer::pod_name(&prime), format!("importer-{prime}"));
        let long = "a".repeat(54);
        assert_eq!(importer::pod_name(&long).len(), 63, "exactly at the limit: kept whole");
        let longer = format!("{}-x.y", "b".repeat(70));
        let name = importer::pod_name(&longer);
        assert!(name.len() <= 63 && name.starts_with("importer-bbb"), "{name}");
        assert_eq!(name, importer::pod_name(&longer), "deterministic");
        let other = format!("{}-x.z", "b".repeat(70));
        assert_ne!(name, importer::pod_name(&other), "names differing only past the cut stay apart");
        let tail = name.rsplit('-').next().unwrap();
        assert!(tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    }

    #[test]
    fn group_and_version_agree_with_the_derived_kinds() {
        use crate::api::{DataSource, DataVolume, VolumeCloneSource, VolumeImportSource, VolumeUploadSource};
        use kube::Resource as _;
        assert_eq!(api::API_VERSION, format!("{}/{}", api::GROUP, api::VERSION));
        assert_eq!(VolumeImportSource::api_version(&()), api::API_VERSION);
        assert_eq!(VolumeImportSource::kind(&()), kinds::VOLUME_IMPORT_SOURCE);
        assert_eq!(VolumeUploadSource::api_version(&()), api::API_VERSION);
        assert_eq!(VolumeUploadSource::kind(&()), kinds::VOLUME_UPLOAD_SOURCE);
        assert_eq!(VolumeCloneSource::api_version(&()), api::API_VERSION);
        assert_eq!(VolumeCloneSource::kind(&()), kinds::VOLUME_CLONE_SOURCE);
        assert_eq!(DataVolume::api_version(&()), api::API_VERSION);
        assert_eq!(DataVolume::kind(&()), kinds::DATA_VOLUME);
        assert_eq!(DataSource::api_version(&()), api::API_VERSION);
        assert_eq!(DataSource::kind(&()), kinds::DATA_SOURCE);
    }
}
