//! `oci-archive:///PATH`: an OCI image layout packed in a tar, read in place. One pass over
//! the tar's headers finds where each blob lies; blobs are then read from there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cdi_common::checksum::Algorithm;
use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};

use super::error::RegistryError;
use super::layers::{BlobStore, Layer};
use super::reference::Platform;
use super::{Image, select_platform};
use crate::source::SourceError;

/// Manifests, indexes and configs are small JSON documents.
const MAX_JSON: u64 = 4 << 20;
const INDEX_MEDIA_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

#[derive(Debug)]
struct ArchiveStore {
    path: PathBuf,
    image: String,
    /// Member path → (offset of its data, size).
    members: HashMap<String, (u64, u64)>,
}

pub fn resolve(path: &Path, platform: &Platform) -> Result<Image, SourceError> {
    let image = format!("oci-archive://{}", path.display());
    let bad = |detail: String| SourceError::from(RegistryError::Archive { image: image.clone(), detail });
    let file = File::open(path).map_err(|source| SourceError::OpenFile { path: path.to_path_buf(), source })?;
    let mut members = HashMap::new();
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries_with_seek().map_err(|e| bad(format!("not a tar: {e}")))? {
        let entry = entry.map_err(|e| bad(format!("not a valid tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).trim_start_matches("./").to_string();
        members.insert(name, (entry.raw_file_position(), entry.size()));
    }
    let store = ArchiveStore { path: path.to_path_buf(), image: image.clone(), members };
    let index: OciImageIndex =
        serde_json::from_slice(&store.json("index.json", None)?).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut entries = index.manifests;
    // An index may point to another index (skopeo writes one per platform list).
    for _ in 0..2 {
        let digest =
            if entries.len() == 1 { entries[0].digest.clone() } else { select_platform(&image, &entries, platform)? };
        let entry = entries.iter().find(|e| e.digest == digest).cloned().expect("selected from entries");
        let bytes = store.json(&blob_path(&image, &digest)?, Some(&digest))?;
        if INDEX_MEDIA_TYPES.contains(&entry.media_type.as_str()) {
            let nested: OciImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("index {digest}: {e}")))?;
            entries = nested.manifests;
            continue;
        }
        let manifest: OciImageManifest = match serde_json::from_slice(&bytes) {
            Ok(OciManifest::Image(m)) => m,
            Ok(OciManifest::ImageIndex(i)) => {
                entries = i.manifests;
                continue;
            }
            Err(e) => return Err(bad(format!("manifest {digest}: {e}"))),
        };
        let config = store
            .json(&blob_path(&image, &manifest.config.digest)?, Some(&manifest.config.digest))
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok());
        return super::image_of(image.clone(), manifest, config, Arc::new(store));
    }
    Err(bad("image indexes nested too deep".into()))
}

fn blob_path(image: &str, digest: &str) -> Result<String, SourceError> {
    let (algo, hex) = digest.split_once(':').unwrap_or(("", ""));
    if algo.is_empty()
        || hex.is_empty()
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        || !algo.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(RegistryError::UnsupportedDigest { image: image.to_string(), digest: digest.to_string() }.into());
    }
    Ok(format!("blobs/{algo}/{hex}"))
}

impl ArchiveStore {
    fn member(&self, name: &str) -> Result<(File, u64), SourceError> {
        let &(offset, size) = self.members.get(name).ok_or_else(|| {
            SourceError::from(RegistryError::Archive {
                image: self.image.clone(),
                detail: format!("{name} is missing"),
            })
        })?;
        let open_err = |source| SourceError::OpenFile { path: self.path.clone(), source };
        let mut file = File::open(&self.path).map_err(open_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(open_err)?;
        Ok((file, size))
    }

    /// A small JSON member, checked against its digest when one is given.
    fn json(&self, name: &str, digest: Option<&str>) -> Result<Vec<u8>, SourceError> {
        let (file, size) = self.member(name)?;
        let bad = |detail: String| SourceError::from(RegistryError::Archive { image: self.image.clone(), detail });
        if size > MAX_JSON {
            return Err(bad(format!("{name} is {size} bytes, too large for a JSON document")));
        }
        let mut out = Vec::new();
        file.take(size).read_to_end(&mut out).map_err(|source| SourceError::ReadFile {
            path: self.path.clone(),
            offset: 0,
            source,
        })?;
        if let Some(d) = digest {
            let actual = format!("sha256:{}", {
                let mut h = Algorithm::Sha256.hasher();
                h.update(&out);
                h.finish_hex()
            });
            if d.starts_with("sha256:") && actual != d {
                return Err(RegistryError::LayerMismatch {
                    image: self.image.clone(),
                    digest: d.to_string(),
                    actual: format!("digest {actual}"),
                }
                .into());
            }
        }
        Ok(out)
    }
}

impl BlobStore for ArchiveStore {
    fn open(&self, layer: &Layer) -> Result<Box<dyn Read + Send>, SourceError> {
        let (file, size) = self.member(&blob_path(&self.image, &layer.digest)?)?;
        // The verifier checks the manifest's size; the member's own bounds the read.
        Ok(Box::new(file.take(size)))
    }
}
