//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` and `oci-archive:///PATH`, and platforms.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;

use super::error::RegistryError;

/// Where a container image is.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// An image in a registry, pulled through the OCI distribution API.
    Docker(Reference),
    /// A local OCI image layout packed as a tar (`skopeo copy … oci-archive:FILE`).
    OciArchive(PathBuf),
}

impl ImageRef {
    /// Parses `docker://…` or `oci-archive:///…`; `None` when `s` is neither.
    pub fn parse(s: &str) -> Option<Result<ImageRef, RegistryError>> {
        let (scheme, rest) = s.split_once("://")?;
        Some(match scheme.to_ascii_lowercase().as_str() {
            "docker" => parse_docker(s, rest).map(ImageRef::Docker),
            "oci-archive" => {
                if rest.starts_with('/') && rest.len() > 1 {
                    Ok(ImageRef::OciArchive(PathBuf::from(rest)))
                } else {
                    Err(RegistryError::InvalidReference {
                        reference: s.to_string(),
                        reason: "an oci-archive URL needs an absolute path, e.g. oci-archive:///var/images/disk.tar"
                            .into(),
                    })
                }
            }
            _ => return None,
        })
    }

    /// The image as it may be shown: the reference carries no credentials (they are never
    /// accepted in it), so this is the whole of it.
    pub fn display(&self) -> String {
        match self {
            ImageRef::Docker(r) => format!("docker://{}", r.whole()),
            ImageRef::OciArchive(p) => format!("oci-archive://{}", p.display()),
        }
    }
}

fn parse_docker(whole: &str, rest: &str) -> Result<Reference, RegistryError> {
    let bad = |reason: &str| RegistryError::InvalidReference {
        // Never echo user info: show the part after the last '@' of the authority.
        reference: format!("docker://{}", shown_without_userinfo(rest)),
        reason: reason.to_string(),
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.contains('@') {
        return Err(bad("credentials do not belong in the URL; pass them as a pull secret or --creds-file"));
    }
    if !rest.contains('/') || host.is_empty() {
        return Err(bad("expected docker://HOST[:PORT]/REPOSITORY[:TAG|@DIGEST]"));
    }
    let _ = whole;
    Reference::from_str(rest).map_err(|e| bad(&e.to_string()))
}

fn shown_without_userinfo(rest: &str) -> String {
    match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.rsplit_once('@').map_or(host, |(_, h)| h)),
        None => rest.rsplit_once('@').map_or(rest, |(_, h)| h).to_string(),
    }
}

/// An OS/architecture pair as image indexes name them (Go's names: amd64, arm64, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this mover runs on: linux and Rust's architecture in Go's spelling.
    pub fn current() -> Platform {
        Platform { os: "linux".into(), architecture: go_arch(std::env::consts::ARCH).into(), variant: None }
    }

    /// Whether an index entry's platform is this one. A variant asked for must match; none
    /// asked for accepts any (arm64 images are `v8` or unlabelled).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && go_arch(architecture) == self.architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = RegistryError;

    /// `ARCH`, `OS/ARCH` or `OS/ARCH/VARIANT`; architectures in Rust's or Go's spelling.
    fn from_str(s: &str) -> Result<Platform, RegistryError> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let bad = || RegistryError::InvalidPlatform { platform: s.to_string() };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
            _ => return Err(bad()),
        };
        Ok(Platform { os: os.to_string(), architecture: go_arch(arch).to_string(), variant })
    }
}

/// Rust's `std::env::consts::ARCH` names → the GOARCH names image indexes use.
pub fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "powerpc64" => "ppc64",
        "powerpc64le" => "ppc64le",
        "riscv64gc" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_references() {
        let Some(Ok(ImageRef::Docker(r))) = ImageRef::parse("docker://127.0.0.1:5000/vm/disk:v1") else { panic!() };
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "vm/disk");
        assert_eq!(r.tag(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let Some(Ok(ImageRef::Docker(r))) = ImageRef::parse(&format!("docker://quay.io/x/y@{d}")) else { panic!() };
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(ImageRef::parse("https://h/x").is_none());
        assert!(matches!(ImageRef::parse("docker://justname"), Some(Err(_))));
    }

    #[test]
    fn refuses_credentials_in_the_url_without_echoing_them() {
        let Some(Err(e)) = ImageRef::parse("docker://bob:hunter2@reg.example/x:1") else { panic!() };
        let m = e.to_string();
        assert!(!m.contains("hunter2") && !m.contains("bob") && m.contains("reg.example/x:1"), "{m}");
    }

    #[test]
    fn parses_oci_archives() {
        assert!(
            matches!(ImageRef::parse("oci-archive:///tmp/a.tar"), Some(Ok(ImageRef::OciArchive(p))) if p == std::path::Path::new("/tmp/a.tar"))
        );
        assert!(matches!(ImageRef::parse("oci-archive://rel.tar"), Some(Err(_))));
    }

    #[test]
    fn platforms() {
        let p: Platform = "arm64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64");
        let p: Platform = "linux/x86_64".parse().unwrap();
        assert_eq!(p.architecture, "amd64");
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert!(p.matches("linux", "arm", Some("v7")) && !p.matches("linux", "arm", Some("v6")));
        assert!("linux//x".parse::<Platform>().is_err());
        assert!(Platform::current().matches("linux", go_arch(std::env::consts::ARCH), None));
    }
}
