//! Kubernetes resource quantities (`10Gi`, `500M`, `1e9`, `1.5Gi`, `100m`), parsed as
//! apimachinery's `resource.ParseQuantity` parses them: the same grammar, the same suffixes,
//! the same rounding, the same cap. One parser for the whole workspace: the populator sizes
//! volumes with it and the mini-cluster's binder and provisioner read requests with it.
//!
//! ```text
//! quantity  ::= [+-] number suffix
//! number    ::= digits | digits "." digits | digits "." | "." digits
//! suffix    ::= binarySI | decimalSI | ("e" | "E") [+-] digits
//! binarySI  ::= Ki | Mi | Gi | Ti | Pi | Ei                  (2^10 .. 2^60)
//! decimalSI ::= n | u | m | "" | k | M | G | T | P | E       (10^-9 .. 10^18)
//! ```
//!
//! `1E` is 10^18 (the suffix), `1E3` is 1000 (an exponent). Like Kubernetes, a value is
//! rounded up (away from zero) to a whole nano unit, and a binary-suffixed value is capped
//! at 2^63 - 1 units. Unlike Kubernetes (which has arbitrary precision), a magnitude of
//! 10^39 nano units or more is refused as too large rather than carried.

use std::fmt;
use std::str::FromStr;

/// The largest magnitude a binary-suffixed quantity keeps (apimachinery's `maxAllowed`), in
/// units.
const MAX_BINARY_UNITS: u128 = i64::MAX as u128;
const NANOS_PER_UNIT: u128 = 1_000_000_000;
/// Decimal digits a `u128` always holds.
const U128_DIGITS: i64 = 38;

/// A parsed quantity: its sign and its magnitude in nano units (10^-9), rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity {
    negative: bool,
    nanos: u128,
}

/// Why a text is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("a quantity cannot be empty")]
    Empty,
    #[error("{text:?} is not a quantity: expected a number and an optional suffix, e.g. 10Gi, 500M or 1e9")]
    Format { text: String },
    #[error("{text:?} has the unknown suffix {suffix:?}: use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or eN")]
    Suffix { text: String, suffix: String },
    #[error("{text:?} is too large")]
    TooLarge { text: String },
    #[error("{text:?} is negative: a size cannot be")]
    Negative { text: String },
}

/// What a suffix multiplies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// 10^n.
    Decimal(i64),
    /// 2^n.
    Binary(u32),
}

impl Scale {
    fn of(suffix: &str) -> Option<Scale> {
        Some(match suffix {
            "n" => Scale::Decimal(-9),
            "u" => Scale::Decimal(-6),
            "m" => Scale::Decimal(-3),
            "" => Scale::Decimal(0),
            "k" => Scale::Decimal(3),
            "M" => Scale::Decimal(6),
            "G" => Scale::Decimal(9),
            "T" => Scale::Decimal(12),
            "P" => Scale::Decimal(15),
            "E" => Scale::Decimal(18),
            "Ki" => Scale::Binary(10),
            "Mi" => Scale::Binary(20),
            "Gi" => Scale::Binary(30),
            "Ti" => Scale::Binary(40),
            "Pi" => Scale::Binary(50),
            "Ei" => Scale::Binary(60),
            // An exponent: Kubernetes reads it as a 32-bit integer, sign allowed.
            _ if suffix.len() > 1 && suffix.starts_with(['e', 'E']) => {
                Scale::Decimal(suffix[1..].parse::<i32>().ok()?.into())
            }
            _ => return None,
        })
    }
}

/// The parts of a quantity's text, split as apimachinery's `parseQuantityString` splits it.
struct Parts<'a> {
    negative: bool,
    /// Integer digits, leading zeros dropped.
    whole: &'a str,
    /// Fraction digits.
    fraction: &'a str,
    suffix: &'a str,
}

