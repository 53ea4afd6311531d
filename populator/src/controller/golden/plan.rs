//! What a golden PVC asks for, read from its `storage.import.*` annotations into the same
//! [`ImportPlan`] a `VolumeImportSource` becomes, so the rest of the import (the request to
//! the mover, its Secret and ConfigMap) is the populate flow's.

use std::collections::BTreeMap;

use crate::api::DataVolumeSourceHttp;
use crate::api::names::annotations as cdi_ann;
use crate::api::names::values::import_source;
use crate::plan::{ContentType, HttpImport, ImportPlan, ImportSource, PlanError};

/// The annotations that define the import: a change to any of them is a new import (and
/// lifts a terminal failure).
pub const INPUTS: [&str; 5] = [
    cdi_ann::IMPORT_ENDPOINT,
    cdi_ann::IMPORT_SOURCE,
    cdi_ann::IMPORT_SECRET_NAME,
    cdi_ann::IMPORT_CERT_CONFIG_MAP,
    cdi_ann::CONTENT_TYPE,
];

/// Why the annotations cannot be imported as they are. Messages never quote the endpoint
/// (it may carry credentials).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoldenError {
    #[error(
        "annotation {} {value:?} is not a source: use http, s3, registry, gcs, imageio, vddk or none",
        cdi_ann::IMPORT_SOURCE
    )]
    UnknownSource { value: String },
    #[error("annotation {} is not an absolute http:// or https:// URL", cdi_ann::IMPORT_ENDPOINT)]
    InvalidEndpoint,
    #[error("annotation {} {value:?} is not one of \"kubevirt\", \"archive\"", cdi_ann::CONTENT_TYPE)]
    InvalidContentType { value: String },
    #[error(
        "annotation {} \"archive\" cannot be used with a {variant} source: use \"kubevirt\"",
        cdi_ann::CONTENT_TYPE
    )]
    ArchiveNotAllowed { variant: &'static str },
    #[error("{0}")]
    Plan(#[from] PlanError),
}

/// The source variant the `storage.import.source` annotation names (unset: http). The one
/// place where the annotation's spelling meets the data path's support: a variant the mover
/// cannot fill yet is `Unsupported`, reported and left alone.
fn variant(value: Option<&str>) -> Result<Variant, GoldenError> {
    Ok(match value.unwrap_or("") {
        "" | import_source::HTTP => Variant::Http,
        import_source::NONE => Variant::Blank,
        import_source::S3 => Variant::Unsupported("s3"),
        import_source::REGISTRY => Variant::Unsupported("registry"),
        import_source::GCS => Variant::Unsupported("gcs"),
        import_source::IMAGEIO => Variant::Unsupported("imageio"),
        import_source::VDDK => Variant::Unsupported("vddk"),
        other => return Err(GoldenError::UnknownSource { value: other.to_string() }),
    })
}

enum Variant {
    Http,
    Blank,
    Unsupported(&'static str),
}

/// The plan for `annotations` (those of a PVC carrying the endpoint annotation).
pub fn plan(annotations: &BTreeMap<String, String>) -> Result<ImportPlan, GoldenError> {
    let get = |k: &str| annotations.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let content_type = match get(cdi_ann::CONTENT_TYPE) {
        None | Some("kubevirt") => ContentType::Kubevirt,
        Some("archive") => ContentType::Archive,
        Some(other) => return Err(GoldenError::InvalidContentType { value: other.to_string() }),
    };
    let source = match variant(get(cdi_ann::IMPORT_SOURCE))? {
        Variant::Http => {
            let url = get(cdi_ann::IMPORT_ENDPOINT).unwrap_or_default();
            // Checked here, so a bad endpoint is named by its annotation.
            let parsed = url::Url::parse(url).map_err(|_| GoldenError::InvalidEndpoint)?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(GoldenError::InvalidEndpoint);
            }
            let http = DataVolumeSourceHttp {
                url: url.to_string(),
                secret_ref: get(cdi_ann::IMPORT_SECRET_NAME).map(str::to_string),
                cert_config_map: get(cdi_ann::IMPORT_CERT_CONFIG_MAP).map(str::to_string),
                ..Default::default()
            };
            ImportSource::Http(HttpImport::try_from(&http)?)
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

/// A digest of the import's inputs ([`INPUTS`]): recorded with a terminal failure, so the
/// import is tried again only once one of them changes. FNV-1a 64, stable across versions.
pub fn inputs_key(annotations: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for key in INPUTS {
        // Unset and empty are the same; a separator keeps "ab"+"c" apart from "a"+"bc".
        let value = annotations.get(key).map(String::as_str).unwrap_or("");
        for b in value.bytes().chain([0xff]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
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
    fn sources_the_mover_cannot_fill_are_unsupported_and_blank_is_none() {
        for (value, name) in [("s3", "s3"), ("registry", "registry"), ("gcs", "gcs")] {
            let p = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, "s3://b/o"), (cdi_ann::IMPORT_SOURCE, value)])).unwrap();
            assert_eq!(p.source, ImportSource::Unsupported(name), "{value}");
        }
        let blank = plan(&anns(&[(cdi_ann::IMPORT_ENDPOINT, "none"), (cdi_ann::IMPORT_SOURCE, "none")])).unwrap();
        assert_eq!(blank.source, ImportSource::Blank);
    }

    #[test]
    fn bad_annotations_are_named_without_quoting_the_endpoint() {
        let bad = |pairs: &[(&str, &str)]| plan(&anns(pairs)).unwrap_err();
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, "ftp://user:pw@host/x")]);
        assert_eq!(e, GoldenError::InvalidEndpoint);
        assert!(!e.to_string().contains("pw"));
        assert_eq!(bad(&[(cdi_ann::IMPORT_ENDPOINT, "")]), GoldenError::InvalidEndpoint);
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, URL), (cdi_ann::IMPORT_SOURCE, "nfs")]);
        assert!(e.to_string().contains("\"nfs\" is not a source"), "{e}");
        let e = bad(&[(cdi_ann::IMPORT_ENDPOINT, URL), (cdi_ann::CONTENT_TYPE, "iso")]);
        assert!(matches!(e, GoldenError::InvalidContentType { .. }));
        let e = bad(&[
            (cdi_ann::IMPORT_ENDPOINT, "x"),
            (cdi_ann::IMPORT_SOURCE, "none"),
            (cdi_ann::CONTENT_TYPE, "archive"),
        ]);
        assert_eq!(e, GoldenError::ArchiveNotAllowed { variant: "blank" });
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
    }
}
