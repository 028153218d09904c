//! The I/O trait every disk access goes through, a real file implementation
//! and an in-memory implementation that can simulate a crash.
//!
//! Nothing above this module touches a file directly: that is what lets a test
//! build exactly the image a crash would leave (see [`MemDevice`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

use crate::{EngineError, Result};

/// Positional I/O on one disk image.
///
/// What an implementer must guarantee:
/// - `read_at`/`write_at` transfer the whole buffer or fail (no short I/O).
/// - Writes are persisted in the order they are issued; when `sync` returns,
///   every write issued before it is durable. The commit protocol relies on
///   nothing stronger than this (see docs/disk-format.md, "Assumptions").
/// - A write may be torn by a crash: any prefix of it may be persisted.
pub trait BlockDevice: Send + Sync {
    /// Fill `buf` from `offset`. Reading past the end is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// [`BlockDevice::write_at`] past the page cache where the device can
    /// (direct I/O): for bulk data nobody reads back soon (a slice copy),
    /// so each byte is not copied once more into the cache and the cache
    /// keeps what queries read. The caller keeps `offset`, `buf.len()` and
    /// `buf`'s address multiples of [`DIRECT_ALIGN`]. Durable only after
    /// `sync`, like any write. The default is `write_at`.
    fn write_direct(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_at(offset, buf)
    }
    /// `len` bytes from `offset` in a new buffer: [`BlockDevice::read_at`]
    /// without zeroing the buffer first (a file reads straight into it).
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
    /// A hint: `len` bytes at `offset` will be read soon; start reading them
    /// into the cache now, without waiting (a slice copy's source reads its
    /// blocks in order, from extents that are not next to each other).
    /// Promises nothing; the default does nothing.
    fn read_ahead(&self, _offset: u64, _len: u64) {}
    /// Make every write issued so far durable.
    fn sync(&self) -> Result<()>;
    /// A hint: start writing `len` bytes at `offset` back to the medium now,
    /// without waiting, so a later `sync` has less left to do. Promises
    /// nothing; the default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) {}
    /// Size of the image in bytes.
    fn len(&self) -> Result<u64>;
    /// Whether the image has no bytes at all.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// A name for error messages (the file path).
    fn name(&self) -> &str;
}

/// What offsets, lengths and buffer addresses of
/// [`BlockDevice::write_direct`] are multiples of.
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer whose first byte is aligned to [`DIRECT_ALIGN`], for
/// [`BlockDevice::write_direct`]. It grows as needed (staying aligned).
pub struct AlignedBuf {
    raw: Vec<u8>,
    /// Index in `raw` of the first (aligned) byte.
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> AlignedBuf {
        let raw = vec![0u8; capacity + DIRECT_ALIGN];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes held, from the aligned start.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The bytes held, from the aligned start, to change in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    fn reserve(&mut self, len: usize) {
        if len > self.capacity() {
            let mut bigger = AlignedBuf::with_capacity(len.max(2 * self.capacity()));
            bigger.raw[bigger.start..bigger.start + self.len].copy_from_slice(self.as_slice());
            bigger.len = self.len;
            *self = bigger;
        }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.reserve(end);
        self.raw[self.start + self.len..self.start + end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Zero bytes up to `len` in all (no change if it holds as many).
    pub fn pad_to(&mut self, len: usize) {
        if len > self.len {
            self.reserve(len);
            self.raw[self.start + self.len..self.start + len].fill(0);
            self.len = len;
        }
    }

    /// Drop the first `n` bytes (at most all), moving the rest to the start.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        let (from, to) = (self.start + n, self.start + self.len);
        self.raw.copy_within(from..to, self.start);
        self.len -= n;
    }
}

/// A disk image in a regular (sparse) file, accessed with pread/pwrite.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    name: String,
    /// The same file opened for direct I/O, on first use (None: the file
    /// system refused it; direct writes then go through the cache).
    direct: OnceLock<Option<File>>,
}

impl FileDevice {
    /// Create a new image of `size` bytes, its blocks allocated up front
    /// (so no write into it can find the host file system full). Fails if
    /// `path` exists; a host file system without `size` bytes free fails
    /// it with ENOSPC, naming the sizes, and leaves no file behind. The
    /// parent directory is synced so the file itself survives a crash.
    pub fn create(path: &Path, size: u64) -> Result<FileDevice> {
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| EngineError::io(&name, e))?;
        let made = file
            .set_len(size)
            .map_err(|e| EngineError::io(&name, e))
            .and_then(|_| allocate_up_front(&file, path, size))
            .and_then(|_| file.sync_all().map_err(|e| EngineError::io(&name, e)));
        if let Err(e) = made {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        if let Some(parent) = path.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            // Best effort on file systems that refuse to open directories.
            if let Ok(dir) = File::open(parent) {
                dir.sync_all()
                    .map_err(|e| EngineError::io(parent.display().to_string(), e))?;
            }
        }
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            name,
            direct: OnceLock::new(),
        })
    }

    /// Open an existing image, read-write or read-only.
    pub fn open(path: &Path, writable: bool) -> Result<FileDevice> {
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| EngineError::io(&name, e))?;
        let meta = file.metadata().map_err(|e| EngineError::io(&name, e))?;
        if writable && meta.is_file() {
            // An image made sparse (by an older build, or copied) gets its
            // holes allocated now; if the host lacks the space it still
            // opens, and a write that finds none fails with "disk full".
            // (A block device has no holes.)
            if let Err(e) = allocate_up_front(&file, path, meta.len()) {
                tracing::warn!(path = %name, error = %e, "could not allocate the image up front");
            }
        }
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            name,
            direct: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Allocate every block of `file`'s first `size` bytes (posix_fallocate:
