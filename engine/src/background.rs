//! Threads for background work (slice copies: the source's reads, the
//! target's writes) that run at a lower CPU priority than queries, so that
//! healing yields the processor to foreground work by itself and takes
//! what is left: on an idle machine it runs at full speed, on a busy one
//! the scheduler gives queries first call.
//!
//! Each is a thread of its own, never one of the runtime's blocking pool:
//! an unprivileged process cannot raise a thread's priority back, so a
//! pooled thread once lowered would slow whatever ran on it next.
//!
//! It also keeps a node's [`Activity`]: whether foreground work (scans,
//! writes) ran lately. A paced copy keeps its rate only while its node is
//! busy, and runs at full speed on an idle one.
//!
//! It owns only the threads, their priority and the activity gauge; it
//! never decides what runs there.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{EngineError, Result};

/// How long after its last foreground work a node counts as idle.
pub const QUIET: Duration = Duration::from_secs(1);

/// Foreground work on a node: how much runs now, and when the last ended.
#[derive(Debug)]
pub struct Activity {
    running: AtomicUsize,
    /// Milliseconds from `origin` to the end of the last work.
    last_ms: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            running: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

/// One piece of foreground work, counted until dropped.
#[derive(Debug)]
pub struct Foreground(Arc<Activity>);

impl Drop for Foreground {
    fn drop(&mut self) {
        let a = &self.0;
        // 0 means "never": the first millisecond counts as 1.
        a.last_ms
            .store(a.origin.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        a.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    /// Count foreground work from now until the guard drops.
    pub fn begin(self: &Arc<Self>) -> Foreground {
        self.running.fetch_add(1, Ordering::Relaxed);
        Foreground(self.clone())
    }

    /// Whether foreground work runs now or ended less than [`QUIET`] ago.
    pub fn busy(&self) -> bool {
        if self.running.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        last > 0 && now.saturating_sub(last) < QUIET.as_millis() as u64
    }
}

/// The nice value of background threads (Linux; 19 is the lowest
/// priority a thread can have under the normal scheduler).
pub const BACKGROUND_NICE: i32 = 19;

/// Run `f` on a new thread at [`BACKGROUND_NICE`]; its result comes back
/// through the returned receiver (an error if the thread could not start).
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> tokio::sync::oneshot::Receiver<Result<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        });
    if let Err(e) = started {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(EngineError::Internal(format!(
            "cannot start a background thread: {e}"
        ))));
        return rx;
    }
    rx
}

/// Await what [`spawn`]'s thread answered.
pub async fn join<T>(rx: tokio::sync::oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await
        .map_err(|_| EngineError::Internal("a background thread ended without an answer".into()))?
}

/// Lower the calling thread's priority (best effort: a refusal leaves it
/// as it was).
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take and return plain integers; on
    // Linux PRIO_PROCESS with a thread id changes only that thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        // SAFETY: as in lower_priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn own_nice() -> i32 {
        BACKGROUND_NICE
    }

    #[test]
    fn a_node_is_busy_while_foreground_work_runs_and_a_moment_after() {
        let a = Arc::new(Activity::default());
        assert!(!a.busy(), "nothing ran yet");
        let scan = a.begin();
        let write = a.begin();
        assert!(a.busy());
        drop(scan);
        assert!(a.busy(), "one still runs");
        drop(write);
        assert!(a.busy(), "it just ended");
        std::thread::sleep(QUIET + Duration::from_millis(50));
        assert!(!a.busy(), "quiet for long enough");
    }

    #[tokio::test]
    async fn background_threads_answer_and_run_at_the_lowest_priority() {
        let before = own_nice();
        let got = join(spawn("bg-test", || Ok(own_nice()))).await.unwrap();
        assert_eq!(got, BACKGROUND_NICE);
        let failed = join(spawn("bg-test", || -> Result<()> {
            Err(EngineError::Internal("boom".into()))
        }))
        .await;
        assert!(failed.unwrap_err().to_string().contains("boom"));
        assert_eq!(own_nice(), before, "the caller's own priority is untouched");
    }
}
