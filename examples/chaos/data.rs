//! Random data in the project's volumes and bind mount (sizes, counts, modes, owners, symlinks
//! and empty directories from the run's seed), and random changes to it between backups.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::project::Project;
use crate::rng::Rng;

/// The data roots of a project: (tree name, host path).
pub fn roots(p: &Project) -> Result<Vec<(&'static str, PathBuf)>> {
    Ok(vec![
        ("dbdata", p.volume_path("dbdata")?),
        ("cache", p.volume_path("cache")?),
        ("uploads", p.dir.join("uploads")),
    ])
}

/// Writes about `total` bytes in random files under `chaos/` of each root.
pub fn generate(p: &Project, seed: u64, total: u64) -> Result<String> {
    let roots = roots(p)?;
    let mut r = Rng::new(seed, "data");
    let files = r.range(3, 300) as usize;
    // Skewed weights: a few big files, many small ones.
    let weights: Vec<f64> = (0..files).map(|_| r.unit().powi(3) + 1e-4).collect();
    let sum: f64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let (_, root) = &roots[match r.below(10) {
            0..=4 => 0,
            5 | 6 => 1,
            _ => 2,
        }];
        let dir = root.join("chaos").join(format!("d{}", r.below(6)));
        let dir = if r.chance(0.3) { dir.join(format!("e{}", r.below(3))) } else { dir };
        let size = (total as f64 * w / sum) as usize;
        let ext = if r.chance(0.6) { "bin" } else { "txt" };
        write_file(&mut r, &dir.join(format!("f{i}.{ext}")), size)?;
    }
    // The shapes a backup must keep: symlinks, empty directories.
    for (name, root) in &roots {
        let base = root.join("chaos");
        std::fs::create_dir_all(base.join("empty"))?;
        let _ = std::os::unix::fs::symlink("d0", base.join(format!("link-{name}")));
    }
    Ok(format!("{files} files, {:.1} MiB", total as f64 / f64::from(1 << 20)))
}

/// Changes the data at random: files rewritten, removed, added, re-moded; sometimes `.env`.
/// Returns what it did, for the log.
pub fn mutate(p: &Project, seed: u64, round: usize) -> Result<String> {
    let roots = roots(p)?;
    let mut r = Rng::new(seed, &format!("mutate-{round}"));
    let mut done = Vec::new();
    let n = r.range(1, 3) as usize;
    let chosen: Vec<&(&str, PathBuf)> = roots.iter().filter(|_| r.chance(0.6)).take(n).collect();
    for (name, root) in chosen {
        let files = files_under(&root.join("chaos"));
        for _ in 0..r.range(1, 4) {
            match (r.below(4), files.is_empty()) {
                (0, false) => {
                    let f = r.pick(&files);
                    let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0).max(1);
                    write_file(&mut r, f, len)?;
                    done.push(format!("rewrote {name}:{}", crate::project::rel(root, f)));
                }
                (1, false) => {
                    let f = r.pick(&files);
                    let _ = std::fs::remove_file(f);
                    done.push(format!("removed {name}:{}", crate::project::rel(root, f)));
                }
                (2, false) => {
                    let f = r.pick(&files);
                    let _ = std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o640));
                    done.push(format!("chmod 640 {name}:{}", crate::project::rel(root, f)));
                }
                _ => {
                    let f = root.join("chaos").join(format!("new-{round}-{}.bin", r.below(1000)));
                    let size = r.range(0, 2 << 20) as usize;
                    write_file(&mut r, &f, size)?;
                    done.push(format!("added {name}:{}", crate::project::rel(root, &f)));
                }
            }
        }
    }
    if r.chance(0.3) || done.is_empty() {
        let env = p.dir.join(".env");
        let text = std::fs::read_to_string(&env).with_context(|| format!("reading {}", env.display()))?;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("APP_TITLE=") { format!("APP_TITLE=chaos {seed}-{round}") } else { l.into() }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&env, text + "\n")?;
        done.push("APP_TITLE changed in .env".into());
    }
    Ok(done.join(", "))
}

/// Random bytes or compressible text, a random mode and owner.
fn write_file(r: &mut Rng, path: &Path, size: usize) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))?;
    let mut data = vec![0u8; size];
    if r.chance(0.6) {
        r.fill(&mut data);
    } else {
        let words = [&b"order "[..], b"user ", b"42 ", b"balance ", b"ok\n", b"|"];
        let mut i = 0;
        while i < size {
            let w = r.pick(&words);
            let n = w.len().min(size - i);
            data[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
    }
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    let mode = *r.pick(&[0o644, 0o644, 0o600, 0o640, 0o755]);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let owner = *r.pick(&[None, None, Some(1000), Some(999)]);
    if let Some(id) = owner {
        std::os::unix::fs::lchown(path, Some(id), Some(id))?;
    }
    Ok(())
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}
