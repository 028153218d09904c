//! The persistent catalog: schemas, tables (id, name, columns, distribution
//! key, mirroring) and the transaction-id high-water mark.
//!
//! A table's columns are kept in the order they were added, dropped ones
//! included (marked): a column's place in that list is its stable id, the
//! place the nodes' blocks hold it in (`slicedb_engine::store::evolve`).
//! What SQL sees ([`TableMeta::schema`]) is the columns not dropped.
//!
//! Roles and each table's owner and grants (`crate::roles`) are kept here
//! too, in the same file: a role's password only as a SCRAM verifier.
//!
//! Stored through the persistence seam (`crate::meta`: `catalog.json` in the
//! coordinator's data dir), replaced atomically on every change. Format: see
//! docs/coordinator-state.md. It never talks to nodes; the cluster does.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use slicedb_engine::TableId;

use crate::meta::{Doc, FileMeta, MetaStore};
use crate::roles::{Privilege, RoleDef, TableAcl};
use crate::{CoordinatorError, Result};

/// How a table's rows are spread over slices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Hash of these columns (names, in key order).
    Hash(Vec<String>),
    /// Round robin.
    Random,
}

/// One column of a table as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// The Arrow type, in its text form.
    pub data_type: String,
    pub nullable: bool,
    /// Dropped (ALTER TABLE DROP COLUMN): no longer read or written; kept
    /// so that every later column keeps its place in the blocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// The text form of the constant an added column reads as in rows
    /// written before it was added (ADD COLUMN ... DEFAULT). None: NULL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `varchar(n)`: the most characters a value may have (longer ones
    /// are refused, 22001). None: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

/// Field metadata by which CREATE TABLE hands the coordinator a column's
/// `varchar(n)` limit ([`ColumnDef::max_length`]); the catalog keeps it in
/// the column, not in the schema.
pub const META_MAX_LENGTH: &str = "slicedb.max_length";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableDef {
    pub id: TableId,
    /// `t`, or `s.t` for a table of schema `s` (CREATE SCHEMA).
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub distribution: Distribution,
    pub mirrored: bool,
    /// A temporary table: the SQL session that owns it. Recorded so that a
    /// coordinator that restarts can drop what its dead sessions left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CatalogFile {
    version: u32,
    next_table_id: TableId,
    /// Every xid below this may have been handed out before a restart.
    xid_high_water: u64,
    /// Schemas besides `public` (CREATE SCHEMA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    schemas: Vec<String>,
    tables: Vec<TableDef>,
    /// Views (CREATE VIEW): name -> the query's SQL text, planned again
    /// when the coordinator starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    views: BTreeMap<String, String>,
    /// Roles (version 5), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<RoleDef>,
    /// Owners and grants of tables (version 5), by table id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acl: Vec<TableAcl>,
}

/// Version 2 added temporary tables (`session`); version 3 schemas and
/// ALTER TABLE (columns `dropped`, `default`); version 4 views; version 5
/// roles and table privileges (`roles`, `acl`). Versions 1 to 4 are read
/// (their tables belong to the superusers).
const CATALOG_VERSION: u32 = 5;
/// How many xids are reserved by one catalog write.
pub const XID_RESERVATION: u64 = 4096;

/// A table as the rest of the coordinator sees it.
#[derive(Debug, Clone)]
pub struct TableMeta {
    pub id: TableId,
    pub name: String,
    /// The columns SQL sees (not dropped), current names.
    pub schema: SchemaRef,
    /// Every column the table ever had, in order (see the module doc).
    pub columns: Vec<ColumnDef>,
    pub distribution: Distribution,
    /// Indices of the distribution key columns (empty for random).
    pub key: Vec<usize>,
    pub mirrored: bool,
    /// A temporary table (CREATE TEMP TABLE): the session that owns it and
    /// alone sees it. Temporary tables are never mirrored.
    pub session: Option<u64>,
}

impl TableMeta {
    /// The `varchar(n)` limit of each column SQL sees, in schema order.
    pub fn max_lengths(&self) -> Vec<Option<u32>> {
        self.columns
            .iter()
            .filter(|c| !c.dropped)
            .map(|c| c.max_length)
            .collect()
    }

