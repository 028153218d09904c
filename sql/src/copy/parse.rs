//! Value parsing: one field's text to a typed value, as PostgreSQL's input
//! functions read it (integers, floats, numeric, boolean, date, timestamp).

use datafusion::arrow::datatypes::TimeUnit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvErr {
    /// Bad syntax (22P02, 22007 for date/time).
    Invalid,
    /// Out of range (22003, 22008 for date/time).
    Range,
    /// Text that is not UTF-8 (22021; binary input only: text input is
    /// checked a whole row at a time).
    Encoding,
}

#[inline]
fn trim_ws(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Parse an integer as (negative, magnitude).
#[inline]
fn parse_int(b: &[u8]) -> Result<(bool, u64), ConvErr> {
    let b = trim_ws(b);
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return Err(ConvErr::Invalid);
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(ConvErr::Invalid);
        }
        if !overflow {
            match v.checked_mul(10).and_then(|x| x.checked_add(d as u64)) {
                Some(x) => v = x,
                None => overflow = true,
            }
        }
    }
    if overflow {
        Err(ConvErr::Range)
    } else {
        Ok((neg, v))
    }
}

#[inline]
pub(crate) fn parse_i64(b: &[u8]) -> Result<i64, ConvErr> {
    let (neg, v) = parse_int(b)?;
    if neg {
        if v <= 1u64 << 63 {
            Ok((v as i64).wrapping_neg())
        } else {
            Err(ConvErr::Range)
        }
    } else if v <= i64::MAX as u64 {
        Ok(v as i64)
    } else {
        Err(ConvErr::Range)
    }
}

#[inline]
pub(crate) fn parse_u64(b: &[u8]) -> Result<u64, ConvErr> {
    match parse_int(b)? {
        (true, 0) => Ok(0),
        (true, _) => Err(ConvErr::Range),
        (false, v) => Ok(v),
    }
}

#[inline]
pub(crate) fn parse_f64(b: &[u8]) -> Result<f64, ConvErr> {
    let s = std::str::from_utf8(trim_ws(b)).map_err(|_| ConvErr::Invalid)?;
    let v: f64 = s.parse().map_err(|_| ConvErr::Invalid)?;
    if v.is_infinite() && !s.bytes().any(|c| c == b'i' || c == b'I') {
        return Err(ConvErr::Range);
    }
    Ok(v)
}

#[inline]
pub(crate) fn parse_f32(b: &[u8]) -> Result<f32, ConvErr> {
    let s = std::str::from_utf8(trim_ws(b)).map_err(|_| ConvErr::Invalid)?;
    let v: f32 = s.parse().map_err(|_| ConvErr::Invalid)?;
    if v.is_infinite() && !s.bytes().any(|c| c == b'i' || c == b'I') {
        return Err(ConvErr::Range);
    }
    Ok(v)
}

/// PostgreSQL's boolean input: prefixes of true/false/yes/no, on/off, 1/0.
#[inline]
pub(crate) fn parse_bool(b: &[u8]) -> Result<bool, ConvErr> {
    let b = trim_ws(b);
    if b.is_empty() || b.len() > 5 {
        return Err(ConvErr::Invalid);
    }
    let mut buf = [0u8; 5];
    for (d, s) in buf.iter_mut().zip(b) {
        *d = s.to_ascii_lowercase();
    }
    let l = &buf[..b.len()];
    let prefix_of = |word: &[u8]| word.starts_with(l);
    match l[0] {
        b't' if prefix_of(b"true") => Ok(true),
        b'f' if prefix_of(b"false") => Ok(false),
        b'y' if prefix_of(b"yes") => Ok(true),
        b'n' if prefix_of(b"no") => Ok(false),
        b'o' if l.len() >= 2 && prefix_of(b"on") => Ok(true),
        b'o' if l.len() >= 2 && prefix_of(b"off") => Ok(false),
        b'1' if l.len() == 1 => Ok(true),
        b'0' if l.len() == 1 => Ok(false),
        _ => Err(ConvErr::Invalid),
    }
}

const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Parse a decimal literal ("123.45", "-0.5", "1e3") into the unscaled value
/// of a Decimal128(precision, scale), rounding half away from zero.
#[inline]
pub(crate) fn parse_decimal(b: &[u8], precision: u8, scale: i8) -> Result<i128, ConvErr> {
    match parse_decimal_plain(b, precision, scale) {
        Some(r) => r,
        None => parse_decimal_general(b, precision, scale),
    }
}

