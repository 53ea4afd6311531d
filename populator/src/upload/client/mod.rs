//! The upload client (`cdi-upload`).
