//! The `cdi.kubevirt.io/v1beta1` kinds, with CDI's field names and JSON shapes: a manifest
//! written for CDI deserialises unchanged and serialises back to the same JSON.
//!
//! | module | what |
//! |---|---|
//! | [`datavolume`] | `DataVolume`: a PVC and where its data comes from |
//! | [`datasource`] | `DataSource`: a named golden volume DataVolumes clone |
//! | [`import`] | `VolumeImportSource`: import a claim's data from a URL, registry, ... |
//! | [`upload`] | `VolumeUploadSource`: fill a claim by upload |
//! | [`uploadtoken`] | `UploadTokenRequest` (`upload.cdi.kubevirt.io`, aggregated API, no CRD) |
//! | [`clone`]  | `VolumeCloneSource`: fill a claim with a copy of a PVC or snapshot |
//! | [`storageprofile`] | `StorageProfile`: what CDI knows about a StorageClass |
//! | [`cdiconfig`] | `CDIConfig`: the cluster-wide settings (`config`) |
//! | [`cdi`] | `CDI`: the install object, whose status says CDI is deployed |
//! | [`sources`] | the import source variants (`http`, `s3`, ...) and checkpoints |
//! | [`names`]  | annotation keys, labels, event and condition reasons, kinds |
//! | [`quantity`] | Kubernetes quantities (`10Gi`, `1e9`), as apimachinery parses them |
//!
//! These types are the edge: the controller checks them once, through
//! [`crate::plan`], and works on the result.

pub mod cdi;
pub mod cdiconfig;
pub mod clone;
pub mod datasource;
pub mod datavolume;
pub mod import;
pub mod names;
pub mod quantity;
mod schema;
pub mod sources;
pub mod storageprofile;
pub mod upload;
pub mod uploadtoken;

pub use cdi::{CDI, CDISpec, CDIStatus, OperatorCondition};
pub use cdiconfig::{CDIConfig, CDIConfigSpec, CDIConfigStatus, FilesystemOverhead, ImportProxy};

pub use clone::{VolumeCloneSource, VolumeCloneSourceSpec};
pub use datasource::{DataSource, DataSourceSource, DataSourceSpec, DataSourceStatus};
pub use datavolume::{
    DataVolume, DataVolumeCondition, DataVolumePhase, DataVolumeSource, DataVolumeSourceRef, DataVolumeSpec,
    DataVolumeStatus, StorageSpec,
};
pub use import::{VolumeImportSource, VolumeImportSourceSpec, VolumeImportSourceStatus};
pub use sources::{
    DataVolumeBlankImage, DataVolumeCheckpoint, DataVolumeSourceGcs, DataVolumeSourceHttp, DataVolumeSourceImageIo,
    DataVolumeSourceRegistry, DataVolumeSourceS3, DataVolumeSourceVddk, ImportSourceType, PlatformOptions,
};
pub use storageprofile::{ClaimPropertySet, StorageProfile, StorageProfileSpec, StorageProfileStatus};
pub use upload::{VolumeUploadSource, VolumeUploadSourceSpec, VolumeUploadSourceStatus};
pub use uploadtoken::{UploadTokenRequest, UploadTokenRequestSpec, UploadTokenRequestStatus};

#[cfg(test)]
mod tests;
