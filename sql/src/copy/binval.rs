//! PostgreSQL's binary form of single values (what its types' `send` and
//! `recv` functions read and write): integers, floats, numeric, boolean,
//! date and timestamp. Binary COPY (`columns.rs`, `encode.rs`) and binary
//! parameters of the extended protocol (`crate::params`) share it.
//!
//! It owns byte layouts only, not which column a value goes to. Every
//! reader takes bytes from the network: it checks their length and
//! contents and answers [`ConvErr`], and must never panic or allocate more
//! than a small multiple of its input.

use datafusion::arrow::datatypes::TimeUnit;

use super::parse::{parse_decimal, ConvErr};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
pub(crate) const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Numeric's sign words.
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], ConvErr> {
    v.try_into().map_err(|_| ConvErr::Invalid)
}

/// An int2, int4 or int8 (told apart by length).
pub(crate) fn recv_int(v: &[u8]) -> Result<i64, ConvErr> {
    Ok(match v.len() {
        2 => i16::from_be_bytes(be(v)?) as i64,
        4 => i32::from_be_bytes(be(v)?) as i64,
        8 => i64::from_be_bytes(be(v)?),
        _ => return Err(ConvErr::Invalid),
    })
}

/// A float4 or float8 (told apart by length).
pub(crate) fn recv_f64(v: &[u8]) -> Result<f64, ConvErr> {
    Ok(match v.len() {
        4 => f32::from_be_bytes(be(v)?) as f64,
        8 => f64::from_be_bytes(be(v)?),
        _ => return Err(ConvErr::Invalid),
    })
}

/// A float4, or a float8 that fits one.
pub(crate) fn recv_f32(v: &[u8]) -> Result<f32, ConvErr> {
    let x = recv_f64(v)?;
    let y = x as f32;
    if x.is_finite() && y.is_infinite() {
        return Err(ConvErr::Range);
    }
    Ok(y)
}

pub(crate) fn recv_bool(v: &[u8]) -> Result<bool, ConvErr> {
    match v {
        [b] => Ok(*b != 0),
        _ => Err(ConvErr::Invalid),
    }
}

/// A date, as days since 1970-01-01 (`infinity` does not fit a Date32).
pub(crate) fn recv_date(v: &[u8]) -> Result<i32, ConvErr> {
    let d = i32::from_be_bytes(be(v)?);
    if d == i32::MAX || d == i32::MIN {
        return Err(ConvErr::Range);
    }
    d.checked_add(PG_EPOCH_DAYS).ok_or(ConvErr::Range)
}

/// A timestamp (with or without time zone: the same bytes, UTC), as
/// microseconds since 1970-01-01.
pub(crate) fn recv_timestamp(v: &[u8]) -> Result<i64, ConvErr> {
    let t = i64::from_be_bytes(be(v)?);
    if t == i64::MAX || t == i64::MIN {
        return Err(ConvErr::Range);
    }
    t.checked_add(PG_EPOCH_MICROS).ok_or(ConvErr::Range)
}

/// Microseconds since 1970 in a timestamp column's unit (sub-unit digits
/// are dropped towards the past, as a cast does).
pub(crate) fn micros_to_unit(micros: i64, unit: TimeUnit) -> Result<i64, ConvErr> {
    match unit {
        TimeUnit::Second => Ok(micros.div_euclid(1_000_000)),
        TimeUnit::Millisecond => Ok(micros.div_euclid(1_000)),
        TimeUnit::Microsecond => Ok(micros),
        TimeUnit::Nanosecond => micros.checked_mul(1_000).ok_or(ConvErr::Range),
    }
}

/// A timestamp column's value in microseconds: nanoseconds rounded to the
/// nearest microsecond, half away from zero, as PostgreSQL rounds input,
/// except at the ends of the nanosecond range, where they are cut towards
/// 1970 so the value still reads back into a nanosecond column.
pub(crate) fn unit_to_micros(v: i64, unit: TimeUnit) -> Result<i64, ConvErr> {
    match unit {
        TimeUnit::Second => v.checked_mul(1_000_000).ok_or(ConvErr::Range),
        TimeUnit::Millisecond => v.checked_mul(1_000).ok_or(ConvErr::Range),
        TimeUnit::Microsecond => Ok(v),
        TimeUnit::Nanosecond => {
            let (q, r) = (v / 1_000, v % 1_000);
            let rounded = if r >= 500 {
                q + 1
            } else if r <= -500 {
                q - 1
            } else {
                q
            };
            Ok(if rounded.checked_mul(1_000).is_some() {
                rounded
            } else {
                q
            })
        }
    }
}