/// The common shape, `[-]digits[.digits]` with at most 18 digits and no
/// more fractional digits than the scale (no rounding), summed in a u64.
/// None: anything else, which the general parser decides.
#[inline]
fn parse_decimal_plain(b: &[u8], precision: u8, scale: i8) -> Option<Result<i128, ConvErr>> {
    let (neg, body) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if body.is_empty() || body.len() > 19 || scale < 0 {
        return None;
    }
    let mut acc: u64 = 0;
    let mut digits = 0usize;
    let mut frac: Option<usize> = None;
    for &c in body {
        if c.is_ascii_digit() {
            acc = acc * 10 + (c - b'0') as u64;
            digits += 1;
            if let Some(f) = frac.as_mut() {
                *f += 1;
            }
        } else if c == b'.' && frac.is_none() {
            frac = Some(0);
        } else {
            return None;
        }
    }
    let frac = frac.unwrap_or(0);
    if digits == 0 || digits > 18 || frac > scale as usize {
        return None;
    }
    let v = acc as i128 * POW10[scale as usize - frac];
    if v >= POW10[precision.min(38) as usize] {
        return Some(Err(ConvErr::Range));
    }
    Some(Ok(if neg { -v } else { v }))
}

fn parse_decimal_general(b: &[u8], precision: u8, scale: i8) -> Result<i128, ConvErr> {
    let b = trim_ws(b);
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_part = &b[int_start..i];
    let mut frac_part: &[u8] = &[];
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let fs = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_part = &b[fs..i];
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(ConvErr::Invalid);
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let es = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = (exp * 10 + (b[i] - b'0') as i64).min(100_000);
            i += 1;
        }
        if i == es {
            return Err(ConvErr::Invalid);
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(ConvErr::Invalid);
    }
    // value = D * 10^(exp - frac_len); scaled = D * 10^shift
    let shift = exp - frac_part.len() as i64 + scale as i64;
    let mut digits = int_part.iter().chain(frac_part.iter()).copied();
    let mut n = int_part.len() + frac_part.len();
    // skip leading zeros
    let mut first = None;
    for d in digits.by_ref() {
        n -= 1;
        if d != b'0' {
            first = Some(d);
            n += 1;
            break;
        }
    }
    let Some(first) = first else {
        return Ok(0);
    };
    let mut digits = std::iter::once(first).chain(digits);
    let (keep, check_round) = if shift >= 0 {
        (n, false)
    } else {
        let drop = (-shift) as usize;
        if drop > n {
            (0, false)
        } else {
            (n - drop, true)
        }
    };
    let mut acc: i128 = 0;
    if keep > 38 {
        return Err(ConvErr::Range);
    }
    for _ in 0..keep {
        let d = digits.next().unwrap_or(b'0');
        acc = acc * 10 + (d - b'0') as i128;
    }
    if check_round && digits.next().is_some_and(|d| d >= b'5') {
        acc += 1;
    }
    if shift > 0 {
        if keep as i64 + shift > 38 {
            return Err(ConvErr::Range);
        }
        acc *= POW10[shift as usize];
    }
    if acc >= POW10[precision.min(38) as usize] {
        return Err(ConvErr::Range);
    }
    Ok(if neg { -acc } else { acc })
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Read 1..=max digits at `*i`.
#[inline]
fn digits(b: &[u8], i: &mut usize, max: usize) -> Option<u32> {
    let start = *i;
    let mut v: u32 = 0;
    while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
        v = v * 10 + (b[*i] - b'0') as u32;
        *i += 1;
    }
    (*i > start).then_some(v)
}

/// Parse "YYYY-MM-DD" at the start of `b`; returns (days, bytes used).
fn parse_date_prefix(b: &[u8]) -> Result<(i64, usize), ConvErr> {
    let mut i = 0;
    let y = digits(b, &mut i, 7).ok_or(ConvErr::Invalid)? as i64;
    if b.get(i) != Some(&b'-') {
        return Err(ConvErr::Invalid);
    }
    i += 1;
    let m = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
    if b.get(i) != Some(&b'-') {
        return Err(ConvErr::Invalid);
    }
    i += 1;
    let d = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
    if i < b.len() && b[i].is_ascii_digit() {
        return Err(ConvErr::Invalid);
    }
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(ConvErr::Range);
    }
    Ok((days_from_civil(y, m, d), i))
}

