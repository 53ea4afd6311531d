//! Which container images the kubelet runs for real: the project's own, as the locally built
//! binaries. An image is matched by its repository's last path component, without tag,
//! digest or a `cdi-` prefix, so `cdi-rs/mover`, `quay.io/org/cdi-mover:v1.2` and
//! `cdi-mover@sha256:…` all run `cdi-mover`. Any other image only pretends to run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct ProjectImages {
    /// Component name (`mover`) → binary.
    binaries: BTreeMap<String, PathBuf>,
}

impl ProjectImages {
    /// Every `cdi-<name>` executable in `dir` (a cargo target directory, say) as the image
    /// `<name>`. Files with an extension (`cdi-mover.d`) are build by-products, not binaries.
    pub fn from_dir(dir: &Path) -> ProjectImages {
        use std::os::unix::fs::PermissionsExt as _;
        let mut images = ProjectImages::default();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let executable = entry.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if name.starts_with("cdi-") && !name.contains('.') && executable {
                images.insert(&name, entry.path());
            }
        }
        images
    }

    /// Runs `binary` for the images named `name` (`mover` or `cdi-mover`).
    pub fn insert(&mut self, name: &str, binary: PathBuf) {
        self.binaries.insert(component(name).to_string(), binary);
    }

    pub fn binary_for(&self, image: &str) -> Option<&Path> {
        self.binaries.get(component(image)).map(PathBuf::as_path)
    }

    pub fn is_empty(&self) -> bool {
        self.binaries.is_empty()
    }
}

/// `quay.io:443/org/cdi-mover:v1@sha256:…` → `mover`.
fn component(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    let repo = last.split(':').next().unwrap_or(last);
    repo.strip_prefix("cdi-").unwrap_or(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_match_by_repository_name() {
        let mut images = ProjectImages::default();
        images.insert("cdi-mover", "/bin/m".into());
        for image in ["cdi-rs/mover", "quay.io:443/org/cdi-mover:v1.2", "cdi-mover@sha256:ab", "mover"] {
            assert_eq!(images.binary_for(image), Some(Path::new("/bin/m")), "{image}");
        }
        for image in ["cdi-rs/populator", "busybox", "cdi-rs/mover-extra", "mover.io/busybox"] {
            assert_eq!(images.binary_for(image), None, "{image}");
        }
    }
}
