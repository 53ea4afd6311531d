//! Why an import failed, as the populator acts on it: read from the mover's wire enum once,
//! at the edge, and mapped from there to CDI's condition reasons and to metric labels.
//! Nothing downstream compares strings.

use cdi_proto::v1 as pb;

use super::vocab::condition;

/// Why a mover task, or the request for one, failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    NotFound,
    Unauthorized,
    SourceUnavailable,
    SourceInvalid,
    ChecksumMismatch,
    TooLarge,
    InvalidImage,
    UnsupportedImage,
    InvalidArchive,
    TargetFailed,
    /// The source, or the request built from it, cannot work (also the populator's own
    /// verdict on a source it cannot turn into a request).
    InvalidRequest,
    Cancelled,
    /// A reason this populator does not know: a newer mover's, or none at all.
    Unknown,
}

impl FailureReason {
    pub const ALL: [FailureReason; 13] = [
        FailureReason::NotFound,
        FailureReason::Unauthorized,
        FailureReason::SourceUnavailable,
        FailureReason::SourceInvalid,
        FailureReason::ChecksumMismatch,
        FailureReason::TooLarge,
        FailureReason::InvalidImage,
        FailureReason::UnsupportedImage,
        FailureReason::InvalidArchive,
        FailureReason::TargetFailed,
        FailureReason::InvalidRequest,
        FailureReason::Cancelled,
        FailureReason::Unknown,
    ];

    /// The mover's spelling (`Failed.reason`), also the metric label and the text in
    /// event notes.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NotFound => "NotFound",
            FailureReason::Unauthorized => "Unauthorized",
            FailureReason::SourceUnavailable => "SourceUnavailable",
            FailureReason::SourceInvalid => "SourceInvalid",
            FailureReason::ChecksumMismatch => "ChecksumMismatch",
            FailureReason::TooLarge => "TooLarge",
            FailureReason::InvalidImage => "InvalidImage",
            FailureReason::UnsupportedImage => "UnsupportedImage",
            FailureReason::InvalidArchive => "InvalidArchive",
            FailureReason::TargetFailed => "TargetFailed",
            FailureReason::InvalidRequest => "InvalidRequest",
            FailureReason::Cancelled => "Cancelled",
            FailureReason::Unknown => "Unknown",
        }
    }

    /// The reason of CDI's `Running` condition (false) for this failure: CDI singles out a
    /// checksum mismatch; every other failure is an `Error`.
    pub fn condition_reason(self) -> &'static str {
        match self {
            FailureReason::ChecksumMismatch => condition::CHECKSUM_ERROR,
            _ => condition::ERROR,
        }
    }

    /// From the wire: the typed code; from a mover that predates it (UNSPECIFIED), its
    /// string, read here and nowhere else.
    pub fn from_wire(code: i32, reason: &str) -> FailureReason {
        use pb::FailureReason as W;
        match W::try_from(code) {
            Ok(W::NotFound) => FailureReason::NotFound,
            Ok(W::Unauthorized) => FailureReason::Unauthorized,
            Ok(W::SourceUnavailable) => FailureReason::SourceUnavailable,
            Ok(W::SourceInvalid) => FailureReason::SourceInvalid,
            Ok(W::ChecksumMismatch) => FailureReason::ChecksumMismatch,
            Ok(W::TooLarge) => FailureReason::TooLarge,
            Ok(W::InvalidImage) => FailureReason::InvalidImage,
            Ok(W::UnsupportedImage) => FailureReason::UnsupportedImage,
            Ok(W::InvalidArchive) => FailureReason::InvalidArchive,
            Ok(W::TargetFailed) => FailureReason::TargetFailed,
            Ok(W::InvalidRequest) => FailureReason::InvalidRequest,
            Ok(W::Cancelled) => FailureReason::Cancelled,
            Ok(W::Unspecified) => {
                FailureReason::ALL.into_iter().find(|r| r.as_str() == reason).unwrap_or(FailureReason::Unknown)
            }
            // A code added after this populator was built.
            Err(_) => FailureReason::Unknown,
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed task, as the populator keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub reason: FailureReason,
    pub message: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

impl From<pb::Failed> for TaskFailure {
    fn from(f: pb::Failed) -> TaskFailure {
        TaskFailure {
            reason: FailureReason::from_wire(f.reason_code, &f.reason),
            message: f.message,
            retryable: f.retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(code: pb::FailureReason, reason: &str) -> pb::Failed {
        pb::Failed { reason: reason.into(), message: "m".into(), retryable: false, reason_code: code as i32 }
    }

    #[test]
    fn the_typed_code_decides_whatever_the_string_says() {
        let f = TaskFailure::from(wire(pb::FailureReason::ChecksumMismatch, "something else entirely"));
        assert_eq!(f.reason, FailureReason::ChecksumMismatch);
        // A string that merely contains a known name is not that reason.
        let f = TaskFailure::from(wire(pb::FailureReason::Unspecified, "NotChecksumMismatch"));
        assert_eq!(f.reason, FailureReason::Unknown);
    }

    #[test]
    fn an_old_mover_is_understood_by_its_string() {
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::from_wire(0, r.as_str()), r);
        }
        assert_eq!(FailureReason::from_wire(0, ""), FailureReason::Unknown);
    }

    #[test]
    fn a_newer_movers_code_is_unknown_not_misread() {
        assert_eq!(FailureReason::from_wire(999, "ChecksumMismatch"), FailureReason::Unknown);
    }

    #[test]
    fn every_wire_code_maps_to_the_reason_of_the_same_name() {
        for code in (1..).map_while(|n| pb::FailureReason::try_from(n).ok()) {
            let reason = FailureReason::from_wire(code as i32, "");
            assert_ne!(reason, FailureReason::Unknown, "{code:?} is not mapped");
            let name = code.as_str_name().trim_start_matches("FAILURE_REASON_").replace('_', "");
            assert_eq!(name, reason.as_str().to_ascii_uppercase());
        }
    }

    #[test]
    fn only_a_checksum_mismatch_has_its_own_condition_reason() {
        for r in FailureReason::ALL {
            let expected = if r == FailureReason::ChecksumMismatch { "ChecksumError" } else { "Error" };
            assert_eq!(r.condition_reason(), expected, "{r:?}");
        }
    }
}
