//! Small JSON-lines files a node keeps next to its disk images (the repair
//! log, the damaged-block marks): one JSON object a line, appended with an
//! fsync, or rewritten whole through a temporary file that is fsynced and
//! renamed (the directory fsynced after). They are reports that outlive a
//! restart, not part of the disk image format.
//!
//! It owns the files' framing. It must never be used for anything a
//! node needs to be correct: a file that cannot be read or written is
//! logged and the node goes on without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::store::DiskStore;

/// `name` in the directory of the node's first disk image (None for a
/// node without disks).
pub(super) fn next_to_images(disks: &[Arc<DiskStore>], name: &str) -> Option<PathBuf> {
    disks
        .first()
        .and_then(|d| d.path().parent())
        .map(|dir| dir.join(name))
}

/// The objects in `file`, in order (none if it does not exist; a line that
/// does not parse, a torn last line after a crash for one, is skipped with
/// a warning).
pub(super) fn load<T: DeserializeOwned>(file: &Path) -> Vec<T> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(file = %file.display(), error = %e, "cannot read the file: starting without it");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(e) => warn!(file = %file.display(), line = i + 1, error = %e,
                            "a line that does not parse is skipped"),
        }
    }
    out
}

/// Append one object as a line and fsync; a failure is logged.
pub(super) fn append<T: Serialize>(file: &Path, item: &T) {
    let r = (|| -> std::io::Result<()> {
        let mut line = serde_json::to_vec(item)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)?;
        f.write_all(&line)?;
        f.sync_data()
    })();
    if let Err(e) = r {
        warn!(file = %file.display(), error = %e, "could not append to the file");
    }
}

/// Replace the file by `items` atomically; a failure is logged.
pub(super) fn rewrite<'a, T: Serialize + 'a>(file: &Path, items: impl Iterator<Item = &'a T>) {
    let tmp = file.with_extension("tmp");
    let r = (|| -> std::io::Result<()> {
        {
            let mut f = std::fs::File::create(&tmp)?;
            for item in items {
                serde_json::to_writer(&mut f, item)?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        warn!(file = %file.display(), error = %e, "could not write the file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_and_rewritten_lines_read_back_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.jsonl");
        assert!(load::<u64>(&f).is_empty());
        append(&f, &1u64);
        append(&f, &2u64);
        assert_eq!(load::<u64>(&f), vec![1, 2]);
        // A crash mid-append leaves a torn last line.
        let mut text = std::fs::read_to_string(&f).unwrap();
        text.push_str("{\"tor");
        std::fs::write(&f, text).unwrap();
        assert_eq!(load::<u64>(&f), vec![1, 2]);
        rewrite(&f, [7u64, 8, 9].iter());
        assert_eq!(load::<u64>(&f), vec![7, 8, 9]);
        assert!(!dir.path().join("x.tmp").exists());
    }
}