/// Write a timestamp given in microseconds since 1970.
pub(crate) fn send_timestamp(micros: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&micros.saturating_sub(PG_EPOCH_MICROS).to_be_bytes());
}

/// Write a date given in days since 1970.
pub(crate) fn send_date(days: i32, out: &mut Vec<u8>) {
    out.extend_from_slice(&days.saturating_sub(PG_EPOCH_DAYS).to_be_bytes());
}

/// A numeric's value as decimal text with its display scale's digits
/// after the point (`-12.3400`, `0.00`), or `NaN`, `Infinity`,
/// `-Infinity`. Digits past the display scale are cut off, as PostgreSQL's
/// `numeric_recv` does. Values too large for any Decimal128 (10^40 and up)
/// are out of range.
pub(crate) fn recv_numeric_text(v: &[u8]) -> Result<String, ConvErr> {
    if v.len() < 8 {
        return Err(ConvErr::Invalid);
    }
    let word = |i: usize| u16::from_be_bytes([v[i], v[i + 1]]);
    let ndigits = word(0) as i16;
    let mut weight = word(2) as i16 as i32;
    let sign = word(4);
    let dscale = word(6);
    if ndigits < 0 || v.len() != 8 + 2 * ndigits as usize || dscale & 0xC000 != 0 {
        return Err(ConvErr::Invalid);
    }
    let neg = match sign {
        NUMERIC_POS => false,
        NUMERIC_NEG => true,
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        _ => return Err(ConvErr::Invalid),
    };
    let mut digits: &[u8] = &v[8..];
    if digits
        .chunks(2)
        .any(|d| u16::from_be_bytes([d[0], d[1]]) > 9999)
    {
        return Err(ConvErr::Invalid);
    }
    // Drop zero groups in front (PostgreSQL sends none, a client may).
    while let [0, 0, rest @ ..] = digits {
        digits = rest;
        weight -= 1;
    }
    if digits.is_empty() {
        weight = 0;
    }
    if weight >= 10 {
        return Err(ConvErr::Range);
    }
    // Group i (0: the first) of the digits; zero past either end.
    let group = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(2 * i..2 * i + 2))
            .map_or(0, |d| u16::from_be_bytes([d[0], d[1]]))
    };
    let dscale = dscale as usize;
    let mut s = String::with_capacity(48 + dscale);
    if weight < 0 {
        s.push('0');
    } else {
        s.push_str(&group(0).to_string());
        for i in 1..=weight {
            s.push_str(&format!("{:04}", group(i)));
        }
    }
    if dscale > 0 {
        s.push('.');
        // Fraction group k (0: first after the point) is group weight+1+k.
        let (mut left, mut k) = (dscale, 0);
        while left > 0 {
            let four = format!("{:04}", group(weight + 1 + k));
            let take = left.min(4);
            s.push_str(&four[..take]);
            left -= take;
            k += 1;
        }
    }
    if neg && s.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        s.insert(0, '-');
    }
    Ok(s)
}

/// A numeric as the unscaled value of a Decimal128(precision, scale),
/// rounded half away from zero. NaN and infinities do not fit (out of range).
pub(crate) fn recv_numeric(v: &[u8], precision: u8, scale: i8) -> Result<i128, ConvErr> {
    let text = recv_numeric_text(v)?;
    if text.ends_with("NaN") || text.ends_with("Infinity") {
        return Err(ConvErr::Range);
    }
    parse_decimal(text.as_bytes(), precision, scale)
}

