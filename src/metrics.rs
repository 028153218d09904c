//! Where the metrics endpoints listen, and starting them: the
//! coordinator's (statements and the cluster, `slicedb_sql`'s text) and
//! each node's (`NodeServer::render_metrics`). See docs/metrics.md.
//!
//! An address option reads `auto` (the default: the port 1000 above the
//! service's own, on its host; port 0 stays 0, a free port), `off`, or
//! `host:port`. It never renders metrics itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use slicedb_engine::metrics::{http, Exposition, Kind};
use slicedb_engine::server::NodeServer;
use slicedb_sql::frontend::Frontend;

use crate::Error;

/// How far above a service's port its metrics endpoint listens by default.
pub const PORT_OFFSET: u16 = 1000;

/// Resolve a metrics address option against the service's own address
/// (`host:port`): None when `off`.
pub fn resolve(option: &str, service: &str, what: &str) -> Result<Option<SocketAddr>, Error> {
    let opt = option.trim();
    if opt.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    if !opt.eq_ignore_ascii_case("auto") {
        return opt
            .parse()
            .map(Some)
            .map_err(|e| Error::Config(format!("{what} {opt:?}: {e} (host:port, auto or off)")));
    }
    let base: SocketAddr = service
        .parse()
        .map_err(|e| Error::Config(format!("{what}: address {service:?}: {e}")))?;
    let port = if base.port() == 0 {
        0
    } else {
        base.port().checked_add(PORT_OFFSET).ok_or_else(|| {
            Error::Config(format!(
                "{what}: port {} + {PORT_OFFSET} is past 65535; set it explicitly",
                base.port()
            ))
        })?
    };
    Ok(Some(SocketAddr::new(base.ip(), port)))
}

/// The address node `index` of a local cluster serves metrics on: the
/// ports right above the coordinator's, or free ports when it has port 0.
pub fn local_node_addr(coordinator: SocketAddr, index: u32) -> Result<SocketAddr, Error> {
    if coordinator.port() == 0 {
        return Ok(coordinator);
    }
    u16::try_from(u32::from(coordinator.port()) + 1 + index)
        .map(|p| SocketAddr::new(coordinator.ip(), p))
        .map_err(|_| Error::Config(format!("node {index}'s metrics port is past 65535")))
}

fn bind_error(what: &str, addr: SocketAddr, e: std::io::Error) -> Error {
    Error::Config(format!(
        "{what}: cannot listen on {addr} for metrics: {e} (choose another address, or off)"
    ))
}

/// Serve a node's metrics on `addr` until `shutdown`; answers the bound address.
pub async fn serve_node(
    server: NodeServer,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, Error> {
    let id = server.id();
    let render: http::Render = Arc::new(move || server.render_metrics());
    let bound = http::spawn(addr, render, shutdown)
        .await
        .map_err(|e| bind_error(&format!("node {id}"), addr, e))?;
    tracing::info!(node = id, address = %bound, "node metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Serve the coordinator's metrics on `addr` until `shutdown`, listing
/// the nodes' endpoints (`slicedb_node_metrics_endpoint`) too.
pub async fn serve_coordinator(
    fe: Arc<Frontend>,
    nodes: Vec<(u32, SocketAddr)>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr, Error> {
    let render: http::Render = Arc::new(move || {
        let count = fe.sessions().count();
        let mut text = fe.metrics.endpoint_text(count, fe.coordinator().cluster());
        text.push_str(&endpoints(&nodes));
        text
    });
    let bound = http::spawn(addr, render, shutdown)
        .await
        .map_err(|e| bind_error("coordinator", addr, e))?;
    tracing::info!(address = %bound, "coordinator metrics at http://{bound}/metrics");
    Ok(bound)
}

fn endpoints(nodes: &[(u32, SocketAddr)]) -> String {
    let mut e = Exposition::new();
    e.family(
        "slicedb_node_metrics_endpoint",
        Kind::Gauge,
        "Always 1: where each node serves its metrics (address label, host:port).",
    );
    for (id, addr) in nodes {
        e.sample(
            &[("node", &id.to_string()), ("address", &addr.to_string())],
            1.0,
        );
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let r = |o: &str, s: &str| resolve(o, s, "x").map(|a| a.map(|a| a.to_string()));
        assert_eq!(
            r("auto", "127.0.0.1:5433").unwrap().unwrap(),
            "127.0.0.1:6433"
        );
        assert_eq!(r("AUTO", "0.0.0.0:0").unwrap().unwrap(), "0.0.0.0:0");
        assert_eq!(r("off", "127.0.0.1:5433").unwrap(), None);
        assert_eq!(r("10.0.0.1:9187", "bad").unwrap().unwrap(), "10.0.0.1:9187");
        assert!(r("auto", "127.0.0.1:65000").is_err());
        assert!(r("nonsense", "127.0.0.1:1").is_err());
        let c: SocketAddr = "127.0.0.1:6433".parse().unwrap();
        assert_eq!(local_node_addr(c, 2).unwrap().to_string(), "127.0.0.1:6436");
        let z: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(local_node_addr(z, 2).unwrap(), z);
    }
}
