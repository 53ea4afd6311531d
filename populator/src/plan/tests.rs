use k8s_openapi::api::core::v1::TypedLocalObjectReference;

use super::*;
use crate::api::*;

const SHA256: &str = "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

fn mk_http(url: &str) -> DataVolumeSourceHttp {
    DataVolumeSourceHttp { url: url.to_owned(), ..Default::default() }
}

fn mk_import(source: ImportSourceType) -> VolumeImportSourceSpec {
    VolumeImportSourceSpec { source: Some(source), ..Default::default() }
}

fn mk_http_import(http: DataVolumeSourceHttp) -> VolumeImportSourceSpec {
    mk_import(ImportSourceType { http: Some(http), ..Default::default() })
}

fn plan(spec: &VolumeImportSourceSpec) -> Result<ImportPlan, PlanError> {
    ImportPlan::try_from(spec)
}

fn http_of(plan: ImportPlan) -> HttpImport {
    match plan.source {
        ImportSource::Http(http) => http,
        other => panic!("expected an http source, got {other:?}"),
    }
}

#[test]
fn a_full_http_source_becomes_a_checked_http_import() {
    let spec = VolumeImportSourceSpec {
        content_type: Some("archive".into()),
        preallocation: Some(true),
        ..mk_http_import(DataVolumeSourceHttp {
            url: "https://images.example.com/root.tar.gz".into(),
            secret_ref: Some("basic".into()),
            cert_config_map: Some("ca".into()),
            extra_headers: vec!["X-Trace:  abc ".into(), "Cookie: a=b; c=d".into()],
            secret_extra_headers: vec!["token".into()],
            checksum: Some(SHA256.into()),
            insecure_skip_verify: Some(true),
        })
    };
    let plan = plan(&spec).unwrap();
    assert_eq!(plan.content_type, ContentType::Archive);
    assert_eq!(plan.preallocation, Some(true));
    assert_eq!(plan.target_claim, None);
    let http = http_of(plan);
    assert_eq!(http.url, "https://images.example.com/root.tar.gz");
    assert_eq!(http.secret_ref.as_deref(), Some("basic"));
    assert_eq!(http.cert_config_map.as_deref(), Some("ca"));
    assert_eq!(
        http.extra_headers,
        [
            Header { name: "X-Trace".into(), value: "abc".into() },
            Header { name: "Cookie".into(), value: "a=b; c=d".into() },
        ]
    );
    assert_eq!(http.secret_extra_headers, ["token"]);
    assert_eq!(
        http.checksum.unwrap().to_string(),
        SHA256.to_ascii_lowercase(),
        "checksums are normalised to the mover's lower-case form"
    );
    assert!(http.insecure_skip_verify);
}

#[test]
fn a_minimal_http_source_gets_cdi_defaults() {
    let plan = plan(&mk_http_import(mk_http("http://10.0.0.1:8080/disk.img"))).unwrap();
    assert_eq!(plan.content_type, ContentType::Kubevirt);
    assert!(!plan.preallocate(false));
    assert!(plan.preallocate(true), "unset preallocation follows the cluster default");
    assert!(plan.serves_claim("anything"));
    let http = http_of(plan);
    assert_eq!(http.secret_ref, None);
    assert!(http.extra_headers.is_empty());
    assert_eq!(http.checksum, None);
    assert!(!http.insecure_skip_verify);
}

#[test]
fn empty_strings_mean_unset_as_in_cdi() {
    let spec = VolumeImportSourceSpec {
        content_type: Some(String::new()),
        target_claim: Some(String::new()),
        ..mk_http_import(DataVolumeSourceHttp {
            secret_ref: Some(String::new()),
            cert_config_map: Some(String::new()),
            checksum: Some(String::new()),
            ..mk_http("https://example.com/a.img")
        })
    };
    let plan = plan(&spec).unwrap();
    assert_eq!(plan.content_type, ContentType::Kubevirt);
    assert_eq!(plan.target_claim, None);
    let http = http_of(plan);
    assert_eq!((http.secret_ref, http.cert_config_map, http.checksum), (None, None, None));
}

