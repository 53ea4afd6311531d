//! Uploads: a user's image streamed through the upload proxy into a claim's node mover.
//!
//! * [`token`]: the short-lived, claim-scoped tokens `UploadTokenRequest` issues and the
//!   proxy checks.

pub mod token;
