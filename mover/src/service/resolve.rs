//! Where a pod's volume is on this node: the kubelet's layout under its root directory.
//!
//! * filesystem: `<root>/pods/<uid>/volumes/<plugin>/<name>` (CSI volumes: `…/mount`)
//! * block: `<root>/pods/<uid>/volumeDevices/<plugin>/<name>`
//!
//! Every name the caller gives must be one plain path component, and the resolved path must
//! stay under the kubelet root: a symlink leading out of it is refused, not followed.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// The CSI plugin's directory name in the kubelet's layout.
const CSI_PLUGIN: &str = "kubernetes.io~csi";

/// A pod volume, as the request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolume {
    pub pod_uid: String,
    pub volume_name: String,
    pub pv_name: String,
    pub block: bool,
}

/// Why a pod volume could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("pod_volume.{field} {value:?} must be a single path component (no '/', '..', or NUL)")]
    BadName { field: &'static str, value: String },
    #[error("pod_volume needs a pod_uid and a pv_name or volume_name")]
    Missing,
    #[error("no {kind} volume {name:?} of pod {pod_uid} under the kubelet root {root}")]
    NotFound { kind: &'static str, name: String, pod_uid: String, root: PathBuf },
    #[error("pod volume path {path} leads outside the kubelet root {root}")]
    Escapes { path: PathBuf, root: PathBuf },
}

fn component<'a>(field: &'static str, value: &'a str) -> Result<&'a str, ResolveError> {
    let bad = || ResolveError::BadName { field, value: value.to_string() };
    if value.is_empty() || value.contains('\0') || value.contains('/') {
        return Err(bad());
    }
    match Path::new(value).components().collect::<Vec<_>>()[..] {
        [Component::Normal(_)] => Ok(value),
        _ => Err(bad()),
    }
}

impl PodVolume {
    /// Checks the names without touching the filesystem.
    pub fn validate(&self) -> Result<(), ResolveError> {
        if self.pod_uid.is_empty() || (self.pv_name.is_empty() && self.volume_name.is_empty()) {
            return Err(ResolveError::Missing);
        }
        component("pod_uid", &self.pod_uid)?;
        if !self.pv_name.is_empty() {
            component("pv_name", &self.pv_name)?;
        }
        if !self.volume_name.is_empty() {
            component("volume_name", &self.volume_name)?;
        }
        Ok(())
    }

    /// The name the kubelet files the volume under: the PV's, else the pod's volume name.
    fn name(&self) -> &str {
        if self.pv_name.is_empty() { &self.volume_name } else { &self.pv_name }
    }

    /// Finds the volume under `root`.
    pub fn resolve(&self, root: &Path) -> Result<PathBuf, ResolveError> {
        self.validate()?;
        let kind = if self.block { "block" } else { "filesystem" };
        let not_found = || ResolveError::NotFound {
            kind,
            name: self.name().to_string(),
            pod_uid: self.pod_uid.clone(),
            root: root.to_path_buf(),
        };
        let dir = root.join("pods").join(&self.pod_uid).join(if self.block { "volumeDevices" } else { "volumes" });
        // Plugins in a stable order, CSI first: it is what PVs of CSI drivers use.
        let mut plugins: Vec<String> = fs::read_dir(&dir)
            .map_err(|_| not_found())?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        plugins.sort_by_key(|p| (p != CSI_PLUGIN, p.clone()));
        for plugin in plugins {
            let candidate = dir.join(&plugin).join(self.name());
            if fs::symlink_metadata(&candidate).is_err() {
                continue;
            }
            let path = if !self.block && plugin == CSI_PLUGIN { candidate.join("mount") } else { candidate };
            return confine(root, &path);
        }
        Err(not_found())
    }
}

/// Returns `path` if it stays under `root` once symlinks are resolved; a block device node
/// (how the kubelet publishes block volumes) is taken as it is.
fn confine(root: &Path, path: &Path) -> Result<PathBuf, ResolveError> {
    let escapes = || ResolveError::Escapes { path: path.to_path_buf(), root: root.to_path_buf() };
    let root = fs::canonicalize(root).map_err(|_| escapes())?;
    let real = fs::canonicalize(path).map_err(|_| escapes())?;
    if !real.starts_with(&root) {
        return Err(escapes());
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(uid: &str, pv: &str, block: bool) -> PodVolume {
        PodVolume { pod_uid: uid.into(), volume_name: "data".into(), pv_name: pv.into(), block }
    }

    #[test]
    fn names_must_be_single_components() {
        for bad in ["", "..", ".", "a/b", "/abs", "x\0y"] {
            let e = vol(bad, "pv", false).validate();
            assert!(e.is_err(), "{bad:?} accepted");
        }
        assert!(matches!(vol("uid", "../pv", false).validate(), Err(ResolveError::BadName { field: "pv_name", .. })));
        assert!(vol("1234-abcd", "pvc-1", true).validate().is_ok());
    }

    #[test]
    fn resolves_csi_filesystem_and_block_layouts_and_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let fs_dir = r.join("pods/u1/volumes/kubernetes.io~csi/pv1/mount");
        fs::create_dir_all(&fs_dir).unwrap();
        assert_eq!(vol("u1", "pv1", false).resolve(r).unwrap(), fs::canonicalize(&fs_dir).unwrap());

        let blk_dir = r.join("pods/u1/volumeDevices/kubernetes.io~csi");
        fs::create_dir_all(&blk_dir).unwrap();
        fs::write(blk_dir.join("pv2"), b"").unwrap();
        assert!(vol("u1", "pv2", true).resolve(r).is_ok());

        // A symlink planted to lead out of the root.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), blk_dir.join("pv3")).unwrap();
        assert!(matches!(vol("u1", "pv3", true).resolve(r), Err(ResolveError::Escapes { .. })));

        assert!(matches!(vol("u2", "pv1", false).resolve(r), Err(ResolveError::NotFound { .. })));
    }
}
