//! Registries, through the OCI distribution API (`oci-client`): auth, manifests, indexes
//! resolved by platform, and layer blobs as synchronous readers.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::runtime::Handle;

use cdi_common::backoff::Backoff;

use super::error::RegistryError;
use super::layers::{BlobStore, Layer};
use super::reference::Platform;
use super::{Image, RegistryOptions, select_platform};
use crate::source::SourceError;

/// The config blob is small JSON; anything larger is not a config.
const MAX_CONFIG: u64 = 4 << 20;

/// A registry client bound to one image.
pub struct RegistryStore {
    client: Client,
    reference: Reference,
    image: String,
    rt: Handle,
}

impl std::fmt::Debug for RegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryStore").field("image", &self.image).finish_non_exhaustive()
    }
}

/// Resolves `reference` to one image manifest (by platform for an index) and its config.
pub fn resolve(reference: &Reference, opts: &RegistryOptions, rt: &Handle) -> Result<Image, SourceError> {
    crate::tls::install_crypto_provider();
    let image = format!("docker://{}", reference.whole());
    let auth = match &opts.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let mut last = None;
    // An insecure registry may speak HTTPS with a certificate we do not check, or plain
    // HTTP: HTTPS first, then HTTP when the connection itself failed.
    let protocols: &[ClientProtocol] =
        if opts.insecure { &[ClientProtocol::Https, ClientProtocol::Http] } else { &[ClientProtocol::Https] };
    for protocol in protocols {
        let client = Client::new(config(opts, protocol.clone(), &image)?);
        let store = RegistryStore { client, reference: reference.clone(), image: image.clone(), rt: rt.clone() };
        match rt.block_on(store.resolve(&auth, &opts.platform())) {
            Ok((manifest, config)) => return super::image_of(image, manifest, config, Arc::new(store)),
            Err(e @ SourceError::Registry(RegistryError::Network { .. })) => {
                tracing::debug!(image = %image, ?protocol, error = %crate::error::one_line(&e), "registry not reachable this way");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one protocol tried"))
}

fn config(opts: &RegistryOptions, protocol: ClientProtocol, image: &str) -> Result<ClientConfig, SourceError> {
    let mut extra = Vec::new();
    let proxy = opts.proxy.clone().unwrap_or_default();
    for ca in [&opts.ca, &proxy.ca].into_iter().flatten() {
        let bad = |reason: String| SourceError::CaFile { origin: ca.origin.clone(), reason };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let before = extra.len();
        for cert in CertificateDer::pem_slice_iter(&ca.pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            extra.push(Certificate { encoding: CertificateEncoding::Der, data: cert.to_vec() });
        }
        if extra.len() == before {
            return Err(bad("no PEM certificate found".into()));
        }
    }
    tracing::debug!(image, certificates = extra.len(), insecure = opts.insecure, ?proxy, "registry client");
    // oci-client falls back to the process's proxy environment for a proxy left unset.
    let set = |url: Option<String>| url.filter(|u| !u.trim().is_empty());
    Ok(ClientConfig {
        protocol,
        accept_invalid_certificates: opts.insecure,
        extra_root_certificates: extra,
        http_proxy: set(proxy.http),
        https_proxy: set(proxy.https),
        no_proxy: proxy.no_proxy,
        // We resolve indexes ourselves, to name the platforms an index has when ours is missing.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        user_agent: concat!("cdi-mover/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

impl RegistryStore {
    async fn resolve(
        &self,
        auth: &RegistryAuth,
        platform: &Platform,
    ) -> Result<(OciImageManifest, Option<serde_json::Value>), SourceError> {
        let (manifest, _) = self
            .client
            .pull_manifest(&self.reference, auth)
            .await
            .map_err(|e| map_error(&self.image, "repository or tag", e))?;
        let manifest = match manifest {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(index) => {
                let digest = select_platform(&self.image, &index.manifests, platform)?;
                let by_digest = self.reference.clone_with_digest(digest);
                match self
                    .client
                    .pull_manifest(&by_digest, auth)
                    .await
                    .map_err(|e| map_error(&self.image, "platform manifest", e))?
                {
                    (OciManifest::Image(m), _) => m,
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(RegistryError::Invalid {
                            image: self.image.clone(),
                            detail: "an image index points to another index".into(),
                        }
                        .into());
                    }
                }
            }
        };
        let config = self.config(&manifest.config).await?;
        Ok((manifest, config))
    }

    async fn config(&self, desc: &OciDescriptor) -> Result<Option<serde_json::Value>, SourceError> {
        if desc.size < 0 || desc.size as u64 > MAX_CONFIG {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.client
            .pull_blob(&self.reference, desc, &mut out)
            .await
            .map_err(|e| map_error(&self.image, "config", e))?;
        Ok(serde_json::from_slice(&out).ok())
    }
}

impl BlobStore for RegistryStore {
    fn open(&self, layer: &Layer) -> Result<Box<dyn Read + Send>, SourceError> {
        let blob = Blob {
            client: self.client.clone(),
            reference: self.reference.clone(),
            desc: OciDescriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size as i64,
                ..OciDescriptor::default()
            },
        };
        let (stream, skip) = self.rt.block_on(blob.fetch_from(0)).map_err(|e| map_error(&self.image, "layer", e))?;
        Ok(Box::new(BlobReader {
            blob,
            stream,
            skip,
            current: Bytes::new(),
            pos: 0,
            resumes: 0,
            rt: self.rt.clone(),
            image: self.image.clone(),
        }))
    }
}

type ByteStream = BoxStream<'static, Result<Bytes, io::Error>>;

/// One layer's blob, as the registry is asked for it again after a dropped connection.
struct Blob {
    client: Client,
    reference: Reference,
    desc: OciDescriptor,
}

impl Blob {
    /// The blob from byte `offset` on, and how many leading bytes of that stream to drop: all
    /// of `offset` when the registry ignored the range and answered from the start.
    async fn fetch_from(&self, offset: u64) -> Result<(ByteStream, u64), OciDistributionError> {
        if self.desc.size <= 0 {
            // No size to check a range against: the whole blob, which oci-client verifies.
            let sized = self.client.pull_blob_stream(&self.reference, &self.desc).await?;
            return Ok((sized.stream, offset));
        }
        // The walk verifies every layer's size and digest, hashing beside the decompression;
        // oci-client would hash the same bytes again on the walk's own thread. It skips its
        // check for a ranged answer, so even the first request asks for a range. A registry
        // that ignores ranges answers in full, and both checks run: slower, never less safe.
        Ok(match self.client.pull_blob_stream_partial(&self.reference, &self.desc, offset, None).await? {
            BlobResponse::Partial(s) => (s.stream, 0),
            BlobResponse::Full(s) => (s.stream, offset),
        })
    }
}

/// Between resumptions of a dropped layer download: 200 ms, doubling, at most 8 s.
const RESUME: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(8));
/// Drops in a row, with no byte received in between, before a layer download fails.
const MAX_RESUMES: u32 = 5;

/// The synchronous end of a blob download running on the runtime. A dropped connection (or a
/// stall past the client's read timeout) resumes from the last byte handed out, so a large
/// containerDisk layer is not fetched again from its start; the walk's digest check still
/// covers every byte.
struct BlobReader {
    blob: Blob,
    stream: ByteStream,
    /// Leading bytes of `stream` already handed out before it was asked for.
    skip: u64,
    current: Bytes,
    /// Bytes handed out so far.
    pos: u64,
    /// Resumptions since the last byte arrived.
    resumes: u32,
    rt: Handle,
    image: String,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(mut b)) => {
                    let dropped = b.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                    b.advance(dropped);
                    self.skip -= dropped as u64;
                    if !b.is_empty() {
                        self.resumes = 0;
                    }
                    self.current = b;
                }
                Some(Err(e)) if digest_error(&e).is_some() => return Err(self.stream_error(e)),
                // A connection closed before the answer's own length is an error here; a whole
                // answer shorter than the manifest's size is the walk's to report, not a drop.
                Some(Err(e)) => self.resume(e)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.pos += n as u64;
        Ok(n)
    }
}

impl BlobReader {
    /// The client checks digests too: its verdict is ours, terminal; anything else from the
    /// stream is the network's.
    fn stream_error(&self, e: io::Error) -> io::Error {
        use oci_client::errors::DigestError;
        let digest = &self.blob.desc.digest;
        let err = if let Some(d) = digest_error(&e) {
            let actual = match d {
                DigestError::VerificationError { actual, .. } => format!("digest {actual}"),
                other => other.to_string(),
            };
            RegistryError::LayerMismatch { image: self.image.clone(), digest: digest.clone(), actual }
        } else {
            RegistryError::Network { image: self.image.clone(), detail: format!("downloading layer {digest}: {e}") }
        };
        SourceError::from(err).into_io()
    }

    /// Asks for the rest of the blob after `e` broke its stream, backing off between tries;
    /// gives up with `e` (or the registry's terminal answer) once the budget is spent.
    fn resume(&mut self, e: io::Error) -> io::Result<()> {
        let mut why = e;
        loop {
            self.resumes += 1;
            if self.resumes > MAX_RESUMES {
                return Err(self.stream_error(why));
            }
            tracing::warn!(
                image = %self.image,
                layer = %self.blob.desc.digest,
                offset = self.pos,
                attempt = self.resumes,
                error = %why,
                "layer download interrupted; resuming"
            );
            let (blob, offset, delay) = (&self.blob, self.pos, RESUME.delay(self.resumes));
            let again = self.rt.block_on(async move {
                tokio::time::sleep(delay).await;
                blob.fetch_from(offset).await
            });
            match again {
                Ok((stream, skip)) => {
                    (self.stream, self.skip) = (stream, skip);
                    return Ok(());
                }
                Err(e) => match map_error(&self.image, "layer", e) {
                    e if e.is_retryable() => why = e.into_io(),
                    terminal => return Err(terminal.into_io()),
                },
            }
        }
    }
}

/// The digest verdict oci-client may put in a stream's error.
fn digest_error(e: &io::Error) -> Option<&oci_client::errors::DigestError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
}

/// Classifies the client's errors: terminal (credentials, not found, bad content) or not.
fn map_error(image: &str, what: &'static str, e: OciDistributionError) -> SourceError {
    let image = image.to_string();
    let status_error = |status: u16, detail: String| match status {
        401 | 403 => RegistryError::Unauthorized { image: image.clone(), detail },
        404 => RegistryError::NotFound { image: image.clone(), what, detail },
        s if crate::source::is_retryable_status(s) => RegistryError::Server { image: image.clone(), status: s, detail },
        _ => RegistryError::Invalid { image: image.clone(), detail: format!("HTTP {status}: {detail}") },
    };
    let err = match e {
        OciDistributionError::UnauthorizedError { .. } => {
            RegistryError::Unauthorized { image, detail: "HTTP 401".into() }
        }
        OciDistributionError::AuthenticationFailure(detail) => RegistryError::Unauthorized { image, detail },
        OciDistributionError::RegistryError { envelope, .. } => {
            let detail =
                envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect::<Vec<_>>().join("; ");
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    RegistryError::Unauthorized { image, detail }
                }
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::ManifestBlobUnknown,
                ) => RegistryError::NotFound { image, what, detail },
                Some(OciErrorCode::Toomanyrequests) => RegistryError::Server { image, status: 429, detail },
                _ => RegistryError::Invalid { image, detail },
            }
        }
        OciDistributionError::ServerError { code, message, .. } => {
            status_error(code, message.chars().take(200).collect())
        }
        OciDistributionError::RequestError(e) => {
            let e = e.without_url();
            match e.status() {
                Some(s) => status_error(s.as_u16(), e.to_string()),
                None => RegistryError::Network { image, detail: crate::error::one_line(&e) },
            }
        }
        OciDistributionError::IoError(e) => RegistryError::Network { image, detail: e.to_string() },
        OciDistributionError::UnsupportedMediaTypeError(media_type) => {
            RegistryError::UnsupportedMediaType { image, media_type, role: "manifest" }
        }
        OciDistributionError::DigestError(e) => {
            RegistryError::LayerMismatch { image, digest: what.to_string(), actual: e.to_string() }
        }
        other => RegistryError::Invalid { image, detail: other.to_string() },
    };
    err.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that ignores the range of a resumed request answers from the blob's start;
    /// what was handed out before the drop is dropped from that answer, across its chunks.
    #[test]
    fn an_answer_from_the_start_skips_what_was_already_handed_out() {
        crate::tls::install_crypto_provider();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let chunks = ["abc", "defg", "hi"].map(|c| Ok(Bytes::from_static(c.as_bytes())));
        let mut reader = BlobReader {
            blob: Blob {
                client: Client::new(ClientConfig::default()),
                reference: "registry.example/vm/disk:1".parse().unwrap(),
                desc: OciDescriptor::default(),
            },
            stream: futures_util::stream::iter(chunks).boxed(),
            skip: 5,
            current: Bytes::new(),
            pos: 5,
            resumes: 0,
            rt: rt.handle().clone(),
            image: "docker://registry.example/vm/disk:1".into(),
        };
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!((rest.as_slice(), reader.pos), (&b"fghi"[..], 9));
    }
}
