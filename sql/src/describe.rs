//! Describe (statement) as PostgreSQL answers it: ParameterDescription,
//! then NoData when the statement returns no rows (INSERT, UPDATE, DDL).
//!
//! pgwire answers NoData only when the statement also has no parameters;
//! for `INSERT INTO t VALUES ($1, $2)` it sends a RowDescription with no
//! columns, and the PostgreSQL JDBC driver then takes each execution of a
//! batch for a query (its update count 0). Portals and everything else go
//! to pgwire's own handling. It only answers Describe; it runs nothing.

use futures::{Sink, SinkExt};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::PgWireBackendMessage;

/// `handler.on_describe`, with NoData for a statement that returns no rows.
pub async fn on_describe<H, C>(handler: &H, client: &mut C, message: Describe) -> PgWireResult<()>
where
    H: ExtendedQueryHandler + Sync,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: std::fmt::Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        if let Some(Entry::Value(stmt)) = client.portal_store().get_statement(name) {
            let response = handler.do_describe_statement(client, &stmt).await?;
            if response.fields.is_empty() {
                let oids = response.parameters.iter().map(|t| t.oid()).collect();
                client
                    .send(PgWireBackendMessage::ParameterDescription(
                        ParameterDescription::new(oids),
                    ))
                    .await?;
                client
                    .send(PgWireBackendMessage::NoData(NoData::new()))
                    .await?;
                return Ok(());
            }
        }
    }
    handler._on_describe(client, message).await
}