/// holes get blocks, data stays). A file system that cannot (no fallocate,
/// EOPNOTSUPP) leaves the file sparse; no space is ENOSPC, its message
/// naming the image's size and the space free.
fn allocate_up_front(file: &File, path: &Path, size: u64) -> Result<()> {
    let Ok(len) = libc::off_t::try_from(size) else {
        return Err(EngineError::InvalidRequest(format!(
            "{}: image size {size} is too large",
            path.display()
        )));
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate only reads its integer arguments; the fd is open.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL => {
            tracing::warn!(path = %path.display(), "the file system cannot allocate the image up front; it stays sparse");
            Ok(())
        }
        rc => {
            let free = free_bytes(path).map_or_else(|| "unknown".to_string(), |f| f.to_string());
            Err(EngineError::io(
                format!(
                    "{} (allocating its {size} bytes up front; {free} bytes free on its file system)",
                    path.display()
                ),
                std::io::Error::from_raw_os_error(rc),
            ))
        }
    }
}

/// Bytes free to unprivileged users on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl BlockDevice for FileDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| EngineError::io(&self.name, e))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| EngineError::io(&self.name, e))
    }

    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let Ok(at) = libc::off_t::try_from(at) else {
                return Err(EngineError::io(
                    &self.name,
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ));
            };
            let spare = buf.spare_capacity_mut();
            // SAFETY: pread writes at most `spare.len()` bytes into the
            // vector's unused capacity, which `spare` spans; the fd is open
            // while `self.file` lives.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    at,
                )
            };
            match n {
                n if n > 0 => {
                    // SAFETY: pread initialized the first `n` bytes of the
                    // spare capacity (n <= spare.len()).
                    unsafe { buf.set_len(buf.len() + n as usize) };
                }
                0 => {
                    return Err(EngineError::io(
                        &self.name,
                        std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    ))
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(EngineError::io(&self.name, e));
                    }
                }
            }
        }
        Ok(buf)
    }

    #[cfg(target_os = "linux")]
    fn read_ahead(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is
        // open while `self.file` lives. A hint: its result is ignored.
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }

    fn write_direct(&self, offset: u64, buf: &[u8]) -> Result<()> {
        debug_assert!(
            offset.is_multiple_of(DIRECT_ALIGN as u64)
                && buf.len().is_multiple_of(DIRECT_ALIGN)
                && (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN),
            "unaligned direct write"
        );
        let direct = self.direct.get_or_init(|| {
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&self.path)
                    .ok()
            }
            #[cfg(not(target_os = "linux"))]
            None
        });
        match direct {
            Some(f) => match f.write_all_at(buf, offset) {
                // A file system that takes O_DIRECT at open but not this
                // alignment: the cache it is.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.write_at(offset, buf),
                r => r.map_err(|e| EngineError::io(&self.name, e)),
            },
            None => self.write_at(offset, buf),
        }
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| EngineError::io(format!("{}{}", self.name, crate::error::FSYNC), e))
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range only reads its integer arguments; the fd
        // is open for as long as `self.file` lives. Its result is ignored:
        // it is a hint, and `sync` alone makes writes durable.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    fn len(&self) -> Result<u64> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| EngineError::io(&self.name, e))?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        // A block device's metadata says 0 bytes: its end says how many.
        use std::io::Seek;
        (&self.file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| EngineError::io(&self.name, e))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// When a [`MemDevice`] "loses power".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashPoint {
    /// Writes numbered `1..=after_writes` (counting every write since the device
    /// was made) persist; later ones do not.
    pub after_writes: u64,
    /// If set, the first `torn_prefix` bytes of write `after_writes + 1` persist
    /// (a torn write).
    pub torn_prefix: Option<usize>,
}

