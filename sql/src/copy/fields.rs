//! Where a field's value lives in a split row, the text format's fast
//! split of rows without escapes, and its backslash escapes.

/// Where a field's value lives.
#[derive(Clone, Copy)]
pub(super) enum Span {
    Null,
    /// range in the row
    Row(usize, usize),
    /// range in the scratch buffer (unescaped)
    Scratch(usize, usize),
}

/// Split a text-format row without backslashes into field spans, finding
/// the delimiters 16 bytes at a time. Returns false (spans half done) as soon
/// as it meets a backslash: that row needs the escape-aware split.
#[inline]
pub(super) fn split_plain(row: &[u8], delim: u8, null: &[u8], spans: &mut Vec<Span>) -> bool {
    let n = row.len();
    let mut start = 0;
    let mut field = |end: usize, spans: &mut Vec<Span>| {
        let raw = &row[start..end];
        spans.push(if raw == null {
            Span::Null
        } else {
            Span::Row(start, end)
        });
        start = end + 1;
    };
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline, and every load reads
        // the 16 bytes at row[i..i + 16], which are in bounds (i + 16 <= n).
        unsafe {
            let vd = _mm_set1_epi8(delim as i8);
            let vb = _mm_set1_epi8(b'\\' as i8);
            while i + 16 <= n {
                let v = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
                if _mm_movemask_epi8(_mm_cmpeq_epi8(v, vb)) != 0 {
                    return false;
                }
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, vd)) as u32;
                while m != 0 {
                    field(i + m.trailing_zeros() as usize, spans);
                    m &= m - 1;
                }
                i += 16;
            }
        }
    }
    while i < n {
        let b = row[i];
        if b == b'\\' {
            return false;
        }
        if b == delim {
            field(i, spans);
        }
        i += 1;
    }
    field(n, spans);
    true
}

/// Unescape a text-format field into `out`. Returns true if an octal or hex
/// escape produced a non-ASCII byte (the result then needs UTF-8 checking).
pub(super) fn unescape_text(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut high = false;
    let mut i = 0;
    let n = raw.len();
    while i < n {
        let b = raw[i];
        if b != b'\\' || i + 1 >= n {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < n && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + (raw[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                let v = (v & 0xff) as u8;
                high |= v >= 0x80;
                out.push(v);
            }
            b'x' if i < n && raw[i].is_ascii_hexdigit() => {
                let mut v = hex_val(raw[i]) as u32;
                i += 1;
                if i < n && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + hex_val(raw[i]) as u32;
                    i += 1;
                }
                let v = v as u8;
                high |= v >= 0x80;
                out.push(v);
            }
            other => out.push(other),
        }
    }
    high
}

#[inline]
fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use crate::copy::encode::encode_rows;
    use crate::copy::options::CopyOptions;
    use crate::copy::testing::{col_of, concat, decode, schema};
    use datafusion::arrow::datatypes::DataType;

    #[test]
    fn text_escapes_and_custom_delimiter() {
        let s = schema(vec![
            ("a", DataType::Utf8, true),
            ("b", DataType::Utf8, true),
        ]);
        let b = concat(
            &decode(
                &s,
                &CopyOptions::text(),
                "\\b\\f\\v\\r\\x7\\x4a\\0\\12\\q\tcontinued\\\nline\n",
            )
            .unwrap(),
        );
        assert_eq!(
            col_of(&b, 0, 0).as_deref(),
            Some("\x08\x0c\x0b\r\x07J\0\nq")
        );
        assert_eq!(col_of(&b, 1, 0).as_deref(), Some("continued\nline"));
        let o = CopyOptions {
            delimiter: b'|',
            null: "".into(),
            ..CopyOptions::text()
        };
        let b = concat(&decode(&s, &o, "a\\|b|\nx|y\n").unwrap());
        assert_eq!(col_of(&b, 0, 0).as_deref(), Some("a|b"));
        assert_eq!(col_of(&b, 1, 0), None);
        let out = encode_rows(std::slice::from_ref(&b), &o).unwrap();
        assert_eq!(out, b"a\\|b|\nx|y\n");
    }
}
