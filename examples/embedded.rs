//! Start a local slicedb cluster inside this process and run SQL on it.
//!
//! cargo run --example embedded

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("slicedb-example-{}", std::process::id()));
    let mut opts = slicedb::LocalOptions::new(&dir);
    opts.disk_size = 256 << 20;
    let cluster = slicedb::LocalCluster::start(opts).await?;

    cluster
        .sql("CREATE TABLE sales (id bigint, region text) DISTRIBUTE ON (id)")
        .await?;
    cluster
        .sql("INSERT INTO sales VALUES (1, 'north'), (2, 'south'), (3, 'north')")
        .await?;
    // Bulk load Arrow batches directly (the COPY path).
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(4..1004)),
            Arc::new(StringArray::from_iter_values((4..1004).map(|i| {
                if i % 2 == 0 {
                    "east"
                } else {
                    "west"
                }
            }))),
        ],
    )?;
    cluster.load("sales", vec![batch]).await?;

    let out = cluster
        .sql("SELECT region, count(*) AS n FROM sales GROUP BY region ORDER BY region")
        .await?;
    println!("{}", arrow::util::pretty::pretty_format_batches(&out)?);
    cluster.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
