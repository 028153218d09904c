//! Property tests of everything a node decodes from bytes it did not write
//! itself in this process: blocks and delete runs (`block.rs`), the
//! superblock and metadata slots (`disk/superblock.rs`, `disk/meta.rs`), and
//! the node protocol's messages and the helpers that turn their fields into
//! engine values (`proto.rs`, `predicate.rs`). Compiled for tests only.
//!
//! Every property feeds random or mutated input and asks for a value or a
//! typed [`crate::EngineError`], never a panic, and where an encoder exists,
//! that a valid value comes back unchanged.
//!
//! - `block.rs`: blocks and delete runs, valid ones with bit flips,
//!   truncations and header fields rewritten under a recomputed CRC.
//! - `disk.rs`: superblocks, metadata payloads and slots.
//! - `proto.rs`: request messages, IPC batches and schemas, segments,
//!   snapshots, predicates evaluated on every column type.
//!
//! Each test prints its seed; `SLICEDB_TEST_SEED=<seed>` replays it and
//! `SLICEDB_FUZZ_CASES=<n>` runs more cases (docs/benchmarks.md).

mod block;
mod disk;
mod proto;

use std::fmt::Debug;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// The seed of this run: `SLICEDB_TEST_SEED`, or a fresh one.
fn seed() -> u64 {
    match std::env::var("SLICEDB_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SLICEDB_TEST_SEED={s:?} is not a u64")),
        Err(_) => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        }
    }
}

/// Cases per property: `SLICEDB_FUZZ_CASES`, or `default`.
fn cases(default: u32) -> u32 {
    match std::env::var("SLICEDB_FUZZ_CASES") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SLICEDB_FUZZ_CASES={s:?} is not a number")),
        Err(_) => default,
    }
}

/// Run `test` on `cases` values of `strategy` from a printed, replayable
/// seed. A failure (an error returned or a panic) is shrunk to a minimal
/// input and fails the test with the seed to replay it.
pub(crate) fn check<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let seed = seed();
    let cases = cases(default_cases);
    eprintln!("[{name}] seed {seed}, {cases} cases (replay with SLICEDB_TEST_SEED={seed})");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    // SLICEDB_FUZZ_VERBOSE=1 prints every case before it runs (to find
    // the one that hangs).
    let verbose = std::env::var_os("SLICEDB_FUZZ_VERBOSE").is_some();
    let test = |value: S::Value| {
        if verbose {
            eprintln!("[{name}] case {value:?}");
        }
        test(value)
    };
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => panic!(
            "[{name}] failed (replay with SLICEDB_TEST_SEED={seed}): {reason}\nminimal input: {value:?}"
        ),
        Err(TestError::Abort(reason)) => {
            panic!("[{name}] aborted (SLICEDB_TEST_SEED={seed}): {reason}")
        }
    }
}

/// Byte-level mutations of a valid encoding.
#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    /// Flip bit `bit` of byte `at` (positions wrap around the input).
    Flip { at: usize, bit: u8 },
    /// Keep only the first `len` bytes.
    Truncate { len: usize },
    /// Overwrite bytes from `at` on.
    Overwrite { at: usize, with: Vec<u8> },
    /// Insert bytes at `at`.
    Insert { at: usize, with: Vec<u8> },
    /// Remove `len` bytes from `at`.
    Remove { at: usize, len: usize },
}

impl Mutation {
    pub(crate) fn apply(&self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        let n = out.len().max(1);
        match self {
            Mutation::Flip { at, bit } => {
                if !out.is_empty() {
                    out[at % n] ^= 1 << (bit % 8);
                }
            }
            Mutation::Truncate { len } => out.truncate(len % n),
            Mutation::Overwrite { at, with } => {
                for (i, b) in with.iter().enumerate() {
                    if let Some(x) = out.get_mut((at % n) + i) {
                        *x = *b;
                    }
                }
            }
            Mutation::Insert { at, with } => {
                let at = at % (out.len() + 1);
                out.splice(at..at, with.iter().copied());
            }
            Mutation::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(out.len());
                if at < end {
                    out.drain(at..end);
                }
            }
        }
        out
    }
}

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    use proptest::prelude::*;
    let bytes = || proptest::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        2 => (any::<usize>(), bytes()).prop_map(|(at, with)| Mutation::Overwrite { at, with }),
        1 => (any::<usize>(), bytes()).prop_map(|(at, with)| Mutation::Insert { at, with }),
        1 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Remove { at, len }),
    ]
}

/// One to four mutations.
pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

pub(crate) fn mutate(input: &[u8], ms: &[Mutation]) -> Vec<u8> {
    ms.iter().fold(input.to_vec(), |b, m| m.apply(&b))
}
