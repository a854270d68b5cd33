//! One report directory: `.npy` arrays, PNG figures, `report.json` and `report.md`, committed
//! atomically.
//!
//! Files are written into `DIR/eval/.partial-<name>-<pid>/`; [`ReportDir::commit`] writes
//! `report.json`, `report.md` and a `DONE` marker, fsyncs, and renames the directory to
//! `DIR/eval/<name>/`. A reader that finds `<name>/DONE` has a complete report; a crash leaves
//! only a `.partial-*` directory, removed by the next evaluator that writes the same name.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use common::npz::NpyArray;

pub const DONE: &str = "DONE";

pub struct ReportDir {
    partial: PathBuf,
    target: PathBuf,
    /// `report.json`'s `arrays`: every array file with its shape and what it holds.
    arrays: serde_json::Map<String, Value>,
    figures: Vec<(String, String)>,
}

impl ReportDir {
    /// Starts the report `name` under `root` (`DIR/eval`).
    pub fn begin(root: &Path, name: &str) -> Result<ReportDir> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        for entry in fs::read_dir(root)?.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if file.starts_with(&format!(".partial-{name}-")) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let partial = root.join(format!(".partial-{name}-{}", std::process::id()));
        fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Ok(ReportDir { partial, target: root.join(name), arrays: Default::default(), figures: Vec::new() })
    }

    /// Where a file of the report is being written (for figures drawn by `plot`).
    pub fn path(&self, relative: &str) -> Result<PathBuf> {
        let path = self.partial.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(path)
    }

    /// Writes `array` to `relative` (a `.npy` path) and records its shape and meaning.
    pub fn array(&mut self, relative: &str, array: &NpyArray, what: &str) -> Result<String> {
        let path = self.path(relative)?;
        let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        array.write_npy(&mut w).and_then(|_| w.flush()).with_context(|| format!("writing {}", path.display()))?;
        self.arrays.insert(relative.to_string(), json!({ "shape": array.shape, "dtype": array.descr(), "what": what }));
        Ok(relative.to_string())
    }

    /// Records a figure already drawn at `relative`, with its one line of interpretation.
    pub fn figure(&mut self, relative: &str, caption: &str) {
        self.figures.push((relative.to_string(), caption.to_string()));
    }

    pub fn figures(&self) -> &[(String, String)] {
        &self.figures
    }

    /// Writes `report.json` (`body` plus the array and figure lists) and `report.md`, then commits
    /// the directory. `body` must hold only finite numbers.
    pub fn commit(mut self, mut body: Value, markdown: &str) -> Result<PathBuf> {
        if let Some(path) = first_non_finite(&body, "") {
            bail!("report.json: {path} is null (a NaN or infinite value?)");
        }
        body["arrays"] = Value::Object(std::mem::take(&mut self.arrays));
        body["figures"] = self.figures.iter().map(|(f, c)| json!({ "file": f, "caption": c })).collect();
        fs::write(self.partial.join("report.json"), serde_json::to_string_pretty(&body)?)?;
        fs::write(self.partial.join("report.md"), markdown)?;
        sync_tree(&self.partial)?;
        let mut done = File::create(self.partial.join(DONE))?;
        done.write_all(b"complete\n")?;
        done.sync_all()?;
        if self.target.exists() {
            fs::remove_dir_all(&self.target).with_context(|| format!("replacing {}", self.target.display()))?;
        }
        fs::rename(&self.partial, &self.target)
            .with_context(|| format!("renaming {} to {}", self.partial.display(), self.target.display()))?;
        if let Some(parent) = self.target.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(self.target.clone())
    }
}

fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// The JSON path of the first null: serde_json turns NaN and infinity into `null`, which a reader
/// would take for a missing value, so a report holds no null at all.
fn first_non_finite(v: &Value, at: &str) -> Option<String> {
    match v {
        Value::Null => Some(at.to_string()),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| first_non_finite(x, &format!("{at}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, x)| first_non_finite(x, &format!("{at}.{k}"))),
        _ => None,
    }
}

/// A finite f64 as JSON, or an error naming it: metrics that are NaN must stop the report, not
/// become `null`.
pub fn finite(name: &str, x: f64) -> Result<Value> {
    if !x.is_finite() {
        bail!("{name} is {x}");
    }
    Ok(json!(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_appears_complete_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("eval");
        let mut r = ReportDir::begin(&root, "000010").unwrap();
        r.array("returns/a.npy", &NpyArray::f64(vec![2], vec![1.0, 2.0]), "two returns").unwrap();
        r.figure("cdf.png", "CDFs");
        assert!(!root.join("000010").exists(), "nothing is visible before the commit");
        let dir = r.commit(json!({ "w1": 0.5 }), "# report\n").unwrap();
        assert!(dir.join(DONE).is_file() && dir.join("returns/a.npy").is_file());
        let body: Value = serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(body["arrays"]["returns/a.npy"]["shape"], json!([2]));
        assert_eq!(body["figures"][0]["file"], "cdf.png");
        // A NaN anywhere refuses the commit.
        let r = ReportDir::begin(&root, "000020").unwrap();
        let err = r.commit(json!({ "pairs": [{ "ks": f64::NAN }] }), "").unwrap_err().to_string();
        assert!(err.contains(".pairs[0].ks"), "{err}");
        assert!(!root.join("000020").exists());
    }
}
