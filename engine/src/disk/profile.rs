//! Zone profiling at `disk init` (claims 13-14): how fast each zone of a
//! device's data area reads, so the layout can give the primary segment the
//! fastest zones.
//!
//! It reads a sample from the middle of every zone past the page cache
//! (O_DIRECT; where the file system refuses it, the cache is dropped for the
//! sample first), several rounds, and keeps each zone's best time: the
//! machine's other work can only slow a read, never speed it up. While the
//! zones still look uneven it reads up to as many rounds again, so a busy
//! machine does not make a flat file or SSD look zoned. It owns
//! nothing on disk and must never write to the device.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::device::AlignedBuf;
use super::superblock::{Superblock, ZoneProfile, MAX_PROFILE_ZONES};
use crate::{EngineError, Result};

/// How a profile is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileOptions {
    /// Zones of the data area (at most [`MAX_PROFILE_ZONES`]).
    pub zones: usize,
    /// Bytes read per zone and round (a multiple of 4 KiB).
    pub sample: u64,
    /// Rounds (up to twice as many while the zones look uneven); each zone
    /// keeps its best.
    pub rounds: usize,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            zones: 16,
            sample: 4 << 20,
            rounds: 3,
        }
    }
}

/// Read size of one request while sampling.
const CHUNK: usize = 1 << 20;

/// Measure the read speed of every zone `Superblock::layout_zoned` would cut
/// the data area of an image of `image_size` bytes into. `progress` is told
/// each zone's speed as it is measured (zone, KiB/s).
pub fn measure(
    path: &Path,
    image_size: u64,
    extent_size: u64,
    meta_slot_size: u64,
    opts: ProfileOptions,
    mut progress: impl FnMut(usize, u32),
) -> Result<ZoneProfile> {
    let name = path.display().to_string();
    if opts.zones == 0 || opts.zones > MAX_PROFILE_ZONES || opts.rounds == 0 {
        return Err(EngineError::InvalidRequest(format!(
            "a profile has 1..={MAX_PROFILE_ZONES} zones and at least one round"
        )));
    }
    let bounds = Superblock::zone_bounds(image_size, extent_size, meta_slot_size, opts.zones)?;
    let (file, direct) = open_direct(path).map_err(|e| EngineError::io(&name, e))?;
    let sample = opts.sample.max(4096) / 4096 * 4096;
    let mut buf = AlignedBuf::with_capacity(CHUNK);
    buf.pad_to(CHUNK);
    let mut best = vec![f64::INFINITY; bounds.len()];
    // Up to as many rounds again while the zones look uneven: a flat
    // device's zones converge on one speed (its best), slow zones stay slow.
    for round in 0..opts.rounds * 2 {
        if round >= opts.rounds && speeds(&bounds, &best, sample).is_flat() {
            break;
        }
        for (i, &(offset, length)) in bounds.iter().enumerate() {
            let len = sample.min(length);
            let start = (offset + (length - len) / 2) / 4096 * 4096;
            if !direct {
                drop_cache(&file, start, len);
            }
            let t = Instant::now();
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                file.read_exact_at(&mut buf.as_mut_slice()[..n], start + done)
                    .map_err(|e| EngineError::io(&name, e))?;
                done += n as u64;
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64().max(1e-6));
        }
    }
    let profile = speeds(&bounds, &best, sample);
    for (i, &speed) in profile.read_kib_s.iter().enumerate() {
        progress(i, speed);
    }
    Ok(profile)
}

/// The zones' speeds (KiB/s) from their best times.
fn speeds(bounds: &[(u64, u64)], best: &[f64], sample: u64) -> ZoneProfile {
    let read_kib_s = bounds
        .iter()
        .zip(best)
        .map(|(&(_, length), &secs)| {
            let kib = sample.min(length) as f64 / 1024.0;
            (kib / secs).clamp(1.0, u32::MAX as f64) as u32
        })
        .collect();
    ZoneProfile { read_kib_s }
}

/// The file for reading past the cache, and whether O_DIRECT was taken.
fn open_direct(path: &Path) -> std::io::Result<(File, bool)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            // Some file systems take the flag at open and refuse the read.
            let mut probe = AlignedBuf::with_capacity(4096);
            probe.pad_to(4096);
            if f.read_exact_at(probe.as_mut_slice(), 0).is_ok() {
                return Ok((f, true));
            }
        }
    }
    Ok((File::open(path)?, false))
}

/// Ask the kernel to forget its cached copy of a range (best effort).
fn drop_cache(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), o, l, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_measured_zone_by_zone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&vec![7u8; 64 << 20], 0).unwrap();
        let mut seen = Vec::new();
        let p = measure(
            &path,
            64 << 20,
            1 << 20,
            4096,
            ProfileOptions {
                zones: 4,
                sample: 1 << 20,
                rounds: 1,
            },
            |z, s| seen.push((z, s)),
        )
        .unwrap();
        assert_eq!(p.read_kib_s.len(), 4);
        assert!(p.read_kib_s.iter().all(|&s| s > 0));
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        let bad = ProfileOptions {
            zones: MAX_PROFILE_ZONES + 1,
            ..ProfileOptions::default()
        };
        assert!(measure(&path, 64 << 20, 1 << 20, 4096, bad, |_, _| {}).is_err());
    }
}
