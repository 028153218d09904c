//! Who runs the statement on this task ([`CURRENT_ROLE`]) and whether that
//! role may do what it asks: read, write or change a table, or run what
//! only a superuser may (roles, regeneration, server-wide settings).
//!
//! The SQL front end sets the role around every statement of a connection
//! (the role its client authenticated as). Work with no role set is the
//! embedded API's or the coordinator's own (startup, healing, system
//! views' internal queries): it is trusted, as the process itself is.
//!
//! It owns only these checks; roles and access lists are the catalog's
//! (`crate::roles`). It never changes the catalog.

use std::sync::Arc;

use crate::catalog::{Catalog, TableMeta};
use crate::roles::Privilege;
use crate::{CoordinatorError, Result};

tokio::task_local! {
    /// The role the statement on this task runs as.
    pub static CURRENT_ROLE: Arc<str>;
}

/// The role the current task runs as, if the front end set one.
pub fn current_role() -> Option<Arc<str>> {
    CURRENT_ROLE.try_with(|r| r.clone()).ok()
}

/// Whether the current role is a superuser (no role set: trusted work).
pub fn is_superuser(cat: &Catalog) -> bool {
    match current_role() {
        None => true,
        Some(r) => cat.role(&r).is_some_and(|d| d.superuser),
    }
}

/// Refused (42501) unless the current role is a superuser; `what` says
/// what it tried ("create roles").
pub fn require_superuser(cat: &Catalog, what: &str) -> Result<()> {
    if is_superuser(cat) {
        return Ok(());
    }
    Err(CoordinatorError::PermissionDenied(format!(
        "permission denied to {what}: only a superuser may"
    )))
}

/// Refused (42501) unless the current role may do `p` on `table`: a
/// superuser, the table's owner, or a role granted `p` (or `PUBLIC` was).
pub fn check(cat: &Catalog, table: &TableMeta, p: Privilege) -> Result<()> {
    let Some(role) = current_role() else {
        return Ok(());
    };
    if is_superuser(cat) || cat.acl(table.id).allows(&role, p) {
        return Ok(());
    }
    Err(CoordinatorError::PermissionDenied(format!(
        "permission denied for table {}: role \"{role}\" has no {} privilege on it",
        table.name,
        p.name()
    )))
}

/// Refused (42501) unless the current role owns `table` or is a superuser
/// (DROP, ALTER, GROOM, GRANT and REVOKE on it).
pub fn check_owner(cat: &Catalog, table: &TableMeta) -> Result<()> {
    let Some(role) = current_role() else {
        return Ok(());
    };
    if is_superuser(cat) || cat.owner_of(table.id).as_deref() == Some(&*role) {
        return Ok(());
    }
    Err(CoordinatorError::PermissionDenied(format!(
        "must be owner of table {}",
        table.name
    )))
}
