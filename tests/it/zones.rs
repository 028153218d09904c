//! Placement by speed (issue 18, claims 13-15): `slicedb disk init` profiles
//! a device whose zones are slow on purpose (a loop block device over a
//! FUSE file, tests/zones/slowdisk.py, that holds back reads of its first
//! and last zones), gives the primary segment the fast zones and temp the
//! slowest; a cluster then keeps its primary copies there. `dynamic`: the
//! primary allocates from the fast end and the mirror from the slow end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::harness::{self, exec, query, Slicedb, BIN};

const MIB: u64 = 1 << 20;
/// The slowed device: 512 MiB, its first 40 MiB and its last 164 MiB slow.
const SIZE: u64 = 512 * MIB;
const SLOW: [(u64, u64); 2] = [(0, 40 * MIB), (348 * MIB, 512 * MIB)];

/// The mounted slow disk and, when the kernel gave one, the loop block
/// device over it; both undone on drop (also when the test fails).
struct SlowDisk {
    mount: PathBuf,
    fuse: Child,
    loop_dev: Option<String>,
}

impl SlowDisk {
    fn start(dir: &Path) -> Result<SlowDisk> {
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zones/slowdisk.py");
        let mut args = vec![
            script.display().to_string(),
            dir.join("backing").display().to_string(),
            mount.display().to_string(),
            "--size".into(),
            SIZE.to_string(),
        ];
        for (a, b) in SLOW {
            args.extend(["--slow".into(), format!("{a}:{b}")]);
        }
        let fuse = Command::new("python3")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("slowdisk.log"))?)
            .spawn()
            .context("starting tests/zones/slowdisk.py (needs fusepy and /dev/fuse)")?;
        let mut disk = SlowDisk {
            mount,
            fuse,
            loop_dev: None,
        };
        let file = disk.mount.join("disk.img");
        let t0 = Instant::now();
        while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) != SIZE {
            if let Ok(Some(status)) = disk.fuse.try_wait() {
                bail!(
                    "slowdisk.py exited with {status}: {}",
                    std::fs::read_to_string(dir.join("slowdisk.log")).unwrap_or_default()
                );
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "the slow disk was not mounted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A block device over it where the kernel has loop devices.
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                disk.loop_dev = Some(String::from_utf8_lossy(&o.stdout).trim().to_string());
            }
            o => eprintln!("[zones] no loop device ({o:?}): using the FUSE file itself"),
        }
        Ok(disk)
    }

    /// What the database is given: the block device, else the file.
    fn device(&self) -> String {
        match &self.loop_dev {
            Some(d) => d.clone(),
            None => self.mount.join("disk.img").display().to_string(),
        }
    }
}

impl Drop for SlowDisk {
    fn drop(&mut self) {
        if let Some(d) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.fuse.kill();
        let _ = self.fuse.wait();
    }
}

fn slicedb(args: &[&str]) -> Result<String> {
    let o = Command::new(BIN).args(args).output()?;
    ensure!(
        o.status.success(),
        "slicedb {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    ))
}

/// `slicedb disk init` of node 0's disk 0 of a `slicedb local` cluster.
fn init_node0(image: &str, extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "disk",
        "init",
        image,
        "--cluster-id",
        "local",
        "--node",
        "0",
        "--disk",
        "0",
    ];
    args.extend(extra);
    slicedb(&args)
}

fn inspect(image: &str) -> Result<Value> {
    Ok(serde_json::from_str(&slicedb(&[
        "disk", "inspect", image, "--json",
    ])?)?)
}

fn zones(report: &Value) -> Result<Vec<Value>> {
    report["zones"]
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("no zones in {report}"))
}

fn num(z: &Value, key: &str) -> f64 {
    z[key].as_f64().unwrap_or(-1.0)
}

/// Load a table on a 2-node local cluster whose node 0 disk 0 is `image`
/// (already initialized), check the answer, stop, start again, check again.
async fn load_and_check(env: &harness::TestEnv, data: &Path) -> Result<()> {
    const TOTALS: &str = "SELECT count(*), sum(k), sum(length(v)) FROM z";
    let want = vec![vec![
        Some("60000".to_string()),
        Some("1800030000".to_string()),
        Some("3000000".to_string()),
    ]];
    let db = Slicedb::local(env, 2, data).await?;
    let c = db.connect().await?;
    exec(&c, "CREATE TABLE z (k bigint, v text) DISTRIBUTE ON (k)").await?;
    exec(
        &c,
        "INSERT INTO z SELECT i, repeat(chr(97 + CAST(i % 26 AS INT)), 50) FROM generate_series(1, 60000) AS g(i)",
    )
    .await?;
    ensure!(query(&c, TOTALS).await? == want, "answer after the load");
    drop(c);
    db.kill();
    let db = Slicedb::local(env, 2, data).await?;
    let c = db.connect().await?;
    let got = query(&c, TOTALS).await?;
    ensure!(got == want, "answer after a restart: {got:?}");
    drop(c);
    db.kill();
    Ok(())
}

