//! Stopping statements through psycopg (tests/python/test_stop.py) against
//! `slicedb local`: a light query beside a runaway one, cancel, statement
//! timeout, a client gone; each time the server's processor use (the nodes
//! run in it) falls back to nearly nothing.

use crate::harness::{self, Slicedb};
use crate::python::run_script;

#[test]
fn a_runaway_query_is_stopped_by_cancel_timeout_or_its_client_leaving() {
    harness::run("stop", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let args = vec![db.url().to_string(), db.pid().to_string()];
        run_script("test_stop.py", args, "all stop checks passed").await?;
        db.stop().await
    });
}
