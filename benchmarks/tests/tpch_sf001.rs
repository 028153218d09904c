//! CI's TPC-H check: at SF 0.01, every one of the 22 queries must give
//! DataFusion's answer when run on an embedded 4-node slicedb loaded over
//! the PostgreSQL wire. Answers only: timings are printed, never asserted.

use std::time::Duration;

use slicedb_benchmarks::{run, Engine, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_sf001_answers_match_datafusion() {
    let opts = Options {
        sf: 0.01,
        nodes: 4,
        iterations: 1,
        engine: Engine::Slicedb,
        query_timeout: Duration::from_secs(60),
        progress: false,
        ..Options::default()
    };
    let report = run(&opts).await.expect("the TPC-H run itself failed");
    println!("{}", report.render());
    assert_eq!(report.queries.len(), 22);
    let failures: Vec<String> = report
        .failures()
        .iter()
        .map(|q| {
            format!(
                "{} {}: {}",
                q.query,
                q.status.as_str(),
                q.detail.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 22 TPC-H queries failed at SF 0.01:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
