//! What a golden PVC asks for, read from its `storage.import.*` annotations into the same
//! [`ImportPlan`] a `VolumeImportSource` becomes, so the rest of the import (the request to
//! the mover, its Secret and ConfigMap) is the populate flow's.

use std::collections::BTreeMap;

use crate::api::names::annotations as cdi_ann;
use crate::api::names::values::import_source;
use crate::api::{
    DataVolumeSourceGcs, DataVolumeSourceHttp, DataVolumeSourceRegistry, DataVolumeSourceS3, PlatformOptions,
};
use crate::plan::{ContentType, GcsImport, HttpImport, ImportPlan, ImportSource, PlanError, RegistryImport, S3Import};

/// The annotations that define the import: a change to any of them is a new import (and
/// lifts a terminal failure).
pub const INPUTS: [&str; 5] = [
    cdi_ann::IMPORT_ENDPOINT,
    cdi_ann::IMPORT_SOURCE,
    cdi_ann::IMPORT_SECRET_NAME,
    cdi_ann::IMPORT_CERT_CONFIG_MAP,
    cdi_ann::CONTENT_TYPE,
];

/// Inputs of registry imports only, added after [`INPUTS`]: they count in [`inputs_key`]
/// only when set, so the key of a claim without them is what it was before they counted.
pub const REGISTRY_INPUTS: [&str; 3] =
    [cdi_ann::IMPORT_REGISTRY_METHOD, cdi_ann::IMPORT_REGISTRY_ARCHITECTURE, cdi_ann::IMPORT_REGISTRY_IMAGE_STREAM];

/// Why the annotations cannot be imported as they are. Messages never quote the endpoint
/// (it may carry credentials).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoldenError {
    #[error(
        "annotation {} {value:?} is not a source: use http, s3, registry, gcs, imageio, vddk or none",
        cdi_ann::IMPORT_SOURCE
    )]
    UnknownSource { value: String },
    #[error("annotation {} is not {expected}", cdi_ann::IMPORT_ENDPOINT)]
    InvalidEndpoint { expected: &'static str },
    #[error("annotation {} {value:?} is not one of \"kubevirt\", \"archive\"", cdi_ann::CONTENT_TYPE)]
    InvalidContentType { value: String },
    #[error(
        "annotation {} \"archive\" cannot be used with a {variant} source: use \"kubevirt\"",
        cdi_ann::CONTENT_TYPE
    )]
    ArchiveNotAllowed { variant: &'static str },
    #[error("annotation {} {value:?} is not one of \"pod\", \"node\"", cdi_ann::IMPORT_REGISTRY_METHOD)]
    InvalidPullMethod { value: String },
    #[error(
        "annotation {} asks for an OpenShift image stream, which cdi-rs cannot resolve: put a \
         docker://HOST/REPOSITORY:TAG URL in {} and remove {}",
        cdi_ann::IMPORT_REGISTRY_IMAGE_STREAM,
        cdi_ann::IMPORT_ENDPOINT,
        cdi_ann::IMPORT_REGISTRY_IMAGE_STREAM
    )]
    ImageStream,
    #[error("{0}")]
    Plan(#[from] PlanError),
}

/// The source variant: the `storage.import.source` annotation's, or when that is unset, the
/// one the endpoint's scheme names (`s3://`, `docker://`/`oci-archive://`, `gs://`), else
/// http. The one place where the annotation's spelling meets the data path's support: a
/// variant the mover cannot fill yet is `Unsupported`, reported and left alone.
fn variant(value: Option<&str>, endpoint: &str) -> Result<Variant, GoldenError> {
    Ok(match value.unwrap_or("") {
        "" => match endpoint.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()).as_deref() {
            Some("s3") => Variant::S3,
            Some("docker" | "oci-archive") => Variant::Registry,
            Some("gs") => Variant::Gcs,
            _ => Variant::Http,
        },
        import_source::HTTP => Variant::Http,
        import_source::NONE => Variant::Blank,
        import_source::S3 => Variant::S3,
        import_source::REGISTRY => Variant::Registry,
        import_source::GCS => Variant::Gcs,
        import_source::IMAGEIO => Variant::Unsupported("imageio"),
        import_source::VDDK => Variant::Unsupported("vddk"),
        other => return Err(GoldenError::UnknownSource { value: other.to_string() }),
    })
}

