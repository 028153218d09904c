//! `slicedb disk init` / `disk inspect`: the image's segment layout as JSON,
//! and a clean error (no panic) for a file that is not an image.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::harness::{self, BIN};

fn slicedb(args: &[&str]) -> Result<Output> {
    Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .with_context(|| format!("running slicedb {args:?}"))
}

fn show(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A command that must fail cleanly: non-zero exit, a message, no panic.
fn must_fail_cleanly(args: &[&str], what: &str) -> Result<String> {
    let o = slicedb(args)?;
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    ensure!(
        !o.status.success(),
        "{what}: expected a non-zero exit\n{}",
        show(&o)
    );
    ensure!(
        o.status.code().is_some(),
        "{what}: killed by a signal\n{}",
        show(&o)
    );
    ensure!(
        !stderr.contains("panicked"),
        "{what}: panicked instead of a clear error\n{}",
        show(&o)
    );
    ensure!(
        stderr.trim().len() > 10,
        "{what}: no error message on stderr\n{}",
        show(&o)
    );
    Ok(stderr)
}

#[test]
fn disk_init_and_inspect() {
    harness::run("disk_cli", |env| async move {
        let img = env.path().join("disk0.img");
        let o = slicedb(&["disk", "init", p(&img), "--size", "64MiB"])?;
        ensure!(o.status.success(), "disk init failed\n{}", show(&o));
        let len = std::fs::metadata(&img)
            .context("disk init should create the file")?
            .len();
        ensure!(len == 64 << 20, "image should be 64 MiB, is {len} bytes");

        let o = slicedb(&["disk", "inspect", p(&img), "--json"])?;
        ensure!(
            o.status.success(),
            "disk inspect --json failed\n{}",
            show(&o)
        );
        let report: Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("disk inspect --json is not JSON\n{}", show(&o)))?;
        ensure!(
            report["format_version"].is_u64(),
            "format_version missing or not a number: {report:#}"
        );
        let segs = report["segments"]
            .as_array()
            .with_context(|| format!("segments is not a list: {report:#}"))?;
        ensure!(segs.len() == 3, "expected 3 segments: {segs:#?}");
        let mut parsed = Vec::new();
        for s in segs {
            let kind = s["kind"]
                .as_str()
                .with_context(|| format!("segment kind: {s}"))?;
            let offset = s["offset"]
                .as_u64()
                .with_context(|| format!("offset: {s}"))?;
            let length = s["length"]
                .as_u64()
                .with_context(|| format!("length: {s}"))?;
            let used = s["used"].as_u64().with_context(|| format!("used: {s}"))?;
            ensure!(length > 0, "empty segment: {s}");
            ensure!(used <= length, "used > length: {s}");
            ensure!(
                offset + length <= 64 << 20,
                "segment past the end of the 64 MiB image: {s}"
            );
            parsed.push((offset, length, kind.to_string()));
        }
        let mut kinds: Vec<&str> = parsed.iter().map(|s| s.2.as_str()).collect();
        kinds.sort_unstable();
        ensure!(
            kinds == ["mirror", "primary", "temp"],
            "segment kinds should be primary/mirror/temp: {segs:#?}"
        );
        parsed.sort();
        ensure!(
            parsed[0].2 == "primary",
            "the primary segment should come first (lowest offset): {parsed:?}"
        );
        for w in parsed.windows(2) {
            ensure!(w[0].0 + w[0].1 <= w[1].0, "segments overlap: {parsed:?}");
        }

        let o = slicedb(&["disk", "inspect", p(&img)])?;
        ensure!(o.status.success(), "disk inspect failed\n{}", show(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        ensure!(
            text.contains("primary") && text.contains("mirror") && text.contains("temp"),
            "disk inspect (text) should name the segments:\n{text}"
        );

        // Not an image: a text file, and a file of zeros.
        let junk = env.path().join("not-an-image.txt");
        std::fs::write(&junk, "this is not a slicedb disk image\n".repeat(40_000))?;
        let msg = must_fail_cleanly(&["disk", "inspect", p(&junk), "--json"], "text file")?;
        eprintln!("text file: {msg}");
        let zeros = env.path().join("zeros.img");
        std::fs::write(&zeros, vec![0u8; 1 << 20])?;
        must_fail_cleanly(&["disk", "inspect", p(&zeros)], "file of zeros")?;
        let empty = env.path().join("empty.img");
        std::fs::write(&empty, b"")?;
        must_fail_cleanly(&["disk", "inspect", p(&empty)], "empty file")?;
        must_fail_cleanly(
            &["disk", "inspect", p(&env.path().join("missing.img"))],
            "missing file",
        )?;
        Ok(())
    });
}

/// A plain file (written through, so every zone is real data) profiles
/// flat: `disk init --profile-zones` keeps offset order (primary lowest,
/// then mirror, then temp) and `disk inspect` shows the measured zones.
#[test]
fn a_plain_file_profiles_flat_and_keeps_offset_order() {
    harness::run("disk_flat", |env| async move {
        let img = env.path().join("flat.img");
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&img)?);
            let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
            for _ in 0..256 {
                f.write_all(&chunk)?;
            }
            f.into_inner()?.sync_all()?;
        }
        let o = slicedb(&[
            "disk",
            "init",
            p(&img),
            "--existing",
            "--profile-zones",
            "8",
        ])?;
        ensure!(o.status.success(), "disk init failed\n{}", show(&o));
        eprintln!("{}", String::from_utf8_lossy(&o.stderr));
        let o = slicedb(&["disk", "inspect", p(&img), "--json"])?;
        ensure!(o.status.success(), "disk inspect failed\n{}", show(&o));
        let report: Value = serde_json::from_slice(&o.stdout)?;
        ensure!(
            report["layout_profile"] == "flat",
            "a plain file profiles flat: {report:#}"
        );
        let mut zones: Vec<(u64, String, f64)> = report["zones"]
            .as_array()
            .with_context(|| format!("zones: {report:#}"))?
            .iter()
            .map(|z| {
                (
                    z["offset"].as_u64().unwrap_or(0),
                    z["segment"].as_str().unwrap_or("").to_string(),
                    z["read_mib_s"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        ensure!(!zones.is_empty(), "measured zones shown: {report:#}");
        ensure!(
            zones.iter().all(|z| z.2 > 0.0),
            "every zone has its measured speed: {zones:?}"
        );
        zones.sort_by_key(|z| z.0);
        let rank = |s: &str| ["primary", "mirror", "temp"].iter().position(|k| *k == s);
        let order: Vec<Option<usize>> = zones.iter().map(|z| rank(&z.1)).collect();
        ensure!(
            order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] <= w[1]),
            "offset order: primary, then mirror, then temp: {zones:?}"
        );
        ensure!(
            order.first() == Some(&Some(0)) && order.last() == Some(&Some(2)),
            "primary lowest, temp highest: {zones:?}"
        );
        Ok(())
    });
}
