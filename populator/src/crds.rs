//! The CustomResourceDefinitions of our kinds, generated from the Rust types, and their YAML.
//!
//! `deploy/crds/` holds this output, one file per CRD ([`file_name`]);
//! `cargo run -p cdi-populator -- crds --out-dir deploy/crds` rewrites it and a test fails
//! when the two drift apart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{
    CDI, CDIConfig, DataSource, DataVolume, StorageProfile, VolumeCloneSource, VolumeImportSource, VolumeUploadSource,
};

/// The command that regenerates `deploy/crds/` (quoted by the drift test).
pub const REGENERATE: &str = "cargo run -p cdi-populator -- crds --out-dir deploy/crds";

/// Failure to render a CRD.
#[derive(Debug, thiserror::Error)]
#[error("rendering CRD {name} as YAML")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_saphyr::SerializeError,
}

/// Every CRD we serve, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        CDIConfig::crd(),
        CDI::crd(),
        StorageProfile::crd(),
        DataSource::crd(),
        DataVolume::crd(),
        VolumeCloneSource::crd(),
        VolumeImportSource::crd(),
        VolumeUploadSource::crd(),
    ]
}

/// `<group>_<plural>.yaml`, the name kubebuilder-style repositories use.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document (no leading `---`), ending in a newline.
///
/// # Errors
/// Only if the YAML writer fails, which a CRD's plain data does not make it do.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, RenderError> {
    serde_saphyr::to_string(crd)
        .map_err(|source| RenderError { name: crd.metadata.name.clone().unwrap_or_default(), source })
}

/// All CRDs as one multi-document YAML stream, `---` separated.
///
/// # Errors
/// As [`to_yaml`].
pub fn all_yaml() -> Result<String, RenderError> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.iter().map(|doc| format!("---\n{doc}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn crds_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
    }

    #[test]
    fn deploy_crds_match_the_rust_types() {
        let expected: BTreeMap<String, String> =
            all().iter().map(|crd| (file_name(crd), to_yaml(crd).unwrap())).collect();
        let mut found = BTreeMap::new();
        for entry in std::fs::read_dir(crds_dir()).expect("deploy/crds exists") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            found.insert(name, std::fs::read_to_string(&path).unwrap());
        }
        let stale: Vec<&String> = found
            .iter()
            .filter(|(name, text)| expected.get(*name) != Some(*text))
            .map(|(name, _)| name)
            .chain(expected.keys().filter(|name| !found.contains_key(*name)))
            .collect();
        assert!(
            stale.is_empty(),
            "deploy/crds is out of date with the Rust types ({stale:?}); regenerate it with \
             `{REGENERATE}` (remove files of kinds that no longer exist)"
        );
    }

    #[test]
    fn all_yaml_is_the_files_joined_by_document_separators() {
        let yaml = all_yaml().unwrap();
        assert_eq!(yaml.matches("---\n").count(), all().len());
        for crd in all() {
            assert!(yaml.contains(&to_yaml(&crd).unwrap()));
        }
        let docs: Vec<CustomResourceDefinition> = serde_saphyr::from_str_multiple(&yaml).expect("our YAML parses back");
        assert_eq!(docs, all());
    }
}
