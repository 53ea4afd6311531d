use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::api::{
    DataVolumeBlankImage, DataVolumeSourceGcs, DataVolumeSourceHttp, DataVolumeSourceRegistry, DataVolumeSourceS3,
    ImportSourceType, PlatformOptions, VolumeImportSourceSpec,
};

const PEM_A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
const PEM_B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
const SA_KEY: &str = r#"{"type": "service_account", "client_email": "x@y.iam.gserviceaccount.com"}"#;

/// The namespace's objects, in memory.
#[derive(Default)]
struct Memory {
    secrets: BTreeMap<String, Secret>,
    config_maps: BTreeMap<String, ConfigMap>,
}

impl Memory {
    fn secret(mut self, name: &str, pairs: &[(&str, &str)]) -> Memory {
        let data = pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
        let meta = ObjectMeta { name: Some(name.into()), ..Default::default() };
        self.secrets.insert(name.into(), Secret { metadata: meta, data: Some(data), ..Default::default() });
        self
    }

    fn config_map(mut self, name: &str, pairs: &[(&str, &str)]) -> Memory {
        let data = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let meta = ObjectMeta { name: Some(name.into()), ..Default::default() };
        self.config_maps.insert(name.into(), ConfigMap { metadata: meta, data: Some(data), ..Default::default() });
        self
    }
}

