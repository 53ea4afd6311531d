//! Uploads: a user's image streamed through the upload proxy into a claim's node mover.
//!
//! * [`token`]: the short-lived, claim-scoped tokens `UploadTokenRequest` issues and the
//!   proxy checks.
//! * [`proxy`]: the upload proxy (`cdi-populator upload-proxy`).
//! * [`client`]: the upload client (`cdi-upload`), speaking virtctl's protocol.

pub mod client;
pub mod proxy;
pub mod token;