enum Variant {
    Http,
    S3,
    Gcs,
    Registry,
    Blank,
    Unsupported(&'static str),
}

/// Whether the annotations make the claim an upload target (`storage.upload.target`, as
/// `virtctl image-upload` writes it on a PVC it creates).
pub fn is_upload(annotations: &BTreeMap<String, String>) -> bool {
    annotations.contains_key(cdi_ann::reserved::UPLOAD_TARGET)
}

fn content_type(annotations: &BTreeMap<String, String>) -> Result<ContentType, GoldenError> {
    match annotations.get(cdi_ann::CONTENT_TYPE).map(String::as_str).filter(|v| !v.is_empty()) {
        None | Some("kubevirt") => Ok(ContentType::Kubevirt),
        Some("archive") => Ok(ContentType::Archive),
        Some(other) => Err(GoldenError::InvalidContentType { value: other.to_string() }),
    }
}

/// The plan for `annotations` (those of a PVC carrying the endpoint annotation, or the
/// upload target one, which wins when both are there).
pub fn plan(annotations: &BTreeMap<String, String>) -> Result<ImportPlan, GoldenError> {
    let get = |k: &str| annotations.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let content_type = content_type(annotations)?;
    if is_upload(annotations) {
        return Ok(ImportPlan { source: ImportSource::Upload, content_type, preallocation: None, target_claim: None });
    }
    let url = get(cdi_ann::IMPORT_ENDPOINT).unwrap_or_default().to_string();
    let secret_ref = get(cdi_ann::IMPORT_SECRET_NAME).map(str::to_string);
    let cert_config_map = get(cdi_ann::IMPORT_CERT_CONFIG_MAP).map(str::to_string);
    let source = match variant(get(cdi_ann::IMPORT_SOURCE), &url)? {
        Variant::Http => {
            // Checked here, so a bad endpoint is named by its annotation.
            let invalid = || GoldenError::InvalidEndpoint { expected: "an absolute http:// or https:// URL" };
            let parsed = url::Url::parse(&url).map_err(|_| invalid())?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(invalid());
            }
            let http = DataVolumeSourceHttp { url, secret_ref, cert_config_map, ..Default::default() };
            ImportSource::Http(HttpImport::try_from(&http)?)
        }
        Variant::S3 => {
            let s3 = DataVolumeSourceS3 { url, secret_ref, cert_config_map };
            let expected = "an s3://BUCKET/KEY or http(s)://ENDPOINT/BUCKET/KEY URL";
            ImportSource::S3(S3Import::try_from(&s3).map_err(|e| endpoint_error(e, expected))?)
        }
        Variant::Gcs => {
            let gcs = DataVolumeSourceGcs { url, secret_ref };
            let expected = "a gs://BUCKET/OBJECT or https://storage.cloud.google.com/BUCKET/OBJECT URL";
            ImportSource::Gcs(GcsImport::try_from(&gcs).map_err(|e| endpoint_error(e, expected))?)
        }
        Variant::Registry => {
            if get(cdi_ann::IMPORT_REGISTRY_IMAGE_STREAM) == Some("true") {
                return Err(GoldenError::ImageStream);
            }
            let registry = DataVolumeSourceRegistry {
                url: Some(url),
                image_stream: None,
                pull_method: get(cdi_ann::IMPORT_REGISTRY_METHOD).map(str::to_string),
                secret_ref,
                cert_config_map,
                platform: Some(PlatformOptions {
                    architecture: get(cdi_ann::IMPORT_REGISTRY_ARCHITECTURE).map(str::to_string),
                }),
            };
            let expected = "a docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST] or oci-archive:///PATH URL";
            ImportSource::Registry(RegistryImport::try_from(&registry).map_err(|e| match e {
                PlanError::InvalidPullMethod { value } => GoldenError::InvalidPullMethod { value },
                // An empty endpoint: the plan says "url or imageStream", here it is the endpoint.
                PlanError::RegistryUrlOrImageStream => GoldenError::InvalidEndpoint { expected },
                e => endpoint_error(e, expected),
            })?)
        }
        Variant::Blank => ImportSource::Blank,
        Variant::Unsupported(name) => ImportSource::Unsupported(name),
    };
    // CDI's rule: a blank disk or a container disk is never an archive.
    if content_type == ContentType::Archive && matches!(source.name(), "blank" | "registry") {
        return Err(GoldenError::ArchiveNotAllowed { variant: source.name() });
    }
    Ok(ImportPlan { source, content_type, preallocation: None, target_claim: None })
}

/// A URL the plan refuses is the endpoint annotation's fault: named so, with the forms the
/// source takes.
fn endpoint_error(e: PlanError, expected: &'static str) -> GoldenError {
    match e {
        PlanError::MissingUrl { .. }
        | PlanError::InvalidUrl { .. }
        | PlanError::UnsupportedUrlScheme { .. }
        | PlanError::IncompleteUrl { .. } => GoldenError::InvalidEndpoint { expected },
        other => GoldenError::Plan(other),
    }
}

