//! Roles and table privileges as the catalog stores them (catalog version 5).
//!
//! A role ([`RoleDef`]) has a name, the superuser and login attributes and,
//! optionally, a SCRAM-SHA-256 verifier (PostgreSQL's text form:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`). The verifier
//! is all the catalog ever holds of a password: the SQL front end turns the
//! clear password into it before the coordinator sees the statement, and
//! the clear text cannot be recovered from it.
//!
//! A table's access list ([`TableAcl`]) names its owner (the role that
//! created it; none for tables created before roles existed, which then
//! belong to the superusers alone) and the privileges granted to other
//! roles (`public`: every role).
//!
//! It owns only these types and their rules (what a role may do to a
//! table); the catalog stores them, `crate::privileges` checks them. It
//! never reads a password in clear and never touches the catalog file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use slicedb_engine::TableId;

/// The pseudo-role every role belongs to (`GRANT ... TO PUBLIC`).
pub const PUBLIC: &str = "public";

/// One role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    pub name: String,
    #[serde(default)]
    pub superuser: bool,
    #[serde(default)]
    pub login: bool,
    /// The SCRAM-SHA-256 verifier; None: no password (the role can only
    /// connect through a `trust` rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
}

/// A table privilege (PostgreSQL's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Privilege {
    /// Every table privilege (`ALL PRIVILEGES`).
    pub const ALL: [Privilege; 5] = [
        Privilege::Select,
        Privilege::Insert,
        Privilege::Update,
        Privilege::Delete,
        Privilege::Truncate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
        }
    }

    /// PostgreSQL's one-letter code in an ACL item (`r`, `a`, `w`, `d`, `D`).
    pub fn letter(self) -> char {
        match self {
            Privilege::Select => 'r',
            Privilege::Insert => 'a',
            Privilege::Update => 'w',
            Privilege::Delete => 'd',
            Privilege::Truncate => 'D',
        }
    }

    /// From its SQL name (case-insensitive).
    pub fn parse(word: &str) -> Option<Privilege> {
        Privilege::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(word))
    }
}

/// Who owns a table and what others were granted on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAcl {
    pub table: TableId,
    /// The role that created the table; None: the superusers' alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Role (or `public`) -> what it was granted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, BTreeSet<Privilege>>,
}

impl TableAcl {
    /// Whether `role` (not a superuser) may do `p` on the table.
    pub fn allows(&self, role: &str, p: Privilege) -> bool {
        self.owner.as_deref() == Some(role)
            || [role, PUBLIC]
                .iter()
                .any(|r| self.grants.get(*r).is_some_and(|g| g.contains(&p)))
    }

    /// Grant (or with `revoke`, take back) `privileges` to `role`.
    pub fn change(&mut self, role: &str, privileges: &[Privilege], revoke: bool) {
        let entry = self.grants.entry(role.to_string()).or_default();
        for p in privileges {
            if revoke {
                entry.remove(p);
            } else {
                entry.insert(*p);
            }
        }
        if entry.is_empty() {
            self.grants.remove(role);
        }
    }

    /// PostgreSQL's `relacl` text: `{owner=arwdD/owner,role=r/owner}`;
    /// None when nothing was granted (the owner's default privileges).
    pub fn relacl(&self) -> Option<String> {
        if self.grants.is_empty() {
            return None;
        }
        let owner = self.owner.clone().unwrap_or_default();
        // PostgreSQL's order of the letters.
        let letters = |ps: &mut dyn Iterator<Item = &Privilege>| {
            let have: Vec<char> = ps.map(|p| p.letter()).collect();
            "arwdD"
                .chars()
                .filter(|c| have.contains(c))
                .collect::<String>()
        };
        let mut items = vec![format!(
            "{owner}={}/{owner}",
            letters(&mut Privilege::ALL.iter())
        )];
        for (role, ps) in &self.grants {
            let who = if role == PUBLIC { "" } else { role.as_str() };
            items.push(format!("{who}={}/{owner}", letters(&mut ps.iter())));
        }
        Some(format!("{{{}}}", items.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_owner_and_public() {
        let mut acl = TableAcl {
            table: 1,
            owner: Some("alice".into()),
            grants: BTreeMap::new(),
        };
        assert!(acl.allows("alice", Privilege::Delete), "the owner may all");
        assert!(!acl.allows("bob", Privilege::Select));
        acl.change("bob", &[Privilege::Select, Privilege::Insert], false);
        assert!(acl.allows("bob", Privilege::Select));
        assert!(!acl.allows("bob", Privilege::Update));
        acl.change("bob", &[Privilege::Select], true);
        assert!(!acl.allows("bob", Privilege::Select));
        assert!(acl.allows("bob", Privilege::Insert));
        acl.change(PUBLIC, &[Privilege::Select], false);
        assert!(acl.allows("carol", Privilege::Select));
        assert_eq!(
            acl.relacl().as_deref(),
            Some("{alice=arwdD/alice,bob=a/alice,=r/alice}")
        );
        acl.change("bob", &Privilege::ALL, true);
        acl.change(PUBLIC, &Privilege::ALL, true);
        assert!(acl.grants.is_empty(), "empty grants are not kept");
        assert_eq!(Privilege::parse("select"), Some(Privilege::Select));
        assert_eq!(Privilege::parse("usage"), None);
    }
}