/// `parse_date` for the canonical `YYYY-MM-DD`; anything else takes the
/// general path (which also produces the errors).
#[inline]
pub(crate) fn parse_date_fast(b: &[u8]) -> Result<i32, ConvErr> {
    if let &[y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = b {
        let x = [y0, y1, y2, y3, m0, m1, d0, d1].map(|c| c.wrapping_sub(b'0'));
        if x.iter().all(|&v| v <= 9) {
            let y = x[0] as i64 * 1000 + x[1] as i64 * 100 + x[2] as i64 * 10 + x[3] as i64;
            let m = (x[4] * 10 + x[5]) as u32;
            let d = (x[6] * 10 + x[7]) as u32;
            if (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m) {
                return Ok(days_from_civil(y, m, d) as i32);
            }
        }
    }
    parse_date(b)
}

#[inline]
fn parse_date(b: &[u8]) -> Result<i32, ConvErr> {
    let b = trim_ws(b);
    let (days, used) = parse_date_prefix(b)?;
    if used != b.len() {
        return Err(ConvErr::Invalid);
    }
    i32::try_from(days).map_err(|_| ConvErr::Range)
}

/// Parse "YYYY-MM-DD[( |T)HH:MM[:SS[.fffffffff]]][ ][Z|(+|-)HH[:MM]]" into
/// nanoseconds-split (seconds since epoch in UTC, nanos).
pub(crate) fn parse_timestamp(b: &[u8], with_tz: bool) -> Result<(i64, u32), ConvErr> {
    let b = trim_ws(b);
    let (days, mut i) = parse_date_prefix(b)?;
    let mut secs = days * 86400;
    let mut nanos = 0u32;
    if i < b.len() && (b[i] == b' ' || b[i] == b'T' || b[i] == b't') {
        i += 1;
        let h = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
        if b.get(i) != Some(&b':') {
            return Err(ConvErr::Invalid);
        }
        i += 1;
        let m = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
        let mut s = 0;
        if b.get(i) == Some(&b':') {
            i += 1;
            s = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let fs = i;
                let mut scale = 100_000_000u32;
                let mut round_up = false;
                while i < b.len() && b[i].is_ascii_digit() {
                    let d = (b[i] - b'0') as u32;
                    if scale > 0 {
                        nanos += d * scale;
                        scale /= 10;
                    } else if i == fs + 9 {
                        round_up = d >= 5;
                    }
                    i += 1;
                }
                if i == fs {
                    return Err(ConvErr::Invalid);
                }
                if round_up {
                    nanos += 1;
                }
            }
        }
        let total = h * 3600 + m * 60 + s;
        if h > 24 || m > 59 || s > 60 || (h == 24 && (m > 0 || s > 0 || nanos > 0)) {
            return Err(ConvErr::Range);
        }
        secs += total as i64;
        if nanos >= 1_000_000_000 {
            nanos -= 1_000_000_000;
            secs += 1;
        }
        // optional zone
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() {
            let offset = match b[i] {
                b'Z' | b'z' => {
                    i += 1;
                    0
                }
                c @ (b'+' | b'-') => {
                    i += 1;
                    let oh = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    let mut om = 0;
                    if b.get(i) == Some(&b':') {
                        i += 1;
                        om = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    } else if i < b.len() && b[i].is_ascii_digit() {
                        om = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    }
                    if oh > 15 || om > 59 {
                        return Err(ConvErr::Range);
                    }
                    let o = oh * 3600 + om * 60;
                    if c == b'-' {
                        -o
                    } else {
                        o
                    }
                }
                _ => return Err(ConvErr::Invalid),
            };
            // like PostgreSQL: the zone is ignored for timestamp without time zone
            if with_tz {
                secs -= offset;
            }
        }
    }
    if i != b.len() {
        return Err(ConvErr::Invalid);
    }
    Ok((secs, nanos))
}

#[inline]
pub(crate) fn timestamp_in_unit(secs: i64, nanos: u32, unit: TimeUnit) -> Result<i64, ConvErr> {
    let (mul, div) = match unit {
        TimeUnit::Second => (1, 1_000_000_000),
        TimeUnit::Millisecond => (1_000, 1_000_000),
        TimeUnit::Microsecond => (1_000_000, 1_000),
        TimeUnit::Nanosecond => (1_000_000_000, 1),
    };
    let frac = (nanos as i64 + div / 2) / div; // round half up
    if secs < 0 && frac > 0 {
        // (secs + 1) * mul + (frac - mul): stays in range down to i64::MIN
        return (secs + 1)
            .checked_mul(mul)
            .and_then(|v| v.checked_add(frac - mul))
            .ok_or(ConvErr::Range);
    }
    secs.checked_mul(mul)
        .and_then(|v| v.checked_add(frac))
        .ok_or(ConvErr::Range)
}

