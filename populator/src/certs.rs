//! The mutual-TLS material between the populator and the movers, kept in Secrets of the
//! populator's namespace and created on first start.
//!
//! * `cdi-rs-ca`: the CA (`ca.crt`, `ca.key`), which only the populator reads.
//! * `cdi-mover-tls`: the movers' server certificate (`tls.crt`, `tls.key`, and `ca.crt`
//!   to check clients), mounted by the mover DaemonSet.
//! * `cdi-populator-tls`: the populator's client certificate (`tls.crt`, `tls.key`,
//!   `ca.crt` to check movers).
//! * `cdi-populator-webhook-tls`: the admission webhook's serving certificate (`tls.crt`,
//!   `tls.key`, and `ca.crt`, the API server's `caBundle`), for the webhook Service's DNS
//!   names. Every populator replica serves with it, so every replica reads it.
//! * `cdi-api-tls`: the upload API's serving certificate (`tls.crt`, `tls.key`, `ca.crt`,
//!   the APIService's `caBundle`) for Service `cdi-api`, read by every replica.
//! * `cdi-upload-token-key`: the upload-token signing key (`signing.key`, PKCS#8 DER of a
//!   P-256 key; only the populator reads it) and its public half (`verify.key`, the 65-byte
//!   SEC1 point).
//! * `cdi-uploadproxy-tls`: the upload proxy's HTTPS serving certificate (`tls.crt`,
//!   `tls.key`), the CA (`ca.crt`: clients may trust it, the proxy checks movers with it), a
//!   client certificate the movers accept (`client.crt`, `client.key`), and a copy of the
//!   token public key (`verify.key`).
//!
//! Creation is idempotent: an existing Secret is kept; a create that loses a race re-reads.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

pub const CA_SECRET: &str = "cdi-rs-ca";
pub const MOVER_SECRET: &str = "cdi-mover-tls";
pub const CLIENT_SECRET: &str = "cdi-populator-tls";
pub const WEBHOOK_SECRET: &str = "cdi-populator-webhook-tls";
pub const API_SECRET: &str = "cdi-api-tls";
pub const TOKEN_KEY_SECRET: &str = "cdi-upload-token-key";
pub const UPLOADPROXY_SECRET: &str = "cdi-uploadproxy-tls";
/// The upload proxy's Service: its serving certificate is issued for these names.
pub const UPLOADPROXY_SERVICE: &str = "cdi-uploadproxy";
/// The name every mover certificate carries, and clients expect (pods have changing IPs).
pub const MOVER_SERVER_NAME: &str = "cdi-mover";
/// A mover's certificate serves its API and is also its client identity towards another
/// mover, whose volume it reads for a host-assisted clone.
const MOVER_USAGES: &[ExtendedKeyUsagePurpose] =
    &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot {op} Secret {namespace}/{name}: {source}")]
    Api {
        op: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} lacks {key}")]
    Missing { namespace: String, name: String, key: &'static str },
    #[error("cannot make certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot make the upload token key: {0}")]
    TokenKey(#[from] crate::upload::token::TokenError),
}

/// The populator's client identity and the CA its movers' certificates come from (PEM).
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

fn data(pairs: &[(&str, String)]) -> BTreeMap<String, ByteString> {
    pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect()
}

/// Reads `key` of `secret` (the Secret's name is taken from its metadata).
///
/// # Errors
/// The key is missing.
pub fn secret_key<'a>(secret: &'a Secret, key: &'static str, namespace: &str) -> Result<&'a [u8], CertError> {
    get(secret, key, namespace)
}

fn get<'a>(secret: &'a Secret, key: &'static str, namespace: &str) -> Result<&'a [u8], CertError> {
    secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.as_slice()).ok_or_else(|| CertError::Missing {
        namespace: namespace.to_string(),
        name: secret.metadata.name.clone().unwrap_or_default(),
        key,
    })
}

/// Creates `name` with `make()`'s data unless it exists; returns the Secret as stored.
async fn ensure(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    make: impl FnOnce() -> Result<BTreeMap<String, ByteString>, CertError>,
) -> Result<Secret, CertError> {
    let err = |op, source| CertError::Api {
        op,
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    if let Some(s) = api.get_opt(name).await.map_err(|e| err("read", e))? {
        return Ok(s);
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_string(), "cdi-rs".to_string())])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(make()?),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(%namespace, %name, "created TLS Secret");
            Ok(s)
        }
        // Another populator made it first: use theirs.
        Err(kube::Error::Api(status)) if status.code == 409 => api.get(name).await.map_err(|e| err("read", e)),
        Err(e) => Err(err("create", e)),
    }
}

