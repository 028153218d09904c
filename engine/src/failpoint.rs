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
    use std::time::Duration;

    /// Exit code of a process killed by a failpoint.
    pub const EXIT_CODE: i32 = 86;

    /// What a named point does.
    enum Action {
        /// Exit on the Nth hit (counted).
        Exit(u64, AtomicU64),
        /// The caller of `delay` waits this long.
        Delay(Duration),
    }

    /// The points named in `SLICEDB_FAILPOINTS`, parsed once.
    fn points() -> &'static HashMap<String, Action> {
        static P: OnceLock<HashMap<String, Action>> = OnceLock::new();
        P.get_or_init(|| {
            let mut m = HashMap::new();
            let Ok(v) = std::env::var("SLICEDB_FAILPOINTS") else {
                return m;
            };
            for item in v.split(',').map(str::trim) {
                let Some((name, action)) = item.split_once('=') else {
                    continue;
                };
                let action = action.trim();
                let parsed = if let Some(ms) = action.strip_prefix("delay:") {
                    ms.parse()
                        .ok()
                        .map(|ms| Action::Delay(Duration::from_millis(ms)))
                } else {
                    match action.strip_prefix("exit") {
                        Some("") => Some(1),
                        Some(rest) => rest.strip_prefix('@').and_then(|n| n.parse().ok()),
                        None => None,
                    }
                    .map(|nth| Action::Exit(nth, AtomicU64::new(0)))
                };
                if let Some(a) = parsed {
                    m.insert(name.trim().to_string(), a);
                }
            }
            m
        })
    }

    pub fn delay(name: &str) -> Option<Duration> {
        match points().get(name) {
            Some(Action::Delay(d)) => Some(*d),
            _ => None,
        }
    }

    pub fn hit(name: &str) {
        if let Some(Action::Exit(nth, count)) = points().get(name) {
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
    let d = imp::delay(name);
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