/// Write the unscaled value `v` of a decimal of scale `scale` as a numeric.
pub(crate) fn send_numeric(v: i128, scale: i8, out: &mut Vec<u8>) {
    let mut digits = v.unsigned_abs().to_string();
    let dscale = scale.max(0) as usize;
    if scale < 0 && v != 0 {
        digits.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
    }
    if digits.len() <= dscale {
        digits = format!("{}{digits}", "0".repeat(dscale + 1 - digits.len()));
    }
    let (int, frac) = digits.split_at(digits.len() - dscale);
    // Whole groups of four digits: the integer part padded on the left,
    // the fraction on the right.
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let group = |s: &str| s.parse::<u16>().unwrap_or(0);
    let mut groups: Vec<u16> = int
        .as_bytes()
        .chunks(4)
        .chain(frac.as_bytes().chunks(4))
        .map(|c| group(std::str::from_utf8(c).unwrap_or("0")))
        .collect();
    let mut weight = (int.len() / 4) as i16 - 1;
    let lead = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..lead);
    weight -= lead as i16;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, NUMERIC_POS)
    } else if v < 0 {
        (weight, NUMERIC_NEG)
    } else {
        (weight, NUMERIC_POS)
    };
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(dscale as u16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    /// The bytes PostgreSQL's numeric_send writes, and back.
    #[test]
    fn numeric_matches_postgres_bytes() {
        let cases: &[(i128, i8, Vec<u8>, &str)] = &[
            // 123.45::numeric(10,2): 2 digits, weight 0, dscale 2: 0123 4500
            (12345, 2, numeric(2, 0, 0, 2, &[123, 4500]), "123.45"),
            (-5, 2, numeric(1, -1, 0x4000, 2, &[500]), "-0.05"),
            (0, 2, numeric(0, 0, 0, 2, &[]), "0.00"),
            (10000, 0, numeric(1, 1, 0, 0, &[1]), "10000"),
            (
                12345678901234567890,
                0,
                numeric(5, 4, 0, 0, &[1234, 5678, 9012, 3456, 7890]),
                "12345678901234567890",
            ),
            (1, 10, numeric(1, -3, 0, 10, &[100]), "0.0000000001"),
            (7, -2, numeric(1, 0, 0, 0, &[700]), "700"),
        ];
        for (v, scale, bytes, text) in cases {
            let mut out = Vec::new();
            send_numeric(*v, *scale, &mut out);
            assert_eq!(&out, bytes, "{v} scale {scale}");
            assert_eq!(recv_numeric_text(bytes).unwrap(), *text, "{v}");
            let back = recv_numeric(bytes, 38, (*scale).max(0)).unwrap();
            let want = if *scale < 0 {
                v * 10i128.pow(scale.unsigned_abs() as u32)
            } else {
                *v
            };
            assert_eq!(back, want, "{v} scale {scale}");
        }
        // Round trips at the edges of Decimal128.
        let max = 10i128.pow(38) - 1;
        for v in [max, -max, 1, -1, 9999, 10001, 123_456_789_012_345_678] {
            for scale in [0i8, 2, 5, 37, 38] {
                let mut out = Vec::new();
                send_numeric(v, scale, &mut out);
                assert_eq!(recv_numeric(&out, 38, scale), Ok(v), "{v} scale {scale}");
            }
        }
        // Rounding to the column's scale, half away from zero.
        let b = numeric(2, 0, 0x4000, 4, &[1, 2345]);
        assert_eq!(recv_numeric(&b, 10, 2).unwrap(), -123);
        let b = numeric(2, 0, 0, 4, &[1, 2355]);
        assert_eq!(recv_numeric(&b, 10, 2).unwrap(), 124);
        // Leading and trailing zero groups a client may send.
        let b = numeric(4, 1, 0, 4, &[0, 12, 3400, 0]);
        assert_eq!(recv_numeric_text(&b).unwrap(), "12.3400");
        // Digits past the display scale are cut off; -0 is 0.
        let b = numeric(2, 0, 0x4000, 1, &[1, 2399]);
        assert_eq!(recv_numeric_text(&b).unwrap(), "-1.2");
        let b = numeric(1, -1, 0x4000, 2, &[1]);
        assert_eq!(recv_numeric_text(&b).unwrap(), "0.00");
    }

    #[test]
    fn numeric_garbage_is_an_error_not_a_panic() {
        assert_eq!(recv_numeric_text(&[0; 7]), Err(ConvErr::Invalid));
        // ndigits says 2, one digit follows
        assert_eq!(
            recv_numeric_text(&numeric(2, 0, 0, 0, &[1])),
            Err(ConvErr::Invalid)
        );
        assert_eq!(
            recv_numeric_text(&numeric(-1, 0, 0, 0, &[])),
            Err(ConvErr::Invalid)
        );
        assert_eq!(
            recv_numeric_text(&numeric(1, 0, 0, 0, &[10000])),
            Err(ConvErr::Invalid)
        );
        assert_eq!(
            recv_numeric_text(&numeric(1, 0, 0x1234, 0, &[1])),
            Err(ConvErr::Invalid)
        );
        assert_eq!(
            recv_numeric_text(&numeric(1, 0, 0, 0xC000, &[1])),
            Err(ConvErr::Invalid)
        );
        assert_eq!(
            recv_numeric_text(&numeric(1, i16::MAX, 0, 0, &[1])),
            Err(ConvErr::Range)
        );
        assert_eq!(
            recv_numeric_text(&numeric(1, i16::MIN, 0, 3, &[1])).unwrap(),
            "0.000"
        );
        // The largest display scale: bounded work and output.
        assert_eq!(
            recv_numeric_text(&numeric(1, i16::MIN, 0, 0x3fff, &[1]))
                .unwrap()
                .len(),
            2 + 0x3fff
        );
        assert_eq!(
            recv_numeric(&numeric(0, 0, 0xC000, 0, &[]), 10, 2),
            Err(ConvErr::Range)
        );
        assert_eq!(
            recv_numeric_text(&numeric(0, 0, 0xF000, 0, &[])).unwrap(),
            "-Infinity"
        );
        // 10^38 does not fit numeric(38, 0)
        let b = numeric(1, 9, 0, 0, &[100]);
        assert_eq!(recv_numeric(&b, 38, 0), Err(ConvErr::Range));
    }

    #[test]
    fn fixed_size_values() {
        assert_eq!(recv_int(&[0xff, 0xfe]), Ok(-2));
        assert_eq!(recv_int(&(-7i32).to_be_bytes()), Ok(-7));
        assert_eq!(recv_int(&i64::MIN.to_be_bytes()), Ok(i64::MIN));
        assert_eq!(recv_int(&[1, 2, 3]), Err(ConvErr::Invalid));
        assert_eq!(recv_f64(&1.5f32.to_be_bytes()), Ok(1.5));
        assert_eq!(recv_f64(&(-0.1f64).to_be_bytes()), Ok(-0.1));
        assert_eq!(recv_f32(&1e300f64.to_be_bytes()), Err(ConvErr::Range));
        assert!(recv_f32(&f64::INFINITY.to_be_bytes())
            .unwrap()
            .is_infinite());
        assert_eq!(recv_bool(&[1]), Ok(true));
        assert_eq!(recv_bool(&[]), Err(ConvErr::Invalid));
        // 2024-01-02 is day 8767 of PostgreSQL's epoch
        assert_eq!(recv_date(&8767i32.to_be_bytes()), Ok(8767 + 10957));
        assert_eq!(recv_date(&i32::MAX.to_be_bytes()), Err(ConvErr::Range));
        let mut out = Vec::new();
        send_date(19724, &mut out);
        assert_eq!(out, 8767i32.to_be_bytes());
        assert_eq!(recv_timestamp(&0i64.to_be_bytes()), Ok(PG_EPOCH_MICROS));
        assert_eq!(recv_timestamp(&i64::MIN.to_be_bytes()), Err(ConvErr::Range));
        assert_eq!(
            recv_timestamp(&(i64::MAX - 1).to_be_bytes()),
            Err(ConvErr::Range)
        );
        assert_eq!(
            micros_to_unit(i64::MAX / 10, TimeUnit::Nanosecond),
            Err(ConvErr::Range)
        );
        assert_eq!(micros_to_unit(-1, TimeUnit::Second), Ok(-1));
        assert_eq!(unit_to_micros(1_499, TimeUnit::Nanosecond), Ok(1));
        assert_eq!(unit_to_micros(-1_500, TimeUnit::Nanosecond), Ok(-2));
        for ns in [i64::MAX, i64::MIN] {
            let micros = unit_to_micros(ns, TimeUnit::Nanosecond).unwrap();
            assert_eq!(micros, ns / 1000);
            assert!(micros_to_unit(micros, TimeUnit::Nanosecond).is_ok());
        }
        assert_eq!(
            unit_to_micros(i64::MAX, TimeUnit::Second),
            Err(ConvErr::Range)
        );
    }
}