fn split(text: &str) -> Option<Parts<'_>> {
    let b = text.as_bytes();
    let digits_from = |mut at: usize| {
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        at
    };
    let mut pos = 0;
    let negative = b.first() == Some(&b'-');
    if matches!(b.first(), Some(b'-' | b'+')) {
        pos = 1;
    }
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    let end = digits_from(pos);
    let whole = &text[pos..end];
    pos = end;
    let mut fraction = "";
    if b.get(pos) == Some(&b'.') {
        let end = digits_from(pos + 1);
        fraction = &text[pos + 1..end];
        pos = end;
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if matches!(b.get(pos), Some(b'-' | b'+')) {
        pos += 1;
    }
    // Anything after the suffix's digits is not part of a quantity (whitespace included).
    (digits_from(pos) == b.len()).then(|| Parts { negative, whole, fraction, suffix: &text[suffix_start..] })
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Quantity, QuantityError> {
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let parts = split(text).ok_or_else(|| QuantityError::Format { text: text.to_string() })?;
        let scale = Scale::of(parts.suffix)
            .ok_or_else(|| QuantityError::Suffix { text: text.to_string(), suffix: parts.suffix.to_string() })?;
        let (shift, doublings) = match scale {
            Scale::Decimal(n) => (n + 9, 0),
            Scale::Binary(n) => (9, n),
        };
        let too_large = || QuantityError::TooLarge { text: text.to_string() };
        let mut nanos = nanos_rounded_up(parts.whole, parts.fraction, shift, doublings).ok_or_else(too_large)?;
        if matches!(scale, Scale::Binary(_)) && !parts.negative {
            nanos = nanos.min(MAX_BINARY_UNITS * NANOS_PER_UNIT);
        }
        Ok(Quantity { negative: parts.negative && nanos > 0, nanos })
    }
}

/// `ceil(whole.fraction × 10^shift × 2^doublings)`, exactly; `None` past a `u128`.
fn nanos_rounded_up(whole: &str, fraction: &str, shift: i64, doublings: u32) -> Option<u128> {
    // One digit string with the decimal point `point` digits from its start.
    let digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).map(|d| d - b'0').collect();
    let Some(first) = digits.iter().position(|&d| d != 0) else { return Some(0) };
    let digits = &digits[first..];
    let point = whole.len() as i64 - first as i64 + shift;
    if point > U128_DIGITS {
        return None;
    }
    // Far enough right of the point, even 2^60 times the value stays under one nano unit.
    if point < -U128_DIGITS {
        return Some(1);
    }
    let split = point.clamp(0, digits.len() as i64) as usize;
    let mut int: u128 = 0;
    for &d in &digits[..split] {
        int = int * 10 + u128::from(d);
    }
    int = int.checked_mul(10u128.pow((point - split as i64).max(0) as u32))?;
    // The fraction: zeros up to the first digit, then the rest.
    let mut frac: Vec<u8> =
        std::iter::repeat_n(0, (-point).max(0) as usize).chain(digits[split..].iter().copied()).collect();
    for _ in 0..doublings {
        let mut carry = 0;
        for d in frac.iter_mut().rev() {
            let twice = *d * 2 + carry;
            *d = twice % 10;
            carry = twice / 10;
        }
        int = int.checked_mul(2)?.checked_add(u128::from(carry))?;
    }
    let up = frac.iter().any(|&d| d != 0);
    int.checked_add(u128::from(up))
}

impl Quantity {
    /// The magnitude in nano units, rounded up as Kubernetes rounds it.
    pub fn nanos(&self) -> u128 {
        self.nanos
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Whole units, rounded up (away from zero), as `Quantity.Value()`; `None` for a
    /// negative quantity or one past `u64`.
    pub fn units(&self) -> Option<u64> {
        if self.negative {
            return None;
        }
        u64::try_from(self.nanos.div_ceil(NANOS_PER_UNIT)).ok()
    }
}

impl fmt::Display for Quantity {
    /// The value in nano units (`n`): exact, if not the shortest spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}n", if self.negative { "-" } else { "" }, self.nanos)
    }
}

