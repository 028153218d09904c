//! Accepts PostgreSQL connections and hands each to pgwire with our handlers.
//! Owns the listening socket and nothing else.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::frontend::{Frontend, Handlers};
use crate::SqlError;

/// How long a new connection may take to finish its startup (send its
/// startup message and become a session) before it is closed
/// (PostgreSQL's `authentication_timeout` is a minute too).
pub const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve connections on `listener` until `shutdown` resolves; then every
/// session is terminated (its statement stopped, its connection closed).
pub async fn serve(
    frontend: Arc<Frontend>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SqlError> {
    let tls = frontend.tls();
    let handlers = Handlers::new(frontend);
    let addr = listener.local_addr()?;
    info!(%addr, "accepting PostgreSQL connections");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                let sessions = handlers.frontend().sessions().all();
                info!(sessions = sessions.len(), "shutting down: terminating every session");
                for s in sessions {
                    s.terminate();
                }
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let h = handlers.clone();
                    // Its session keeps a copy of the socket: to see a client
                    // that left mid-statement, and to close a terminated one.
                    let sessions = h.frontend().sessions().clone();
                    sessions.accepted(peer, &socket);
                    let watch = sessions.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(STARTUP_TIMEOUT).await;
                        if watch.close_if_not_started(peer) {
                            warn!(%peer, timeout = ?STARTUP_TIMEOUT, "closed a connection that did not finish its startup in time");
                        }
                    });
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, h).await {
                            warn!(%peer, error = %e, "connection ended with an error");
                        }
                        sessions.closed(peer);
                    });
                }
                Err(e) => warn!(error = %e, "accept failed"),
            }
        }
    }
}
