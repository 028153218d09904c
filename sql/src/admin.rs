//! Administrative statements in Netezza's style, outside the SQL grammar:
//! `GROOM TABLE name` (reclaim deleted rows) and `REGENERATE` (heal every
//! failed node and disk now, without waiting for `regen_delay`).
//!
//! It owns only recognising them and the answer's tag; the coordinator does
//! the work. It must never parse anything else.

use pgwire::api::results::{Response, Tag};
use slicedb_coordinator::Coordinator;
use tracing::info;

use crate::dialect::normalize;
use crate::errors::SqlError;

/// A statement this module runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// `GROOM TABLE name`
    Groom(String),
    /// `REGENERATE`
    Regenerate,
}

/// The statement `sql` is, if it is one of ours.
pub fn parse(sql: &str) -> Option<Admin> {
    let t = sql.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = t.split_whitespace().collect();
    match words.as_slice() {
        [r] if r.eq_ignore_ascii_case("regenerate") => Some(Admin::Regenerate),
        [g, k, name] if g.eq_ignore_ascii_case("groom") && k.eq_ignore_ascii_case("table") => {
            let quoted = name.starts_with('"') && name.ends_with('"') && name.len() >= 2;
            let raw = if quoted {
                &name[1..name.len() - 1]
            } else {
                name
            };
            Some(Admin::Groom(normalize(raw, quoted)))
        }
        _ => None,
    }
}

/// Run it: GROOM answers the rows it removed; REGENERATE answers once the
/// new copies are placed (a node that misses a probe is failed first; the
/// copying goes on in the background: `slicedb_slices`,
/// `slicedb_map_history` and `slicedb regenerate` show it).
pub async fn run(coord: &Coordinator, a: Admin) -> Result<Response, SqlError> {
    match a {
        Admin::Groom(table) => {
            let (blocks, rows) = coord.groom(&table).await?;
            info!(table = %table, blocks, rows, "groomed");
            Ok(Response::Execution(
                Tag::new("GROOM").with_rows(rows as usize),
            ))
        }
        Admin::Regenerate => {
            coord.regenerate_now().await?;
            info!("regeneration asked for");
            Ok(Response::Execution(Tag::new("REGENERATE")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_groom_and_regenerate_only() {
        assert_eq!(parse("GROOM TABLE t;"), Some(Admin::Groom("t".into())));
        assert_eq!(parse("groom table \"T\""), Some(Admin::Groom("T".into())));
        assert_eq!(parse(" regenerate ; "), Some(Admin::Regenerate));
        assert_eq!(parse("REGENERATE now"), None);
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("GROOM t"), None);
    }
}