#[test]
fn a_source_without_any_variant_is_refused() {
    assert_eq!(plan(&VolumeImportSourceSpec::default()), Err(PlanError::NoSource));
    assert_eq!(plan(&mk_import(ImportSourceType::default())), Err(PlanError::NoSource));
}

#[test]
fn a_source_with_two_variants_is_refused_and_names_both() {
    let spec = mk_import(ImportSourceType {
        http: Some(mk_http("https://example.com/a.img")),
        blank: Some(DataVolumeBlankImage {}),
        ..Default::default()
    });
    let err = plan(&spec).unwrap_err();
    assert_eq!(err, PlanError::MultipleSources { found: vec!["http", "blank"] });
    assert!(err.to_string().contains("(http, blank)"), "{err}");
}

#[test]
fn a_blank_source_is_a_blank_disk_spelled_none_in_the_annotation() {
    let spec = VolumeImportSourceSpec {
        preallocation: Some(true),
        ..mk_import(ImportSourceType { blank: Some(DataVolumeBlankImage {}), ..Default::default() })
    };
    let blank = plan(&spec).unwrap();
    assert_eq!(blank.source, ImportSource::Blank);
    assert_eq!(blank.content_type, ContentType::Kubevirt);
    assert!(blank.preallocate(false));
    assert_eq!(blank.source.name(), "blank");
    assert_eq!(blank.source.annotation_value(), crate::api::names::values::import_source::NONE);
    let http = plan(&mk_http_import(mk_http("https://example.com/a.img"))).unwrap();
    assert_eq!(http.source.annotation_value(), crate::api::names::values::import_source::HTTP);
}

#[test]
fn imageio_and_vddk_are_unsupported_by_name_never_dropped() {
    let cases: [(&str, ImportSourceType); 2] = [
        ("imageio", ImportSourceType { imageio: Some(DataVolumeSourceImageIo::default()), ..Default::default() }),
        ("vddk", ImportSourceType { vddk: Some(DataVolumeSourceVddk::default()), ..Default::default() }),
    ];
    for (name, source) in cases {
        let plan = plan(&mk_import(source)).unwrap();
        assert_eq!(plan.source, ImportSource::Unsupported(name));
        assert_eq!(plan.source.name(), name);
    }
}

fn mk_registry(registry: DataVolumeSourceRegistry) -> VolumeImportSourceSpec {
    mk_import(ImportSourceType { registry: Some(registry), ..Default::default() })
}

fn registry_url(url: &str) -> DataVolumeSourceRegistry {
    DataVolumeSourceRegistry { url: Some(url.into()), ..Default::default() }
}

fn registry_of(spec: &VolumeImportSourceSpec) -> RegistryImport {
    match plan(spec).unwrap().source {
        ImportSource::Registry(r) => r,
        other => panic!("expected a registry source, got {other:?}"),
    }
}

#[test]
fn a_registry_source_keeps_its_secret_ca_pull_method_and_architecture() {
    let spec = mk_registry(DataVolumeSourceRegistry {
        secret_ref: Some("pull".into()),
        cert_config_map: Some("registry-ca".into()),
        pull_method: Some("node".into()),
        platform: Some(PlatformOptions { architecture: Some("arm64".into()) }),
        ..registry_url("docker://registry.example.com:5000/disks/fedora:40")
    });
    let registry = registry_of(&spec);
    assert_eq!(registry.url, "docker://registry.example.com:5000/disks/fedora:40");
    assert_eq!(registry.secret_ref.as_deref(), Some("pull"));
    assert_eq!(registry.cert_config_map.as_deref(), Some("registry-ca"));
    assert_eq!(registry.pull_method, PullMethod::Node);
    assert_eq!(registry.architecture.as_deref(), Some("arm64"));
    assert_eq!(registry.registry_host().as_deref(), Some("registry.example.com:5000"));
    assert_eq!(plan(&spec).unwrap().source.annotation_value(), "registry");

    let minimal = registry_of(&mk_registry(DataVolumeSourceRegistry {
        pull_method: Some(String::new()),
        platform: Some(PlatformOptions { architecture: Some(String::new()) }),
        ..registry_url("docker://quay.io/containerdisks/fedora@sha256:0123")
    }));
    assert_eq!(minimal.registry_host().as_deref(), Some("quay.io"));
    assert_eq!((minimal.pull_method, minimal.architecture, minimal.secret_ref), (PullMethod::Pod, None, None));
    let archive = registry_of(&mk_registry(registry_url("oci-archive:///var/images/disk.tar")));
    assert_eq!(archive.registry_host(), None);
}

