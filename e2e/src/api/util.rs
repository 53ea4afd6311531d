//! Small helpers shared by the API layer: timestamps, names, base64.

use serde_json::Value;

/// `metav1.Time`: RFC 3339 at second precision, UTC.
pub fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `metav1.Time` this many seconds from now.
pub fn now_plus(secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Seconds since a `metav1.Time`, for AGE columns.
pub fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else { return "<unknown>".into() };
    let s = (jiff::Timestamp::now() - t).get_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The five-character suffix `generateName` gets (Kubernetes' alphabet: no vowels, no
/// look-alike digits).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Standard base64 with padding, as Kubernetes encodes Secret data.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `obj.metadata.<field>` as a string, or "".
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

/// A string at a dotted path, or "".
pub fn str_at<'a>(obj: &'a Value, path: &str) -> &'a str {
    let mut cur = obj;
    for seg in path.split('.') {
        cur = &cur[seg];
    }
    cur.as_str().unwrap_or_default()
}

/// A Kubernetes quantity (`1Gi`, `500M`, `1e9`) in bytes, rounded up; `None` when it is no
/// size. The populator's parser, so the stand-ins read requests exactly as it does.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    cdi_populator::api::quantity::parse_bytes(q).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn quantities_are_read_as_kubernetes_reads_them() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("64Mi"), Some(64 << 20));
        assert_eq!(quantity_bytes("1.5k"), Some(1500));
        assert_eq!(quantity_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1Ei"), Some(1 << 60));
        assert_eq!(quantity_bytes("x"), None);
    }
}
