//! Failpoints: named places in the commit path where a test can make the
//! process die as if `kill -9`ed, to check recovery at every step, or wait,
//! to widen a race window.
//!
//! Compiled only with the `failpoints` cargo feature; without it [`hit`]
//! and [`delay`] do nothing. The set is read once from the
//! `SLICEDB_FAILPOINTS` environment variable: a comma-separated list of
//! `name=exit` (exit at once with code 86, no destructors, no flushing),
//! `name=exit@N` (exit on the Nth hit) or `name=delay:MS` (the caller of
//! [`delay`] waits MS milliseconds). This module must never be used for
//! control flow other than dying or waiting.

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// Exit code of a process killed by a failpoint.
    pub const EXIT_CODE: i32 = 86;

    /// `name=delay:MS` entries.
    pub fn delays() -> &'static HashMap<String, std::time::Duration> {
        static D: OnceLock<HashMap<String, std::time::Duration>> = OnceLock::new();
        D.get_or_init(|| {
            let mut m = HashMap::new();
            if let Ok(v) = std::env::var("SLICEDB_FAILPOINTS") {
                for item in v.split(',').map(str::trim) {
                    let Some((name, action)) = item.split_once('=') else {
                        continue;
                    };
                    if let Some(ms) = action.trim().strip_prefix("delay:") {
                        if let Ok(ms) = ms.parse() {
                            m.insert(
                                name.trim().to_string(),
                                std::time::Duration::from_millis(ms),
                            );
                        }
                    }
                }
            }
            m
        })
    }

    fn points() -> &'static HashMap<String, (u64, AtomicU64)> {
        static P: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
        P.get_or_init(|| {
            let mut m = HashMap::new();
            if let Ok(v) = std::env::var("SLICEDB_FAILPOINTS") {
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let Some((name, action)) = item.split_once('=') else {
                        continue;
                    };
                    let nth = match action.trim().strip_prefix("exit") {
                        Some("") => 1,
                        Some(rest) => match rest.strip_prefix('@').and_then(|n| n.parse().ok()) {
                            Some(n) => n,
                            None => continue,
                        },
                        None => continue,
                    };
                    m.insert(name.trim().to_string(), (nth, AtomicU64::new(0)));
                }
            }
            m
        })
    }

    pub fn hit(name: &str) {
        if let Some((nth, count)) = points().get(name) {
            if count.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
                eprintln!("failpoint {name}: exiting");
                // SAFETY: _exit ends the process at once, like a crash.
                unsafe { libc_exit(EXIT_CODE) };
            }
        }
    }

    extern "C" {
        #[link_name = "_exit"]
        fn libc_exit(code: i32) -> !;
    }
}

/// Die here if the `SLICEDB_FAILPOINTS` environment variable names this point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    imp::hit(name)
}

/// Failpoints are compiled out: nothing happens.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// How long to wait here, if the `SLICEDB_FAILPOINTS` environment variable
/// says `name=delay:MS` (the caller sleeps: in async code, without blocking).
#[cfg(feature = "failpoints")]
pub fn delay(name: &str) -> Option<std::time::Duration> {
    let d = imp::delays().get(name).copied();
    if let Some(d) = d {
        eprintln!("failpoint {name}: waiting {d:?}");
    }
    d
}

/// Failpoints are compiled out: never waits.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn delay(_name: &str) -> Option<std::time::Duration> {
    None
}

/// Whether failpoints are compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");