#[test]
fn a_profiled_device_keeps_the_primary_on_its_fast_zones() {
    harness::run("zones_static", |env| async move {
        let disk = SlowDisk::start(env.path())?;
        let dev = disk.device();
        let out = init_node0(&dev, &["--existing", "--profile-zones", "16"])?;
        eprintln!("[zones] {out}");
        let data = env.path().join("data");
        std::fs::create_dir_all(data.join("node-0"))?;
        std::os::unix::fs::symlink(&dev, data.join("node-0").join("disk-0.img"))?;
        load_and_check(&env, &data).await?;

        let report = inspect(&dev)?;
        ensure!(
            report["layout_profile"] == "static",
            "layout: {}",
            report["layout_profile"]
        );
        let zs = zones(&report)?;
        ensure!(zs.len() >= 16, "16 profiled zones: {zs:?}");
        let slow = |z: &Value| {
            let (a, b) = (
                num(z, "offset") as u64,
                (num(z, "offset") + num(z, "length")) as u64,
            );
            SLOW.iter().any(|&(s, e)| a >= s && b <= e)
        };
        let fast_min = zs
            .iter()
            .filter(|z| !slow(z))
            .map(|z| num(z, "read_mib_s"))
            .fold(f64::MAX, f64::min);
        let slow_max = zs
            .iter()
            .filter(|z| slow(z))
            .map(|z| num(z, "read_mib_s"))
            .fold(0.0, f64::max);
        ensure!(
            slow_max > 0.0 && slow_max * 4.0 < fast_min,
            "the profile tells the slow zones ({slow_max:.1} MiB/s at best) from the fast ({fast_min:.1} MiB/s at worst)"
        );
        let mut primary_bytes = 0.0;
        let mut mirror_bytes = 0.0;
        for z in &zs {
            let seg = z["segment"].as_str().unwrap_or("?");
            if seg == "primary" {
                ensure!(!slow(z), "a slow zone went to the primary: {z}");
            }
            if seg == "temp" {
                ensure!(slow(z), "a fast zone went to temp: {z}");
            }
            if num(z, "primary_used") > 0.0 {
                ensure!(
                    seg == "primary" && !slow(z),
                    "primary data outside the fast primary zones: {z}"
                );
            }
            if num(z, "mirror_used") > 0.0 {
                ensure!(seg == "mirror", "mirror data outside the mirror zones: {z}");
            }
            primary_bytes += num(z, "primary_used");
            mirror_bytes += num(z, "mirror_used");
        }
        ensure!(
            primary_bytes > 0.0 && mirror_bytes > 0.0,
            "both copies were written: {zs:?}"
        );
        drop(disk);
        Ok(())
    });
}

#[test]
fn dynamic_layout_takes_primary_from_the_fast_end_and_mirror_from_the_slow_end() {
    harness::run("zones_dynamic", |env| async move {
        let data = env.path().join("data");
        std::fs::create_dir_all(data.join("node-0"))?;
        let image = data.join("node-0").join("disk-0.img").display().to_string();
        // A device whose zones are known: each slower than the one before.
        let speeds: Vec<String> = (0..16).map(|i| (400 - 20 * i).to_string()).collect();
        let speeds = speeds.join(",");
        init_node0(
            &image,
            &[
                "--size",
                "512MiB",
                "--layout",
                "dynamic",
                "--zone-speeds",
                &speeds,
            ],
        )?;
        load_and_check(&env, &data).await?;
        let report = inspect(&image)?;
        ensure!(report["layout_profile"] == "dynamic");
        let extents = report["extents"]
            .as_array()
            .ok_or_else(|| anyhow!("no extents"))?;
        let of = |seg: &str| -> Vec<(u64, u64)> {
            extents
                .iter()
                .filter(|e| e["segment"] == seg)
                .map(|e| {
                    (
                        e["offset"].as_u64().unwrap_or(0),
                        e["length"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        };
        let (p, m) = (of("primary"), of("mirror"));
        ensure!(
            !p.is_empty() && !m.is_empty(),
            "both copies written: {p:?} {m:?}"
        );
        let zs = zones(&report)?;
        let shared: Vec<&Value> = zs
            .iter()
            .filter(|z| z["segment"] == "primary+mirror")
            .collect();
        let first = num(shared[0], "offset") as u64;
        let last = shared
            .last()
            .map(|z| (num(z, "offset") + num(z, "length")) as u64)
            .unwrap_or(0);
        let p_lo = p.iter().map(|e| e.0).min().unwrap_or(0);
        let p_hi = p.iter().map(|e| e.0 + e.1).max().unwrap_or(0);
        let m_lo = m.iter().map(|e| e.0).min().unwrap_or(0);
        let m_hi = m.iter().map(|e| e.0 + e.1).max().unwrap_or(0);
        ensure!(
            p_lo == first,
            "the primary starts at the fast end ({first}): {p:?}"
        );
        ensure!(
            m_hi == last,
            "the mirror starts at the slow end ({last}): {m:?}"
        );
        ensure!(
            p_hi <= m_lo,
            "the two grow toward each other: primary {p:?}, mirror {m:?}"
        );
        // Temp took the slowest zone.
        let temp: Vec<&Value> = zs.iter().filter(|z| z["segment"] == "temp").collect();
        ensure!(
            temp.len() == 1 && num(temp[0], "read_mib_s") <= 100.0,
            "temp: {temp:?}"
        );
        Ok(())
    });
}
