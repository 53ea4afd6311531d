//! The process-wide rustls crypto provider: ring, the one TLS backend of the project.

/// Installs ring as rustls' process default. Idempotent; safe to call from every entry point
/// that may build a TLS client or server.
pub fn install_crypto_provider() {
    // Err means a provider is already installed (by us, earlier): fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
