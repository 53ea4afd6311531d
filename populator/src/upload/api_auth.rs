//! Who may call the upload API: only the API server's aggregator, proving it with the
//! front-proxy client certificate, and passing the caller's identity in request headers.
//!
//! kube-apiserver publishes what an extension API server needs in ConfigMap
//! `kube-system/extension-apiserver-authentication`: the front-proxy CA
//! (`requestheader-client-ca-file`), the common names its client certificate may have
//! (`requestheader-allowed-names`, empty: any) and the header names (`X-Remote-User`, ...).
//! The TLS listener asks every client for a certificate and verifies one it gets against
//! that CA (a certificate from another CA fails the handshake); a request without one, or
//! with a name not allowed, or without a user header, is answered 401.

use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ConfigMap;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP: &str = "extension-apiserver-authentication";

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP} has no {0}: is the API aggregation layer enabled?")]
    Missing(&'static str),
    #[error("ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}: {key} is not a JSON list of strings: {source}")]
    List {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP}: requestheader-client-ca-file holds no usable certificate: {0}"
    )]
    Ca(String),
}

/// The request-header authentication settings, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxyConfig {
    /// The front-proxy CA (PEM).
    pub ca_pem: Vec<u8>,
    /// Common names the front-proxy certificate may have; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

impl FrontProxyConfig {
    /// Reads the ConfigMap's request-header keys (header lists default to kube's).
    ///
    /// # Errors
    /// No CA, or a list that is not JSON.
    pub fn from_configmap(cm: &ConfigMap) -> Result<FrontProxyConfig, AuthConfigError> {
        let data = cm.data.as_ref();
        let value = |key: &'static str| data.and_then(|d| d.get(key)).map(String::as_str);
        let list = |key: &'static str, default: &[&str]| -> Result<Vec<String>, AuthConfigError> {
            match value(key).filter(|v| !v.trim().is_empty()) {
                Some(v) => serde_json::from_str(v).map_err(|source| AuthConfigError::List { key, source }),
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
            }
        };
        let ca =
            value("requestheader-client-ca-file").ok_or(AuthConfigError::Missing("requestheader-client-ca-file"))?;
        Ok(FrontProxyConfig {
            ca_pem: ca.as_bytes().to_vec(),
            allowed_names: list("requestheader-allowed-names", &[])?,
            username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
        })
    }

    /// Whether a verified front-proxy certificate with common name `cn` may assert users.
    pub fn allows(&self, cn: Option<&str>) -> bool {
        self.allowed_names.is_empty() || cn.is_some_and(|cn| self.allowed_names.iter().any(|n| n == cn))
    }
}

/// The front-proxy settings now in force, and the client-certificate verifier built on
/// them; replaced when the ConfigMap changes.
#[derive(Debug)]
pub struct FrontProxy {
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Option<(FrontProxyConfig, Arc<dyn ClientCertVerifier>)>>,
}

impl Default for FrontProxy {
    fn default() -> Self {
        FrontProxy { provider: Arc::new(rustls::crypto::ring::default_provider()), current: RwLock::new(None) }
    }
}

impl FrontProxy {
    /// Verifies client certificates against `config`'s CA from the next handshake on.
    ///
    /// # Errors
    /// The CA is not a usable PEM certificate.
    pub fn set(&self, config: FrontProxyConfig) -> Result<(), AuthConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
            let cert = cert.map_err(|e| AuthConfigError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| AuthConfigError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(AuthConfigError::Ca("no PEM certificate".into()));
        }
        // Optional at the TLS level: probes come without a certificate, and get only
        // /healthz; every API path checks for one.
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| AuthConfigError::Ca(e.to_string()))?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((config, verifier));
        Ok(())
    }

    pub fn config(&self) -> Option<FrontProxyConfig> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|(c, _)| c.clone())
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|(_, v)| v.clone())
    }
}

/// The listener's client-certificate check: the current front-proxy CA's.
#[derive(Debug, Clone)]
pub struct FrontProxyVerifier(pub Arc<FrontProxy>);

impl ClientCertVerifier for FrontProxyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: the aggregator sends its one certificate regardless.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(format!(
                "no front-proxy CA loaded yet (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP})"
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The subject common name of a DER certificate, if it has one. A few lines of DER walking
/// instead of an X.509 parser dependency; the certificate was verified before.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, cert, _) = tlv(der, 0x30)?;
    let (_, tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest, 0xA0)?.2;
    }
    // serial, signature algorithm, issuer, validity, then the subject
    rest = tlv(rest, 0x02)?.2;
    rest = tlv(rest, 0x30)?.2;
    rest = tlv(rest, 0x30)?.2;
    rest = tlv(rest, 0x30)?.2;
    let (_, mut subject, _) = tlv(rest, 0x30)?;
    while !subject.is_empty() {
        let (_, mut set, next) = tlv(subject, 0x31)?;
        subject = next;
        while !set.is_empty() {
            let (_, attr, next) = tlv(set, 0x30)?;
            set = next;
            let (_, oid, value) = tlv(attr, 0x06)?;
            if oid == CN {
                let (tag, text, _) = tlv(value, value.first().copied()?)?;
                // UTF8String, PrintableString, IA5String, TeletexString
                return [0x0C, 0x13, 0x16, 0x14]
                    .contains(&tag)
                    .then(|| String::from_utf8(text.to_vec()).ok())
                    .flatten();
            }
        }
    }
    None
}

/// One DER element of tag `want`: (tag, content, what follows).
fn tlv(input: &[u8], want: u8) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag != want {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        for cn in ["front-proxy-client", "a-much-longer-name-for-the-front-proxy-client.example.com"] {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "org");
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(subject_common_name(cert.der()).as_deref(), Some(cn));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "no cn");
        assert_eq!(subject_common_name(params.self_signed(&key).unwrap().der()), None);
        assert_eq!(subject_common_name(b"\x30\x82\xff"), None, "truncated");
    }

    #[test]
    fn the_configmap_is_read_as_kube_apiserver_writes_it() {
        let cm = |pairs: &[(&str, &str)]| ConfigMap {
            data: Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
            ..Default::default()
        };
        let c = FrontProxyConfig::from_configmap(&cm(&[
            ("client-ca-file", "CLUSTER"),
            ("requestheader-client-ca-file", "FRONT"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
        ]))
        .unwrap();
        assert_eq!(c.ca_pem, b"FRONT");
        assert!(c.allows(Some("front-proxy-client")));
        assert!(!c.allows(Some("someone-else")) && !c.allows(None));
        assert_eq!(c.group_headers, ["X-Remote-Group"], "default");
        let any = FrontProxyConfig::from_configmap(&cm(&[("requestheader-client-ca-file", "FRONT")])).unwrap();
        assert!(any.allows(Some("whoever")), "no allowed names: any certificate of the CA");
        assert!(matches!(FrontProxyConfig::from_configmap(&cm(&[])), Err(AuthConfigError::Missing(_))));
        let bad = cm(&[("requestheader-client-ca-file", "FRONT"), ("requestheader-allowed-names", "front")]);
        assert!(matches!(FrontProxyConfig::from_configmap(&bad), Err(AuthConfigError::List { .. })));
        assert!(FrontProxy::default().set(any).is_err(), "not PEM");
    }
}
