//! The extended protocol's Execute without a row limit: the result's rows
//! go to the client as they are produced.
//!
//! pgwire keeps a started portal's rows in the portal and hands out up to
//! `max_rows` of them per Execute, collecting them first; with `max_rows`
//! 0 (what drivers send unless told a fetch size) that would collect the
//! whole result in memory. So such an Execute sends the rows itself, one by
//! one from the result's stream, and leaves pgwire only the CommandComplete.
//! An Execute with `max_rows` > 0 (JDBC's `setFetchSize`, tokio-postgres'
//! `query_portal`) keeps pgwire's way: at most `max_rows` rows are pulled
//! from the stream per Execute, then PortalSuspended, and the next Execute
//! of the portal resumes the same stream.
//!
//! It only forwards rows: it never plans, runs or changes a statement.

use std::fmt::Debug;

use futures::{Sink, SinkExt, StreamExt};
use pgwire::api::results::{Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;

/// Send the rows of `response` if it is a query result and `max_rows` is
/// 0, answering what is left to send (its CommandComplete); otherwise
/// answer `response` as it is.
pub(crate) async fn send_unlimited<C>(
    client: &mut C,
    response: Response,
    max_rows: usize,
) -> PgWireResult<Response>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let Response::Query(mut q) = response else {
        return Ok(response);
    };
    if max_rows > 0 {
        return Ok(Response::Query(q));
    }
    let mut rows = 0;
    while let Some(row) = q.data_rows().next().await {
        client.feed(PgWireBackendMessage::DataRow(row?)).await?;
        rows += 1;
    }
    Ok(Response::Execution(
        Tag::new(q.command_tag()).with_rows(rows),
    ))
}