/// The CA as stored: its certificate (PEM) and a way to issue certificates with it.
struct Ca {
    cert: String,
    key: String,
}

impl Ca {
    // The CA's parameters are fixed, so its issuer is rebuilt from them and its key (no
    // certificate parsing needed).
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
        Ok(Issuer::new(ca_params()?, KeyPair::from_pem(&self.key)?))
    }
}

async fn ensure_ca(api: &Api<Secret>, namespace: &str) -> Result<Ca, CertError> {
    let ca = ensure(api, namespace, CA_SECRET, || {
        let (cert, key) = new_ca()?;
        Ok(data(&[("ca.crt", cert), ("ca.key", key)]))
    })
    .await?;
    Ok(Ca {
        cert: String::from_utf8_lossy(get(&ca, "ca.crt", namespace)?).into_owned(),
        key: String::from_utf8_lossy(get(&ca, "ca.key", namespace)?).into_owned(),
    })
}

/// Makes sure the CA and both certificates exist; returns the client identity.
pub async fn ensure_all(client: kube::Client, namespace: &str) -> Result<ClientIdentity, CertError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let ca = ensure_ca(&api, namespace).await?;
    ensure(&api, namespace, MOVER_SECRET, || {
        let names = [MOVER_SERVER_NAME.to_string(), format!("{MOVER_SERVER_NAME}.cdi-rs.svc")];
        let (cert, key) = issue(&ca.issuer()?, &names, MOVER_USAGES)?;
        Ok(data(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", ca.cert.clone())]))
    })
    .await?;
    let client = ensure(&api, namespace, CLIENT_SECRET, || {
        let (cert, key) = issue(&ca.issuer()?, &["cdi-populator".to_string()], &[ExtendedKeyUsagePurpose::ClientAuth])?;
        Ok(data(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", ca.cert.clone())]))
    })
    .await?;
    Ok(ClientIdentity {
        cert: get(&client, "tls.crt", namespace)?.to_vec(),
        key: get(&client, "tls.key", namespace)?.to_vec(),
        ca: get(&client, "ca.crt", namespace)?.to_vec(),
    })
}

/// The DNS names the API server may call a Service by (it uses `<name>.<namespace>.svc`).
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Makes sure the CA and the webhook's serving certificate for `service` exist; returns
/// the CA certificate (PEM), which the webhook configuration's `caBundle` must hold.
pub async fn ensure_webhook(client: kube::Client, namespace: &str, service: &str) -> Result<Vec<u8>, CertError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let ca = ensure_ca(&api, namespace).await?;
    let secret = ensure(&api, namespace, WEBHOOK_SECRET, || {
        let names = service_dns_names(service, namespace);
        let (cert, key) = issue(&ca.issuer()?, &names, &[ExtendedKeyUsagePurpose::ServerAuth])?;
        Ok(data(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", ca.cert.clone())]))
    })
    .await?;
    Ok(get(&secret, "ca.crt", namespace)?.to_vec())
}

/// Makes sure the CA and the upload API's serving certificate for `service` exist; returns
/// the CA certificate (PEM), which the APIService's `caBundle` must hold.
pub async fn ensure_api(client: kube::Client, namespace: &str, service: &str) -> Result<Vec<u8>, CertError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let ca = ensure_ca(&api, namespace).await?;
    let secret = ensure(&api, namespace, API_SECRET, || {
        let names = service_dns_names(service, namespace);
        let (cert, key) = issue(&ca.issuer()?, &names, &[ExtendedKeyUsagePurpose::ServerAuth])?;
        Ok(data(&[("tls.crt", cert), ("tls.key", key), ("ca.crt", ca.cert.clone())]))
    })
    .await?;
    Ok(get(&secret, "ca.crt", namespace)?.to_vec())
}

/// Makes sure the upload token key and the upload proxy's Secret exist.
pub async fn ensure_upload(client: kube::Client, namespace: &str) -> Result<(), CertError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let ca = ensure_ca(&api, namespace).await?;
    let key = ensure(&api, namespace, TOKEN_KEY_SECRET, token_key_data).await?;
    let verify_key = get(&key, "verify.key", namespace)?.to_vec();
    let mut proxy =
        ensure(&api, namespace, UPLOADPROXY_SECRET, || uploadproxy_data(&ca, namespace, &verify_key)).await?;
    // A key Secret made again (deleted by hand) must not leave the proxy checking tokens
    // with the old public key.
    if get(&proxy, "verify.key", namespace).ok() != Some(verify_key.as_slice()) {
        proxy.data.get_or_insert_default().insert("verify.key".to_string(), ByteString(verify_key));
        api.replace(UPLOADPROXY_SECRET, &PostParams::default(), &proxy).await.map_err(|e| CertError::Api {
            op: "update",
            namespace: namespace.to_string(),
            name: UPLOADPROXY_SECRET.to_string(),
            source: Box::new(e),
        })?;
        tracing::info!(%namespace, name = UPLOADPROXY_SECRET, "updated the upload proxy's token public key");
    }
    Ok(())
}

/// A fresh token key pair: `signing.key` (PKCS#8 DER) and `verify.key` (SEC1 point).
fn token_key_data() -> Result<BTreeMap<String, ByteString>, CertError> {
    use crate::upload::token::SigningKey;
    let pkcs8 = SigningKey::generate_pkcs8()?;
    let public = SigningKey::from_pkcs8(&pkcs8)?.public_key();
    Ok(BTreeMap::from([
        ("signing.key".to_string(), ByteString(pkcs8)),
        ("verify.key".to_string(), ByteString(public.0)),
    ]))
}

/// The names the upload proxy is reached by: its Service's, and the loopback (port
/// forwards, tests).
fn uploadproxy_names(namespace: &str) -> Vec<String> {
    let s = UPLOADPROXY_SERVICE;
    vec![
        s.to_string(),
        format!("{s}.{namespace}"),
        format!("{s}.{namespace}.svc"),
        format!("{s}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]
}

/// The upload proxy's Secret: serving and client certificates from `ca` (the one movers
/// trust), the CA, and the token public key.
fn uploadproxy_data(ca: &Ca, namespace: &str, verify_key: &[u8]) -> Result<BTreeMap<String, ByteString>, CertError> {
    let issuer = ca.issuer()?;
    let (cert, key) = issue(&issuer, &uploadproxy_names(namespace), &[ExtendedKeyUsagePurpose::ServerAuth])?;
    let (client_cert, client_key) =
        issue(&issuer, &[UPLOADPROXY_SERVICE.to_string()], &[ExtendedKeyUsagePurpose::ClientAuth])?;
    let mut d = data(&[
        ("tls.crt", cert),
        ("tls.key", key),
        ("ca.crt", ca.cert.clone()),
        ("client.crt", client_cert),
        ("client.key", client_key),
    ]);
    d.insert("verify.key".to_string(), ByteString(verify_key.to_vec()));
    Ok(d)
}

/// A serving identity read from a TLS Secret (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServingCert(<redacted>)")
    }
}

impl ServingCert {
    /// `tls.crt` and `tls.key` of `secret`.
    ///
    /// # Errors
    /// A key missing.
    pub fn from_secret(secret: &Secret, namespace: &str) -> Result<ServingCert, CertError> {
        Ok(ServingCert {
            cert: get(secret, "tls.crt", namespace)?.to_vec(),
            key: get(secret, "tls.key", namespace)?.to_vec(),
        })
    }
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "cdi-rs mover CA");
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

fn new_ca() -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A certificate for `names` (the first is also the common name), signed by `ca`.
fn issue(
    ca: &Issuer<'_, KeyPair>,
    names: &[String],
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = usages.to_vec();
    params.not_after = rcgen::date_time_ymd(2035, 12, 31);
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca() {
        let names = [MOVER_SERVER_NAME.to_string()];
        verifies_as(&names, MOVER_SERVER_NAME);
        // The webhook's, for the name the API server calls its Service by.
        let names = service_dns_names("cdi-populator-webhook", "cdi-rs");
        verifies_as(&names, "cdi-populator-webhook.cdi-rs.svc");
        let serving = ServingCert::from_secret(
            &Secret { data: Some(data(&[("tls.crt", "C".into()), ("tls.key", "K".into())])), ..Default::default() },
            "cdi-rs",
        )
        .unwrap();
        assert_eq!(format!("{serving:?}"), "ServingCert(<redacted>)");
    }

    #[test]
    fn the_mover_certificate_serves_and_is_a_client_of_other_movers_too() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let (ca_cert, ca_key) = new_ca().unwrap();
        let issuer = Issuer::new(ca_params().unwrap(), KeyPair::from_pem(&ca_key).unwrap());
        let names = [MOVER_SERVER_NAME.to_string(), format!("{MOVER_SERVER_NAME}.cdi-rs.svc")];
        let (cert, _) = issue(&issuer, &names, MOVER_USAGES).unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let now = UnixTime::now();
        let name = ServerName::try_from(MOVER_SERVER_NAME).unwrap();
        server_verifier(&ca_cert).verify_server_cert(&leaf, &[], &name, &[], now).expect("serves as cdi-mover");
        // Another mover (trusting the same CA as its --client-ca) accepts it as a client: a
        // mover reading its peer's volume presents its serving certificate.
        client_verifier(&ca_cert).verify_client_cert(&leaf, &[], now).expect("accepted as a client");
        // A serverAuth-only certificate (as movers had before) is refused as a client.
        let (server_only, _) = issue(&issuer, &names, &[ExtendedKeyUsagePurpose::ServerAuth]).unwrap();
        let server_only = CertificateDer::from_pem_slice(server_only.as_bytes()).unwrap();
        assert!(client_verifier(&ca_cert).verify_client_cert(&server_only, &[], now).is_err());
    }

    /// The CA as the only trusted root.
    fn roots(ca_pem: &str) -> std::sync::Arc<rustls::RootCertStore> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
        std::sync::Arc::new(roots)
    }

    fn client_verifier(ca_pem: &str) -> std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider).build().unwrap()
    }

    fn verifies_as(names: &[String], server_name: &str) {
        let (ca_cert, ca_key) = new_ca().unwrap();
        let issuer = Issuer::new(ca_params().unwrap(), KeyPair::from_pem(&ca_key).unwrap());
        let (cert, key) = issue(&issuer, names, &[ExtendedKeyUsagePurpose::ServerAuth]).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        // A rustls verifier built on the CA accepts the server certificate for its name.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let verifier = server_verifier(&ca_cert);
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &ServerName::try_from(server_name).unwrap(), &[], UnixTime::now())
            .unwrap();
    }

    fn server_verifier(ca_pem: &str) -> std::sync::Arc<rustls::client::WebPkiServerVerifier> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider).build().unwrap()
    }

    fn pem_of(d: &BTreeMap<String, ByteString>, key: &str) -> String {
        String::from_utf8(d[key].0.clone()).unwrap()
    }

    #[test]
    fn the_token_key_secret_holds_a_pkcs8_key_and_its_public_point() {
        use crate::upload::token::{Claims, SigningKey, VerifyingKey};
        let d = token_key_data().unwrap();
        let key = SigningKey::from_pkcs8(&d["signing.key"].0).unwrap();
        assert_eq!(d["verify.key"].0.len(), 65, "an uncompressed SEC1 P-256 point");
        assert_eq!(key.public_key().0, d["verify.key"].0);
        let token = key.sign(&Claims::upload("ns", "disk", 1000)).unwrap();
        assert_eq!(VerifyingKey(d["verify.key"].0.clone()).verify(&token, 1000).unwrap().name, "disk");
    }

    #[test]
    fn the_upload_proxy_secret_serves_its_names_and_has_a_client_certificate_movers_accept() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let (ca_cert, ca_key) = new_ca().unwrap();
        let ca = Ca { cert: ca_cert.clone(), key: ca_key };
        let d = uploadproxy_data(&ca, "cdi-rs", &[4; 65]).unwrap();
        assert_eq!(pem_of(&d, "ca.crt"), ca_cert);
        assert_eq!(d["verify.key"].0, vec![4; 65]);
        let verifier = server_verifier(&ca_cert);
        let serving = CertificateDer::from_pem_slice(pem_of(&d, "tls.crt").as_bytes()).unwrap();
        let now = UnixTime::now();
        for name in
            ["cdi-uploadproxy", "cdi-uploadproxy.cdi-rs", "cdi-uploadproxy.cdi-rs.svc", "localhost", "127.0.0.1", "::1"]
        {
            let name = ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&serving, &[], &name, &[], now).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = ServerName::try_from("cdi-api.cdi-rs.svc").unwrap();
        assert!(verifier.verify_server_cert(&serving, &[], &other, &[], now).is_err());
        assert!(pem_of(&d, "tls.key").contains("PRIVATE KEY") && pem_of(&d, "client.key").contains("PRIVATE KEY"));

        // The client certificate: a mover (which trusts the CA) accepts it as a client; it
        // is not a server certificate (EKU clientAuth only).
        let client = CertificateDer::from_pem_slice(pem_of(&d, "client.crt").as_bytes()).unwrap();
        let client_verifier = client_verifier(&ca_cert);
        client_verifier.verify_client_cert(&client, &[], now).unwrap();
        let as_server = ServerName::try_from("cdi-uploadproxy").unwrap();
        assert!(verifier.verify_server_cert(&client, &[], &as_server, &[], now).is_err(), "clientAuth only");
        assert!(client_verifier.verify_client_cert(&serving, &[], now).is_err(), "serverAuth only");
    }

    #[test]
    fn the_api_certificate_is_for_the_name_the_aggregator_calls() {
        // kube-aggregator dials <service>.<namespace>.svc.
        verifies_as(&service_dns_names("cdi-api", "cdi-rs"), "cdi-api.cdi-rs.svc");
    }
}
