//! CDI's volume size arithmetic, reproduced exactly: users size PVCs by it, so a disk.img
//! one MiB off is a compatibility bug.

/// CDI aligns image sizes to 1 MiB (`DefaultAlignBlockSize`).
pub const ALIGN: u64 = 1 << 20;

/// CDI's default filesystem overhead (6 %).
pub const DEFAULT_OVERHEAD: f64 = 0.06;

/// Space an image may use on a filesystem volume with `available` bytes:
/// `round_down(ceil(available / (1 + overhead)), 1 MiB)`, in float64 as CDI computes it.
pub fn usable_space(overhead: f64, available: u64) -> u64 {
    let without_overhead = (available as f64 / (1.0 + overhead)).ceil() as u64;
    without_overhead / ALIGN * ALIGN
}

/// Volume size needed to hold an image of `requested` bytes with the given overhead:
/// `ceil(round_up(requested, 1 MiB) * (1 + overhead))`.
pub fn required_space(overhead: f64, requested: u64) -> u64 {
    let aligned = requested.div_ceil(ALIGN) * ALIGN;
    (aligned as f64 * (1.0 + overhead)).ceil() as u64
}

/// Checks a filesystem-overhead value the way CDI's CRD pattern does (`0` to `1`).
pub fn validate_overhead(overhead: f64) -> Result<f64, String> {
    if overhead.is_finite() && (0.0..=1.0).contains(&overhead) {
        Ok(overhead)
    } else {
        Err(format!("filesystem overhead {overhead} must be between 0 and 1 (e.g. 0.06 for 6%)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;

    #[test]
    fn one_gib_at_the_default_overhead() {
        // 1073741824 / 1.06 = 1012963984.9 → 1012963985 → 966 MiB.
        assert_eq!(usable_space(DEFAULT_OVERHEAD, GI), 966 * MI);
        assert_eq!(usable_space(0.0, GI), GI);
        assert_eq!(usable_space(DEFAULT_OVERHEAD, 10 * GI), 10_129_244_160);
    }

    /// CDI's own table: a volume requested for an image of size S (rounded up to 1 MiB, plus
    /// one byte, inflated by the overhead) gives back exactly S as usable space, or S + 1 MiB
    /// once the image no longer fits in S.
    #[test]
    fn usable_space_inverts_the_request_inflation_like_cdi() {
        for overhead in [0.0, DEFAULT_OVERHEAD, 0.75] {
            for virtual_size in [MI, 40 * MI, GI, 40 * GI] {
                for i in virtual_size - 1024..virtual_size + 1024 {
                    let requested = ((i.div_ceil(ALIGN) * ALIGN + 1) as f64 * (1.0 + overhead)) as u64;
                    let want = if i <= virtual_size { virtual_size } else { virtual_size + MI };
                    assert_eq!(usable_space(overhead, requested), want, "overhead {overhead} size {i}");
                }
            }
        }
    }

    #[test]
    fn required_space_adds_the_overhead_to_the_aligned_size() {
        for overhead in [0.0, DEFAULT_OVERHEAD, 0.75] {
            for image in [MI, 40 * MI, GI, 40 * GI] {
                for tested in image - 1024..image + 1024 {
                    let aligned = if tested > image { image + MI } else { image };
                    let actual = (required_space(overhead, tested) - aligned) as f64 / aligned as f64;
                    assert!((actual - overhead).abs() < 0.01, "overhead {overhead} size {tested}");
                }
            }
        }
    }

    #[test]
    fn overhead_bounds() {
        assert!(validate_overhead(0.06).is_ok());
        assert!(validate_overhead(1.0).is_ok());
        assert!(validate_overhead(-0.1).is_err());
        assert!(validate_overhead(f64::NAN).is_err());
    }
}