/// An i64 parsed from text, narrowed to a smaller column type.
#[inline]
pub(crate) fn narrow<T: TryFrom<i64>>(v: i64) -> Result<T, ConvErr> {
    T::try_from(v).map_err(|_| ConvErr::Range)
}

/// PostgreSQL's bytea input, appended to `out`: `\x` and pairs of hex
/// digits (whitespace between pairs allowed), or the escape format (`\\`
/// for a backslash, `\ooo` for any byte in octal, other bytes as they are).
pub(crate) fn parse_bytea(b: &[u8], out: &mut Vec<u8>) -> Result<(), ConvErr> {
    if let Some(hex) = b.strip_prefix(b"\\x") {
        let nibble = |c: u8| (c as char).to_digit(16).ok_or(ConvErr::Invalid);
        let mut i = 0;
        while i < hex.len() {
            if hex[i].is_ascii_whitespace() {
                i += 1;
                continue;
            }
            let lo = *hex.get(i + 1).ok_or(ConvErr::Invalid)?;
            out.push((nibble(hex[i])? * 16 + nibble(lo)?) as u8);
            i += 2;
        }
        return Ok(());
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            match b.get(i + 1..i + 4) {
                Some([a @ b'0'..=b'3', m @ b'0'..=b'7', l @ b'0'..=b'7']) => {
                    out.push((a - b'0') * 64 + (m - b'0') * 8 + (l - b'0'));
                    i += 4;
                }
                _ => return Err(ConvErr::Invalid),
            }
        }
    }
    Ok(())
}

