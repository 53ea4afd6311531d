//! Uploads: a user's image streamed through the upload proxy into a claim's node mover.
//!
//! * [`token`]: the short-lived, claim-scoped tokens `UploadTokenRequest` issues and the
//!   proxy checks.
//! * [`api`]: the aggregated API `upload.cdi.kubevirt.io/v1beta1` that issues them, and
//!   [`api_auth`], how it knows a request comes from the API server.
//! * [`proxy`]: the upload proxy (`cdi-populator upload-proxy`).
//! * [`client`]: the upload client (`cdi-upload`), speaking virtctl's protocol.

pub mod api;
pub mod api_auth;
#[cfg(test)]
mod api_tests;
pub mod client;
pub mod proxy;
pub mod token;
