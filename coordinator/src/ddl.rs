//! DDL beyond CREATE and DROP TABLE: ALTER TABLE (ADD / DROP / RENAME
//! COLUMN, RENAME TO), CREATE / DROP SCHEMA and CREATE / DROP VIEW.
//!
//! A view is its query's SQL text in the catalog (durably, first), planned
//! when it is created (a query that does not plan is refused) and again
//! when the coordinator starts.
//!
//! ALTER TABLE is online: it changes the catalog (durably, first), the
//! table DataFusion plans with, and then the schema every live node keeps
//! (`slicedb_engine::store::evolve`); no block is rewritten. A node that
//! missed the change (down, or failed meanwhile) gets it when it is next
//! given its tables: at coordinator startup, and before a resync or a
//! regeneration onto it (`Hooks::ensure_tables`).
//!
//! It never touches the map or the nodes' data, only schemas.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::ViewTable;
use tracing::warn;

use crate::catalog::{table_def, ColumnDef, Distribution, TableDef, TableMeta};
use crate::coordinator::create_on_nodes;
use crate::query::SliceTable;
use crate::write::TableSinks;
use crate::{Coordinator, CoordinatorError, Result};

/// One change of ALTER TABLE.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterOp {
    /// ADD COLUMN: nullable unless NOT NULL (which needs a default); the
    /// default is the text form of a constant of the column's type.
    AddColumn {
        name: String,
        data_type: DataType,
        nullable: bool,
        default: Option<String>,
        /// `varchar(n)`'s n.
        max_length: Option<u32>,
        if_not_exists: bool,
    },
    DropColumn {
        name: String,
        if_exists: bool,
    },
    RenameColumn {
        from: String,
        to: String,
    },
    /// RENAME TO: the new name in the table's own schema.
    RenameTable {
        to: String,
    },
}

/// The visible column `name` of `def`.
fn visible(def: &TableDef, name: &str) -> Option<usize> {
    def.columns
        .iter()
        .position(|c| !c.dropped && c.name == name)
}

/// `def` after `op`; `Ok(None)`: nothing to do (IF [NOT] EXISTS).
pub fn apply(mut def: TableDef, op: AlterOp) -> Result<Option<TableDef>> {
    let table = def.name.clone();
    let not_found = |column: &str| CoordinatorError::ColumnNotFound {
        table: table.clone(),
        column: column.to_string(),
    };
    let exists = |column: &str| CoordinatorError::ColumnExists {
        table: table.clone(),
        column: column.to_string(),
    };
    match op {
        AlterOp::AddColumn {
            name,
            data_type,
            nullable,
            default,
            max_length,
            if_not_exists,
        } => {
            if visible(&def, &name).is_some() {
                return if if_not_exists {
                    Ok(None)
                } else {
                    Err(exists(&name))
                };
            }
            if !crate::write::load::storable(&data_type) {
                return Err(CoordinatorError::UnsupportedType {
                    column: name,
                    data_type: data_type.to_string(),
                });
            }
            if !nullable && default.is_none() {
                return Err(CoordinatorError::NotSupported(format!(
                    "ADD COLUMN \"{name}\" NOT NULL without a DEFAULT (the rows already there would be NULL)"
                )));
            }
            def.columns.push(ColumnDef {
                name,
                data_type: data_type.to_string(),
                nullable,
                dropped: false,
                default,
                max_length,
            });
        }
        AlterOp::DropColumn { name, if_exists } => {
            let Some(i) = visible(&def, &name) else {
                return if if_exists {
                    Ok(None)
                } else {
                    Err(not_found(&name))
                };
            };
            if matches!(&def.distribution, Distribution::Hash(k) if k.contains(&name)) {
                return Err(CoordinatorError::DistributionKeyColumn {
                    table,
                    column: name,
                });
            }
            if def.columns.iter().filter(|c| !c.dropped).count() == 1 {
                return Err(CoordinatorError::NotSupported(format!(
                    "dropping \"{name}\", the last column of table \"{table}\""
                )));
            }
            let c = &mut def.columns[i];
            c.dropped = true;
            c.nullable = true;
            c.default = None;
            // As PostgreSQL does: the name is free for a new column.
            c.name = format!("........dropped.{i}........");
        }
        AlterOp::RenameColumn { from, to } => {
            let Some(i) = visible(&def, &from) else {
                return Err(not_found(&from));
            };
            if from == to {
                return Ok(None);
            }
            if visible(&def, &to).is_some() {
                return Err(exists(&to));
            }
            def.columns[i].name = to.clone();
            if let Distribution::Hash(k) = &mut def.distribution {
                for c in k.iter_mut().filter(|c| **c == from) {
                    *c = to.clone();
                }
            }
        }
        AlterOp::RenameTable { to } => {
            def.name = match def.name.split_once('.') {
                Some((schema, _)) if !to.contains('.') => format!("{schema}.{to}"),
                _ => to,
            };
            if def.name == table {
                return Ok(None);
            }
        }
    }
    Ok(Some(def))
}