/// A u64 parsed from text, narrowed to a smaller column type.
#[inline]
pub(crate) fn unarrow<T: TryFrom<u64>>(v: u64) -> Result<T, ConvErr> {
    T::try_from(v).map_err(|_| ConvErr::Range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_fast_path_agrees_with_the_general_parser() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "5.",
            ".5",
            "-.5",
            ".",
            "-",
            "",
            "1.2.3",
            "1e3",
            " 1.5",
            "1.5 ",
            "+1.5",
            "12.345",
            "99999999999.99",
            "100000000000.00",
            "-99999999999.99",
            "123456789012345678",
            "1234567890123456789",
            "0.000000000000000001",
            "00000000000000000012.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for i in 0..3000u64 {
            let v = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 60);
            let f = i % 7;
            let text = format!("{}{}", if i % 3 == 0 { "-" } else { "" }, v);
            let (a, b) = text.split_at(
                text.len()
                    .saturating_sub(f as usize)
                    .max(text.starts_with('-') as usize),
            );
            cases.push(format!("{a}.{b}"));
            cases.push(text);
        }
        for (p, sc) in [(12, 2), (38, 0), (18, 6), (5, 5), (38, 10)] {
            for c in &cases {
                let b = c.as_bytes();
                assert_eq!(
                    parse_decimal(b, p, sc),
                    parse_decimal_general(b, p, sc),
                    "{c:?} as numeric({p},{sc})"
                );
            }
        }
        assert!(
            parse_decimal_plain(b"12.34", 12, 2).is_some(),
            "the fast path is taken"
        );
    }

    #[test]
    fn date_fast_path_agrees_with_the_general_parser() {
        // Every day of 1899..=2101, and other shapes (which the general
        // parser decides).
        for days in -25_600..48_300i64 {
            let (y, m, d) = civil_from_days(days);
            let text = format!("{y:04}-{m:02}-{d:02}");
            assert_eq!(parse_date_fast(text.as_bytes()), Ok(days as i32), "{text}");
            assert_eq!(parse_date(text.as_bytes()), Ok(days as i32), "{text}");
        }
        for bad in [
            "2023-02-29",
            "2024-02-30",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "2024-04-31",
            "2024-1-01",
            "20x4-01-01",
            " 2024-01-01",
            "2024/01/01",
            "",
        ] {
            assert_eq!(
                parse_date_fast(bad.as_bytes()),
                parse_date(bad.as_bytes()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn value_parsing() {
        assert_eq!(parse_i64(b" +42 "), Ok(42));
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), Err(ConvErr::Range));
        assert_eq!(parse_i64(b"-"), Err(ConvErr::Invalid));
        for (s, v) in [
            ("t", true),
            ("TRUE", true),
            ("tr", true),
            ("yes", true),
            ("Y", true),
            ("on", true),
            ("1", true),
            ("f", false),
            ("False", false),
            ("no", false),
            ("off", false),
            ("OF", false),
            (" 0 ", false),
        ] {
            assert_eq!(parse_bool(s.as_bytes()), Ok(v), "{s}");
        }
        for s in ["o", "2", "truee", "", "nope"] {
            assert!(parse_bool(s.as_bytes()).is_err(), "{s}");
        }
        let d = |s: &str, p, sc| parse_decimal(s.as_bytes(), p, sc);
        assert_eq!(d("123.45", 10, 2), Ok(12345));
        assert_eq!(d("-0.5", 10, 2), Ok(-50));
        assert_eq!(d("1e3", 10, 2), Ok(100000));
        assert_eq!(d("1.5E-1", 10, 2), Ok(15));
        assert_eq!(d("1.005", 10, 2), Ok(101));
        assert_eq!(d("-1.005", 10, 2), Ok(-101));
        assert_eq!(d("0.004", 10, 2), Ok(0));
        assert_eq!(
            d("0.0000000000000000000000000000000000000000000001", 10, 2),
            Ok(0)
        );
        assert_eq!(
            d("000000000000000000000000000000000000000000012.3", 10, 2),
            Ok(1230)
        );
        assert_eq!(d(".5", 3, 1), Ok(5));
        assert_eq!(d("5.", 3, 1), Ok(50));
        assert_eq!(d("99.995", 4, 2), Err(ConvErr::Range));
        assert_eq!(d("12345", 38, 0), Ok(12345));
        assert_eq!(d("1e38", 38, 0), Err(ConvErr::Range));
        assert_eq!(d("12345", 5, -2), Ok(123));
        assert_eq!(d("e3", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(d("1e", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(d("NaN", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(parse_date(b"2000-03-01"), Ok(11017));
        assert_eq!(parse_date(b"1969-12-31"), Ok(-1));
        let ts = |s: &str, tz| parse_timestamp(s.as_bytes(), tz);
        assert_eq!(
            ts("1970-01-02T00:00:01.25", false),
            Ok((86401, 250_000_000))
        );
        assert_eq!(ts("1970-01-01", false), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 01:00:00+01", true), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 01:00:00+01", false), Ok((3600, 0)));
        assert_eq!(ts("1970-01-01 00:00:00Z", true), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 00:00:00-05:30", true), Ok((19800, 0)));
        assert_eq!(ts("1970-01-01 24:00:00", false), Ok((86400, 0)));
        assert_eq!(
            timestamp_in_unit(1, 999_999_500, TimeUnit::Microsecond),
            Ok(2_000_000)
        );
        assert_eq!(
            timestamp_in_unit(i64::MAX / 1000, 0, TimeUnit::Nanosecond),
            Err(ConvErr::Range)
        );
        for z in [-800_000i64, -1, 0, 1, 11017, 19782, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn bytea_hex_and_escape_formats() {
        let bytea = |s: &[u8]| {
            let mut out = Vec::new();
            parse_bytea(s, &mut out).map(|()| out)
        };
        assert_eq!(bytea(b"\\x00ff10"), Ok(vec![0, 255, 16]));
        assert_eq!(bytea(b"\\xDE AD\nbe ef"), Ok(vec![0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(bytea(b"\\x"), Ok(vec![]));
        assert_eq!(bytea(b"\\x0"), Err(ConvErr::Invalid));
        assert_eq!(bytea(b"\\xgg"), Err(ConvErr::Invalid));
        assert_eq!(bytea(b"\\x0 0"), Err(ConvErr::Invalid));
        assert_eq!(bytea(b"ab\\\\c\\001\\377"), Ok(b"ab\\c\x01\xff".to_vec()));
        assert_eq!(bytea(b"\\400"), Err(ConvErr::Invalid));
        assert_eq!(bytea(b"\\"), Err(ConvErr::Invalid));
        assert_eq!(bytea(b"\\01"), Err(ConvErr::Invalid));
        assert_eq!(bytea("ü".as_bytes()), Ok("ü".as_bytes().to_vec()));
    }
}
