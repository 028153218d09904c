//! The slicedb SQL dialect: PostgreSQL plus the Greenplum / Netezza
//! distribution clause on `CREATE TABLE`.
//!
//! ```sql
//! CREATE TABLE t (a int, b text) DISTRIBUTE ON (a, b);
//! CREATE TABLE t (a int, b text) DISTRIBUTE ON RANDOM;
//! CREATE TABLE t (a int, b text) DISTRIBUTED BY (a);
//! CREATE TABLE t (a int, b text) DISTRIBUTED RANDOMLY;
//! ```
//!
//! [`SlicedbDialect`] behaves exactly like sqlparser's `PostgreSqlDialect`
//! (it reports the PostgreSQL `TypeId`, so every `dialect_of!` check in the
//! parser takes the PostgreSQL branch) except that it takes over parsing of
//! `CREATE [LOCAL|GLOBAL] [TEMP|TEMPORARY] [UNLOGGED] TABLE` through the
//! `parse_statement` hook. The statement itself is parsed by the parser's own
//! `parse_create_table`; the distribution clause (which `Statement` has no
//! field for) is handed back through a side channel in the dialect.

use std::any::TypeId;
use std::cell::RefCell;

use datafusion::sql::sqlparser::ast::{
    CreateTableOptions, Expr, Ident, OnCommit, SqlOption, Statement,
};
use datafusion::sql::sqlparser::dialect::{Dialect, PostgreSqlDialect, Precedence};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// How the rows of a table are spread over the slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// Hash of the listed columns (names normalized like PostgreSQL).
    Hash(Vec<String>),
    /// Round robin / random placement.
    Random,
}

/// One parsed statement plus its distribution clause (CREATE TABLE only).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedStatement {
    pub statement: Statement,
    pub distribution: Option<Distribution>,
    /// `CREATE TABLE ... AS ... WITH NO DATA`.
    pub no_data: bool,
}

