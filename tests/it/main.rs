//! slicedb's end-to-end tests: one integration test binary (databend's
//! `tests/it/main.rs`) that drives the real `slicedb` executable as separate
//! processes and talks to it with real clients (tokio-postgres, psql,
//! psycopg). Each test has its own temp dir and listens on port 0, so they
//! run in parallel under nextest.

mod architecture;
mod auth;
mod bad_input;
mod carry;
mod cluster_auth;
mod copy_csv;
mod cursors;
mod damage;
mod data;
mod ddl;
mod disk_cli;
mod disks;
mod failover;
mod fuzz_sql;
mod hang;
mod harness;
mod heal;
mod jdbc;
mod limits;
mod map_upgrade;
mod metrics;
mod mirror;
mod multiprocess;
mod node;
mod psql;
mod python;
mod repair;
mod reuse;
mod scrub;
mod spares;
mod stop;
mod temp;
mod wire;
mod zones;
