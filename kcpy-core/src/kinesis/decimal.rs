//! Numbers as `str::parse::<f64>` reads them, with the common case taken
//! first: the scanner reads every record's arrival timestamp, and
//! `str::parse` spent some 230 instructions on each.

/// Powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// A JSON number as `str::parse::<f64>` reads it, with the common case
/// taken first: at most 15 significant digits scaled by at most 22 powers of
/// ten is one exact multiplication or division of two exact doubles, so
/// correctly rounded, which is what `parse` gives (Clinger's fast path).
/// An arrival timestamp (`1733500000.123`, `1.733500000123E9`) is one.
#[cfg(test)]
fn decimal(text: &str) -> Option<f64> {
    exact_decimal(text.as_bytes()).or_else(|| text.parse().ok())
}

/// The fast path of [`decimal`] over the whole of `bytes`.
#[cfg(test)]
fn exact_decimal(bytes: &[u8]) -> Option<f64> {
    leading_decimal(bytes).and_then(|(value, len)| (len == bytes.len()).then_some(value))
}

/// The number at the start of `bytes` and its length, where it is one
/// the fast path of [`decimal`] takes and ends there.
pub(super) fn leading_decimal(bytes: &[u8]) -> Option<(f64, usize)> {
    // Digits from `at` on, added to `mantissa`: how many.
    fn digits(bytes: &[u8], at: &mut usize, mantissa: &mut u64) -> usize {
        let start = *at;
        while let Some(digit) = bytes.get(*at).map(|b| b.wrapping_sub(b'0')).filter(|d| *d < 10) {
            *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            *at += 1;
        }
        *at - start
    }
    let (mut at, mut mantissa) = (0, 0u64);
    let whole = digits(bytes, &mut at, &mut mantissa);
    let fraction = match bytes.get(at) {
        Some(b'.') => {
            at += 1;
            // `1.` is not JSON: a point needs digits after it.
            match digits(bytes, &mut at, &mut mantissa) {
                0 => return None,
                fraction => fraction,
            }
        }
        _ => 0,
    };
    // A digit first (`.5` is not JSON), and at most 15 digits: below
    // 10^15 < 2^53, exact as a double (and no wrapping above).
    if whole == 0 || whole + fraction > 15 {
        return None;
    }
    let mut scale = -i32::try_from(fraction).ok()?;
    if let Some(b'e' | b'E') = bytes.get(at) {
        at += 1;
        let negative = match bytes.get(at) {
            Some(b'-') => true,
            Some(b'+') => false,
            _ => {
                at -= 1;
                false
            }
        };
        at += 1;
        let mut exponent = 0u64;
        if !(1..=3).contains(&digits(bytes, &mut at, &mut exponent)) {
            return None;
        }
        let exponent = i32::try_from(exponent).ok()?;
        scale += if negative { -exponent } else { exponent };
    }
    // The number ends here, or it is one the general parse is to judge.
    if bytes
        .get(at)
        .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let power = *EXACT_POWERS_OF_TEN.get(usize::try_from(scale.unsigned_abs()).ok()?)?;
    let mantissa = mantissa as f64;
    Some((if scale < 0 { mantissa / power } else { mantissa * power }, at))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn arrival_timestamps_read_as_str_parse_reads_them() {
        for text in [
            "1733500000.123",
            "1795643499.676",
            "1.733500000123E9",
            "1.733500000123e+9",
            "1733500000",
            "0.5",
            "17335000001230e-4",
            "1e22",
            "12345678901234.5",
        ] {
            assert_eq!(exact_decimal(text.as_bytes()), text.parse().ok(), "{text}");
        }
        // Past the fast path, the general parse reads it.
        for text in [
            "1e23",
            "123456789012345.6",
            "1e-30",
            "-1.5",
            "1.5e",
            "1.2.3",
            "1e1234",
            "1.",
            ".5",
        ] {
            assert_eq!(exact_decimal(text.as_bytes()), None, "{text}");
            assert_eq!(decimal(text), text.parse().ok(), "{text}");
        }
    }

    proptest! {
        #[test]
        fn any_decimal_the_fast_path_takes_reads_as_str_parse_reads_it(
            mantissa in 0u64..1_000_000_000_000_000,
            point in 0usize..17,
            exponent in proptest::option::of(-25i32..25),
            upper in any::<bool>(),
        ) {
            let mut text = mantissa.to_string();
            if point > 0 && point < text.len() {
                text.insert(point, '.');
            }
            if let Some(exponent) = exponent {
                text.push(if upper { 'E' } else { 'e' });
                text.push_str(&exponent.to_string());
            }
            let parsed: Option<f64> = text.parse().ok();
            if let Some(fast) = exact_decimal(text.as_bytes()) {
                prop_assert_eq!(Some(fast), parsed, "{}", text);
            }
            prop_assert_eq!(decimal(&text), parsed, "{}", text);
        }
    }
}
