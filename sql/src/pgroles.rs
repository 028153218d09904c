//! `pg_catalog.pg_roles` and `pg_catalog.pg_user`: the roles of the
//! catalog (`CREATE ROLE`), with their superuser and login attributes.
//! A password is never shown: `rolpassword` and `passwd` are `********`
//! for every role, as PostgreSQL shows them to everyone. A role's oid is
//! derived from its name, so it is the same in every query. Read outside
//! a connection (the embedded API), the rows are the connected users.
//!
//! It only reads the catalog and sessions, when a query is planned.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::sessions::Sessions;

/// Which of the two views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleView {
    Roles,
    User,
}

/// `pg_roles` or `pg_user`.
#[derive(Debug)]
pub struct Roles {
    view: RoleView,
    sessions: Arc<Sessions>,
}

/// The oid of the role `name`: a hash of the name above PostgreSQL's
/// bootstrap range (16384), stable across queries and restarts.
pub fn role_oid(name: &str) -> i32 {
    // FNV-1a.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    16384 + (h % (i32::MAX as u32 - 16384)) as i32
}

impl Roles {
    pub fn new(view: RoleView, sessions: Arc<Sessions>) -> Self {
        Roles { view, sessions }
    }

    /// The roles: (name, superuser, can log in), by name.
    fn users(&self) -> Vec<(String, bool, bool)> {
        if let Some(c) = crate::conn::current_conn() {
            let cat = c.session.coordinator().cluster().catalog().lock();
            return cat
                .roles()
                .into_iter()
                .map(|r| (r.name, r.superuser, r.login))
                .collect();
        }
        let names: BTreeSet<String> = self.sessions.all().iter().map(|s| s.user.clone()).collect();
        names.into_iter().map(|n| (n, true, true)).collect()
    }

    fn schema_of(view: RoleView) -> SchemaRef {
        let b = |n: &str| Field::new(n, DataType::Boolean, true);
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
        Arc::new(Schema::new(match view {
            RoleView::Roles => vec![
                Field::new("rolname", DataType::Utf8, true),
                b("rolsuper"),
                b("rolinherit"),
                b("rolcreaterole"),
                b("rolcreatedb"),
                b("rolcanlogin"),
                b("rolreplication"),
                Field::new("rolconnlimit", DataType::Int32, true),
                Field::new("rolpassword", DataType::Utf8, true),
                Field::new("rolvaliduntil", ts, true),
                b("rolbypassrls"),
                Field::new("rolconfig", list, true),
                Field::new("oid", DataType::Int32, true),
            ],
            RoleView::User => vec![
                Field::new("usename", DataType::Utf8, true),
                Field::new("usesysid", DataType::Int32, true),
                b("usecreatedb"),
                b("usesuper"),
                b("userepl"),
                b("usebypassrls"),
                Field::new("passwd", DataType::Utf8, true),
                Field::new("valuntil", ts, true),
                Field::new("useconfig", list, true),
            ],
        }))
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let roles = self.users();
        let n = roles.len();
        let schema = Self::schema_of(self.view);
        let name: ArrayRef = Arc::new(StringArray::from_iter_values(
            roles.iter().map(|r| r.0.as_str()),
        ));
        let oid: ArrayRef = Arc::new(Int32Array::from_iter_values(
            roles.iter().map(|r| role_oid(&r.0)),
        ));
        let sup: ArrayRef = Arc::new(BooleanArray::from_iter(roles.iter().map(|r| Some(r.1))));
        let login: ArrayRef = Arc::new(BooleanArray::from_iter(roles.iter().map(|r| Some(r.2))));
        let yes: ArrayRef = Arc::new(BooleanArray::from(vec![true; n]));
        let no: ArrayRef = Arc::new(BooleanArray::from(vec![false; n]));
        let null = |i: usize| new_null_array(schema.field(i).data_type(), n);
        // Per PostgreSQL's masking, the password is shown as stars.
        let stars: ArrayRef = Arc::new(StringArray::from(vec!["********"; n]));
        let cols: Vec<ArrayRef> = match self.view {
            RoleView::Roles => vec![
                name,
                sup.clone(),
                yes,
                sup.clone(),
                sup.clone(),
                login,
                no.clone(),
                Arc::new(Int32Array::from(vec![-1; n])),
                stars,
                null(9),
                sup,
                null(11),
                oid,
            ],
            RoleView::User => vec![
                name,
                oid,
                sup.clone(),
                sup.clone(),
                no,
                sup,
                stars,
                null(7),
                null(8),
            ],
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl TableProvider for Roles {
    fn schema(&self) -> SchemaRef {
        Self::schema_of(self.view)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.schema(), vec![vec![self.batch()?]])?;
        mem.scan(state, projection, &[], limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::role_oid;

    #[test]
    fn role_oids_are_stable_and_above_the_bootstrap_range() {
        assert_eq!(role_oid("slicedb"), role_oid("slicedb"));
        assert_ne!(role_oid("slicedb"), role_oid("postgres"));
        for n in ["", "a", "slicedb", "a-very-long-user-name-indeed"] {
            assert!(role_oid(n) >= 16384, "{n}");
        }
    }
}
