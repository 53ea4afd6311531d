//! What the mover and the populator would otherwise each write for themselves. Neither
//! Kubernetes nor gRPC appears here, so the mover links it without linking kube, and
//! `cdi-proto` stays generated code only.
//!
//! | module | what |
//! |---|---|
//! | [`one_line`] | an error and its causes on one line |
//! | [`checksum`] | `md5|sha1|sha256|sha512:HEX` specs; hashing them with the `digest` feature |
//! | [`backoff`] | capped doubling retry delays |
//! | [`human_bytes`] | sizes for people: `2.0 GiB` |
//! | [`utc`] | UTC calendar time from the system clock |
//! | [`TLS_READ_BUFFER`] | how much a TLS server reads from its socket at once |
//! | `heap` | glibc's allocator tuned for streaming (the `heap` feature) |
//! | `http` | `/metrics` and `/healthz` (the `http` feature) |
//! | `mtls` | mutual-TLS connections to movers for tonic (the `mtls` feature) |
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backoff;
pub mod checksum;
#[cfg(feature = "heap")]
#[allow(unsafe_code)] // mallopt and malloc_trim
pub mod heap;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mtls")]
pub mod mtls;
pub mod utc;

/// What a TLS server reads from its socket at once. rustls asks for 4 KiB at a time: unbuffered,
/// a 1 GiB upload costs a quarter of a million read calls on each side of a hop.
pub const TLS_READ_BUFFER: usize = 128 << 10;

/// An error and its causes on one line: "a: b: c".
///
/// Errors that already embed their cause's text in their own message would repeat it, so a
/// cause whose text the line already holds is skipped.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// A size for people, in binary units with one decimal: `512 B`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn causes_follow_on_one_line_unless_already_said() {
        let inner = E("connection reset", None);
        let middle = E("reading block 7", Some(Box::new(inner)));
        assert_eq!(
            super::one_line(&E("import failed", Some(Box::new(middle)))),
            "import failed: reading block 7: connection reset"
        );
        let echoing = E("reading block 7: connection reset", Some(Box::new(E("connection reset", None))));
        assert_eq!(super::one_line(&echoing), "reading block 7: connection reset");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(super::human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
