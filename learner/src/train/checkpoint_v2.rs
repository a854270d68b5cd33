//! Checkpoint format v2: one directory per version, readable without this program.
//!
//! ```text
//! step-000000010000/
//!   <name>.npy        every parameter, Adam moment and spectral-norm vector, f32, named
//!                     `generator.0.weight`, `adam.generator.m1.0.weight`, `discriminator.3.u`, …
//!   state.json        {"format_version": 2, "engine", "step", "rng_counter", "state_dim", Adam times}
//!   config.toml       the whole experiment document
//!   meta.json         the dataset's `meta` (env id, cells, seed), when it has one
//!   manifest.json     {"files": {"<file>": "<sha256 hex>", …}}
//!   DONE              written last (see `checkpoint.rs`)
//! ```
//!
//! [`read`] checks every file of the manifest against its SHA-256 before anything is used, so a
//! flipped byte makes the whole checkpoint unreadable (and the run loop falls back to an older one)
//! instead of loading a corrupted parameter. The draws of iteration k are a function of k
//! (`train::draws`), so the RNG counter is the step; it is stored so that a reader need not know that.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use common::npz::NpyArray;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT_VERSION: u64 = 2;

/// One named f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Array {
        Array { name: name.into(), shape, data }
    }
}

/// What a v2 checkpoint holds once read and verified.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub arrays: BTreeMap<String, Array>,
    pub state: serde_json::Value,
}

impl Checkpoint {
    /// The array `name` with `len` values, or an error naming the file.
    pub fn take(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let a = self.arrays.remove(name).with_context(|| format!("the checkpoint has no {name}.npy"))?;
        if a.data.len() != len {
            bail!("{name}.npy holds {} values (shape {:?}); this model needs {len}", a.data.len(), a.shape);
        }
        Ok(a.data)
    }

    pub fn state_u64(&self, key: &str) -> Result<u64> {
        self.state[key].as_u64().with_context(|| format!("state.json: {key} is missing or not an integer"))
    }
}

/// Whether `dir` holds a v2 checkpoint (it has a manifest).
pub fn is_v2(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut f = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    std::io::copy(&mut f, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the arrays, `state.json`, `config.toml`, `meta.json` and the manifest into `dir` (the
/// caller commits the directory with its DONE marker).
pub fn write(
    dir: &Path,
    arrays: &[Array],
    state: serde_json::Value,
    config_toml: &str,
    meta: Option<&serde_json::Value>,
) -> Result<()> {
    let mut files = BTreeMap::new();
    let mut put = |file: String, bytes: &dyn Fn(&mut BufWriter<File>) -> std::io::Result<()>| -> Result<()> {
        let path = dir.join(&file);
        let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        bytes(&mut w).and_then(|_| w.flush()).with_context(|| format!("writing {}", path.display()))?;
        files.insert(file, sha256_of(&path)?);
        Ok(())
    };
    for a in arrays {
        let npy = NpyArray::f32(a.shape.clone(), a.data.clone());
        put(format!("{}.npy", a.name), &|w| npy.write_npy(w))?;
    }
    let mut state = state;
    state["format_version"] = FORMAT_VERSION.into();
    let state = serde_json::to_string_pretty(&state)?;
    put("state.json".into(), &|w| w.write_all(state.as_bytes()))?;
    put("config.toml".into(), &|w| w.write_all(config_toml.as_bytes()))?;
    if let Some(meta) = meta {
        let meta = serde_json::to_string_pretty(meta)?;
        put("meta.json".into(), &|w| w.write_all(meta.as_bytes()))?;
    }
    let manifest = serde_json::json!({ "format_version": FORMAT_VERSION, "files": files });
    std::fs::write(dir.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    Ok(())
}

/// Reads a v2 checkpoint, verifying every file of its manifest first.
pub fn read(dir: &Path) -> Result<Checkpoint> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(MANIFEST))
            .with_context(|| format!("reading {}", dir.join(MANIFEST).display()))?,
    )
    .context("manifest.json is not JSON")?;
    let files = manifest["files"].as_object().context("manifest.json has no files")?;
    for (file, want) in files {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            bail!("manifest.json names a file outside the checkpoint: {file:?}");
        }
        let got = sha256_of(&dir.join(file))?;
        if Some(got.as_str()) != want.as_str() {
            bail!("{} fails its checksum (the file is corrupted)", dir.join(file).display());
        }
    }
    let mut arrays = BTreeMap::new();
    for file in files.keys() {
        if let Some(name) = file.strip_suffix(".npy") {
            let mut r = BufReader::new(File::open(dir.join(file))?);
            let a = NpyArray::read_npy(&mut r).with_context(|| format!("reading {file}"))?;
            let data = a.as_f32().with_context(|| format!("{file} is not f32"))?.to_vec();
            arrays.insert(name.to_string(), Array { name: name.to_string(), shape: a.shape.clone(), data });
        }
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).context("reading state.json")?)?;
    if state["format_version"].as_u64() != Some(FORMAT_VERSION) {
        bail!("state.json: format_version is {}, expected {FORMAT_VERSION}", state["format_version"]);
    }
    Ok(Checkpoint { arrays, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_flipped_byte_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let arrays = vec![
            Array::new("a.0.weight", vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]),
            Array::new("u", vec![2], vec![0.5, -1.0]),
        ];
        write(
            tmp.path(),
            &arrays,
            serde_json::json!({ "step": 7 }),
            "[train]\n",
            Some(&serde_json::json!({"env": "x"})),
        )
        .unwrap();
        assert!(is_v2(tmp.path()));
        let mut c = read(tmp.path()).unwrap();
        assert_eq!(c.state_u64("step").unwrap(), 7);
        assert_eq!(c.take("a.0.weight", 6).unwrap(), arrays[0].data);
        assert!(c.take("u", 3).unwrap_err().to_string().contains("needs 3"));
        // Flip one byte of the payload.
        let path = tmp.path().join("a.0.weight.npy");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let err = read(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("a.0.weight.npy fails its checksum"), "{err}");
    }
}
