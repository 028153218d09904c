//! COPY options: the format (text, CSV or binary) and the text formats'
//! delimiter, NULL string, header, quote and escape, read from a `COPY`
//! statement and checked.

use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, Statement,
};

use super::error::{CopyError, FEATURE_NOT_SUPPORTED, INVALID_PARAMETER_VALUE, SYNTAX_ERROR};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    /// PostgreSQL's binary COPY format (`binary.rs`).
    Binary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self::text()
    }
}

fn one_byte(c: char, what: &str) -> Result<u8, CopyError> {
    if c.is_ascii() {
        Ok(c as u8)
    } else {
        Err(CopyError::new(
            FEATURE_NOT_SUPPORTED,
            format!("COPY {what} must be a single one-byte character"),
        ))
    }
}

impl CopyOptions {
    /// PostgreSQL's defaults for the text format.
    pub fn text() -> Self {
        Self {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: "\\N".to_string(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    /// PostgreSQL's defaults for the CSV format.
    pub fn csv() -> Self {
        Self {
            format: CopyFormat::Csv,
            delimiter: b',',
            null: String::new(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    /// The binary format (which has no other options).
    pub fn binary() -> Self {
        Self {
            format: CopyFormat::Binary,
            ..Self::text()
        }
    }

    /// The format code of CopyInResponse and CopyOutResponse: 1 for binary.
    pub fn format_code(&self) -> i8 {
        (self.format == CopyFormat::Binary) as i8
    }

    /// Read the options of a `Statement::Copy` (new-style `WITH (...)` and
    /// legacy `CSV HEADER DELIMITER ','` forms).
    pub fn from_statement(stmt: &Statement) -> Result<CopyOptions, CopyError> {
        let Statement::Copy {
            options,
            legacy_options,
            ..
        } = stmt
        else {
            return Err(CopyError::new(SYNTAX_ERROR, "not a COPY statement"));
        };
        let mut format = CopyFormat::Text;
        let mut format_given = false;
        let mut set_format = |f: CopyFormat| {
            if std::mem::replace(&mut format_given, true) {
                return Err(CopyError::new(
                    SYNTAX_ERROR,
                    "conflicting or redundant options: FORMAT",
                ));
            }
            Ok(f)
        };
        let mut delimiter = None;
        let mut null = None;
        let mut header = false;
        let mut quote = None;
        let mut escape = None;
        let unsupported = |what: &str| {
            CopyError::new(
                FEATURE_NOT_SUPPORTED,
                format!("COPY {what} is not supported"),
            )
        };
        for opt in options {
            match opt {
                CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                    "text" => format = set_format(CopyFormat::Text)?,
                    "csv" => format = set_format(CopyFormat::Csv)?,
                    "binary" => format = set_format(CopyFormat::Binary)?,
                    other => {
                        return Err(CopyError::new(
                            INVALID_PARAMETER_VALUE,
                            format!("COPY format \"{other}\" not recognized"),
                        ))
                    }
                },
                CopyOption::Freeze(_) => {}
                CopyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(c) => quote = Some(one_byte(*c, "quote")?),
                CopyOption::Escape(c) => escape = Some(one_byte(*c, "escape")?),
                CopyOption::Encoding(e) => {
                    let e = e.to_ascii_lowercase().replace(['-', '_'], "");
                    if e != "utf8" && e != "unicode" {
                        return Err(unsupported("encoding other than UTF8"));
                    }
                }
                CopyOption::ForceQuote(_) => return Err(unsupported("FORCE_QUOTE")),
                CopyOption::ForceNotNull(_) => return Err(unsupported("FORCE_NOT_NULL")),
                CopyOption::ForceNull(_) => return Err(unsupported("FORCE_NULL")),
            }
        }
        for opt in legacy_options {
            match opt {
                CopyLegacyOption::Binary => format = set_format(CopyFormat::Binary)?,
                CopyLegacyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Header => header = true,
                CopyLegacyOption::Csv(csv) => {
                    format = set_format(CopyFormat::Csv)?;
                    for o in csv {
                        match o {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(c) => quote = Some(one_byte(*c, "quote")?),
                            CopyLegacyCsvOption::Escape(c) => {
                                escape = Some(one_byte(*c, "escape")?)
                            }
                            CopyLegacyCsvOption::ForceQuote(_) => {
                                return Err(unsupported("FORCE QUOTE"))
                            }
                            CopyLegacyCsvOption::ForceNotNull(_) => {
                                return Err(unsupported("FORCE NOT NULL"))
                            }
                        }
                    }
                }
                other => return Err(unsupported(&format!("option {other}"))),
            }
        }
        if format == CopyFormat::Binary {
            // As PostgreSQL: the text formats' options are refused, not ignored.
            let given = [
                (delimiter.is_some(), "DELIMITER"),
                (null.is_some(), "NULL"),
                (header, "HEADER"),
                (quote.is_some(), "QUOTE"),
                (escape.is_some(), "ESCAPE"),
            ];
            if let Some((_, name)) = given.iter().find(|(set, _)| *set) {
                return Err(CopyError::new(
                    SYNTAX_ERROR,
                    format!("cannot specify {name} in BINARY mode"),
                ));
            }
            return Ok(Self::binary());
        }
        let mut o = match format {
            CopyFormat::Text => Self::text(),
            CopyFormat::Csv | CopyFormat::Binary => Self::csv(),
        };
        o.header = header;
        if let Some(d) = delimiter {
            o.delimiter = d;
        }
        if let Some(n) = null {
            o.null = n;
        }
        if format == CopyFormat::Text && (quote.is_some() || escape.is_some()) {
            return Err(CopyError::new(
                FEATURE_NOT_SUPPORTED,
                "COPY quote and escape are available only in CSV mode",
            ));
        }
        if let Some(q) = quote {
            o.quote = q;
            o.escape = q;
        }
        if let Some(e) = escape {
            o.escape = e;
        }
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<(), CopyError> {
        let bad = |m: &str| Err(CopyError::new(INVALID_PARAMETER_VALUE, m.to_string()));
        if matches!(self.delimiter, b'\n' | b'\r') || !self.delimiter.is_ascii() {
            return bad("COPY delimiter cannot be newline or carriage return");
        }
        if self.null.contains(['\n', '\r']) {
            return bad("COPY null representation cannot use newline or carriage return");
        }
        match self.format {
            CopyFormat::Text => {
                if self.delimiter == b'\\' {
                    return bad("COPY delimiter cannot be \"\\\"");
                }
            }
            CopyFormat::Binary => {}
            CopyFormat::Csv => {
                if self.delimiter == self.quote {
                    return bad("COPY delimiter and quote must be different");
                }
                if matches!(self.quote, b'\n' | b'\r') || matches!(self.escape, b'\n' | b'\r') {
                    return bad("COPY quote and escape cannot be newline or carriage return");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_statement() {
        let opts = |sql: &str| {
            let p = crate::dialect::parse_statements(sql).unwrap();
            CopyOptions::from_statement(&p[0].statement)
        };
        assert_eq!(opts("COPY t FROM STDIN").unwrap(), CopyOptions::text());
        let o = opts("COPY t (a,b) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        assert_eq!(
            o,
            CopyOptions {
                header: true,
                ..CopyOptions::csv()
            }
        );
        let o = opts("COPY t FROM STDIN CSV HEADER").unwrap();
        assert_eq!(
            (o.format, o.header, o.delimiter),
            (CopyFormat::Csv, true, b',')
        );
        let o = opts("COPY t FROM STDIN DELIMITER ',' NULL 'x'").unwrap();
        assert_eq!(
            (o.format, o.delimiter, o.null.as_str()),
            (CopyFormat::Text, b',', "x")
        );
        let o = opts(
            "COPY t TO STDOUT WITH (FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\', NULL 'N')",
        )
        .unwrap();
        assert_eq!(
            (o.delimiter, o.quote, o.escape, o.null.as_str()),
            (b'|', b'\'', b'\\', "N")
        );
        let o = opts("COPY t FROM STDIN WITH (FORMAT csv, QUOTE '''')").unwrap();
        assert_eq!((o.quote, o.escape), (b'\'', b'\''));
        assert_eq!(
            opts("COPY t FROM STDIN WITH (FORMAT binary)").unwrap(),
            CopyOptions::binary()
        );
        assert_eq!(
            opts("COPY t TO STDOUT (FORMAT BINARY)").unwrap().format,
            CopyFormat::Binary
        );
        assert_eq!(
            opts("COPY t FROM STDIN BINARY").unwrap(),
            CopyOptions::binary()
        );
        for bad in [
            "COPY t FROM STDIN WITH (FORMAT binary, HEADER true)",
            "COPY t FROM STDIN WITH (FORMAT binary, DELIMITER ',')",
            "COPY t TO STDOUT WITH (FORMAT binary, NULL 'x')",
        ] {
            let e = opts(bad).unwrap_err();
            assert_eq!(e.sqlstate, "42601", "{bad}: {e}");
            assert!(e.message.contains("in BINARY mode"), "{bad}: {e}");
        }
        let e = opts("COPY t TO STDOUT BINARY CSV").unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("42601", "conflicting or redundant options: FORMAT")
        );
        assert!(opts("COPY t FROM STDIN WITH (FORMAT text, QUOTE '''')").is_err());
        assert!(opts("COPY t FROM STDIN WITH (FORMAT csv, DELIMITER '\"')").is_err());
        let sel = crate::dialect::parse_statements("SELECT 1").unwrap();
        assert!(CopyOptions::from_statement(&sel[0].statement).is_err());
    }
}
