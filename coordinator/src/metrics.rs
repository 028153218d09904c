//! The cluster's state for the coordinator's metrics endpoint: slices by
//! state, nodes by health, and the progress of the resync or regeneration
//! round in flight. Names and meanings are in docs/metrics.md; the SQL
//! front end adds the statement counters and serves the whole.
//!
//! Everything here is read at scrape time from what the system manager
//! published (the map, the health board, the copy board): it never asks a
//! node and never changes anything.

use std::collections::BTreeMap;

/// The exposition writer and histogram the front end counts with (the
/// engine's, so that every endpoint writes the same format).
pub use slicedb_engine::metrics::{Exposition, Histogram, HistogramSnapshot, Kind, LATENCY_BOUNDS};

use crate::cluster::Cluster;
use crate::map::SliceState;

/// Every slice state, in the order the endpoint lists them.
const SLICE_STATES: [SliceState; 7] = [
    SliceState::PrimaryOnly,
    SliceState::InSync,
    SliceState::Degraded,
    SliceState::FailedOver,
    SliceState::Unprotected,
    SliceState::Rebuilding,
    SliceState::Unavailable,
];

/// Whether a slice in this state has every copy it should have, in sync.
fn healthy(s: SliceState) -> bool {
    match s {
        SliceState::PrimaryOnly | SliceState::InSync => true,
        SliceState::Degraded
        | SliceState::FailedOver
        | SliceState::Unprotected
        | SliceState::Rebuilding
        | SliceState::Unavailable => false,
    }
}

/// The phases a copy of a round goes through, as the board words them.
const PHASES: [&str; 4] = ["waiting", "copying", "done", "failed"];

/// Write the cluster's families into `e`.
pub fn write_cluster(cluster: &Cluster, e: &mut Exposition) {
    let map = cluster.map();
    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut to_heal = 0u64;
    for s in map.slices() {
        let state = s.state();
        *by_state.entry(state.as_str()).or_default() += 1;
        to_heal += u64::from(!healthy(state));
    }
    e.family(
        "slicedb_slices",
        Kind::Gauge,
        "Data slices by state (as slicedb_slices.state shows it).",
    );
    for s in SLICE_STATES {
        let n = by_state.get(s.as_str()).copied().unwrap_or(0);
        e.sample(&[("state", s.as_str())], n as f64);
    }
    e.single(
        "slicedb_slices_to_heal",
        Kind::Gauge,
        "Slices not in sync (degraded, failed over, unprotected, rebuilding, unavailable).",
        to_heal as f64,
    );
    e.single(
        "slicedb_map_epoch",
        Kind::Gauge,
        "Epoch of the distribution map in force.",
        map.epoch() as f64,
    );

    let states = cluster.health().states();
    let mut by_health: BTreeMap<&str, u64> = [("up", 0), ("down", 0), ("unknown", 0)].into();
    e.family(
        "slicedb_node_up",
        Kind::Gauge,
        "1 if the failure detector last found the node up, else 0.",
    );
    for n in cluster.nodes().values() {
        let state = states.get(&n.id).map_or("unknown", String::as_str);
        let key = if state == "up" || state == "down" {
            state
        } else {
            "unknown"
        };
        *by_health.entry(key).or_default() += 1;
        let up = f64::from(u8::from(state == "up"));
        e.sample(&[("node", &n.id.to_string())], up);
    }
    e.family(
        "slicedb_nodes",
        Kind::Gauge,
        "Nodes by health as the failure detector last found them.",
    );
    for (state, n) in &by_health {
        e.sample(&[("state", state)], *n as f64);
    }

    let round = cluster.resync_progress();
    let mut phases: BTreeMap<&str, u64> = PHASES.iter().map(|p| (*p, 0)).collect();
    let (mut copied, mut expected) = (0u64, 0u64);
    for c in &round {
        let phase = PHASES
            .iter()
            .find(|p| c.phase.starts_with(**p))
            .copied()
            .unwrap_or("waiting");
        *phases.entry(phase).or_default() += 1;
        copied += c.bytes;
        expected += c.total_bytes.max(c.bytes);
    }
    e.family(
        "slicedb_resync_copies",
        Kind::Gauge,
        "Copies of the current (or last) resync or regeneration round, by phase.",
    );
    for p in PHASES {
        e.sample(&[("phase", p)], phases[p] as f64);
    }
    e.single(
        "slicedb_resync_bytes_copied",
        Kind::Gauge,
        "Bytes the current (or last) round's copies have moved so far.",
        copied as f64,
    );
    e.single(
        "slicedb_resync_bytes_expected",
        Kind::Gauge,
        "Bytes the current (or last) round's copies will move, as far as known.",
        expected as f64,
    );
}
