//! A slice copy between two real node servers over gRPC: the target pulls
//! from the source, node to node; whole, then incrementally.

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::NodeServer;
use crate::proto::{self, pb, ErrorKind};
use crate::store::{DiskIds, DiskStore, InitOptions, StoreOptions};

type Client = pb::node_client::NodeClient<tonic::transport::Channel>;

async fn node(
    dir: &std::path::Path,
    id: u32,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Arc<crate::background::Activity>,
) {
    let ids = DiskIds {
        cluster_id: [7; 16],
        node_id: id,
        disk_id: 0,
    };
    let store = DiskStore::create(
        &dir.join(format!("n{id}.img")),
        ids,
        InitOptions::new(64 << 20),
        StoreOptions {
            block_rows: 100,
            ..Default::default()
        },
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = NodeServer::new(id, vec![Arc::new(store)]);
    let activity = server.state.activity.clone();
    let (addr, _task) = server
        .spawn("127.0.0.1:0".parse().unwrap(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    (addr, tx, activity)
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]))
}

async fn write(c: &mut Client, xid: u64, from: i64, n: i64) {
    let batch = RecordBatch::try_new(
        schema(),
        vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
    )
    .unwrap();
    c.write(pb::WriteRequest {
        epoch: 5,
        xid,
        table: 1,
        slice: 0,
        segment: pb::Segment::Primary as i32,
        batches: proto::batches_to_ipc(&schema(), &[batch]).unwrap().into(),
        request_id: 1,
    })
    .await
    .unwrap();
    c.prepare(pb::TxnRequest {
        epoch: 5,
        xid,
        requests: 1,
    })
    .await
    .unwrap();
    c.commit(pb::TxnRequest {
        epoch: 5,
        xid,
        requests: 1,
    })
    .await
    .unwrap();
}

async fn checksum(c: &mut Client, segment: pb::Segment) -> (u64, u64) {
    let r = c
        .checksum(pb::ChecksumRequest {
            epoch: 5,
            table: 1,
            slice: 0,
            segment: segment as i32,
            snapshot: None,
        })
        .await
        .unwrap()
        .into_inner();
    (r.rows, r.checksum)
}

/// Two node servers: node 1 holds slice 0's primary, node 2 its mirror,
/// which missed everything (not forwarded to: the map records it as down).
struct Pair {
    na: Client,
    nb: Client,
    /// Each node's foreground activity.
    activity: [Arc<crate::background::Activity>; 2],
    _stops: [tokio::sync::oneshot::Sender<()>; 2],
    _dir: tempfile::TempDir,
}

async fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (a, stop_a, act_a) = node(dir.path(), 1).await;
    let (b, stop_b, act_b) = node(dir.path(), 2).await;
    let peers = vec![
        pb::Peer {
            node: 1,
            address: a.to_string(),
        },
        pb::Peer {
            node: 2,
            address: b.to_string(),
        },
    ];
    let mut na = Client::connect(format!("http://{a}")).await.unwrap();
    let mut nb = Client::connect(format!("http://{b}")).await.unwrap();
    for (c, id, segment) in [
        (&mut na, 1, pb::Segment::Primary),
        (&mut nb, 2, pb::Segment::Mirror),
    ] {
        c.install_map(pb::InstallMapRequest {
            epoch: 5,
            node: id,
            slices: vec![pb::SliceAssignment {
                slice: 0,
                disk: 0,
                segment: segment as i32,
                mirror_node: 2,
                mirror_active: false,
                ..Default::default()
            }],
            peers: peers.clone(),
            mirror_timeout_ms: 0,
        })
        .await
        .unwrap();
        c.create_table(pb::CreateTableRequest {
            epoch: 5,
            table: 1,
            schema: proto::schema_to_bytes(&schema()).unwrap(),
            mirrored: true,
        })
        .await
        .unwrap();
    }
    Pair {
        na,
        nb,
        activity: [act_a, act_b],
        _stops: [stop_a, stop_b],
        _dir: dir,
    }
}

fn copy(xid: u64, incremental: bool) -> pb::CopySliceRequest {
    pb::CopySliceRequest {
        epoch: 5,
        table: 1,
        slice: 0,
        source_node: 1,
        source_segment: pb::Segment::Primary as i32,
        target_segment: pb::Segment::Mirror as i32,
        xid,
        incremental,
        max_bytes_per_sec: 0,
    }
}

