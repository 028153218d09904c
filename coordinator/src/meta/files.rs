//! [`FileMeta`]: the coordinator's state as files in its data dir
//! (docs/coordinator-state.md): `catalog.json` and `distmap.json`, each
//! replaced atomically (write `*.tmp`, fsync, rename, fsync the directory),
//! and `commits.log`, 16 bytes per committed xid (u64 xid LE, u32 CRC32C of
//! those 8 bytes, u32 magic), appended and fsynced.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use slicedb_engine::Xid;
use tracing::warn;

use super::{CommitLog, Doc, MetaStore};
use crate::{CoordinatorError, Result};

const RECORD_MAGIC: u32 = 0x534c_434d; // "SLCM"
const RECORD_LEN: usize = 16;

/// The coordinator's state in a directory.
#[derive(Debug, Clone)]
pub struct FileMeta {
    dir: PathBuf,
}

impl FileMeta {
    /// The store in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<FileMeta> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CoordinatorError::io(dir.display().to_string(), e))?;
        Ok(FileMeta {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, doc: Doc) -> PathBuf {
        self.dir.join(match doc {
            Doc::Catalog => "catalog.json",
            Doc::Map => "distmap.json",
        })
    }
}

impl MetaStore for FileMeta {
    fn read(&self, doc: Doc) -> Result<Option<Vec<u8>>> {
        let path = self.path(doc);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoordinatorError::io(path.display().to_string(), e)),
        }
    }

    fn write(&self, doc: Doc, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(doc), bytes)
    }

    fn open_commit_log(&self) -> Result<(Vec<Xid>, Box<dyn CommitLog>)> {
        let path = self.dir.join("commits.log");
        let io = |e| CoordinatorError::io(path.display().to_string(), e);
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io)?;
        let mut committed = Vec::new();
        for rec in buf.chunks(RECORD_LEN) {
            if rec.len() < RECORD_LEN {
                break; // a torn tail: never acknowledged
            }
            let xid = u64::from_le_bytes(rec[0..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes"));
            let magic = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
            if magic == RECORD_MAGIC && crc == crc32c::crc32c(&rec[0..8]) {
                committed.push(xid);
            } else {
                warn!(path = %path.display(), "skipping a torn commit record");
            }
        }
        Ok((committed, Box::new(FileCommitLog { file: f, path })))
    }

    fn describe(&self, doc: Doc) -> String {
        self.path(doc).display().to_string()
    }
}

struct FileCommitLog {
    file: File,
    path: PathBuf,
}

impl CommitLog for FileCommitLog {
    fn append(&mut self, xid: Xid) -> Result<()> {
        let mut rec = [0u8; RECORD_LEN];
        rec[0..8].copy_from_slice(&xid.to_le_bytes());
        rec[8..12].copy_from_slice(&crc32c::crc32c(&xid.to_le_bytes()).to_le_bytes());
        rec[12..16].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| CoordinatorError::io(self.path.display().to_string(), e))
    }
}

/// Replace `path` with `bytes` so a crash leaves either the old or the new file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |e| CoordinatorError::io(path.display().to_string(), e);
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_replace_and_commit_records_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let m = FileMeta::open(dir.path()).unwrap();
        assert_eq!(m.read(Doc::Map).unwrap(), None);
        m.write(Doc::Map, b"one").unwrap();
        m.write(Doc::Map, b"two").unwrap();
        assert_eq!(m.read(Doc::Map).unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(m.read(Doc::Catalog).unwrap(), None);

        let (none, mut log) = m.open_commit_log().unwrap();
        assert!(none.is_empty());
        log.append(5).unwrap();
        log.append(9).unwrap();
        drop(log);
        // A torn record at the end (a crash mid-append) is not a commit.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("commits.log"))
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let (committed, _) = m.open_commit_log().unwrap();
        assert_eq!(committed, vec![5, 9]);
    }
}
