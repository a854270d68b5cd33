//! Checkpoint directories: one per step, complete only once its `DONE` marker exists.
//!
//! `<workdir>/checkpoints/step-<12 digits>/` holds the files of one checkpoint. They are written
//! first, each fsynced; `DONE` is written (and fsynced) last, so a crash mid-write leaves a
//! directory that every loader ignores. After a commit, only the newest `keep` complete
//! checkpoints remain. What goes inside is the caller's business (see `trainer.rs`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

const DONE: &str = "DONE";

#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// Opens (creating it if needed) `<workdir>/checkpoints`.
    pub fn open(workdir: &Path, keep: usize) -> std::io::Result<CheckpointDir> {
        let root = workdir.join("checkpoints");
        fs::create_dir_all(&root)?;
        Ok(CheckpointDir { root, keep: keep.max(1) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_for(&self, step: u64) -> PathBuf {
        self.root.join(format!("step-{step:012}"))
    }

    /// Complete checkpoints, oldest first.
    pub fn complete(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let step = path.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()?;
                path.join(DONE).is_file().then_some((step, path))
            })
            .collect();
        out.sort();
        out
    }

    /// Directories that exist without a `DONE` (interrupted writes), for the log.
    pub fn incomplete(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !p.join(DONE).is_file())
            .collect()
    }

    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        self.complete().pop()
    }

    /// An empty directory to write checkpoint `step` into (any leftover of an interrupted write
    /// of the same step is removed first).
    pub fn begin(&self, step: u64) -> std::io::Result<PathBuf> {
        let dir = self.dir_for(step);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Marks `dir` complete (fsyncing its files first), then prunes old checkpoints.
    pub fn commit(&self, dir: &Path) -> std::io::Result<()> {
        self.mark_done(dir)?;
        let complete = self.complete();
        if complete.len() > self.keep {
            for (_, old) in &complete[..complete.len() - self.keep] {
                fs::remove_dir_all(old)?;
            }
        }
        Ok(())
    }

    /// The number of newest checkpoints always kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Removes checkpoint `step` (a publisher that decided its fate with the registry).
    pub fn remove(&self, step: u64) -> std::io::Result<()> {
        fs::remove_dir_all(self.dir_for(step))
    }

    /// Marks `dir` complete (fsyncing its files first), pruning nothing.
    pub fn mark_done(&self, dir: &Path) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_file() {
                File::open(&path)?.sync_all()?;
            }
        }
        let mut done = File::create(dir.join(DONE))?;
        done.write_all(b"complete\n")?;
        done.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_done_directories_count_and_old_ones_are_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let c = CheckpointDir::open(tmp.path(), 3).unwrap();
        assert!(c.latest().is_none());
        for step in [10, 20, 30, 40] {
            let d = c.begin(step).unwrap();
            fs::write(d.join("model.mpk"), b"x").unwrap();
            c.commit(&d).unwrap();
        }
        assert_eq!(c.complete().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [20, 30, 40]);
        // An interrupted write: files but no DONE. It is ignored.
        let d = c.begin(50).unwrap();
        fs::write(d.join("model.mpk"), b"half").unwrap();
        assert_eq!(c.latest().unwrap().0, 40);
        assert_eq!(c.incomplete(), std::slice::from_ref(&d));
        // Writing the same step again starts from an empty directory.
        let d2 = c.begin(50).unwrap();
        assert_eq!(d, d2);
        assert!(fs::read_dir(&d2).unwrap().next().is_none());
        c.commit(&d2).unwrap();
        assert_eq!(c.latest().unwrap().0, 50);
        assert_eq!(c.complete().len(), 3);
    }
}