struct MemState {
    /// What the running process sees (its page cache).
    live: Vec<u8>,
    /// What survives the simulated crash.
    durable: Vec<u8>,
    writes: u64,
    crash: Option<CrashPoint>,
    fail_writes: bool,
    /// Ranges whose reads fail (bad sectors) until written over.
    unreadable: Vec<(u64, u64)>,
}

/// An in-memory image for tests. It keeps two copies: the one the process
/// reads back, and the one a crash would leave on the media. Arm a
/// [`CrashPoint`] to stop persisting after the N-th write (optionally tearing
/// the next one), then reopen [`MemDevice::durable_image`].
pub struct MemDevice {
    state: Mutex<MemState>,
    name: String,
}

impl MemDevice {
    pub fn new(size: u64) -> MemDevice {
        Self::from_image(vec![0; size as usize])
    }

    pub fn from_image(image: Vec<u8>) -> MemDevice {
        MemDevice {
            state: Mutex::new(MemState {
                live: image.clone(),
                durable: image,
                writes: 0,
                crash: None,
                fail_writes: false,
                unreadable: Vec::new(),
            }),
            name: "mem".to_string(),
        }
    }

    /// Number of writes issued so far.
    pub fn writes(&self) -> u64 {
        self.state.lock().writes
    }

    pub fn set_crash(&self, crash: Option<CrashPoint>) {
        self.state.lock().crash = crash;
    }

    /// Make every later write fail with an I/O error (a dead disk).
    pub fn set_fail_writes(&self, fail: bool) {
        self.state.lock().fail_writes = fail;
    }

    /// Make reads of `len` bytes at `offset` fail with an I/O error until
    /// they are written over (a sector the drive cannot read; a write
    /// remaps it).
    pub fn set_unreadable(&self, offset: u64, len: u64) {
        self.state.lock().unreadable.push((offset, offset + len));
    }

    /// The bytes a crash at the armed point would leave.
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// Flip bits of one byte in both copies (a bad sector).
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let mut s = self.state.lock();
        s.live[offset as usize] ^= xor;
        s.durable[offset as usize] ^= xor;
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.state.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.checked_add(buf.len()).filter(|&e| e <= s.live.len());
        let Some(end) = end else {
            return Err(EngineError::io(
                &self.name,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end"),
            ));
        };
        if s.unreadable
            .iter()
            .any(|&(lo, hi)| (start as u64) < hi && (end as u64) > lo)
        {
            return Err(EngineError::io(
                &self.name,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        buf.copy_from_slice(&s.live[start..end]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let mut s = self.state.lock();
        if s.fail_writes {
            return Err(EngineError::io(
                &self.name,
                std::io::Error::other("injected write failure"),
            ));
        }
        let start = offset as usize;
        let end = start + buf.len();
        if end > s.live.len() {
            return Err(EngineError::io(
                &self.name,
                std::io::Error::other("write past end"),
            ));
        }
        s.unreadable
            .retain(|&(lo, hi)| !(lo >= start as u64 && hi <= end as u64));
        s.writes += 1;
        let n = s.writes;
        s.live[start..end].copy_from_slice(buf);
        let persisted = match s.crash {
            None => buf.len(),
            Some(c) if n <= c.after_writes => buf.len(),
            Some(c) if n == c.after_writes + 1 => c.torn_prefix.unwrap_or(0).min(buf.len()),
            Some(_) => 0,
        };
        s.durable[start..start + persisted].copy_from_slice(&buf[..persisted]);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.state.lock().live.len() as u64)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A new image has all its blocks (not a sparse file), so a write into
    /// it never finds the host file system full; an image made sparse
    /// gets its holes filled when it is opened for writing.
    #[test]
    fn images_are_allocated_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let size = 8 << 20;
        drop(FileDevice::create(&path, size).unwrap());
        let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&path) >= size, "{} of {size}", allocated(&path));
        let sparse = dir.path().join("sparse.img");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(size)
            .unwrap();
        assert!(
            allocated(&sparse) < size,
            "the file system makes sparse files"
        );
        drop(FileDevice::open(&sparse, false).unwrap());
        assert!(allocated(&sparse) < size, "read-only opens change nothing");
        drop(FileDevice::open(&sparse, true).unwrap());
        assert!(allocated(&sparse) >= size);
        assert!(matches!(
            FileDevice::create(&path, size),
            Err(EngineError::Io { .. })
        ));
    }
}
