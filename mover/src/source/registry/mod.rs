//! Container images as sources (KubeVirt containerDisks): `docker://` from a registry and
//! `oci-archive://` from a local OCI archive.
//!
//! The disk is the one regular file under `/disk/` in the image's layers. It is found while
//! the layers stream ([`layers`]) and handed to the import as a non-ranged stream, so a
//! qcow2 is decoded as it passes and compressed disks (`.xz`, `.gz`, `.zst`) are peeled on
//! the way: nothing of the image is stored before the target.
//!
//! ```text
//!  reference ─▶ pull (oci-client: auth, manifest, index by platform) ─▶ layers (verify,
//!               archive (OCI layout in a tar)                  ─────┘   un-gzip/zstd, tar walk)
//!                                                                         ─▶ disk bytes
//! ```

mod archive;
pub mod error;
mod layers;
mod pull;
mod reference;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use oci_client::manifest::{ImageIndexEntry, OciImageManifest};
use tokio::runtime::Handle;

pub use error::RegistryError;
pub use reference::{ImageRef, Platform, go_arch};

use super::{CaBundle, Credentials, Opened, SourceError};
use layers::{BlobStore, Layer, Walk};

/// Image labels of bootable containers (bootc, ostree): their disk is built at install time,
/// they hold no containerDisk, and CDI refuses them.
const BOOTABLE_LABELS: &[&str] = &["containers.bootc", "ostree.bootable"];

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Basic credentials; the client exchanges them for a token when the registry asks.
    pub credentials: Option<Credentials>,
    /// Extra trusted CA certificates (every PEM in the bundle), besides the system's.
    pub ca: Option<CaBundle>,
    /// TLS verification off, and plain HTTP when HTTPS cannot connect: this registry only.
    pub insecure: bool,
    /// The platform an image index is resolved for (default: this mover's).
    pub platform: Option<Platform>,
    /// Forward proxies instead of the process's `HTTP(S)_PROXY` environment.
    pub proxy: Option<super::ProxySettings>,
}

impl RegistryOptions {
    pub fn platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::current)
    }
}

/// An image resolved to its layers.
#[derive(Debug)]
pub struct Image {
    name: String,
    layers: Vec<Layer>,
    store: Arc<dyn BlobStore>,
}

/// Resolves the image (failures such as refused credentials or a missing tag surface here,
/// before any target is touched); the disk streams when the import reads.
pub fn open(
    image: &ImageRef,
    opts: &RegistryOptions,
    cancel: Option<Arc<AtomicBool>>,
    rt: &Handle,
) -> Result<Opened, SourceError> {
    let resolved = match image {
        ImageRef::Docker(reference) => pull::resolve(reference, opts, rt)?,
        ImageRef::OciArchive(path) => archive::resolve(path, &opts.platform())?,
    };
    tracing::info!(image = %resolved.name, layers = resolved.layers.len(), "image resolved");
    let name = resolved.name.clone();
    let walk = Walk { image: resolved.name, layers: resolved.layers, store: resolved.store, cancel };
    Ok(Opened::new(name, None, None, move || Ok(Box::new(walk.start()?) as Box<dyn Read + Send>)))
}

/// The manifest's layers, checked: types we can read, digests we can verify, no bootable image.
fn image_of(
    name: String,
    manifest: OciImageManifest,
    config: Option<serde_json::Value>,
    store: Arc<dyn BlobStore>,
) -> Result<Image, SourceError> {
    if let Some(labels) = config.as_ref().and_then(|c| c.pointer("/config/Labels")).and_then(|l| l.as_object()) {
        for label in BOOTABLE_LABELS {
            if labels.get(*label).and_then(|v| v.as_str()).is_some_and(|v| v == "1" || v == "true") {
                return Err(RegistryError::Bootable { image: name, label: format!("{label}=1") }.into());
            }
        }
    }
    let layers: Vec<Layer> = manifest
        .layers
        .iter()
        .map(|l| Layer { digest: l.digest.clone(), size: l.size.max(0) as u64, media_type: l.media_type.clone() })
        .collect();
    if layers.is_empty() {
        return Err(RegistryError::NoDisk { image: name }.into());
    }
    layers::check_media_types(&name, &layers)?;
    Ok(Image { name, layers, store })
}

/// The digest of the index entry for `platform`, or an error naming the platforms there are.
fn select_platform(image: &str, entries: &[ImageIndexEntry], platform: &Platform) -> Result<String, RegistryError> {
    let found = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| platform.matches(&p.os.to_string(), &p.architecture.to_string(), p.variant.as_deref()))
    });
    match found {
        Some(e) => Ok(e.digest.clone()),
        None => {
            let mut available: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                // Attestations and signatures ride in indexes as unknown/unknown.
                .filter(|p| p.os.to_string() != "unknown")
                .map(|p| {
                    let mut s = format!("{}/{}", p.os, p.architecture);
                    if let Some(v) = &p.variant {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                })
                .collect();
            available.dedup();
            if available.is_empty() {
                available.push("no platform-specific images".into());
            }
            Err(RegistryError::NoPlatform { image: image.to_string(), wanted: platform.to_string(), available })
        }
    }
}
