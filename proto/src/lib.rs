//! `cdi.mover.v1`: the gRPC API of the node mover, generated from
//! `proto/cdi/mover/v1/mover.proto` (read that file for the API's documentation).
//!
//! Both ends use this crate: the mover implements [`v1::mover_server::Mover`], the populator
//! and the CLI client use [`v1::mover_client::MoverClient`].
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

/// The `cdi.mover.v1` package.
#[allow(missing_debug_implementations, clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("cdi.mover.v1");

    /// The package name, as `Capabilities.api` reports it.
    pub const API: &str = "cdi.mover.v1";

    /// Redacted: basic-auth credentials are secrets, the user name included.
    impl std::fmt::Debug for BasicAuth {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BasicAuth").field("username", &"<redacted>").field("password", &"<redacted>").finish()
        }
    }

    /// The value redacted: header values carry tokens.
    impl std::fmt::Debug for Header {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Header").field("name", &self.name).field("value", &"<redacted>").finish()
        }
    }

    /// Proxy URLs may carry a user and password: only whether each is set is shown.
    impl std::fmt::Debug for ImportProxy {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let set = |url: &str| if url.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("ImportProxy")
                .field("http_proxy", &set(&self.http_proxy))
                .field("https_proxy", &set(&self.https_proxy))
                .field("no_proxy", &self.no_proxy)
                .field("ca_pem", &self.ca_pem.len())
                .finish()
        }
    }
}

pub mod upload_wire;

/// The `.proto` source, for tools that generate their own clients.
pub const MOVER_PROTO: &str = include_str!("../cdi/mover/v1/mover.proto");

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_output_of_a_request_hides_its_credentials() {
        let request = v1::PopulateRequest {
            source: Some(v1::Source {
                kind: Some(v1::source::Kind::Http(v1::HttpSource {
                    url: "https://images.example/disk.qcow2".into(),
                    basic_auth: Some(v1::BasicAuth { username: "alice-7q".into(), password: "pw-hunter2".into() }),
                    headers: vec![v1::Header { name: "X-Token".into(), value: "tok-93kd".into() }],
                    ..Default::default()
                })),
            }),
            import_proxy: Some(v1::ImportProxy {
                http_proxy: "http://proxyuser:px-s3cret@proxy.example:3128".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shown = format!("{request:?} {request:#?}");
        for secret in ["alice-7q", "pw-hunter2", "tok-93kd", "px-s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("X-Token") && shown.contains("images.example"), "{shown}");
    }
}