/// `sql` with `f` applied to each of its statements, printed again, if `f`
/// changed any (and `sql` parses).
pub fn rewrite_each(sql: &str, mut f: impl FnMut(&mut Statement) -> bool) -> Option<String> {
    let mut parsed = parse_statements(sql).ok()?;
    let mut changed = false;
    for p in &mut parsed {
        changed |= f(&mut p.statement);
    }
    changed.then(|| {
        parsed
            .iter()
            .map(|p| p.statement.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Parse one or more `;`-separated statements with [`SlicedbDialect`].
pub fn parse_statements(sql: &str) -> Result<Vec<ParsedStatement>, ParserError> {
    let dialect = SlicedbDialect::default();
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut out = Vec::new();
    // Same loop as `Parser::parse_statements`, so that the distribution
    // recorded by the hook can be attached to its top-level statement.
    let mut expecting_statement_delimiter = false;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            expecting_statement_delimiter = false;
        }
        match &parser.peek_token_ref().token {
            Token::EOF => break,
            Token::Word(w) if expecting_statement_delimiter && w.keyword == Keyword::END => break,
            _ => {}
        }
        if expecting_statement_delimiter {
            return parser.expected("end of statement", parser.peek_token());
        }
        dialect.distribution.borrow_mut().take();
        dialect.no_data.set(false);
        let statement = parser.parse_statement()?;
        let distribution = dialect.distribution.borrow_mut().take();
        let (distribution, no_data) = match statement {
            Statement::CreateTable(_) => (distribution, dialect.no_data.get()),
            _ => (None, false),
        };
        out.push(ParsedStatement {
            statement,
            distribution,
            no_data,
        });
        expecting_statement_delimiter = true;
    }
    Ok(out)
}

/// PostgreSQL dialect with the `DISTRIBUTE ON` / `DISTRIBUTED BY` extension.
#[derive(Debug, Default)]
pub struct SlicedbDialect {
    pg: PostgreSqlDialect,
    /// Side channel: the distribution clause of the last CREATE TABLE parsed.
    distribution: RefCell<Option<Distribution>>,
    /// Side channel: the last CREATE TABLE AS parsed said WITH NO DATA.
    no_data: std::cell::Cell<bool>,
}

impl SlicedbDialect {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the distribution clause recorded by the last CREATE TABLE parsed.
    pub fn take_distribution(&self) -> Option<Distribution> {
        self.distribution.borrow_mut().take()
    }
}

/// A name as written: unquoted it folds to lower case, quoted it is kept.
pub(crate) fn normalize(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_string()
    } else {
        s.to_lowercase()
    }
}

/// Unquoted identifiers fold to lower case, quoted ones are kept as written.
fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// Is the token at `n` (skipping whitespace) the unquoted word `word`?
fn peek_word(parser: &Parser, n: usize, word: &str) -> bool {
    matches!(&parser.peek_nth_token_ref(n).token,
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn peek_kw(parser: &Parser, n: usize, kw: Keyword) -> bool {
    matches!(&parser.peek_nth_token_ref(n).token, Token::Word(w) if w.keyword == kw)
}

/// Is a distribution clause starting at the next token?
fn at_distribution(parser: &Parser) -> bool {
    (peek_kw(parser, 0, Keyword::DISTRIBUTE) && peek_kw(parser, 1, Keyword::ON))
        || peek_word(parser, 0, "distributed")
}

/// Parse `DISTRIBUTE ON [HASH] (cols) | DISTRIBUTE ON RANDOM |
/// DISTRIBUTED BY (cols) | DISTRIBUTED RANDOMLY`.
fn parse_distribution(parser: &mut Parser) -> Result<Distribution, ParserError> {
    if parser.parse_keywords(&[Keyword::DISTRIBUTE, Keyword::ON]) {
        if peek_word(parser, 0, "random") {
            parser.next_token();
            return Ok(Distribution::Random);
        }
        let _ = parser.parse_keyword(Keyword::HASH);
        return parse_distribution_columns(parser);
    }
    // DISTRIBUTED
    parser.next_token();
    if parser.parse_keyword(Keyword::BY) {
        return parse_distribution_columns(parser);
    }
    if peek_word(parser, 0, "randomly") {
        parser.next_token();
        return Ok(Distribution::Random);
    }
    parser.expected("BY or RANDOMLY after DISTRIBUTED", parser.peek_token())
}

fn parse_distribution_columns(parser: &mut Parser) -> Result<Distribution, ParserError> {
    parser.expect_token(&Token::LParen)?;
    let cols = parser.parse_comma_separated(|p| p.parse_identifier())?;
    parser.expect_token(&Token::RParen)?;
    Ok(Distribution::Hash(
        cols.iter().map(normalize_ident).collect(),
    ))
}

/// Does the statement at the parser start with
/// `CREATE [LOCAL|GLOBAL] [TEMP|TEMPORARY] [UNLOGGED] TABLE`?
fn at_create_table(parser: &Parser) -> bool {
    if !peek_kw(parser, 0, Keyword::CREATE) {
        return false;
    }
    let mut n = 1;
    if peek_kw(parser, n, Keyword::LOCAL) || peek_kw(parser, n, Keyword::GLOBAL) {
        n += 1;
    }
    if peek_kw(parser, n, Keyword::TEMP) || peek_kw(parser, n, Keyword::TEMPORARY) {
        n += 1;
    }
    if peek_kw(parser, n, Keyword::UNLOGGED) {
        n += 1;
    }
    peek_kw(parser, n, Keyword::TABLE)
}

impl SlicedbDialect {
    fn parse_create_table(&self, parser: &mut Parser) -> Result<Statement, ParserError> {
        parser.expect_keyword_is(Keyword::CREATE)?;
        let global = if parser.parse_keyword(Keyword::LOCAL) {
            Some(false)
        } else if parser.parse_keyword(Keyword::GLOBAL) {
            Some(true)
        } else {
            None
        };
        let temporary = parser
            .parse_one_of_keywords(&[Keyword::TEMP, Keyword::TEMPORARY])
            .is_some();
        let unlogged = parser.parse_keyword(Keyword::UNLOGGED);
        parser.expect_keyword_is(Keyword::TABLE)?;
        let mut create = parser.parse_create_table(false, temporary, global, false)?;

        // Greenplum puts DISTRIBUTED BY after WITH / ON COMMIT / AS query
        // (all parsed above); users also write it before them, so accept
        // those clauses again after the distribution clause.
        let mut distribution = None;
        loop {
            if at_distribution(parser) {
                if distribution.is_some() {
                    return parser.expected("only one distribution clause", parser.peek_token());
                }
                distribution = Some(parse_distribution(parser)?);
            } else if distribution.is_some()
                && create.table_options == CreateTableOptions::None
                && peek_kw(parser, 0, Keyword::WITH)
                && parser.peek_nth_token_ref(1).token == Token::LParen
            {
                create.table_options =
                    CreateTableOptions::With(parser.parse_options(Keyword::WITH)?);
            } else if distribution.is_some()
                && create.on_commit.is_none()
                && parser.parse_keywords(&[Keyword::ON, Keyword::COMMIT])
            {
                create.on_commit = Some(
                    if parser.parse_keywords(&[Keyword::DELETE, Keyword::ROWS]) {
                        OnCommit::DeleteRows
                    } else if parser.parse_keywords(&[Keyword::PRESERVE, Keyword::ROWS]) {
                        OnCommit::PreserveRows
                    } else if parser.parse_keyword(Keyword::DROP) {
                        OnCommit::Drop
                    } else {
                        return parser
                            .expected("DELETE ROWS, PRESERVE ROWS or DROP", parser.peek_token());
                    },
                );
            } else if distribution.is_some()
                && create.query.is_none()
                && parser.parse_keyword(Keyword::AS)
            {
                create.query = Some(parser.parse_query()?);
            } else if create.query.is_some()
                && peek_kw(parser, 0, Keyword::WITH)
                && (peek_word(parser, 1, "data")
                    || (peek_word(parser, 1, "no") && peek_word(parser, 2, "data")))
            {
                // CREATE TABLE ... AS ... WITH [NO] DATA
                parser.next_token();
                let no = peek_word(parser, 0, "no");
                if no {
                    parser.next_token();
                }
                parser.next_token();
                self.no_data.set(no);
            } else {
                break;
            }
        }
        if unlogged {
            unlogged_is_unmirrored(&mut create.table_options, parser)?;
        }
        *self.distribution.borrow_mut() = distribution;
        Ok(Statement::CreateTable(create))
    }
}

/// `CREATE UNLOGGED TABLE`: as in PostgreSQL, its rows have no second copy
/// (WAL there, the mirror here): the option `mirrored = false`. Saying
/// `mirrored` besides is refused rather than one of the two ignored.
fn unlogged_is_unmirrored(
    options: &mut CreateTableOptions,
    parser: &Parser,
) -> Result<(), ParserError> {
    let unmirrored = SqlOption::KeyValue {
        key: Ident::new("mirrored"),
        value: Expr::Identifier(Ident::new("false")),
    };
    match options {
        CreateTableOptions::None => {
            *options = CreateTableOptions::With(vec![unmirrored]);
            Ok(())
        }
        CreateTableOptions::With(opts) => {
            let said = opts.iter().any(|o| {
                matches!(o, SqlOption::KeyValue { key, .. } if key.value.eq_ignore_ascii_case("mirrored"))
            });
            if said {
                return parser.expected(
                    "UNLOGGED or WITH (mirrored = ...), not both",
                    parser.peek_token(),
                );
            }
            opts.push(unmirrored);
            Ok(())
        }
        // Other option forms are refused where the options are read.
        _ => Ok(()),
    }
}

/// `DISTRIBUTED` is no keyword; keep `... FROM t DISTRIBUTED BY (a)` (CREATE
/// TABLE AS) from taking it as an alias. `kw` is `NoKeyword` for it.
fn is_distributed_clause_word(kw: &Keyword, parser: &Parser) -> bool {
    if *kw != Keyword::NoKeyword {
        return false;
    }
    let is_distributed = matches!(&parser.get_current_token().token,
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("distributed"));
    is_distributed && (peek_kw(parser, 0, Keyword::BY) || peek_word(parser, 0, "randomly"))
}

impl Dialect for SlicedbDialect {
    fn dialect(&self) -> TypeId {
        // Behave as PostgreSQL for every `dialect_of!` check in the parser.
        TypeId::of::<PostgreSqlDialect>()
    }

    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        if at_create_table(parser) {
            Some(self.parse_create_table(parser))
        } else {
            self.pg.parse_statement(parser)
        }
    }

    fn is_select_item_alias(&self, explicit: bool, kw: &Keyword, parser: &mut Parser) -> bool {
        if !explicit && is_distributed_clause_word(kw, parser) {
            return false;
        }
        self.pg.is_select_item_alias(explicit, kw, parser)
    }

    fn is_table_factor_alias(&self, explicit: bool, kw: &Keyword, parser: &mut Parser) -> bool {
        if !explicit && is_distributed_clause_word(kw, parser) {
            return false;
        }
        self.pg.is_table_factor_alias(explicit, kw, parser)
    }

    // ---- everything below delegates to PostgreSqlDialect ----
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.pg.identifier_quote_style(identifier)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.pg.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.pg.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.pg.is_identifier_part(ch)
    }
    fn supports_unicode_string_literal(&self) -> bool {
        self.pg.supports_unicode_string_literal()
    }
    fn is_reserved_for_identifier(&self, kw: Keyword) -> bool {
        self.pg.is_reserved_for_identifier(kw)
    }
    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.pg.is_custom_operator_part(ch)
    }
    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.pg.get_next_precedence(parser)
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        self.pg.supports_filter_during_aggregation()
    }
    fn supports_group_by_expr(&self) -> bool {
        self.pg.supports_group_by_expr()
    }
    fn prec_value(&self, prec: Precedence) -> u8 {
        self.pg.prec_value(prec)
    }
    fn allow_extract_custom(&self) -> bool {
        self.pg.allow_extract_custom()
    }
    fn allow_extract_single_quotes(&self) -> bool {
        self.pg.allow_extract_single_quotes()
    }
    fn supports_create_index_with_clause(&self) -> bool {
        self.pg.supports_create_index_with_clause()
    }
    fn supports_explain_with_utility_options(&self) -> bool {
        self.pg.supports_explain_with_utility_options()
    }
    fn supports_listen_notify(&self) -> bool {
        self.pg.supports_listen_notify()
    }
    fn supports_factorial_operator(&self) -> bool {
        self.pg.supports_factorial_operator()
    }
    fn supports_bitwise_shift_operators(&self) -> bool {
        self.pg.supports_bitwise_shift_operators()
    }
    fn supports_comment_on(&self) -> bool {
        self.pg.supports_comment_on()
    }
    fn supports_load_extension(&self) -> bool {
        self.pg.supports_load_extension()
    }
    fn supports_named_fn_args_with_colon_operator(&self) -> bool {
        self.pg.supports_named_fn_args_with_colon_operator()
    }
    fn supports_named_fn_args_with_expr_name(&self) -> bool {
        self.pg.supports_named_fn_args_with_expr_name()
    }
    fn supports_empty_projections(&self) -> bool {
        self.pg.supports_empty_projections()
    }
    fn supports_nested_comments(&self) -> bool {
        self.pg.supports_nested_comments()
    }
    fn supports_string_escape_constant(&self) -> bool {
        self.pg.supports_string_escape_constant()
    }
    fn supports_numeric_literal_underscores(&self) -> bool {
        self.pg.supports_numeric_literal_underscores()
    }
    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.pg.supports_array_typedef_with_brackets()
    }
    fn supports_geometric_types(&self) -> bool {
        self.pg.supports_geometric_types()
    }
    fn supports_set_names(&self) -> bool {
        self.pg.supports_set_names()
    }
    fn supports_alter_column_type_using(&self) -> bool {
        self.pg.supports_alter_column_type_using()
    }
    fn supports_notnull_operator(&self) -> bool {
        self.pg.supports_notnull_operator()
    }
    fn supports_interval_options(&self) -> bool {
        self.pg.supports_interval_options()
    }
    fn supports_insert_table_alias(&self) -> bool {
        self.pg.supports_insert_table_alias()
    }
    fn supports_create_table_like_parenthesized(&self) -> bool {
        self.pg.supports_create_table_like_parenthesized()
    }
    fn supports_select_wildcard_with_alias(&self) -> bool {
        self.pg.supports_select_wildcard_with_alias()
    }
    fn supports_comma_separated_trim(&self) -> bool {
        self.pg.supports_comma_separated_trim()
    }
    fn supports_xml_expressions(&self) -> bool {
        self.pg.supports_xml_expressions()
    }
    fn supports_comment_optimizer_hint(&self) -> bool {
        self.pg.supports_comment_optimizer_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> ParsedStatement {
        let mut v = parse_statements(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(v.len(), 1, "{sql}");
        v.pop().unwrap()
    }

    fn dist(sql: &str) -> Option<Distribution> {
        let p = one(sql);
        assert!(matches!(p.statement, Statement::CreateTable(_)), "{sql}");
        p.distribution
    }

    fn hash(cols: &[&str]) -> Option<Distribution> {
        Some(Distribution::Hash(
            cols.iter().map(|c| c.to_string()).collect(),
        ))
    }

    #[test]
    fn distribute_on_columns() {
        assert_eq!(
            dist("CREATE TABLE t (a int, b text) DISTRIBUTE ON (a, b)"),
            hash(&["a", "b"])
        );
        assert_eq!(
            dist("create table t (a int, b text) distribute on hash (A)"),
            hash(&["a"])
        );
    }

    #[test]
    fn distribute_on_random() {
        assert_eq!(
            dist("CREATE TABLE t (a int, b text) DISTRIBUTE ON RANDOM"),
            Some(Distribution::Random)
        );
    }

    #[test]
    fn distributed_by_and_randomly() {
        assert_eq!(
            dist("CREATE TABLE t (a int, b text) DISTRIBUTED BY (a)"),
            hash(&["a"])
        );
        assert_eq!(
            dist("CREATE TABLE t (a int, b text) DISTRIBUTED RANDOMLY"),
            Some(Distribution::Random)
        );
    }

    #[test]
    fn names_normalized_like_postgres() {
        assert_eq!(
            dist(r#"CREATE TABLE t ("Mixed" int, Upper int) DISTRIBUTE ON ("Mixed", UPPER)"#),
            hash(&["Mixed", "upper"])
        );
    }

    #[test]
    fn clause_orders() {
        for sql in [
            "CREATE TABLE t (a int) WITH (mirrored = false) DISTRIBUTE ON (a)",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a) WITH (mirrored = false)",
            "CREATE TEMP TABLE t (a int) WITH (mirrored = false) ON COMMIT DROP DISTRIBUTED BY (a)",
            "CREATE TEMP TABLE t (a int) DISTRIBUTED BY (a) ON COMMIT DROP",
        ] {
            let p = one(sql);
            assert_eq!(p.distribution, hash(&["a"]), "{sql}");
            let Statement::CreateTable(ct) = p.statement else {
                panic!("{sql}")
            };
            if sql.contains("mirrored") {
                assert!(
                    matches!(&ct.table_options, CreateTableOptions::With(o) if o.len() == 1),
                    "{sql}: {:?}",
                    ct.table_options
                );
            }
            if sql.contains("COMMIT") {
                assert_eq!(ct.on_commit, Some(OnCommit::Drop), "{sql}");
                assert!(ct.temporary);
            }
        }
    }

    #[test]
    fn create_table_as_with_distribution() {
        for sql in [
            "CREATE TABLE t AS SELECT a, b FROM s DISTRIBUTED BY (a)",
            "CREATE TABLE t AS SELECT a, b FROM s DISTRIBUTE ON (a)",
            "CREATE TABLE t DISTRIBUTE ON (a) AS SELECT a, b FROM s",
            "CREATE TABLE t AS SELECT a, b FROM s WHERE a > 1 DISTRIBUTED BY (a)",
        ] {
            let p = one(sql);
            assert_eq!(p.distribution, hash(&["a"]), "{sql}");
            let Statement::CreateTable(ct) = p.statement else {
                panic!("{sql}")
            };
            let q = ct.query.expect(sql).to_string();
            assert!(q.starts_with("SELECT a, b FROM s"), "{sql}: {q}");
        }
        assert_eq!(
            dist("CREATE TABLE t AS SELECT a FROM s DISTRIBUTED RANDOMLY"),
            Some(Distribution::Random)
        );
        assert_eq!(
            dist("CREATE TABLE t AS SELECT 1 AS a DISTRIBUTED RANDOMLY"),
            Some(Distribution::Random)
        );
    }

    #[test]
    fn temp_and_unlogged_tables() {
        let p = one("CREATE TEMP TABLE t (a int)");
        assert_eq!(p.distribution, None);
        let Statement::CreateTable(ct) = p.statement else {
            panic!()
        };
        assert!(ct.temporary);
        let p = one("CREATE TEMPORARY TABLE t (a int) DISTRIBUTE ON (a)");
        assert_eq!(p.distribution, hash(&["a"]));
        let p = one("CREATE UNLOGGED TABLE t (a int) DISTRIBUTE ON RANDOM");
        assert_eq!(p.distribution, Some(Distribution::Random));
        let Statement::CreateTable(ct) = p.statement else {
            panic!()
        };
        assert_eq!(ct.table_options.to_string(), "WITH (mirrored = false)");
        let p = one("CREATE TABLE t (a int)");
        let Statement::CreateTable(ct) = p.statement else {
            panic!()
        };
        assert_eq!(ct.table_options, CreateTableOptions::None);
        assert!(
            parse_statements("CREATE UNLOGGED TABLE t (a int) WITH (mirrored = true)").is_err()
        );
    }

    #[test]
    fn without_clause_is_none() {
        assert_eq!(dist("CREATE TABLE t (a int, b text)"), None);
        assert_eq!(
            dist("CREATE TABLE IF NOT EXISTS s.t (a int primary key, b text not null)"),
            None
        );
    }

    #[test]
    fn multiple_statements() {
        let v = parse_statements(
            "CREATE TABLE a (x int) DISTRIBUTE ON (x); CREATE TABLE b (y int); \
             INSERT INTO a VALUES (1);; CREATE TABLE c (z int) DISTRIBUTED RANDOMLY; SELECT 1;",
        )
        .unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].distribution, hash(&["x"]));
        assert_eq!(v[1].distribution, None);
        assert!(matches!(v[2].statement, Statement::Insert(_)));
        assert_eq!(v[2].distribution, None);
        assert_eq!(v[3].distribution, Some(Distribution::Random));
        assert!(matches!(v[4].statement, Statement::Query(_)));
    }

    #[test]
    fn syntax_errors_in_clause() {
        for sql in [
            "CREATE TABLE t (a int) DISTRIBUTE ON",
            "CREATE TABLE t (a int) DISTRIBUTE ON (",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a",
            "CREATE TABLE t (a int) DISTRIBUTE ON ()",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a,)",
            "CREATE TABLE t (a int) DISTRIBUTE (a)",
            "CREATE TABLE t (a int) DISTRIBUTED (a)",
            "CREATE TABLE t (a int) DISTRIBUTED BY a",
            "CREATE TABLE t (a int) DISTRIBUTED SOMEHOW",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a) DISTRIBUTED RANDOMLY",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a) garbage",
            "CREATE TABLE t (a int) DISTRIBUTE ON (a) CREATE TABLE u (b int)",
        ] {
            assert!(parse_statements(sql).is_err(), "{sql} should fail");
        }
    }

    #[test]
    fn copy_parses_as_copy() {
        let p = one("COPY t (a,b) FROM STDIN WITH (FORMAT csv, HEADER true)");
        assert!(matches!(p.statement, Statement::Copy { .. }));
        assert_eq!(p.distribution, None);
    }

    #[test]
    fn same_as_postgres_dialect() {
        let pg = PostgreSqlDialect {};
        for sql in [
            "SELECT 1",
            "SELECT a::int, b->>'x', c ~ 'y', $1 FROM t WHERE d @> ARRAY[1] ORDER BY 1",
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, E'a\\nb') RETURNING a",
            "COPY t FROM STDIN",
            "COPY t TO STDOUT WITH (FORMAT csv, HEADER)",
            "COPY t FROM STDIN CSV HEADER",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SET search_path TO public",
            "SET extra_float_digits = 3",
            "SHOW TRANSACTION ISOLATION LEVEL",
            "SHOW server_version",
            "EXPLAIN SELECT * FROM t",
            "CREATE VIEW v AS SELECT 1",
            "CREATE INDEX i ON t (a)",
            "DROP TABLE IF EXISTS t",
            "SELECT distributed FROM t",
            "SELECT x distributed FROM t distributed",
            "SELECT n.nspname as \"Schema\", c.relname as \"Name\", \
             CASE c.relkind WHEN 'r' THEN 'table' END as \"Type\", \
             pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" \
             FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','S','f','') \
             AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' \
             AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;",
            "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default",
            "CREATE TABLE t (a int, b text)",
            "CREATE TABLE t (a int) WITH (fillfactor = 70)",
            "CREATE TABLE t AS SELECT * FROM s",
        ] {
            let expected = Parser::parse_sql(&pg, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let got: Vec<Statement> = parse_statements(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .map(|p| p.statement)
                .collect();
            assert_eq!(got, expected, "{sql}");
        }
        // Errors stay errors.
        for sql in ["SELEC 1", "SELECT FROM WHERE (", "COPY"] {
            assert!(Parser::parse_sql(&pg, sql).is_err());
            assert!(parse_statements(sql).is_err(), "{sql}");
        }
    }
}
