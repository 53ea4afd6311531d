//! The one failure the DataVolume and configuration reconciles have: an API call, named by
//! what it tried, so the log says which object could not be read or written.

/// An API call that failed; the reconcile is retried.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot {op} {name}: {source}")]
    Kube {
        op: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl ApiError {
    pub fn kube(op: &'static str, name: &str, source: kube::Error) -> ApiError {
        ApiError::Kube { op, name: name.to_string(), source: Box::new(source) }
    }
}