#[test]
fn insecure_registries_match_the_urls_host_and_port_only() {
    let registry = registry_of(&mk_registry(registry_url("docker://Registry.local:5000/disk:1")));
    let listed = |entries: &[&str]| registry.is_insecure(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
    assert!(listed(&["other:5000", "registry.local:5000"]));
    assert!(listed(&[" docker://registry.local:5000/ "]), "a scheme or trailing slash on the entry is ignored");
    assert!(!listed(&["registry.local"]), "another port is another registry");
    assert!(!listed(&["registry.local:50000", "registry.local:500"]));
    assert!(!listed(&[]));
    let plain = registry_of(&mk_registry(registry_url("docker://registry.local/disk:1")));
    assert!(plain.is_insecure(&["registry.local".into()]));
    assert!(!plain.is_insecure(&["registry.local:5000".into()]));
    let archive = registry_of(&mk_registry(registry_url("oci-archive:///registry.local/disk.tar")));
    assert!(!archive.is_insecure(&["registry.local".into(), String::new()]));
}

#[test]
fn registry_sources_are_refused_with_the_field_and_what_to_do() {
    let err = |registry: DataVolumeSourceRegistry| plan(&mk_registry(registry)).unwrap_err();
    assert_eq!(err(registry_url("")), PlanError::RegistryUrlOrImageStream);
    assert_eq!(err(DataVolumeSourceRegistry::default()), PlanError::RegistryUrlOrImageStream);
    let stream = DataVolumeSourceRegistry {
        image_stream: Some("fedora:latest".into()),
        pull_method: Some("node".into()),
        ..Default::default()
    };
    let e = err(stream.clone());
    assert_eq!(e, PlanError::ImageStreamUnsupported);
    assert!(e.to_string().contains("spec.source.registry.url"), "{e}");
    assert_eq!(
        err(DataVolumeSourceRegistry { url: Some("docker://a/b".into()), ..stream }),
        PlanError::RegistryUrlOrImageStream
    );
    let e = err(registry_url("https://user:hunter2@quay.io/disk"));
    assert!(matches!(&e, PlanError::UnsupportedUrlScheme { scheme, .. } if scheme == "https"), "{e:?}");
    assert!(e.to_string().contains("docker://HOST"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(matches!(err(registry_url("quay.io/disk")), PlanError::InvalidUrl { .. }));
    assert!(matches!(err(registry_url("docker:///disk")), PlanError::IncompleteUrl { what: "a registry host", .. }));
    assert!(matches!(err(registry_url("docker://quay.io/")), PlanError::IncompleteUrl { what: "a repository", .. }));
    assert!(matches!(err(registry_url("oci-archive://")), PlanError::IncompleteUrl { what: "an archive path", .. }));
    let e = err(DataVolumeSourceRegistry { pull_method: Some("Node".into()), ..registry_url("docker://a/b") });
    assert_eq!(e, PlanError::InvalidPullMethod { value: "Node".into() });
}

fn mk_s3(url: &str) -> VolumeImportSourceSpec {
    mk_import(ImportSourceType {
        s3: Some(DataVolumeSourceS3 { url: url.into(), ..Default::default() }),
        ..Default::default()
    })
}

#[test]
fn s3_sources_take_an_aws_or_a_path_style_url_with_their_secret_and_ca() {
    let spec = mk_import(ImportSourceType {
        s3: Some(DataVolumeSourceS3 {
            url: "https://minio.example.com:9000/disks/fedora.qcow2".into(),
            secret_ref: Some("s3-keys".into()),
            cert_config_map: Some("s3-ca".into()),
        }),
        ..Default::default()
    });
    let ImportSource::S3(s3) = plan(&spec).unwrap().source else { panic!("an s3 source") };
    assert_eq!(s3.url, "https://minio.example.com:9000/disks/fedora.qcow2");
    assert_eq!((s3.secret_ref.as_deref(), s3.cert_config_map.as_deref()), (Some("s3-keys"), Some("s3-ca")));
    for ok in ["s3://bucket/dir/disk.img", "http://127.0.0.1:5000/bucket/disk.img.xz"] {
        let p = plan(&mk_s3(ok)).unwrap();
        assert!(matches!(&p.source, ImportSource::S3(s) if s.url == ok && s.secret_ref.is_none()), "{ok}");
        assert_eq!(p.source.annotation_value(), "s3");
    }
    let err = |url: &str| plan(&mk_s3(url)).unwrap_err();
    assert_eq!(err(""), PlanError::MissingUrl { field: "spec.source.s3.url" });
    assert!(matches!(err("gs://bucket/disk"), PlanError::UnsupportedUrlScheme { .. }));
    assert!(matches!(err("s3://bucket"), PlanError::IncompleteUrl { what: "an object key", .. }));
    assert!(matches!(err("s3://bucket/"), PlanError::IncompleteUrl { what: "an object key", .. }));
    assert!(matches!(err("https://minio.example.com/bucket"), PlanError::IncompleteUrl { what: "an object key", .. }));
    assert!(matches!(err("https://minio.example.com/"), PlanError::IncompleteUrl { what: "a bucket", .. }));
    let e = err("ftp://key:hunter2@minio/b/k");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

fn mk_gcs(url: &str, secret: Option<&str>) -> VolumeImportSourceSpec {
    let gcs = DataVolumeSourceGcs { url: url.into(), secret_ref: secret.map(Into::into) };
    mk_import(ImportSourceType { gcs: Some(gcs), ..Default::default() })
}

#[test]
fn gcs_sources_take_gs_urls_and_googles_https_form_only() {
    for url in ["gs://bucket/images/disk.qcow2", "https://storage.cloud.google.com/bucket/disk.img"] {
        let ImportSource::Gcs(gcs) = plan(&mk_gcs(url, Some("sa"))).unwrap().source else { panic!("gcs") };
        assert_eq!((gcs.url.as_str(), gcs.secret_ref.as_deref()), (url, Some("sa")));
    }
    let anonymous = plan(&mk_gcs("gs://b/o", Some(""))).unwrap();
    assert!(matches!(&anonymous.source, ImportSource::Gcs(g) if g.secret_ref.is_none()));
    assert_eq!(anonymous.source.annotation_value(), "gcs");
    let err = |url: &str| plan(&mk_gcs(url, None)).unwrap_err();
    assert!(matches!(err("https://example.com/bucket/o"), PlanError::IncompleteUrl { .. }));
    assert!(matches!(err("s3://bucket/o"), PlanError::UnsupportedUrlScheme { .. }));
    assert!(matches!(err("gs://bucket"), PlanError::IncompleteUrl { what: "an object", .. }));
    assert!(matches!(err("https://storage.cloud.google.com/bucket"), PlanError::IncompleteUrl { .. }));
}

#[test]
fn http_urls_must_be_absolute_http_or_https() {
    let err = |url: &str| plan(&mk_http_import(mk_http(url))).unwrap_err();
    assert_eq!(err(""), PlanError::MissingUrl { field: "spec.source.http.url" });
    assert!(matches!(err("images.example.com/a.img"), PlanError::InvalidUrl { .. }));
    assert!(matches!(err("https://"), PlanError::InvalidUrl { .. }));
    for (url, scheme) in
        [("ftp://example.com/a.img", "ftp"), ("gs://bucket/a.img", "gs"), ("file:///etc/shadow", "file")]
    {
        assert_eq!(
            err(url),
            PlanError::UnsupportedUrlScheme {
                field: "spec.source.http.url",
                scheme: scheme.into(),
                expected: "http or https"
            }
        );
    }
}

#[test]
fn url_errors_never_quote_the_url() {
    // URLs may carry credentials (user:password@, signed query strings).
    for url in ["ftp://user:hunter2@example.com/a", "https://user:hunter2@/a"] {
        let message = plan(&mk_http_import(mk_http(url))).unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn content_type_must_be_kubevirt_or_archive() {
    let spec = VolumeImportSourceSpec {
        content_type: Some("Archive".into()),
        ..mk_http_import(mk_http("https://example.com/a.tar"))
    };
    assert_eq!(plan(&spec), Err(PlanError::InvalidContentType { value: "Archive".into() }));
}

#[test]
fn blank_and_registry_sources_cannot_be_archives() {
    for (variant, source) in [
        ("blank", ImportSourceType { blank: Some(DataVolumeBlankImage {}), ..Default::default() }),
        ("registry", ImportSourceType { registry: Some(DataVolumeSourceRegistry::default()), ..Default::default() }),
    ] {
        let spec = VolumeImportSourceSpec { content_type: Some("archive".into()), ..mk_import(source) };
        assert_eq!(plan(&spec), Err(PlanError::ArchiveNotAllowed { variant }));
    }
}

#[test]
fn malformed_extra_headers_are_refused_not_dropped() {
    let with_headers = |headers: &[&str]| {
        plan(&mk_http_import(DataVolumeSourceHttp {
            extra_headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            ..mk_http("https://example.com/a.img")
        }))
    };
    let cases = [
        ("X-Good: 1", "no colon s3cr3t", HeaderError::MissingColon),
        ("X-Good: 1", ": s3cr3t", HeaderError::EmptyName),
        ("X-Good: 1", "Bad Name: s3cr3t", HeaderError::InvalidName),
        ("X-Good: 1", "X-Split: s3cr3t\r\nInjected: b", HeaderError::InvalidValue),
    ];
    for (good, bad, cause) in cases {
        let err = with_headers(&[good, bad]).unwrap_err();
        assert_eq!(err, PlanError::InvalidExtraHeader { index: 1, cause });
        let chain = format!("{err}: {cause}");
        assert!(!chain.contains("s3cr3t"), "header value quoted in {chain}");
    }
}

#[test]
fn header_values_are_redacted_from_debug_output() {
    let header = Header::parse("Authorization: Bearer hunter2").unwrap();
    assert_eq!(header.value, "Bearer hunter2");
    assert!(!format!("{header:?}").contains("hunter2"));
}

#[test]
fn empty_secret_header_names_are_refused() {
    let spec = mk_http_import(DataVolumeSourceHttp {
        secret_extra_headers: vec!["ok".into(), String::new()],
        ..mk_http("https://example.com/a.img")
    });
    assert_eq!(plan(&spec), Err(PlanError::EmptySecretExtraHeader { index: 1 }));
}

#[test]
fn checksums_are_checked_like_cdi() {
    assert_eq!(
        parse_checksum(" SHA1 : 2FD4E1C67A2D28FCED849EE1BB76E7391B93EB12 ").unwrap(),
        Checksum { algorithm: ChecksumAlgorithm::Sha1, hex: "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12".into() }
    );
    assert!(parse_checksum(&format!("md5:{}", "a".repeat(32))).is_ok());
    assert!(parse_checksum(&format!("sha512:{}", "0".repeat(128))).is_ok());
    assert_eq!(parse_checksum("d41d8cd98f00b204e9800998ecf8427e"), Err(ChecksumError::MissingColon));
    assert_eq!(parse_checksum("crc32:deadbeef"), Err(ChecksumError::UnknownAlgorithm("crc32".into())));
    assert_eq!(
        parse_checksum("sha256:abcd"),
        Err(ChecksumError::WrongLength { algorithm: "sha256", expected: 64, found: 4 })
    );
    assert_eq!(parse_checksum(&format!("md5:{}", "g".repeat(32))), Err(ChecksumError::NotHex));
    assert_eq!(parse_checksum("md5:"), Err(ChecksumError::WrongLength { algorithm: "md5", expected: 32, found: 0 }));

    let spec = mk_http_import(DataVolumeSourceHttp {
        checksum: Some("sha256:abcd".into()),
        ..mk_http("https://example.com/a.img")
    });
    assert!(matches!(plan(&spec), Err(PlanError::InvalidChecksum(ChecksumError::WrongLength { .. }))));
}

#[test]
fn target_claim_restricts_the_claims_served() {
    let spec = VolumeImportSourceSpec {
        target_claim: Some("vm-disk".into()),
        ..mk_http_import(mk_http("https://example.com/a.img"))
    };
    let plan = plan(&spec).unwrap();
    assert!(plan.serves_claim("vm-disk"));
    assert!(!plan.serves_claim("other"));
}

#[test]
fn the_plan_converts_from_the_whole_object_too() {
    let source = VolumeImportSource::new("src", mk_http_import(mk_http("https://example.com/a.img")));
    assert_eq!(ImportPlan::try_from(&source), ImportPlan::try_from(&source.spec));
}

#[test]
fn upload_sources_check_their_content_type() {
    let plan = UploadPlan::try_from(&VolumeUploadSource::new(
        "up",
        VolumeUploadSourceSpec { content_type: Some("archive".into()), preallocation: Some(false) },
    ))
    .unwrap();
    assert_eq!(plan, UploadPlan { content_type: ContentType::Archive, preallocation: Some(false) });
    assert!(matches!(
        UploadPlan::try_from(&VolumeUploadSourceSpec { content_type: Some("iso".into()), preallocation: None }),
        Err(PlanError::InvalidContentType { .. })
    ));
}

fn mk_clone(kind: &str, api_group: Option<&str>, name: &str) -> VolumeCloneSourceSpec {
    VolumeCloneSourceSpec {
        source: TypedLocalObjectReference {
            api_group: api_group.map(str::to_owned),
            kind: kind.into(),
            name: name.into(),
        },
        preallocation: None,
        priority_class_name: Some(String::new()),
    }
}

#[test]
fn clone_sources_name_a_pvc_or_a_snapshot() {
    let plan = ClonePlan::try_from(&mk_clone("PersistentVolumeClaim", None, "golden")).unwrap();
    assert_eq!(plan.source, CloneSource::Pvc { name: "golden".into() });
    assert_eq!(plan.priority_class_name, None);
    let plan = ClonePlan::try_from(&mk_clone("VolumeSnapshot", Some("snapshot.storage.k8s.io"), "snap")).unwrap();
    assert_eq!(plan.source, CloneSource::Snapshot { name: "snap".into() });

    assert_eq!(
        ClonePlan::try_from(&mk_clone("ConfigMap", None, "x")),
        Err(PlanError::UnsupportedCloneSourceKind { kind: "ConfigMap".into() })
    );
    assert_eq!(
        ClonePlan::try_from(&mk_clone("PersistentVolumeClaim", None, "")),
        Err(PlanError::MissingCloneSourceName)
    );
}

/// How the plan reads `checksum`.
fn parse_checksum(text: &str) -> Result<Checksum, ChecksumError> {
    text.parse()
}