impl Coordinator {
    /// ALTER TABLE `name` (the session's temporary table of that name
    /// first). `if_exists`: a missing table is no error.
    pub async fn alter_table(&self, name: &str, if_exists: bool, op: AlterOp) -> Result<()> {
        let old = match self.check_owner(name) {
            Ok(m) => m,
            Err(CoordinatorError::TableNotFound(_)) if if_exists => return Ok(()),
            Err(e) => return Err(e),
        };
        let renames_table = matches!(op, AlterOp::RenameTable { .. });
        let Some(def) = apply(table_def(&old), op)? else {
            return Ok(());
        };
        if renames_table && old.session.is_none() && self.ctx.table_exist(def.name.as_str())? {
            return Err(CoordinatorError::TableExists(def.name));
        }
        let meta = self.cluster.catalog().lock().replace(&old, def)?;
        if meta.session.is_none() {
            self.ctx.deregister_table(old.name.as_str())?;
            self.register(&meta)?;
        }
        if meta.columns != old.columns {
            match create_on_nodes(&self.cluster, &meta).await {
                // A node that died meanwhile gets the schema when it is
                // given its tables again, before it serves any copy.
                Err(CoordinatorError::NodeUnreachable { node, message, .. }) => {
                    tracing::warn!(node, table = %meta.name, %message, "ALTER TABLE did not reach a node; it will on its return");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// A permanent table, registered with DataFusion under its name.
    fn register(&self, meta: &Arc<TableMeta>) -> Result<()> {
        self.ctx.register_table(
            meta.name.as_str(),
            Arc::new(SliceTable::new(
                self.cluster.clone(),
                meta.clone(),
                TableSinks::new(self.cluster.clone()),
            )),
        )?;
        Ok(())
    }

    /// CREATE [OR REPLACE] VIEW `name` AS `query` (SQL text): planned now,
    /// then kept in the catalog. A table or a system view of that name, or
    /// (without `or_replace`) a view, refuses it (42P07).
    pub async fn create_view(&self, name: &str, query: &str, or_replace: bool) -> Result<()> {
        let plan = self.ctx.state().create_logical_plan(query).await?;
        let ours = self
            .cluster
            .catalog()
            .lock()
            .views()
            .iter()
            .any(|(v, _)| v == name);
        if self.ctx.table_exist(name)? && !(or_replace && ours) {
            return Err(CoordinatorError::TableExists(name.to_string()));
        }
        self.cluster
            .catalog()
            .lock()
            .add_view(name, query, or_replace)?;
        self.ctx.deregister_table(name)?;
        self.ctx
            .register_table(name, Arc::new(ViewTable::new(plan, Some(query.into()))))?;
        Ok(())
    }

    /// DROP VIEW: out of the catalog, then out of DataFusion's.
    pub async fn drop_view(&self, name: &str, if_exists: bool) -> Result<()> {
        if self.cluster.catalog().lock().get(name).is_some() {
            return Err(CoordinatorError::WrongObjectType {
                name: name.to_string(),
                wanted: "view",
            });
        }
        if !self.cluster.catalog().lock().remove_view(name)? {
            return match if_exists {
                true => Ok(()),
                false => Err(CoordinatorError::ViewNotFound(name.to_string())),
            };
        }
        self.ctx.deregister_table(name)?;
        Ok(())
    }

    /// At startup, after the tables: plan every view of the catalog again.
    /// One that no longer plans (a table it reads was dropped) is left out
    /// of DataFusion, with a warning, and stays in the catalog for DROP VIEW.
    pub(crate) async fn register_views(&self) -> Result<()> {
        let views = self.cluster.catalog().lock().views();
        for (name, query) in views {
            match self.ctx.state().create_logical_plan(&query).await {
                Ok(plan) => {
                    self.ctx.register_table(
                        name.as_str(),
                        Arc::new(ViewTable::new(plan, Some(query))),
                    )?;
                }
                Err(e) => warn!(view = %name, error = %e, "view does not plan; left out"),
            }
        }
        Ok(())
    }

    /// CREATE SCHEMA: durable in the catalog; its tables are `name.t`.
    pub async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<()> {
        let catalog = self
            .ctx
            .catalog("datafusion")
            .ok_or_else(|| CoordinatorError::Catalog("no default catalog".into()))?;
        let added = !catalog.schema_names().iter().any(|s| s == name)
            && self.cluster.catalog().lock().add_schema(name)?;
        if !added {
            return if if_not_exists {
                Ok(())
            } else {
                Err(CoordinatorError::SchemaExists(name.to_string()))
            };
        }
        catalog.register_schema(name, Arc::new(MemorySchemaProvider::new()))?;
        Ok(())
    }

    /// DROP SCHEMA: refused while it holds tables, unless `cascade`
    /// (which drops them).
    pub async fn drop_schema(&self, name: &str, if_exists: bool, cascade: bool) -> Result<()> {
        if !self.cluster.catalog().lock().has_schema(name) {
            return if if_exists {
                Ok(())
            } else {
                Err(CoordinatorError::SchemaNotFound(name.to_string()))
            };
        }
        let prefix = format!("{name}.");
        let tables: Vec<String> = self
            .cluster
            .catalog()
            .lock()
            .tables()
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .map(|t| t.name.clone())
            .collect();
        if !tables.is_empty() && !cascade {
            return Err(CoordinatorError::SchemaNotEmpty {
                schema: name.to_string(),
                tables: tables.join(", "),
            });
        }
        for t in &tables {
            self.drop_table(t, true).await?;
        }
        self.cluster.catalog().lock().remove_schema(name)?;
        if let Some(catalog) = self.ctx.catalog("datafusion") {
            catalog.deregister_schema(name, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDef {
        let col = |n: &str| ColumnDef {
            name: n.into(),
            data_type: "Int64".into(),
            nullable: true,
            dropped: false,
            default: None,
            max_length: None,
        };
        TableDef {
            id: 1,
            name: "s.t".into(),
            columns: vec![col("k"), col("a")],
            distribution: Distribution::Hash(vec!["k".into()]),
            mirrored: true,
            session: None,
        }
    }

    fn add(name: &str, nullable: bool, default: Option<&str>) -> AlterOp {
        AlterOp::AddColumn {
            name: name.into(),
            data_type: DataType::Int64,
            nullable,
            default: default.map(String::from),
            max_length: None,
            if_not_exists: false,
        }
    }

    fn state(e: CoordinatorError) -> &'static str {
        e.sqlstate()
    }

    #[test]
    fn columns_keep_their_places_and_errors_carry_sqlstates() {
        let d = apply(def(), add("b", true, Some("5"))).unwrap().unwrap();
        assert_eq!(d.columns[2].default.as_deref(), Some("5"));
        assert_eq!(
            state(apply(d.clone(), add("a", true, None)).unwrap_err()),
            "42701"
        );
        assert!(apply(
            d.clone(),
            AlterOp::AddColumn {
                name: "a".into(),
                data_type: DataType::Int64,
                nullable: true,
                default: None,
                max_length: None,
                if_not_exists: true
            }
        )
        .unwrap()
        .is_none());
        assert_eq!(
            state(apply(d.clone(), add("c", false, None)).unwrap_err()),
            "0A000"
        );
        // DROP: the column stays in its place, marked, its name free.
        let dropped = apply(
            d.clone(),
            AlterOp::DropColumn {
                name: "a".into(),
                if_exists: false,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(dropped.columns.len(), 3);
        assert!(dropped.columns[1].dropped);
        let again = apply(dropped.clone(), add("a", true, None))
            .unwrap()
            .unwrap();
        assert_eq!(again.columns.len(), 4);
        assert_eq!(again.columns[3].name, "a");
        let gone = AlterOp::DropColumn {
            name: "zz".into(),
            if_exists: false,
        };
        assert_eq!(state(apply(d.clone(), gone).unwrap_err()), "42703");
        let key = AlterOp::DropColumn {
            name: "k".into(),
            if_exists: false,
        };
        let e = apply(d.clone(), key).unwrap_err();
        assert_eq!(e.sqlstate(), "42P16");
        assert!(e.to_string().contains("distribution key"), "{e}");
        // RENAME COLUMN follows the distribution key.
        let r = apply(
            d.clone(),
            AlterOp::RenameColumn {
                from: "k".into(),
                to: "id".into(),
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.distribution, Distribution::Hash(vec!["id".into()]));
        assert_eq!(r.columns[0].name, "id");
        let clash = AlterOp::RenameColumn {
            from: "k".into(),
            to: "a".into(),
        };
        assert_eq!(state(apply(d.clone(), clash).unwrap_err()), "42701");
        // RENAME TO stays in the table's schema.
        let t = apply(d, AlterOp::RenameTable { to: "u".into() })
            .unwrap()
            .unwrap();
        assert_eq!(t.name, "s.u");
    }
}