/// A size in bytes (a storage request or capacity), rounded up to a whole byte.
///
/// # Errors
/// Not a quantity (see [`QuantityError`]), negative, or past `u64`.
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let q: Quantity = text.parse()?;
    if q.negative {
        return Err(QuantityError::Negative { text: text.to_string() });
    }
    q.units().ok_or_else(|| QuantityError::TooLarge { text: text.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `m × 10^exp` in nano units, as apimachinery's tests write `decQuantity(m, exp, _)`.
    fn dec(m: u128, exp: i32) -> u128 {
        let n = exp + 9;
        if n >= 0 { m * 10u128.pow(n as u32) } else { m / 10u128.pow((-n) as u32) }
    }

    fn nanos(text: &str) -> u128 {
        let q: Quantity = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(!q.is_negative(), "{text}");
        q.nanos()
    }

    /// apimachinery's `TestQuantityParse` table (pkg/api/resource/quantity_test.go): the
    /// input and the value it must parse to.
    const KUBERNETES_PARSE: &[(&str, u128, i32)] = &[
        ("0", 0, 0),
        ("0n", 0, 0),
        ("0u", 0, 0),
        ("0m", 0, 0),
        ("0Ki", 0, 0),
        ("0k", 0, 0),
        ("0Mi", 0, 0),
        ("0M", 0, 0),
        ("0Gi", 0, 0),
        ("0G", 0, 0),
        ("0Ti", 0, 0),
        ("0T", 0, 0),
        ("1", 1, 0),
        ("1Ki", 1024, 0),
        ("8Ki", 8 * 1024, 0),
        ("7Mi", 7 << 20, 0),
        ("6Gi", 6 << 30, 0),
        ("5Ti", 5 << 40, 0),
        ("4Pi", 4 << 50, 0),
        ("3Ei", 3 << 60, 0),
        ("10Ti", 10 << 40, 0),
        ("100Ti", 100 << 40, 0),
        ("5n", 5, -9),
        ("4u", 4, -6),
        ("3m", 3, -3),
        ("9", 9, 0),
        ("8k", 8, 3),
        ("50k", 5, 4),
        ("7M", 7, 6),
        ("6G", 6, 9),
        ("5T", 5, 12),
        ("40T", 4, 13),
        ("300T", 3, 14),
        ("2P", 2, 15),
        ("1E", 1, 18),
        ("1E-3", 1, -3),
        ("1e3", 1, 3),
        ("1E6", 1, 6),
        ("1e9", 1, 9),
        ("1E12", 1, 12),
        ("1e15", 1, 15),
        ("1E18", 1, 18),
        ("1e14", 1, 14),
        ("1e13", 1, 13),
        ("100.035k", 100035, 0),
        ("0.001", 1, -3),
        ("0.0005k", 5, -1),
        ("0.005", 5, -3),
        ("0.05", 5, -2),
        ("0.5", 5, -1),
        ("0.00050k", 5, -1),
        ("0.00500", 5, -3),
        ("0.05000", 5, -2),
        ("0.50000", 5, -1),
        ("0.5e0", 5, -1),
        ("0.5e-1", 5, -2),
        ("0.5e-2", 5, -3),
        ("10.035M", 10035, 3),
        ("1.2e3", 12, 2),
        ("1.3E+6", 13, 5),
        ("1.40e9", 14, 8),
        ("1.53E12", 153, 10),
        ("1.6e15", 16, 14),
        ("1.7E18", 17, 17),
        ("9.01", 901, -2),
        ("8.1k", 81, 2),
        ("7.123456M", 7123456, 0),
        ("6.987654321G", 6987654321, 0),
        ("5.444T", 5444, 9),
        ("40.1T", 401, 11),
        ("300.2T", 3002, 11),
        ("2.5P", 25, 14),
        ("1.01E", 101, 16),
        // Things that saturate or round.
        ("3.001n", 4, -9),
        ("1.1E-9", 2, -9),
        ("0.0000000001", 1, -9),
        ("0.0000000005", 1, -9),
        ("0.00000000050", 1, -9),
        ("0.5e-9", 1, -9),
        ("0.9n", 1, -9),
        ("0.00000012345", 124, -9),
        ("0.00000012354", 124, -9),
        ("12E", 12, 18),
        // Fractional binary values.
        ("100.035Ki", 10243584, -2),
        ("0.5Mi", 512 * 1024, 0),
        ("0.05Gi", 536870912, -1),
        ("0.025Ti", 274877906944, -1),
        // "Things written by trolls".
        ("0.000000000001Ki", 2, -9),
        (".001", 1, -3),
        (".0001k", 100, -3),
        ("1.", 1, 0),
        ("1.G", 1, 9),
    ];

    #[test]
    fn kubernetes_parse_table() {
        for &(text, m, exp) in KUBERNETES_PARSE {
            assert_eq!(nanos(text), dec(m, exp), "{text}");
            // With an explicit sign, as apimachinery tries every case.
            assert_eq!(nanos(&format!("+{text}")), dec(m, exp), "+{text}");
            let negative: Quantity = format!("-{text}").parse().unwrap();
            assert_eq!((negative.is_negative(), negative.nanos()), (m != 0, dec(m, exp)), "-{text}");
        }
    }

    #[test]
    fn binary_values_are_capped_at_the_largest_int64_as_in_kubernetes() {
        let max = u128::from(i64::MAX as u64) * NANOS_PER_UNIT;
        assert_eq!(nanos("9Ei"), max);
        assert_eq!(nanos("9223372036854775807Ki"), max);
        // Decimal values are not capped ("12E" above).
    }

    #[test]
    fn kubernetes_invalid_table() {
        for text in ["", "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1", "1 "] {
            assert!(text.parse::<Quantity>().is_err(), "{text:?} parsed");
        }
        assert_eq!("".parse::<Quantity>(), Err(QuantityError::Empty));
        assert!(matches!("1K".parse::<Quantity>(), Err(QuantityError::Suffix { .. })));
        assert!(matches!("1 Gi".parse::<Quantity>(), Err(QuantityError::Format { .. })));
    }

    #[test]
    fn canonical_spellings_round_trip_to_their_values() {
        // apimachinery's `TestQuantityString` / `TestQuantityParseEmit` spellings.
        for (text, m, exp) in [
            ("1Gi", 1u128 << 30, 0),
            ("1024Mi", 1 << 30, 0),
            ("300Mi", 300 << 20, 0),
            ("307200Ki", 300 << 20, 0),
            ("1001Gi", 1001 << 30, 0),
            ("1025024Mi", 1001 << 30, 0),
            ("5000m", 5, 0),
            ("1G", 1, 9),
            ("1000M", 1, 9),
            ("0.001T", 1, 9),
            ("1000u", 1, -3),
            ("1080m", 108, -2),
            ("1.08", 108, -2),
            ("1080000000n", 108, -2),
            ("1e21", 1, 21),
            ("1000E", 1, 21),
            ("5e21", 5, 21),
            (".001e12", 1, 9),
            ("0.001e0", 1, -3),
            ("1000e-12", 1, -9),
            ("80e-3", 80, -3),
            ("00", 0, 0),
            (".001Ki", 1024, -3),
            (".000001Ki", 1024, -6),
            (".000000001Ki", 1024, -9),
            (".000000000001Ki", 2, -9),
        ] {
            assert_eq!(nanos(text), dec(m, exp), "{text}");
        }
    }

    #[test]
    fn sizes_in_bytes_round_up_and_refuse_what_is_no_size() {
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(parse_bytes("1Ei"), Ok(1 << 60));
        assert_eq!(parse_bytes("2E"), Ok(2_000_000_000_000_000_000));
        assert_eq!(parse_bytes("100m"), Ok(1));
        assert_eq!(parse_bytes("1.5k"), Ok(1500));
        assert_eq!(parse_bytes("-0"), Ok(0));
        assert!(matches!(parse_bytes("-1Gi"), Err(QuantityError::Negative { .. })));
        assert!(matches!(parse_bytes("19E"), Err(QuantityError::TooLarge { .. })));
        assert!(matches!(parse_bytes("1e40"), Err(QuantityError::TooLarge { .. })));
        assert!(matches!(parse_bytes("12Qi"), Err(QuantityError::Format { .. })));
        assert!(matches!(parse_bytes("12ki"), Err(QuantityError::Suffix { .. })));
        // Huge exponents either way neither overflow nor allocate.
        assert!(matches!(parse_bytes("1e2147483647"), Err(QuantityError::TooLarge { .. })));
        assert_eq!(parse_bytes("1e-2147483648"), Ok(1));
        assert!(matches!(parse_bytes("1e2147483648"), Err(QuantityError::Suffix { .. })));
    }
}