#[tokio::test]
async fn a_target_pulls_a_slice_copy_from_its_source_whole_then_only_what_changed() {
    let mut p = pair().await;
    let (na, nb) = (&mut p.na, &mut p.nb);
    write(na, 10, 0, 1000).await;
    na.delete(pb::DeleteRequest {
        epoch: 5,
        xid: 11,
        table: 1,
        slice: 0,
        segment: pb::Segment::Primary as i32,
        rowids: vec![5, 6, 7],
        snapshot: Some(pb::Snapshot {
            xmax: 11,
            xip: vec![],
            own: 11,
        }),
        request_id: 1,
    })
    .await
    .unwrap();
    na.prepare(pb::TxnRequest {
        epoch: 5,
        xid: 11,
        requests: 1,
    })
    .await
    .unwrap();
    na.commit(pb::TxnRequest {
        epoch: 5,
        xid: 11,
        requests: 1,
    })
    .await
    .unwrap();
    assert_eq!(checksum(nb, pb::Segment::Mirror).await.0, 0);

    let whole = nb.copy_slice(copy(100, false)).await.unwrap().into_inner();
    assert_eq!((whole.blocks, whole.deletes), (10, 3));
    let primary = checksum(na, pb::Segment::Primary).await;
    assert_eq!(primary.0, 997);
    assert_eq!(checksum(nb, pb::Segment::Mirror).await, primary);

    // The mirror is down again while 20 rows arrive: a resync sends one
    // block, not eleven.
    write(na, 12, 1000, 20).await;
    let delta = nb.copy_slice(copy(101, true)).await.unwrap().into_inner();
    assert_eq!(delta.blocks, 1);
    assert!(
        delta.bytes * 5 < whole.bytes,
        "{} vs {}",
        delta.bytes,
        whole.bytes
    );
    let primary = checksum(na, pb::Segment::Primary).await;
    assert_eq!(primary.0, 1017);
    assert_eq!(checksum(nb, pb::Segment::Mirror).await, primary);

    // A copy from a node that does not hold the source copy fails, and
    // leaves the target as it was.
    let e = nb.copy_slice(copy(102, false)).await.unwrap_err();
    assert!(
        e.message().contains("not empty"),
        "a whole copy onto a copy: {e}"
    );
    let mut wrong = copy(102, true);
    wrong.source_segment = pb::Segment::Mirror as i32;
    let e = nb.copy_slice(wrong).await.unwrap_err();
    assert!(e.message().contains("slice 0"), "{e}");
    assert_eq!(checksum(nb, pb::Segment::Mirror).await, primary);
    // A copy into a slice the target does not own is refused.
    let mut foreign = copy(103, false);
    foreign.slice = 9;
    let e = nb.copy_slice(foreign).await.unwrap_err();
    assert_eq!(proto::error_kind(&e), ErrorKind::SliceNotOwned, "{e}");
}

/// Copy slice 0 (ten blocks) from node 1 to node 2 at a fifth of its size
/// per second; answers how long it took, its size and what `Status`
/// showed of it meanwhile.
async fn paced_copy(p: &mut Pair) -> (std::time::Duration, u64, Option<pb::CopyStatus>) {
    let total = {
        let st =
            p.na.status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner();
        st.slices.iter().map(|s| s.bytes).sum::<u64>()
    };
    assert!(total > 0);
    let mut req = copy(100, true);
    req.max_bytes_per_sec = total / 5;
    let mut nb = p.nb.clone();
    let t0 = std::time::Instant::now();
    let pulling = tokio::spawn(async move { nb.copy_slice(req).await });
    let mut seen = None;
    while seen.is_none() && !pulling.is_finished() {
        let st =
            p.nb.status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner();
        seen = st.copies.into_iter().find(|c| c.xid == 100 && c.bytes > 0);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let done = pulling.await.unwrap().unwrap().into_inner();
    assert_eq!(done.bytes, total);
    // Once over, it is off the board, and the copy is whole.
    let st =
        p.nb.status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
    assert!(st.copies.is_empty(), "{:?}", st.copies);
    let primary = checksum(&mut p.na, pb::Segment::Primary).await;
    assert_eq!(checksum(&mut p.nb, pb::Segment::Mirror).await, primary);
    (t0.elapsed(), total, seen)
}

/// While both nodes do foreground work, a paced copy keeps its rate: the
/// last of its blocks is due five seconds after the start, however fast
/// the machine.
#[tokio::test]
async fn a_paced_copy_keeps_its_rate_while_its_nodes_are_busy_and_shows_its_progress() {
    let mut p = pair().await;
    write(&mut p.na, 10, 0, 1000).await;
    let _busy = [p.activity[0].begin(), p.activity[1].begin()];
    let (took, total, seen) = paced_copy(&mut p).await;
    assert!(
        took >= std::time::Duration::from_secs(4),
        "{took:?}: not paced"
    );
    let seen = seen.expect("the copy never showed in Status");
    assert_eq!((seen.table, seen.slice, seen.source_node), (1, 0, 1));
    assert_eq!(seen.total_bytes, total);
    assert!(seen.bytes < total, "{seen:?}");
}

/// On idle nodes (no scan or write for a moment) the same copy does not
/// wait for its rate.
#[tokio::test]
async fn a_paced_copy_runs_at_full_speed_while_its_nodes_are_idle() {
    let mut p = pair().await;
    write(&mut p.na, 10, 0, 1000).await;
    tokio::time::sleep(crate::background::QUIET + std::time::Duration::from_millis(100)).await;
    let (took, _, _) = paced_copy(&mut p).await;
    assert!(
        took < std::time::Duration::from_secs(4),
        "{took:?}: paced although both nodes were idle"
    );
}