impl NamespaceObjects for Memory {
    fn namespace(&self) -> &str {
        "vms"
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, SourceError> {
        Ok(self.secrets.get(name).cloned())
    }

    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, SourceError> {
        Ok(self.config_maps.get(name).cloned())
    }
}

fn dest() -> Destination {
    Destination {
        task_id: "prime-uid-0".into(),
        target: pb::Target::default(),
        requested_size: 64 << 20,
        filesystem_overhead: Some(0.06),
        default_preallocation: false,
        log: None,
    }
}

fn plan_of(source: ImportSourceType) -> ImportPlan {
    ImportPlan::try_from(&VolumeImportSourceSpec { source: Some(source), ..Default::default() })
        .expect("a valid source")
}

async fn request(objects: &Memory, source: ImportSourceType, insecure: &[&str]) -> Result<pb::Source, SourceError> {
    let settings =
        ImportSettings { insecure_registries: insecure.iter().map(|s| s.to_string()).collect(), proxy: None };
    let req = populate_request(objects, &plan_of(source), dest(), &settings).await?;
    assert!(req.checksum.is_empty(), "only http sources carry a checksum");
    Ok(req.source.expect("a source"))
}

fn registry(url: &str, secret: Option<&str>, ca: Option<&str>) -> ImportSourceType {
    ImportSourceType {
        registry: Some(DataVolumeSourceRegistry {
            url: Some(url.into()),
            secret_ref: secret.map(Into::into),
            cert_config_map: ca.map(Into::into),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn s3(url: &str, secret: Option<&str>, ca: Option<&str>) -> ImportSourceType {
    ImportSourceType {
        s3: Some(DataVolumeSourceS3 {
            url: url.into(),
            secret_ref: secret.map(Into::into),
            cert_config_map: ca.map(Into::into),
        }),
        ..Default::default()
    }
}

fn gcs(url: &str, secret: Option<&str>) -> ImportSourceType {
    ImportSourceType {
        gcs: Some(DataVolumeSourceGcs { url: url.into(), secret_ref: secret.map(Into::into) }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_blank_source_becomes_the_movers_blank_source() {
    let spec = VolumeImportSourceSpec {
        source: Some(ImportSourceType { blank: Some(DataVolumeBlankImage {}), ..Default::default() }),
        preallocation: Some(true),
        ..Default::default()
    };
    let plan = ImportPlan::try_from(&spec).expect("a valid blank source");
    let req = populate_request(&Memory::default(), &plan, dest(), &ImportSettings::default()).await.expect("a request");
    assert_eq!(req.source.and_then(|s| s.kind), Some(pb::source::Kind::Blank(pb::BlankSource {})));
    assert_eq!(req.content_type, pb::ContentType::Kubevirt as i32);
    assert!(req.preallocate);
    assert!(req.checksum.is_empty());
    assert_eq!((req.requested_size, req.filesystem_overhead), (64 << 20, Some(0.06)));
}

#[tokio::test]
async fn a_registry_source_carries_credentials_every_pem_insecurity_and_architecture() {
    let objects = Memory::default()
        .secret("pull", &[("accessKeyId", "robot"), ("secretKey", "hunter2")])
        .config_map("ca", &[("a.crt", PEM_A), ("b.pem", PEM_B), ("README", "not a certificate")]);
    let mut source = registry("docker://registry.local:5000/disks/fedora:40", Some("pull"), Some("ca"));
    source.registry.as_mut().unwrap().platform = Some(PlatformOptions { architecture: Some("arm64".into()) });
    let got = request(&objects, source.clone(), &["elsewhere:5000", "registry.local:5000"]).await.unwrap();
    let Some(pb::source::Kind::Registry(r)) = got.kind else { panic!("a registry source: {got:?}") };
    assert_eq!(r.url, "docker://registry.local:5000/disks/fedora:40");
    assert_eq!(r.credentials, Some(pb::BasicAuth { username: "robot".into(), password: "hunter2".into() }));
    let pem = String::from_utf8(r.ca_pem).unwrap();
    assert!(pem.contains("AAAA") && pem.contains("BBBB") && !pem.contains("README"), "{pem}");
    assert!(r.insecure, "listed in insecureRegistries");
    assert_eq!(r.architecture, "arm64");

    let got = request(&objects, registry("docker://registry.local/disk:1", None, None), &["registry.local:5000"])
        .await
        .unwrap();
    let Some(pb::source::Kind::Registry(r)) = got.kind else { panic!("a registry source") };
    assert_eq!((r.credentials, r.ca_pem.is_empty(), r.insecure), (None, true, false));
    assert_eq!(r.architecture, "", "empty: the mover's own");
}

#[tokio::test]
async fn an_s3_source_carries_its_keys_and_ca_and_may_be_anonymous() {
    let objects = Memory::default()
        .secret("keys", &[("accessKeyId", "AKIA1"), ("secretKey", "s3cr3t")])
        .config_map("ca", &[("ca.crt", PEM_A)]);
    let got =
        request(&objects, s3("https://minio.local:9000/disks/a.qcow2", Some("keys"), Some("ca")), &[]).await.unwrap();
    let Some(pb::source::Kind::S3(o)) = got.kind else { panic!("an s3 source: {got:?}") };
    assert_eq!(o.url, "https://minio.local:9000/disks/a.qcow2");
    assert_eq!((o.access_key_id.as_str(), o.secret_key.as_str()), ("AKIA1", "s3cr3t"));
    assert_eq!(o.ca_pem, PEM_A.as_bytes());
    let got = request(&objects, s3("s3://disks/a.img", None, None), &[]).await.unwrap();
    assert_eq!(
        got.kind,
        Some(pb::source::Kind::S3(pb::S3Source { url: "s3://disks/a.img".into(), ..Default::default() }))
    );
}

#[tokio::test]
async fn a_gcs_source_carries_the_key_file_and_leaves_the_endpoint_to_the_mover() {
    let objects = Memory::default().secret("sa", &[("credentials.json", SA_KEY)]);
    let got = request(&objects, gcs("gs://disks/a.qcow2", Some("sa")), &[]).await.unwrap();
    let Some(pb::source::Kind::Gcs(g)) = got.kind else { panic!("a gcs source: {got:?}") };
    assert_eq!((g.url.as_str(), g.credentials_json.as_slice()), ("gs://disks/a.qcow2", SA_KEY.as_bytes()));
    assert_eq!(g.endpoint, "");
    let got = request(&objects, gcs("https://storage.cloud.google.com/disks/a.img", None), &[]).await.unwrap();
    let Some(pb::source::Kind::Gcs(g)) = got.kind else { panic!("a gcs source") };
    assert!(g.credentials_json.is_empty(), "anonymous");
}

#[tokio::test]
async fn secrets_without_their_keys_are_named_and_never_quoted() {
    let objects = Memory::default()
        .secret("half", &[("accessKeyId", "robot"), ("password", "hunter2")])
        .secret("sa-wrong-key", &[("key.json", SA_KEY)])
        .secret("sa-not-json", &[("credentials.json", "hunter2 is not json")]);
    for source in [registry("docker://r/d:1", Some("half"), None), s3("s3://b/k", Some("half"), None)] {
        let e = request(&objects, source, &[]).await.unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, SourceError::Secret { .. }), "{e:?}");
        assert!(message.starts_with("Secret vms/half needs the keys accessKeyId"), "{message}");
        assert!(message.contains("secretKey") && !message.contains("hunter2"), "{message}");
    }
    let e = request(&objects, gcs("gs://b/o", Some("sa-wrong-key")), &[]).await.unwrap_err().to_string();
    assert_eq!(e, "Secret vms/sa-wrong-key lacks the key credentials.json (a service-account key file)");
    let e = request(&objects, gcs("gs://b/o", Some("sa-not-json")), &[]).await.unwrap_err().to_string();
    assert!(e.contains("is not a JSON service-account key file") && !e.contains("hunter2"), "{e}");
    let e = request(&objects, gcs("gs://b/o", Some("absent")), &[]).await.unwrap_err().to_string();
    assert_eq!(e, "Secret vms/absent does not exist");
}

#[tokio::test]
async fn a_missing_or_empty_ca_config_map_is_named() {
    let objects = Memory::default().config_map("plain", &[("note", "no certificates here")]);
    let e = request(&objects, registry("docker://r/d:1", None, Some("absent")), &[]).await.unwrap_err();
    assert_eq!(e.to_string(), "ConfigMap vms/absent does not exist");
    let e = request(&objects, s3("s3://b/k", None, Some("plain")), &[]).await.unwrap_err();
    assert_eq!(e.to_string(), "ConfigMap vms/plain holds no PEM certificate");
}

#[tokio::test]
async fn http_sources_still_take_basic_auth_ca_and_checksum() {
    let objects = Memory::default()
        .secret("basic", &[("accessKeyId", "u"), ("secretKey", "p")])
        .config_map("ca", &[("ca.crt", PEM_B)]);
    let checksum = format!("sha256:{}", "a".repeat(64));
    let source = ImportSourceType {
        http: Some(DataVolumeSourceHttp {
            url: "https://example.com/a.img".into(),
            secret_ref: Some("basic".into()),
            cert_config_map: Some("ca".into()),
            checksum: Some(checksum.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = populate_request(&objects, &plan_of(source), dest(), &ImportSettings::default()).await.unwrap();
    assert_eq!(req.checksum, checksum);
    let Some(pb::source::Kind::Http(h)) = req.source.and_then(|s| s.kind) else { panic!("http") };
    assert_eq!(h.basic_auth, Some(pb::BasicAuth { username: "u".into(), password: "p".into() }));
    assert_eq!(h.ca_pem, PEM_B.as_bytes());
}

#[test]
fn only_a_node_pull_is_announced_as_a_fallback() {
    let mut node = registry("docker://r/d:1", None, None);
    node.registry.as_mut().unwrap().pull_method = Some("node".into());
    let note = node_pull_fallback(&plan_of(node)).expect("node pull falls back");
    assert!(note.contains("pullMethod node") && note.contains("pullMethod pod"), "{note}");
    assert_eq!(node_pull_fallback(&plan_of(registry("docker://r/d:1", None, None))), None);
    assert_eq!(node_pull_fallback(&plan_of(s3("s3://b/k", None, None))), None);
}

#[tokio::test]
async fn cdiconfigs_import_proxy_goes_with_network_sources_only() {
    let own = Memory::default().config_map("proxy-ca", &[("ca.pem", PEM_A), ("note", "not a certificate")]);
    let config = crate::api::ImportProxy {
        http_proxy: Some("http://proxy.example:3128".into()),
        https_proxy: Some(" http://proxy.example:3129 ".into()),
        no_proxy: Some(".svc,10.0.0.0/8".into()),
        trusted_ca_proxy: Some("proxy-ca".into()),
    };
    let proxy = import_proxy(Some(&config), &own).await.unwrap().expect("a proxy");
    assert_eq!(
        (proxy.http_proxy.as_str(), proxy.https_proxy.as_str(), proxy.no_proxy.as_str()),
        ("http://proxy.example:3128", "http://proxy.example:3129", ".svc,10.0.0.0/8")
    );
    assert_eq!(String::from_utf8(proxy.ca_pem.clone()).unwrap(), PEM_A);
    // CDIConfig without importProxy: the mover's own environment decides.
    assert_eq!(import_proxy(None, &own).await.unwrap(), None);
    // A CA ConfigMap that is not there is a clear error, naming it.
    let missing = crate::api::ImportProxy { trusted_ca_proxy: Some("gone".into()), ..Default::default() };
    let err = import_proxy(Some(&missing), &own).await.unwrap_err().to_string();
    assert!(err.contains("gone") && err.contains("does not exist"), "{err}");

    let settings = ImportSettings { insecure_registries: Vec::new(), proxy: Some(proxy.clone()) };
    let http = ImportSourceType {
        http: Some(DataVolumeSourceHttp { url: "http://images.example/d.qcow2".into(), ..Default::default() }),
        ..Default::default()
    };
    for source in
        [http, registry("docker://quay.example/vm:1", None, None), s3("s3://b/k", None, None), gcs("gs://b/o", None)]
    {
        let req = populate_request(&Memory::default(), &plan_of(source), dest(), &settings).await.unwrap();
        assert_eq!(req.import_proxy.as_ref(), Some(&proxy));
    }
    let blank = ImportSourceType { blank: Some(DataVolumeBlankImage {}), ..Default::default() };
    let req = populate_request(&Memory::default(), &plan_of(blank), dest(), &settings).await.unwrap();
    assert_eq!(req.import_proxy, None, "a blank disk fetches nothing");
}
