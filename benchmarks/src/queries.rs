//! The 22 TPC-H queries.
//!
//! Owns the query texts (compiled in from `benchmarks/queries/qNN.sql`, the
//! spec's queries with its default substitution parameters) and what the
//! verifier needs to know about each one's result order: the output columns
//! of its outermost `ORDER BY` and its `LIMIT`.

/// One TPC-H query.
#[derive(Debug, Clone)]
pub struct Query {
    /// 1..=22.
    pub number: u32,
    /// The text as kept in `benchmarks/queries/`, comments included.
    pub sql: &'static str,
}

const TEXTS: [&str; 22] = [
    include_str!("../queries/q01.sql"),
    include_str!("../queries/q02.sql"),
    include_str!("../queries/q03.sql"),
    include_str!("../queries/q04.sql"),
    include_str!("../queries/q05.sql"),
    include_str!("../queries/q06.sql"),
    include_str!("../queries/q07.sql"),
    include_str!("../queries/q08.sql"),
    include_str!("../queries/q09.sql"),
    include_str!("../queries/q10.sql"),
    include_str!("../queries/q11.sql"),
    include_str!("../queries/q12.sql"),
    include_str!("../queries/q13.sql"),
    include_str!("../queries/q14.sql"),
    include_str!("../queries/q15.sql"),
    include_str!("../queries/q16.sql"),
    include_str!("../queries/q17.sql"),
    include_str!("../queries/q18.sql"),
    include_str!("../queries/q19.sql"),
    include_str!("../queries/q20.sql"),
    include_str!("../queries/q21.sql"),
    include_str!("../queries/q22.sql"),
];

/// All 22 queries in order.
pub fn all() -> Vec<Query> {
    TEXTS
        .iter()
        .enumerate()
        .map(|(i, sql)| Query {
            number: i as u32 + 1,
            sql,
        })
        .collect()
}

/// Query `n` (1..=22).
pub fn get(n: u32) -> Option<Query> {
    all().into_iter().find(|q| q.number == n)
}

impl Query {
    /// `Q01`..`Q22`.
    pub fn name(&self) -> String {
        format!("Q{:02}", self.number)
    }

    /// The text without `--` comment lines, lower-cased words kept as is.
    fn code(&self) -> String {
        self.sql
            .lines()
            .map(|l| match l.find("--") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The items of the outermost `ORDER BY` (the last one in the text, which
    /// for these queries is always the outermost), without `asc`/`desc`,
    /// lower-cased. Empty when the query has no `ORDER BY`.
    pub fn order_by(&self) -> Vec<String> {
        let code = self.code().to_lowercase();
        let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(pos) = flat.rfind("order by ") else {
            return Vec::new();
        };
        // A trailing ORDER BY inside parentheses would not be outermost.
        let tail = &flat[pos + "order by ".len()..];
        if tail.contains(')') {
            return Vec::new();
        }
        let end = tail
            .find(" limit ")
            .or_else(|| tail.find(';'))
            .unwrap_or(tail.len());
        tail[..end]
            .split(',')
            .map(|item| {
                let item = item.trim().trim_end_matches(';').trim();
                let item = item
                    .strip_suffix(" desc")
                    .or_else(|| item.strip_suffix(" asc"))
                    .unwrap_or(item);
                item.trim().to_string()
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The outermost `LIMIT`, if any.
    pub fn limit(&self) -> Option<usize> {
        let code = self.code().to_lowercase();
        let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
        let pos = flat.rfind(" limit ")?;
        let tail = &flat[pos + " limit ".len()..];
        if tail.contains(')') {
            return None;
        }
        tail.trim_end_matches(';').trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_two_queries() {
        let qs = all();
        assert_eq!(qs.len(), 22);
        for q in &qs {
            assert!(q.sql.contains("select"), "{} has no select", q.name());
            assert!(
                q.sql.starts_with(&format!("-- TPC-H Q{}:", q.number)),
                "{}",
                q.name()
            );
        }
    }

    #[test]
    fn order_and_limit() {
        assert_eq!(
            get(1).unwrap().order_by(),
            vec!["l_returnflag", "l_linestatus"]
        );
        assert_eq!(get(1).unwrap().limit(), None);
        assert_eq!(
            get(2).unwrap().order_by(),
            vec!["s_acctbal", "n_name", "s_name", "p_partkey"]
        );
        assert_eq!(get(2).unwrap().limit(), Some(100));
        assert_eq!(get(3).unwrap().order_by(), vec!["revenue", "o_orderdate"]);
        assert_eq!(get(3).unwrap().limit(), Some(10));
        assert_eq!(get(9).unwrap().order_by(), vec!["nation", "o_year"]);
        assert!(get(6).unwrap().order_by().is_empty());
        assert!(get(17).unwrap().order_by().is_empty());
        assert_eq!(get(13).unwrap().order_by(), vec!["custdist", "c_count"]);
        assert_eq!(get(15).unwrap().order_by(), vec!["s_suppkey"]);
        assert_eq!(get(21).unwrap().limit(), Some(100));
    }
}
