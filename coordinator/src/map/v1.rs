//! Reading version 1 maps (one primary, one optional mirror and one state
//! per slice) into the current form (copies as a list).
//!
//! The conversion is exact: every version 1 slice state has one set of copy
//! states that derives back to it (docs/coordinator-state.md). The file is
//! rewritten as version 2 by the next map change (the coordinator persists
//! the converted map at start).

use serde::Deserialize;
use slicedb_engine::SliceId;

use super::{CopyState, DistMap, Location, MapChange, Role, SliceCopy, SliceEntry, MAP_VERSION};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum V1State {
    PrimaryOnly,
    InSync,
    Degraded,
    FailedOver,
    Unprotected,
    Unavailable,
}

#[derive(Debug, Deserialize)]
pub(super) struct V1Entry {
    slice: SliceId,
    primary: Location,
    mirror: Option<Location>,
    state: V1State,
}

#[derive(Debug, Deserialize)]
pub(super) struct V1Map {
    epoch: u64,
    slices: Vec<V1Entry>,
    #[serde(default)]
    down: Vec<slicedb_engine::NodeId>,
    #[serde(default)]
    down_disks: Vec<Location>,
    #[serde(default)]
    history: Vec<MapChange>,
}

pub(super) fn convert(old: V1Map) -> DistMap {
    let gone = |l: Location| old.down.contains(&l.node) || old.down_disks.contains(&l);
    let slices = old
        .slices
        .iter()
        .map(|e| {
            use CopyState::*;
            let (p, m) = match e.state {
                V1State::PrimaryOnly | V1State::InSync => (InSync, InSync),
                V1State::Degraded => (InSync, Stale),
                V1State::FailedOver => (Lost, InSync),
                V1State::Unprotected => (InSync, Lost),
                // No in-sync copy: the primary is gone; a mirror that
                // survives on a live disk missed commits (version 1 reached
                // this state from `degraded`).
                V1State::Unavailable => (
                    Lost,
                    if e.mirror.is_some_and(|m| !gone(m)) {
                        Stale
                    } else {
                        Lost
                    },
                ),
            };
            let mut copies = vec![SliceCopy {
                at: e.primary,
                role: Role::Primary,
                state: p,
                behind_from: (p != CopyState::InSync).then_some(0),
            }];
            if let Some(at) = e.mirror {
                copies.push(SliceCopy {
                    at,
                    role: Role::Mirror,
                    state: m,
                    behind_from: (m != CopyState::InSync).then_some(0),
                });
            }
            SliceEntry {
                slice: e.slice,
                copies,
            }
        })
        .collect();
    DistMap {
        version: MAP_VERSION,
        epoch: old.epoch,
        placement: "ring".into(),
        slices,
        down: old.down,
        down_disks: old.down_disks,
        emptied: Vec::new(),
        images: Vec::new(),
        history: old.history,
    }
}

#[cfg(test)]
mod tests {
    use super::super::SliceState;
    use super::*;

    /// A map as version 1 wrote it: every slice state once.
    const SAVED_V1: &str = include_str!("testdata/distmap-v1.json");

    #[test]
    fn a_saved_version_1_map_converts_to_the_same_states() {
        let (map, converted) = DistMap::from_json(SAVED_V1, "distmap-v1.json").unwrap();
        assert!(converted);
        assert_eq!(map.version, MAP_VERSION);
        assert_eq!(map.epoch(), 7);
        assert_eq!(map.down(), &[3]);
        assert_eq!(map.history().len(), 1);
        let states: Vec<&str> = map.slices().iter().map(|e| e.state().as_str()).collect();
        assert_eq!(
            states,
            [
                "in_sync",
                "degraded",
                "unprotected",
                "failed_over",
                "in_sync",
                "in_sync",
                "unprotected",
                "unavailable"
            ]
        );
        let failed_over = &map.slices()[3];
        assert_eq!(
            failed_over.serving().unwrap(),
            (Location { node: 0, disk: 0 }, true),
            "a failed-over slice is served from its mirror"
        );
        assert_eq!(map.slices()[1].primary().at, Location { node: 1, disk: 0 });
        assert_eq!(map.slices()[1].mirror().unwrap().state, CopyState::Stale);
        // The unavailable slice's mirror survives on a live node, stale.
        assert_eq!(map.slices()[7].primary().state, CopyState::Lost);
        assert_eq!(map.slices()[7].mirror().unwrap().state, CopyState::Stale);
        // Converted once, it reads back as version 2 unchanged.
        let (again, converted) =
            DistMap::from_json(std::str::from_utf8(&map.to_json().unwrap()).unwrap(), "v2")
                .unwrap();
        assert!(!converted);
        assert_eq!(again, map);
        assert_eq!(SliceState::InSync.as_str(), states[0]);
    }

    #[test]
    fn unknown_versions_are_refused_by_number() {
        let e = DistMap::from_json(r#"{"version": 9, "epoch": 1, "slices": []}"#, "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("map version 9 is not supported"), "{e}");
    }
}
