//! Mutual TLS for the server, with certificates re-read when their files change.
//!
//! The configuration is rebuilt when the certificate, key or client CA file changes (by
//! modification time and length, checked at each new connection). A rotation caught half
//! way (a new certificate next to the old key) fails to load and leaves the previous
//! configuration in use until the files are consistent again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The files a mover serves TLS with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that client certificates must be signed by.
    pub client_ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read { what: &'static str, path: PathBuf, reason: String },
    #[error("{what} {path} holds no PEM certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("invalid TLS setup: {0}")]
    Config(String),
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())))
        .collect()
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// Builds a server configuration that requires client certificates signed by the CA.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(cdi_common::mtls::crypto_provider());
    let chain = certs("certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Read {
        what: "key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", &files.client_ca)? {
        roots.add(ca).map_err(|e| TlsError::Config(format!("client CA {}: {e}", files.client_ca.display())))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// The current server configuration, reloaded when its files change.
#[derive(Debug)]
pub struct Reloading {
    files: TlsFiles,
    current: Mutex<(Arc<rustls::ServerConfig>, Stamp)>,
}

impl Reloading {
    /// Loads the files; they must be valid at start.
    pub fn new(files: TlsFiles) -> Result<Reloading, TlsError> {
        let stamp = stamp(&files);
        let config = Arc::new(server_config(&files)?);
        Ok(Reloading { files, current: Mutex::new((config, stamp)) })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let mut current = self.current.lock().expect("tls lock");
        let now = stamp(&self.files);
        if now != current.1 {
            match server_config(&self.files) {
                Ok(config) => {
                    tracing::info!("TLS certificates changed; reloaded");
                    *current = (Arc::new(config), now);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificates changed but do not load; keeping the previous ones")
                }
            }
        }
        current.0.clone()
    }
}