    /// The segment to read and write a slice in, given where it is served
    /// (`from_mirror`: failed over to its mirror). Unmirrored data has no
    /// second copy: once its primary failed, the slice is unavailable.
    pub fn segment_for(
        &self,
        slice: u32,
        from_mirror: bool,
    ) -> crate::Result<slicedb_engine::proto::pb::Segment> {
        match (from_mirror, self.mirrored) {
            (false, _) => Ok(self.segment()),
            (true, true) => Ok(slicedb_engine::proto::pb::Segment::Mirror),
            (true, false) => Err(crate::CoordinatorError::SliceUnavailable {
                slice,
                reason: format!(
                    "table \"{}\" is unmirrored and the slice's primary node failed",
                    self.name
                ),
            }),
        }
    }

    /// The schema the nodes keep: every column ever added, in order, a
    /// dropped one and an added one's default marked in its metadata
    /// (`slicedb_engine::store::evolve`).
    pub fn node_schema(&self) -> Result<Schema> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let mut meta = std::collections::HashMap::new();
                if c.dropped {
                    meta.insert(
                        slicedb_engine::store::META_DROPPED.to_string(),
                        "true".to_string(),
                    );
                }
                if let Some(d) = &c.default {
                    meta.insert(slicedb_engine::store::META_DEFAULT.to_string(), d.clone());
                }
                Ok(Field::new(&c.name, parse_type(&self.name, c)?, c.nullable).with_metadata(meta))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Schema::new(fields))
    }

    /// Where the table's rows live on a slice's primary node: the primary
    /// segment (forwarded to the mirror) or, unmirrored, the temp segment.
    pub fn segment(&self) -> slicedb_engine::proto::pb::Segment {
        if self.mirrored {
            slicedb_engine::proto::pb::Segment::Primary
        } else {
            slicedb_engine::proto::pb::Segment::Temp
        }
    }
}

/// The in-memory catalog plus where it is persisted.
pub struct Catalog {
    meta: Arc<dyn MetaStore>,
    next_table_id: TableId,
    xid_high_water: u64,
    tables: BTreeMap<String, Arc<TableMeta>>,
    schemas: Vec<String>,
    /// Views: name -> query SQL.
    views: BTreeMap<String, String>,
    /// Temporary tables by (session, name).
    temps: BTreeMap<(u64, String), Arc<TableMeta>>,
    roles: BTreeMap<String, RoleDef>,
    acl: BTreeMap<TableId, TableAcl>,
}

impl Catalog {
    /// Load `dir/catalog.json`, or start an empty catalog if there is none.
    pub fn open(dir: &Path) -> Result<Catalog> {
        Catalog::load(Arc::new(FileMeta::open(dir)?))
    }

    /// Load the catalog from `meta`, or start (and persist) an empty one.
    pub fn load(meta: Arc<dyn MetaStore>) -> Result<Catalog> {
        let origin = meta.describe(Doc::Catalog);
        let stored = meta.read(Doc::Catalog)?;
        let mut cat = Catalog {
            meta,
            next_table_id: 1,
            xid_high_water: 1,
            tables: BTreeMap::new(),
            schemas: Vec::new(),
            views: BTreeMap::new(),
            temps: BTreeMap::new(),
            roles: BTreeMap::new(),
            acl: BTreeMap::new(),
        };
        let Some(bytes) = stored else {
            cat.persist()?;
            return Ok(cat);
        };
        let file: CatalogFile = serde_json::from_slice(&bytes)
            .map_err(|e| CoordinatorError::Catalog(format!("{origin}: {e}")))?;
        if !(1..=CATALOG_VERSION).contains(&file.version) {
            return Err(CoordinatorError::Catalog(format!(
                "{origin}: catalog version {} is not supported (this build reads {CATALOG_VERSION})",
                file.version
            )));
        }
        cat.next_table_id = file.next_table_id;
        cat.xid_high_water = file.xid_high_water;
        cat.schemas = file.schemas;
        cat.views = file.views;
        cat.roles = file
            .roles
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        cat.acl = file.acl.into_iter().map(|a| (a.table, a)).collect();
        for t in file.tables {
            let meta = Arc::new(table_meta(t)?);
            match meta.session {
                Some(s) => cat.temps.insert((s, meta.name.clone()), meta),
                None => cat.tables.insert(meta.name.clone(), meta),
            };
        }
        Ok(cat)
    }