/// A digest of the import's inputs ([`INPUTS`]): recorded with a terminal failure, so the
/// import is tried again only once one of them changes. FNV-1a 64, stable across versions.
pub fn inputs_key(annotations: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |value: &str| {
        // A separator keeps "ab"+"c" apart from "a"+"bc".
        for b in value.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for key in INPUTS {
        // Unset and empty are the same.
        mix(annotations.get(key).map(String::as_str).unwrap_or(""));
    }
    for key in REGISTRY_INPUTS {
        if let Some(value) = annotations.get(key).filter(|v| !v.is_empty()) {
            mix(key);
            mix(value);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const URL: &str = "https://images.example.com/disk.qcow2";

    #[test]
    fn an_upload_target_is_an_upload_of_its_content_type_and_wins_over_an_endpoint() {
        let p = plan(&anns(&[(cdi_ann::reserved::UPLOAD_TARGET, "")])).unwrap();
        assert_eq!((p.source, p.content_type), (ImportSource::Upload, ContentType::Kubevirt));
        let both = anns(&[
            (cdi_ann::reserved::UPLOAD_TARGET, ""),
            (cdi_ann::IMPORT_ENDPOINT, URL),
            (cdi_ann::CONTENT_TYPE, "archive"),
        ]);
        let p = plan(&both).unwrap();
        assert_eq!((p.source, p.content_type), (ImportSource::Upload, ContentType::Archive));
        let bad = anns(&[(cdi_ann::reserved::UPLOAD_TARGET, ""), (cdi_ann::CONTENT_TYPE, "iso")]);
        assert!(matches!(plan(&bad), Err(GoldenError::InvalidContentType { .. })));
    }

    #[test]
    fn http_is_the_default_and_takes_the_secret_and_config_map() {
        let p = plan(&anns(&[
            (cdi_ann::IMPORT_ENDPOINT, URL),
            (cdi_ann::IMPORT_SECRET_NAME, "creds"),
            (cdi_ann::IMPORT_CERT_CONFIG_MAP, "ca"),
        ]))
        .unwrap();
        let ImportSource::Http(http) = &p.source else { panic!("{p:?}") };
        assert_eq!((http.url.as_str(), http.secret_ref.as_deref()), (URL, Some("creds")));
        assert_eq!(http.cert_config_map.as_deref(), Some("ca"));
        assert_eq!(p.content_type, ContentType::Kubevirt);
        let explicit = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, URL), (cdi_ann::IMPORT_SOURCE, "http")])).unwrap();
        assert!(matches!(explicit.source, ImportSource::Http(_)));
    }

    #[test]
    fn registry_s3_and_gcs_are_imported_and_blank_is_none() {
        let p = plan(&anns(&[
            (cdi_ann::IMPORT_ENDPOINT, "docker://registry.local:5000/disk:1"),
            (cdi_ann::IMPORT_SOURCE, "registry"),
            (cdi_ann::IMPORT_SECRET_NAME, "pull"),
            (cdi_ann::IMPORT_CERT_CONFIG_MAP, "ca"),
            (cdi_ann::IMPORT_REGISTRY_METHOD, "node"),
            (cdi_ann::IMPORT_REGISTRY_ARCHITECTURE, "arm64"),
        ]))
        .unwrap();
        let ImportSource::Registry(r) = &p.source else { panic!("{p:?}") };
        assert_eq!(r.url, "docker://registry.local:5000/disk:1");
        assert_eq!((r.secret_ref.as_deref(), r.cert_config_map.as_deref()), (Some("pull"), Some("ca")));
        assert_eq!((r.pull_method, r.architecture.as_deref()), (crate::plan::PullMethod::Node, Some("arm64")));

        let p = plan(&anns(&[
            (cdi_ann::IMPORT_ENDPOINT, "http://127.0.0.1:5000/bucket/disk.qcow2"),
            (cdi_ann::IMPORT_SOURCE, "s3"),
            (cdi_ann::IMPORT_SECRET_NAME, "keys"),
        ]))
        .unwrap();
        let ImportSource::S3(o) = &p.source else { panic!("{p:?}") };
        assert_eq!(
            (o.url.as_str(), o.secret_ref.as_deref()),
            ("http://127.0.0.1:5000/bucket/disk.qcow2", Some("keys"))
        );

        let p = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, "gs://bucket/disk.img"), (cdi_ann::IMPORT_SOURCE, "gcs")]))
            .unwrap();
        assert!(matches!(&p.source, ImportSource::Gcs(g) if g.url == "gs://bucket/disk.img" && g.secret_ref.is_none()));

        let blank = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, "none"), (cdi_ann::IMPORT_SOURCE, "none")])).unwrap();
        assert_eq!(blank.source, ImportSource::Blank);
        for (value, name) in [("imageio", "imageio"), ("vddk", "vddk")] {
            let p = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, URL), (cdi_ann::IMPORT_SOURCE, value)])).unwrap();
            assert_eq!(p.source, ImportSource::Unsupported(name), "{value}");
        }
    }

    #[test]
    fn without_a_source_annotation_the_endpoints_scheme_chooses() {
        let chosen = |endpoint: &str| plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, endpoint)])).unwrap().source.name();
        assert_eq!(chosen("s3://bucket/disk.img"), "s3");
        assert_eq!(chosen("docker://quay.io/containerdisks/fedora:40"), "registry");
        assert_eq!(chosen("oci-archive:///images/disk.tar"), "registry");
        assert_eq!(chosen("gs://bucket/disk.img"), "gcs");
        assert_eq!(chosen("https://storage.cloud.google.com/bucket/disk.img"), "http", "http(s) stays http");
        assert_eq!(chosen("http://minio.local/bucket/disk.img"), "http");
        // An explicit source wins over the scheme.
        let p = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, "https://minio.local/b/k"), (cdi_ann::IMPORT_SOURCE, "s3")]));
        assert_eq!(p.unwrap().source.name(), "s3");
    }

    #[test]
    fn bad_registry_s3_and_gcs_endpoints_name_the_annotation_and_the_forms() {
        let bad = |pairs: &[(&str, &str)]| plan(&anns(pairs)).unwrap_err();
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "https://user:pw@quay.io/x"), (cdi_ann::IMPORT_SOURCE, "registry")]);
        assert!(matches!(e, GoldenError::InvalidEndpoint { expected } if expected.contains("docker://")), "{e:?}");
        assert!(e.to_string().starts_with(&format!("annotation {} is not a docker://", cdi_ann::IMPORT_ENDPOINT)));
        assert!(!e.to_string().contains("pw@"), "{e}");
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, ""), (cdi_ann::IMPORT_SOURCE, "registry")]);
        assert!(matches!(e, GoldenError::InvalidEndpoint { .. }), "{e:?}");
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "s3://bucket-only")]);
        assert!(e.to_string().contains("s3://BUCKET/KEY"), "{e}");
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "https://example.com/b/o"), (cdi_ann::IMPORT_SOURCE, "gcs")]);
        assert!(e.to_string().contains("gs://BUCKET/OBJECT"), "{e}");
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "docker://r/d:1"), (cdi_ann::IMPORT_REGISTRY_METHOD, "kubelet")]);
        assert_eq!(e, GoldenError::InvalidPullMethod { value: "kubelet".into() });
        let e = bad(&[
            (cdi_ann::IMPORT_ENDPOINT, "fedora:latest"),
            (cdi_ann::IMPORT_SOURCE, "registry"),
            (cdi_ann::IMPORT_REGISTRY_IMAGE_STREAM, "true"),
        ]);
        assert_eq!(e, GoldenError::ImageStream);
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "docker://r/d:1"), (cdi_ann::CONTENT_TYPE, "archive")]);
        assert_eq!(e, GoldenError::ArchiveNotAllowed { variant: "registry" });
    }

    #[test]
    fn the_key_changes_with_any_input_and_only_with_inputs() {
        let base = anns(&[(cdi_ann::IMPORT_ENDPOINT, URL), (cdi_ann::IMPORT_SECRET_NAME, "a")]);
        let k = inputs_key(&base);
        assert_eq!(k, inputs_key(&base));
        let mut other = base.clone();
        other.insert("unrelated".into(), "x".into());
        other.insert(cdi_ann::IMPORT_STATUS.into(), "Failed".into());
        assert_eq!(k, inputs_key(&other), "status and other annotations are not inputs");
        let mut changed = base.clone();
        changed.insert(cdi_ann::IMPORT_SECRET_NAME.into(), "b".into());
        assert_ne!(k, inputs_key(&changed));
        // Values do not run into each other.
        let a = anns(&[(cdi_ann::IMPORT_ENDPOINT, "ab"), (cdi_ann::IMPORT_SOURCE, "c")]);
        let b = anns(&[(cdi_ann::IMPORT_ENDPOINT, "a"), (cdi_ann::IMPORT_SOURCE, "bc")]);
        assert_ne!(inputs_key(&a), inputs_key(&b));
        // The registry inputs count when set, and only then: keys recorded before they
        // counted stay valid.
        let mut arch = base.clone();
        arch.insert(cdi_ann::IMPORT_REGISTRY_ARCHITECTURE.into(), "arm64".into());
        assert_ne!(k, inputs_key(&arch));
        let mut method = base.clone();
        method.insert(cdi_ann::IMPORT_REGISTRY_METHOD.into(), "arm64".into());
        assert_ne!(inputs_key(&arch), inputs_key(&method), "the key says which input holds the value");
        arch.insert(cdi_ann::IMPORT_REGISTRY_ARCHITECTURE.into(), String::new());
        assert_eq!(k, inputs_key(&arch));
        assert_eq!(k, "642d69778c0dcbdf", "the key of a claim without registry inputs is unchanged");
    }
}