    fn persist(&self) -> Result<()> {
        let file = CatalogFile {
            version: CATALOG_VERSION,
            next_table_id: self.next_table_id,
            xid_high_water: self.xid_high_water,
            schemas: self.schemas.clone(),
            views: self.views.clone(),
            tables: self
                .tables
                .values()
                .chain(self.temps.values())
                .map(|t| table_def(t))
                .collect(),
            roles: self.roles.values().cloned().collect(),
            acl: self.acl.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
        self.meta.write(Doc::Catalog, &text)
    }

    pub fn get(&self, name: &str) -> Option<Arc<TableMeta>> {
        self.tables.get(name).cloned()
    }

    /// The permanent tables.
    pub fn tables(&self) -> Vec<Arc<TableMeta>> {
        self.tables.values().cloned().collect()
    }

    /// A temporary table of `session`.
    pub fn get_temp(&self, session: u64, name: &str) -> Option<Arc<TableMeta>> {
        self.temps.get(&(session, name.to_string())).cloned()
    }

    /// The temporary tables of `session`, or of every session.
    pub fn temps(&self, session: Option<u64>) -> Vec<Arc<TableMeta>> {
        self.temps
            .iter()
            .filter(|((s, _), _)| session.is_none_or(|want| *s == want))
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Add a table durably; returns its metadata with a fresh id. With
    /// `session`, a temporary table of that session (unmirrored).
    pub fn add(
        &mut self,
        name: &str,
        schema: SchemaRef,
        distribution: Distribution,
        mirrored: bool,
        session: Option<u64>,
    ) -> Result<Arc<TableMeta>> {
        let exists = match session {
            Some(s) => self.temps.contains_key(&(s, name.to_string())),
            None => self.tables.contains_key(name) || self.views.contains_key(name),
        };
        if exists {
            return Err(CoordinatorError::TableExists(name.to_string()));
        }
        let def = TableDef {
            id: self.next_table_id,
            name: name.to_string(),
            columns: column_defs(&schema),
            distribution,
            mirrored: mirrored && session.is_none(),
            session,
        };
        let meta = Arc::new(table_meta(def)?);
        self.next_table_id += 1;
        self.insert(meta.clone());
        if let Err(e) = self.persist() {
            self.take(&meta);
            return Err(e);
        }
        Ok(meta)
    }

    fn insert(&mut self, meta: Arc<TableMeta>) {
        match meta.session {
            Some(s) => self.temps.insert((s, meta.name.clone()), meta),
            None => self.tables.insert(meta.name.clone(), meta),
        };
    }

    fn take(&mut self, meta: &TableMeta) -> Option<Arc<TableMeta>> {
        match meta.session {
            Some(s) => self.temps.remove(&(s, meta.name.clone())),
            None => self.tables.remove(&meta.name),
        }
    }

    /// Remove a permanent table durably.
    pub fn remove(&mut self, name: &str) -> Result<Arc<TableMeta>> {
        let meta = self
            .get(name)
            .ok_or_else(|| CoordinatorError::TableNotFound(name.to_string()))?;
        self.remove_meta(&meta)
    }

    /// Remove this table (permanent or temporary) durably.
    pub fn remove_meta(&mut self, meta: &TableMeta) -> Result<Arc<TableMeta>> {
        let meta = self
            .take(meta)
            .ok_or_else(|| CoordinatorError::TableNotFound(meta.name.clone()))?;
        let acl = self.acl.remove(&meta.id);
        if let Err(e) = self.persist() {
            if let Some(a) = acl {
                self.acl.insert(a.table, a);
            }
            self.insert(meta);
            return Err(e);
        }
        Ok(meta)
    }

    /// Replace table `old` (permanent or temporary) by `def` durably: ALTER
    /// TABLE. `def` keeps its id; its name may differ (RENAME TO).
    pub fn replace(&mut self, old: &TableMeta, def: TableDef) -> Result<Arc<TableMeta>> {
        let meta = Arc::new(table_meta(def)?);
        let renamed = meta.name != old.name;
        if renamed {
            let taken = match meta.session {
                Some(s) => self.temps.contains_key(&(s, meta.name.clone())),
                None => self.tables.contains_key(&meta.name),
            };
            if taken {
                return Err(CoordinatorError::TableExists(meta.name.clone()));
            }
        }
        let before = self
            .take(old)
            .ok_or_else(|| CoordinatorError::TableNotFound(old.name.clone()))?;
        self.insert(meta.clone());
        if let Err(e) = self.persist() {
            self.take(&meta);
            self.insert(before);
            return Err(e);
        }
        Ok(meta)
    }

    /// Schemas besides `public`.
    pub fn schemas(&self) -> Vec<String> {
        self.schemas.clone()
    }

    /// Whether CREATE SCHEMA made `name` (and DROP SCHEMA has not dropped it).
    pub fn has_schema(&self, name: &str) -> bool {
        self.schemas.iter().any(|s| s == name)
    }

    /// Add a schema durably; false if it exists.
    pub fn add_schema(&mut self, name: &str) -> Result<bool> {
        if name == "public" || self.schemas.iter().any(|s| s == name) {
            return Ok(false);
        }
        self.schemas.push(name.to_string());
        if let Err(e) = self.persist() {
            self.schemas.pop();
            return Err(e);
        }
        Ok(true)
    }

    /// Remove a schema durably (its tables must be gone); false if absent.
    pub fn remove_schema(&mut self, name: &str) -> Result<bool> {
        let Some(i) = self.schemas.iter().position(|s| s == name) else {
            return Ok(false);
        };
        let gone = self.schemas.remove(i);
        if let Err(e) = self.persist() {
            self.schemas.insert(i, gone);
            return Err(e);
        }
        Ok(true)
    }

    /// Views: (name, query SQL), by name.
    pub fn views(&self) -> Vec<(String, String)> {
        self.views
            .iter()
            .map(|(n, q)| (n.clone(), q.clone()))
            .collect()
    }

    /// Add (or with `replace`, replace) a view durably. Refused when a
    /// table or (without `replace`) a view has the name.
    pub fn add_view(&mut self, name: &str, query: &str, replace: bool) -> Result<()> {
        if self.tables.contains_key(name) || (!replace && self.views.contains_key(name)) {
            return Err(CoordinatorError::TableExists(name.to_string()));
        }
        let old = self.views.insert(name.to_string(), query.to_string());
        if let Err(e) = self.persist() {
            match old {
                Some(q) => self.views.insert(name.to_string(), q),
                None => self.views.remove(name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Remove a view durably; false if there is none of that name.
    pub fn remove_view(&mut self, name: &str) -> Result<bool> {
        let Some(query) = self.views.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.persist() {
            self.views.insert(name.to_string(), query);
            return Err(e);
        }
        Ok(true)
    }

    /// The first xid this process may hand out: above anything a previous
    /// process may have used. Reserves a range durably.
    pub fn reserve_xids(&mut self, from: u64) -> Result<u64> {
        let start = from.max(self.xid_high_water);
        self.xid_high_water = start + XID_RESERVATION;
        self.persist()?;
        Ok(start)
    }

    pub fn xid_high_water(&self) -> u64 {
        self.xid_high_water
    }

    /// Every role, by name.
    pub fn roles(&self) -> Vec<RoleDef> {
        self.roles.values().cloned().collect()
    }

    pub fn role(&self, name: &str) -> Option<RoleDef> {
        self.roles.get(name).cloned()
    }

    /// Add (`create`) or replace a role durably. Creating one that exists
    /// is 42710, replacing one that does not 42704.
    pub fn put_role(&mut self, role: RoleDef, create: bool) -> Result<()> {
        match (create, self.roles.contains_key(&role.name)) {
            (true, true) => return Err(CoordinatorError::RoleExists(role.name)),
            (false, false) => return Err(CoordinatorError::RoleNotFound(role.name)),
            _ => {}
        }
        let before = self.roles.insert(role.name.clone(), role.clone());
        self.persist().inspect_err(|_| {
            match before {
                Some(b) => self.roles.insert(b.name.clone(), b),
                None => self.roles.remove(&role.name),
            };
        })
    }

    /// Drop a role durably: refused (2BP01) while it owns tables; its
    /// grants go with it. False if there is none of that name.
    pub fn drop_role(&mut self, name: &str) -> Result<bool> {
        if !self.roles.contains_key(name) {
            return Ok(false);
        }
        let owned: Vec<String> = self
            .tables
            .values()
            .chain(self.temps.values())
            .filter(|t| self.owner_of(t.id).as_deref() == Some(name))
            .map(|t| t.name.clone())
            .collect();
        if !owned.is_empty() {
            return Err(CoordinatorError::RoleOwnsObjects {
                role: name.to_string(),
                tables: owned.join(", "),
            });
        }
        let (roles, acl) = (self.roles.clone(), self.acl.clone());
        self.roles.remove(name);
        for a in self.acl.values_mut() {
            a.grants.remove(name);
        }
        self.persist().inspect_err(|_| {
            self.roles = roles;
            self.acl = acl;
        })?;
        Ok(true)
    }

    /// The owner of table `id` (None: the superusers').
    pub fn owner_of(&self, id: TableId) -> Option<String> {
        self.acl.get(&id).and_then(|a| a.owner.clone())
    }

    /// The access list of table `id`.
    pub fn acl(&self, id: TableId) -> TableAcl {
        self.acl.get(&id).cloned().unwrap_or(TableAcl {
            table: id,
            ..TableAcl::default()
        })
    }

    /// Change the access list of table `id` durably (`change` edits it).
    pub fn change_acl(&mut self, id: TableId, change: impl FnOnce(&mut TableAcl)) -> Result<()> {
        let before = self.acl.get(&id).cloned();
        let mut acl = self.acl(id);
        change(&mut acl);
        self.acl.insert(id, acl);
        self.persist().inspect_err(|_| {
            match before {
                Some(b) => self.acl.insert(id, b),
                None => self.acl.remove(&id),
            };
        })
    }

    /// Grant (or `revoke`) `privileges` on table `id` to `role` durably.
    pub fn grant(
        &mut self,
        id: TableId,
        role: &str,
        privileges: &[Privilege],
        revoke: bool,
    ) -> Result<()> {
        self.change_acl(id, |a| a.change(role, privileges, revoke))
    }
}

fn column_defs(schema: &Schema) -> Vec<ColumnDef> {
    schema
        .fields()
        .iter()
        .map(|f| ColumnDef {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
            dropped: false,
            default: None,
            max_length: f
                .metadata()
                .get(META_MAX_LENGTH)
                .and_then(|n| n.parse().ok()),
        })
        .collect()
}

/// The stored form of a table.
pub fn table_def(t: &TableMeta) -> TableDef {
    TableDef {
        id: t.id,
        name: t.name.clone(),
        columns: t.columns.clone(),
        distribution: t.distribution.clone(),
        mirrored: t.mirrored,
        session: t.session,
    }
}

fn parse_type(table: &str, c: &ColumnDef) -> Result<DataType> {
    DataType::from_str(&c.data_type).map_err(|e| {
        CoordinatorError::Catalog(format!(
            "table {table}: column {} has unreadable type {}: {e}",
            c.name, c.data_type
        ))
    })
}

fn table_meta(t: TableDef) -> Result<TableMeta> {
    let fields = t
        .columns
        .iter()
        .filter(|c| !c.dropped)
        .map(|c| Ok(Field::new(&c.name, parse_type(&t.name, c)?, c.nullable)))
        .collect::<Result<Vec<_>>>()?;
    let schema = Arc::new(Schema::new(fields));
    let key = match &t.distribution {
        Distribution::Random => vec![],
        Distribution::Hash(cols) => cols
            .iter()
            .map(|c| {
                schema
                    .index_of(c)
                    .map_err(|_| CoordinatorError::UnknownDistributionColumn {
                        table: t.name.clone(),
                        column: c.clone(),
                    })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(TableMeta {
        id: t.id,
        name: t.name,
        schema,
        columns: t.columns,
        distribution: t.distribution,
        key,
        mirrored: t.mirrored && t.session.is_none(),
        session: t.session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_survives_reopen_and_reserves_xids_monotonically() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("n", DataType::Decimal128(12, 2), true),
            Field::new("d", DataType::Date32, true),
        ]));
        let first_xid;
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            c.add(
                "t",
                schema.clone(),
                Distribution::Hash(vec!["k".into()]),
                true,
                None,
            )
            .unwrap();
            assert!(matches!(
                c.add("t", schema.clone(), Distribution::Random, true, None),
                Err(CoordinatorError::TableExists(_))
            ));
            first_xid = c.reserve_xids(1).unwrap();
        }
        let mut c = Catalog::open(dir.path()).unwrap();
        let t = c.get("t").unwrap();
        assert_eq!(t.schema, schema);
        assert_eq!(t.key, vec![0]);
        let next = c.reserve_xids(1).unwrap();
        assert!(next >= first_xid + XID_RESERVATION);
        c.remove("t").unwrap();
        assert!(Catalog::open(dir.path()).unwrap().get("t").is_none());
    }

    #[test]
    fn unknown_distribution_column_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let e = c
            .add(
                "t",
                schema,
                Distribution::Hash(vec!["nope".into()]),
                true,
                None,
            )
            .unwrap_err();
        assert_eq!(e.sqlstate(), "42703");
    }

    #[test]
    fn temporary_tables_are_per_session_unmirrored_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let (perm, temp) = {
            let mut c = Catalog::open(dir.path()).unwrap();
            let perm = c
                .add("t", schema.clone(), Distribution::Random, true, None)
                .unwrap();
            // The same name as a permanent table and as another session's.
            let temp = c
                .add("t", schema.clone(), Distribution::Random, true, Some(7))
                .unwrap();
            c.add("t", schema.clone(), Distribution::Random, true, Some(8))
                .unwrap();
            assert!(matches!(
                c.add("t", schema.clone(), Distribution::Random, false, Some(7)),
                Err(CoordinatorError::TableExists(_))
            ));
            (perm, temp)
        };
        assert!(perm.mirrored);
        assert!(!temp.mirrored, "temporary tables are never mirrored");
        assert_ne!(perm.id, temp.id);
        let mut c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.tables().len(), 1);
        assert_eq!(c.get("t").unwrap().id, perm.id);
        assert_eq!(c.get_temp(7, "t").unwrap().id, temp.id);
        assert!(c.get_temp(9, "t").is_none());
        assert_eq!(c.temps(None).len(), 2);
        assert_eq!(c.temps(Some(8)).len(), 1);
        c.remove_meta(&temp).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert!(c.get_temp(7, "t").is_none());
        assert!(c.get("t").is_some());
    }

    #[test]
    fn altered_tables_and_schemas_survive_reopen_and_version_2_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("catalog.json"),
            r#"{ "version": 2, "next_table_id": 3, "xid_high_water": 8193,
                 "tables": [ { "id": 2, "name": "t",
                   "columns": [ {"name": "k", "data_type": "Int64", "nullable": true},
                                {"name": "a", "data_type": "Utf8", "nullable": true} ],
                   "distribution": {"hash": ["k"]}, "mirrored": true } ] }"#,
        )
        .unwrap();
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            let t = c.get("t").unwrap();
            assert_eq!(t.columns.len(), 2);
            let mut def = table_def(&t);
            def.columns[1].dropped = true;
            def.columns.push(ColumnDef {
                name: "b".into(),
                data_type: "Int32".into(),
                nullable: true,
                dropped: false,
                default: Some("7".into()),
                max_length: None,
            });
            def.name = "u".into();
            let u = c.replace(&t, def).unwrap();
            assert_eq!(u.id, 2);
            assert!(c.add_schema("s").unwrap());
            assert!(!c.add_schema("s").unwrap());
        }
        let mut c = Catalog::open(dir.path()).unwrap();
        assert!(c.get("t").is_none());
        let u = c.get("u").unwrap();
        // SQL sees k and b; the nodes keep k, the dropped a, and b.
        let names: Vec<_> = u.schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["k", "b"]);
        assert_eq!(u.key, vec![0]);
        let node = u.node_schema().unwrap();
        assert_eq!(node.fields().len(), 3);
        assert_eq!(
            node.field(1)
                .metadata()
                .get(slicedb_engine::store::META_DROPPED),
            Some(&"true".to_string())
        );
        assert_eq!(
            node.field(2)
                .metadata()
                .get(slicedb_engine::store::META_DEFAULT),
            Some(&"7".to_string())
        );
        assert_eq!(c.schemas(), vec!["s".to_string()]);
        assert!(c.remove_schema("s").unwrap());
        let text = std::fs::read_to_string(dir.path().join("catalog.json")).unwrap();
        assert!(text.contains("\"version\": 5"), "{text}");
    }

    #[test]
    fn roles_and_grants_survive_reopen_and_leave_with_their_table() {
        use crate::roles::{Privilege, RoleDef};
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let role = |n: &str| RoleDef {
            name: n.into(),
            superuser: false,
            login: true,
            verifier: Some("SCRAM-SHA-256$4096:c2FsdA==$a:b".into()),
        };
        let id = {
            let mut c = Catalog::open(dir.path()).unwrap();
            c.put_role(role("alice"), true).unwrap();
            c.put_role(role("bob"), true).unwrap();
            assert_eq!(
                c.put_role(role("alice"), true).unwrap_err().sqlstate(),
                "42710"
            );
            assert_eq!(
                c.put_role(role("carol"), false).unwrap_err().sqlstate(),
                "42704"
            );
            let t = c
                .add("t", schema.clone(), Distribution::Random, true, None)
                .unwrap();
            c.change_acl(t.id, |a| a.owner = Some("alice".into()))
                .unwrap();
            c.grant(t.id, "bob", &[Privilege::Select], false).unwrap();
            t.id
        };
        let mut c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.roles().len(), 2);
        assert!(c.acl(id).allows("bob", Privilege::Select));
        assert!(!c.acl(id).allows("bob", Privilege::Insert));
        assert_eq!(c.owner_of(id).as_deref(), Some("alice"));
        assert_eq!(c.drop_role("alice").unwrap_err().sqlstate(), "2BP01");
        assert!(c.drop_role("bob").unwrap());
        assert!(
            !c.acl(id).allows("bob", Privilege::Select),
            "bob's grants went with him"
        );
        c.remove("t").unwrap();
        assert!(c.drop_role("alice").unwrap(), "no table of hers is left");
        assert!(!c.drop_role("alice").unwrap());
        let text = std::fs::read_to_string(dir.path().join("catalog.json")).unwrap();
        assert!(
            !text.contains("\"acl\""),
            "the table's entry left with it: {text}"
        );
    }

    #[test]
    fn views_survive_reopen_and_share_names_with_tables() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut c = Catalog::open(dir.path()).unwrap();
            let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
            c.add("t", schema.clone(), Distribution::Random, true, None)
                .unwrap();
            c.add_view("v", "SELECT k FROM t", false).unwrap();
            assert!(c.add_view("v", "SELECT 1", false).is_err());
            assert!(
                c.add_view("t", "SELECT 1", true).is_err(),
                "a table has the name"
            );
            assert!(c
                .add("v", schema, Distribution::Random, true, None)
                .is_err());
            c.add_view("v", "SELECT k + 1 AS k FROM t", true).unwrap();
            c.add_view("w", "SELECT 2 AS two", false).unwrap();
        }
        let mut c = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            c.views(),
            vec![
                ("v".to_string(), "SELECT k + 1 AS k FROM t".to_string()),
                ("w".to_string(), "SELECT 2 AS two".to_string())
            ]
        );
        assert!(c.remove_view("w").unwrap());
        assert!(!c.remove_view("w").unwrap());
        let c = Catalog::open(dir.path()).unwrap();
        assert_eq!(c.views().len(), 1);
    }

    #[test]
    fn version_1_catalogs_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("catalog.json"),
            r#"{ "version": 1, "next_table_id": 3, "xid_high_water": 8193,
                 "tables": [ { "id": 2, "name": "t",
                   "columns": [ {"name": "k", "data_type": "Int64", "nullable": true} ],
                   "distribution": {"hash": ["k"]}, "mirrored": false } ] }"#,
        )
        .unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let t = c.get("t").unwrap();
        assert_eq!((t.id, t.mirrored, t.session), (2, false, None));
        std::fs::write(
            dir.path().join("catalog.json"),
            r#"{ "version": 6, "next_table_id": 1, "xid_high_water": 1, "tables": [] }"#,
        )
        .unwrap();
        assert!(
            Catalog::open(dir.path()).is_err(),
            "a newer version is refused"
        );
    }
}
