//! Windows of H+1 consecutive steps from an offline `.npz` dataset written by `actor simulate`.
//!
//! This module owns reading the archive (`observations` (E, N, S) float32, `step_type` (E, N)
//! uint8, optional `meta` JSON; see README.md "What the archive holds") and the per-step window
//! sampling of the reference, `dsm/train.py::train_loop._sample_batch` (lines 326–333 of
//! `JesseFarebro/distributional-sr`, spec §1.2):
//!
//! ```python
//! indices = jax.random.randint(key_t, (config.batch_size,), 0, len(data.observation) - config.horizon - 1)
//! ... jax.lax.dynamic_slice_in_dim(op, index, 1 + config.horizon, axis=0)
//! ```
//!
//! The reference holds one long stream; our archive holds E independent streams ("rows") of N
//! steps each. A window is drawn by picking a row uniformly and then a start uniformly in
//! `[0, N − H − 1)`, the reference's range with its exclusive upper bound, so every row's last
//! index N−1 is never part of a window (as in the reference). Since all rows have the same length,
//! this is uniform over all E·(N−H−1) admissible starts. A window never spans two rows, but it may
//! span an episode boundary inside a row (Pendulum rows hold many 201-step episodes); the target
//! (`loss::target`) handles the LAST step, as the reference does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use common::npz::{read_npz, NpyArray, NpyData, NpzError};
use common::rng::StreamRng;
use rand::Rng;

/// dm_env's step type codes, as written by `actor simulate` and as in the reference datasets.
pub const STEP_FIRST: u8 = 0;
/// A step inside an episode.
pub const STEP_MID: u8 = 1;
/// The last step of an episode (termination *or* time-limit truncation; the target treats both as
/// absorbing, spec §3.2 and quirk Q3).
pub const STEP_LAST: u8 = 2;

/// Why a dataset could not be loaded, or cannot serve a horizon. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: NpzError,
    },
    #[error("{}: the archive has no `{name}` array", path.display())]
    Missing { path: PathBuf, name: &'static str },
    #[error("{}: `{name}` has dtype {found}, expected {expected}", path.display())]
    Dtype { path: PathBuf, name: &'static str, found: &'static str, expected: &'static str },
    #[error("{}: `{name}` has shape {found:?}, expected {expected}", path.display())]
    Shape { path: PathBuf, name: &'static str, found: Vec<usize>, expected: String },
    #[error("{}: observations[{env}, {step}, {dim}] = {value} is not finite", path.display())]
    NonFinite { path: PathBuf, env: usize, step: usize, dim: usize, value: f32 },
    #[error(
        "{}: step_type[{env}, {step}] = {value} is not a known step type (0 FIRST, 1 MID, 2 LAST)",
        path.display()
    )]
    UnknownStepType { path: PathBuf, env: usize, step: usize, value: u8 },
    #[error("{}: `meta` is not a JSON string: {reason}", path.display())]
    Meta { path: PathBuf, reason: String },
    #[error(
        "{}: rows of {steps} steps are too short for horizon {horizon}: window starts are drawn from \
         [0, N − H − 1), which needs N > H + 1 = {}",
        path.display(),
        horizon + 1
    )]
    TooShort { path: PathBuf, steps: usize, horizon: usize },
}

/// An offline dataset held in memory: E rows of N steps of S-dimensional observations.
#[derive(Debug, Clone)]
pub struct OfflineDataset {
    path: PathBuf,
    num_envs: usize,
    steps: usize,
    obs_dim: usize,
    /// (E, N, S), row-major.
    observations: Vec<f32>,
    /// (E, N), row-major, every value ≤ [`STEP_LAST`].
    step_types: Vec<u8>,
    meta: Option<serde_json::Value>,
}

/// One batch of windows, laid out for the learner. Reused across steps: [`OfflineDataset::sample_windows`]
/// resizes the buffers only when the batch grows, so a training loop allocates once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowBatch {
    /// B, the number of windows.
    pub batch: usize,
    /// H+1, the steps per window.
    pub steps: usize,
    /// S, the observation dimension.
    pub obs_dim: usize,
    /// [B, H+1, S], row-major.
    pub observations: Vec<f32>,
    /// [B, H+1], row-major.
    pub step_types: Vec<u8>,
}

impl WindowBatch {
    /// H, the n-step horizon of these windows (`steps − 1`).
    pub fn horizon(&self) -> usize {
        self.steps.saturating_sub(1)
    }

    /// The observations as a tensor on `device`.
    ///
    /// # Shapes
    /// `[B, H+1, S]`.
    pub fn observations_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 3> {
        let data = TensorData::new(self.observations.clone(), [self.batch, self.steps, self.obs_dim]);
        Tensor::from_data(data, device)
    }

    /// The observations `[B, H+1, S]` and the step types `[B, H+1]` (as integers) on `device`.
    ///
    /// `loss::target` reads the step types on the host (`&self.step_types`); the tensor form is
    /// for callers that want them on the device.
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 2, Int>) {
        let types: Vec<i64> = self.step_types.iter().map(|&t| i64::from(t)).collect();
        let types = Tensor::from_data(TensorData::new(types, [self.batch, self.steps]), device);
        (self.observations_tensor(device), types)
    }
}

/// Where the training loop takes its windows from: an offline dataset ([`OfflineDataset`]) or the
/// replay store (`replay_source::ReplaySource`). The trainer asks for a fresh batch for each
/// discriminator step and each generator step; the loop around it is the same for both sources.
pub trait WindowSource {
    /// Fills `out` with `batch` windows of `horizon + 1` consecutive steps. `rng` is the trainer's
    /// data stream: a source that draws locally uses it, so a run is reproducible; one that draws
    /// remotely ignores it.
    fn next_batch(
        &mut self,
        rng: &mut StreamRng,
        batch: usize,
        horizon: usize,
        out: &mut WindowBatch,
    ) -> anyhow::Result<()>;
}

/// The offline dataset serves windows from memory; it never fails once
/// [`OfflineDataset::check_horizon`] has passed.
impl WindowSource for &OfflineDataset {
    fn next_batch(
        &mut self,
        rng: &mut StreamRng,
        batch: usize,
        horizon: usize,
        out: &mut WindowBatch,
    ) -> anyhow::Result<()> {
        self.sample_windows(rng, batch, horizon, out);
        Ok(())
    }
}

/// A source lent out by `&mut` is still a source, so callers can pass `&mut source` and keep it.
impl<S: WindowSource + ?Sized> WindowSource for &mut S {
    fn next_batch(
        &mut self,
        rng: &mut StreamRng,
        batch: usize,
        horizon: usize,
        out: &mut WindowBatch,
    ) -> anyhow::Result<()> {
        (**self).next_batch(rng, batch, horizon, out)
    }
}

impl OfflineDataset {
    /// Reads `observations` and `step_type` (and `meta`, if present) from an `.npz` written by
    /// `actor simulate`; other arrays (`positions`, `actions`, …) are ignored.
    ///
    /// Refuses, naming the file and the array: a missing array, a wrong dtype or rank, an empty
    /// dimension, `step_type` not matching `observations`' (E, N), a non-finite observation, an
    /// unknown step type, and a `meta` that is not a JSON string. Whether the rows are long enough
    /// depends on the horizon: see [`OfflineDataset::check_horizon`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DatasetError> {
        let path = path.as_ref().to_path_buf();
        let mut arrays = read_npz(&path).map_err(|source| DatasetError::Read { path: path.clone(), source })?;
        let observations = take(&mut arrays, &path, "observations")?;
        let step_types = take(&mut arrays, &path, "step_type")?;
        let meta = match arrays.remove("meta") {
            None => None,
            Some(NpyArray { data: NpyData::Str(s), .. }) => Some(
                serde_json::from_str(&s)
                    .map_err(|e| DatasetError::Meta { path: path.clone(), reason: e.to_string() })?,
            ),
            Some(other) => {
                return Err(DatasetError::Meta {
                    path,
                    reason: format!("it is a {} array of shape {:?}", dtype_name(&other.data), other.shape),
                })
            }
        };

        let (obs_shape, obs) = match observations {
            NpyArray { shape, data: NpyData::F32(v) } => (shape, v),
            other => {
                let found = dtype_name(&other.data);
                return Err(DatasetError::Dtype { path, name: "observations", found, expected: "<f4" });
            }
        };
        let (types_shape, types) = match step_types {
            NpyArray { shape, data: NpyData::U8(v) } => (shape, v),
            other => {
                let found = dtype_name(&other.data);
                return Err(DatasetError::Dtype { path, name: "step_type", found, expected: "|u1" });
            }
        };
        let [e, n, s] = match obs_shape[..] {
            [e, n, s] if e > 0 && n > 0 && s > 0 => [e, n, s],
            _ => {
                return Err(DatasetError::Shape {
                    path,
                    name: "observations",
                    found: obs_shape,
                    expected: "(E, N, S) with every size ≥ 1".into(),
                })
            }
        };
        if types_shape != [e, n] {
            return Err(DatasetError::Shape {
                path,
                name: "step_type",
                found: types_shape,
                expected: format!("({e}, {n}), the (E, N) of `observations`"),
            });
        }
        let mut dataset = Self::validated(path, obs, types, e, n, s)?;
        dataset.meta = meta;
        Ok(dataset)
    }

    /// A dataset from arrays already in memory (for synthetic data and tests), validated as
    /// [`OfflineDataset::load`] validates a file; errors name the path `<memory>`.
    ///
    /// # Shapes
    /// `observations`: (E, N, S) row-major; `step_types`: (E, N).
    pub fn from_parts(
        observations: Vec<f32>,
        step_types: Vec<u8>,
        num_envs: usize,
        steps: usize,
        obs_dim: usize,
    ) -> Result<Self, DatasetError> {
        Self::validated(PathBuf::from("<memory>"), observations, step_types, num_envs, steps, obs_dim)
    }

    /// The checks shared by [`OfflineDataset::load`] and [`OfflineDataset::from_parts`]; errors name `path`.
    fn validated(
        path: PathBuf,
        observations: Vec<f32>,
        step_types: Vec<u8>,
        num_envs: usize,
        steps: usize,
        obs_dim: usize,
    ) -> Result<Self, DatasetError> {
        if num_envs == 0 || steps == 0 || obs_dim == 0 || observations.len() != num_envs * steps * obs_dim {
            return Err(DatasetError::Shape {
                path,
                name: "observations",
                found: vec![observations.len()],
                expected: format!("({num_envs}, {steps}, {obs_dim}) with every size ≥ 1"),
            });
        }
        if step_types.len() != num_envs * steps {
            return Err(DatasetError::Shape {
                path,
                name: "step_type",
                found: vec![step_types.len()],
                expected: format!("({num_envs}, {steps})"),
            });
        }
        if let Some(k) = observations.iter().position(|x| !x.is_finite()) {
            let (row, dim) = (k / obs_dim, k % obs_dim);
            let (env, step) = (row / steps, row % steps);
            return Err(DatasetError::NonFinite { path, env, step, dim, value: observations[k] });
        }
        if let Some(k) = step_types.iter().position(|&t| t > STEP_LAST) {
            let (env, step) = (k / steps, k % steps);
            return Err(DatasetError::UnknownStepType { path, env, step, value: step_types[k] });
        }
        Ok(Self { path, num_envs, steps, obs_dim, observations, step_types, meta: None })
    }

    /// Refuses a horizon the rows cannot serve: starts are drawn from `[0, N − H − 1)`, which is
    /// empty unless N > H + 1. Call once at start-up; [`OfflineDataset::sample_windows`] panics instead.
    pub fn check_horizon(&self, horizon: usize) -> Result<(), DatasetError> {
        if self.steps > horizon + 1 {
            Ok(())
        } else {
            Err(DatasetError::TooShort { path: self.path.clone(), steps: self.steps, horizon })
        }
    }

    /// Fills `out` with `batch` windows of `horizon + 1` consecutive steps. For each window,
    /// independently: a row e ~ U{0, …, E−1}, then a start t ~ U{0, …, N−H−2} (the reference's
    /// `randint(0, N − H − 1)`, upper bound exclusive), and the window is steps t..=t+H of row e.
    ///
    /// The reference draws a fresh batch for each discriminator step and each generator step
    /// (spec §1.2); so should the caller.
    ///
    /// # Panics
    /// If `horizon` fails [`OfflineDataset::check_horizon`].
    pub fn sample_windows<R: Rng + ?Sized>(&self, rng: &mut R, batch: usize, horizon: usize, out: &mut WindowBatch) {
        if let Err(e) = self.check_horizon(horizon) {
            panic!("{e}");
        }
        let (h1, s) = (horizon + 1, self.obs_dim);
        let starts = self.steps - horizon - 1;
        out.batch = batch;
        out.steps = h1;
        out.obs_dim = s;
        out.observations.resize(batch * h1 * s, 0.0);
        out.step_types.resize(batch * h1, 0);
        let windows = out.observations.chunks_exact_mut(h1 * s).zip(out.step_types.chunks_exact_mut(h1));
        for (obs, types) in windows {
            let e = rng.random_range(0..self.num_envs);
            let t = rng.random_range(0..starts);
            let first = e * self.steps + t;
            obs.copy_from_slice(&self.observations[first * s..(first + h1) * s]);
            types.copy_from_slice(&self.step_types[first..first + h1]);
        }
    }

    /// E, the number of rows (independent streams).
    pub fn num_envs(&self) -> usize {
        self.num_envs
    }

    /// N, the steps per row.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// S, the observation dimension.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// The file it was read from (`<memory>` for [`OfflineDataset::from_parts`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (E, N, S), row-major.
    pub fn observations(&self) -> &[f32] {
        &self.observations
    }

    /// (E, N), row-major.
    pub fn step_types(&self) -> &[u8] {
        &self.step_types
    }

    /// The archive's `meta` JSON, if it had one.
    pub fn meta(&self) -> Option<&serde_json::Value> {
        self.meta.as_ref()
    }

    /// The env id recorded in `meta` (`"env"`), for logs.
    pub fn env_id(&self) -> Option<&str> {
        self.meta.as_ref()?.get("env")?.as_str()
    }
}

fn take(arrays: &mut BTreeMap<String, NpyArray>, path: &Path, name: &'static str) -> Result<NpyArray, DatasetError> {
    arrays.remove(name).ok_or_else(|| DatasetError::Missing { path: path.to_path_buf(), name })
}

fn dtype_name(data: &NpyData) -> &'static str {
    match data {
        NpyData::F32(_) => "<f4",
        NpyData::F64(_) => "<f8",
        NpyData::U8(_) => "|u1",
        NpyData::I64(_) => "<i8",
        NpyData::Str(_) => "<U (string)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::target::chi_square;
    use common::npz::write_npz;
    use rand::SeedableRng;

    type B = burn::backend::NdArray;

    /// observation[e, t] = [e, t, 0.5]: every window says which row and steps it came from.
    fn encoded(e: usize, n: usize) -> (Vec<f32>, Vec<u8>) {
        let mut obs = Vec::with_capacity(e * n * 3);
        let mut types = Vec::with_capacity(e * n);
        for row in 0..e {
            for t in 0..n {
                obs.extend_from_slice(&[row as f32, t as f32, 0.5]);
                // Episodes of 10 steps, so windows cross boundaries as in Pendulum.
                types.push(match t % 10 {
                    0 => STEP_FIRST,
                    9 => STEP_LAST,
                    _ => STEP_MID,
                });
            }
        }
        (obs, types)
    }

    fn write(dir: &Path, name: &str, arrays: &[(&str, &NpyArray)]) -> PathBuf {
        let path = dir.join(name);
        write_npz(&path, arrays).unwrap();
        path
    }

    fn write_encoded(dir: &Path, e: usize, n: usize) -> PathBuf {
        let (obs, types) = encoded(e, n);
        let meta = NpyArray::string(r#"{"format_version": 1, "env": "synthetic"}"#);
        let obs = NpyArray::f32(vec![e, n, 3], obs);
        let types = NpyArray::u8(vec![e, n], types);
        write(dir, "data.npz", &[("observations", &obs), ("step_type", &types), ("meta", &meta)])
    }

    #[test]
    fn load_reads_the_arrays_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_encoded(dir.path(), 2, 30);
        let d = OfflineDataset::load(&path).unwrap();
        assert_eq!((d.num_envs(), d.steps(), d.obs_dim()), (2, 30, 3));
        assert_eq!(d.env_id(), Some("synthetic"));
        assert_eq!(d.path(), path.as_path());
        let (obs, types) = encoded(2, 30);
        assert_eq!(d.observations(), obs.as_slice());
        assert_eq!(d.step_types(), types.as_slice());
    }

    /// Every window is H+1 consecutive steps of one row, with that row's step types, never
    /// touching index N−1; the output buffers are reused without reallocation.
    #[test]
    fn windows_are_consecutive_steps_of_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let (e, n, h) = (3, 20, 6);
        let d = OfflineDataset::load(write_encoded(dir.path(), e, n)).unwrap();
        let mut rng = StreamRng::seed_from_u64(11);
        let mut out = WindowBatch::default();
        d.sample_windows(&mut rng, 64, h, &mut out);
        let (obs_ptr, types_ptr) = (out.observations.as_ptr(), out.step_types.as_ptr());
        let mut seen_last_start = false;
        for _ in 0..200 {
            d.sample_windows(&mut rng, 64, h, &mut out);
            assert_eq!((out.batch, out.steps, out.obs_dim, out.horizon()), (64, h + 1, 3, h));
            assert_eq!(out.observations.len(), 64 * (h + 1) * 3);
            assert_eq!(out.step_types.len(), 64 * (h + 1));
            for b in 0..64 {
                let w = &out.observations[b * (h + 1) * 3..(b + 1) * (h + 1) * 3];
                let (row, start) = (w[0] as usize, w[1] as usize);
                assert!(row < e);
                assert!(start + h <= n - 2, "window [{start}, {}] reaches N−1 = {}", start + h, n - 1);
                seen_last_start |= start == n - h - 2;
                for k in 0..=h {
                    assert_eq!(&w[k * 3..k * 3 + 3], &[row as f32, (start + k) as f32, 0.5]);
                    let expected = d.step_types()[row * n + start + k];
                    assert_eq!(out.step_types[b * (h + 1) + k], expected);
                }
            }
        }
        assert!(seen_last_start, "the largest admissible start N−H−2 was never drawn");
        assert_eq!(out.observations.as_ptr(), obs_ptr, "observations were reallocated");
        assert_eq!(out.step_types.as_ptr(), types_ptr, "step types were reallocated");
    }

    /// (row, start) is uniform over E × [0, N−H−1): χ² over all E·(N−H−1) cells with a fixed seed
    /// (the critical value and α are those of [`chi_square`]).
    #[test]
    fn starts_are_uniform_over_the_admissible_range() {
        let (e, n, h) = (3, 30, 6);
        let (obs, types) = encoded(e, n);
        let d = OfflineDataset::from_parts(obs, types, e, n, 3).unwrap();
        let starts = n - h - 1;
        let mut counts = vec![0u64; e * starts];
        let mut rng = StreamRng::seed_from_u64(12);
        let mut out = WindowBatch::default();
        for _ in 0..250 {
            d.sample_windows(&mut rng, 1000, h, &mut out);
            for w in out.observations.chunks_exact((h + 1) * 3) {
                let (row, start) = (w[0] as usize, w[1] as usize);
                assert!(start < starts);
                counts[row * starts + start] += 1;
            }
        }
        let probs = vec![1.0 / (e * starts) as f64; e * starts];
        chi_square::assert_fits("window (row, start)", &counts, &probs);
    }

    #[test]
    fn to_tensors_keeps_the_layout() {
        let (e, n, h) = (2, 12, 3);
        let (obs, types) = encoded(e, n);
        let d = OfflineDataset::from_parts(obs, types, e, n, 3).unwrap();
        let mut out = WindowBatch::default();
        d.sample_windows(&mut StreamRng::seed_from_u64(13), 5, h, &mut out);
        let (obs, types) = out.to_tensors::<B>(&Default::default());
        assert_eq!(obs.dims(), [5, h + 1, 3]);
        assert_eq!(types.dims(), [5, h + 1]);
        assert_eq!(obs.into_data().to_vec::<f32>().unwrap(), out.observations);
        let types: Vec<i64> = types.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(types, out.step_types.iter().map(|&t| i64::from(t)).collect::<Vec<_>>());
    }

    /// Both sides of the limit: N = H + 2 serves horizon H (one start), N = H + 1 does not.
    #[test]
    fn horizon_needs_rows_longer_than_h_plus_one() {
        let (obs, types) = encoded(1, 8);
        let d = OfflineDataset::from_parts(obs, types, 1, 8, 3).unwrap();
        d.check_horizon(6).unwrap();
        let err = d.check_horizon(7).unwrap_err();
        assert!(matches!(err, DatasetError::TooShort { steps: 8, horizon: 7, .. }), "{err}");
        let mut out = WindowBatch::default();
        d.sample_windows(&mut StreamRng::seed_from_u64(14), 10, 6, &mut out);
        assert!(out.observations.chunks_exact(7 * 3).all(|w| w[1] == 0.0), "the only start is 0");
    }

    #[test]
    #[should_panic(expected = "too short for horizon 7")]
    fn sampling_an_impossible_horizon_panics() {
        let (obs, types) = encoded(1, 8);
        let d = OfflineDataset::from_parts(obs, types, 1, 8, 3).unwrap();
        d.sample_windows(&mut StreamRng::seed_from_u64(15), 1, 7, &mut WindowBatch::default());
    }

    #[test]
    fn load_errors_name_the_array_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (obs, types) = encoded(2, 10);
        let good_obs = NpyArray::f32(vec![2, 10, 3], obs.clone());
        let good_types = NpyArray::u8(vec![2, 10], types.clone());
        let check = |name: &str, arrays: &[(&str, &NpyArray)], needle: &str| {
            let path = write(dir.path(), name, arrays);
            let err = OfflineDataset::load(&path).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name), "{msg:?} does not name the file");
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
            err
        };

        let err = check("no-obs.npz", &[("step_type", &good_types)], "`observations`");
        assert!(matches!(err, DatasetError::Missing { name: "observations", .. }));
        let err = check("no-types.npz", &[("observations", &good_obs)], "`step_type`");
        assert!(matches!(err, DatasetError::Missing { name: "step_type", .. }));

        let flat = NpyArray::f32(vec![20, 3], obs.clone());
        let err = check("rank2.npz", &[("observations", &flat), ("step_type", &good_types)], "[20, 3]");
        assert!(matches!(err, DatasetError::Shape { name: "observations", .. }));
        let empty = NpyArray::f32(vec![2, 10, 0], vec![]);
        let err = check("empty.npz", &[("observations", &empty), ("step_type", &good_types)], "observations");
        assert!(matches!(err, DatasetError::Shape { name: "observations", .. }));
        let short_types = NpyArray::u8(vec![2, 9], types[..18].to_vec());
        let err = check("types-shape.npz", &[("observations", &good_obs), ("step_type", &short_types)], "(2, 10)");
        assert!(matches!(err, DatasetError::Shape { name: "step_type", .. }));

        let f64_obs = NpyArray { shape: vec![2, 10, 3], data: NpyData::F64(vec![0.0; 60]) };
        let err = check("f64.npz", &[("observations", &f64_obs), ("step_type", &good_types)], "<f8");
        assert!(matches!(err, DatasetError::Dtype { name: "observations", .. }));
        let f32_types = NpyArray::f32(vec![2, 10], vec![1.0; 20]);
        let err = check("f32-types.npz", &[("observations", &good_obs), ("step_type", &f32_types)], "|u1");
        assert!(matches!(err, DatasetError::Dtype { name: "step_type", .. }));

        let mut nan = obs.clone();
        nan[(10 + 4) * 3 + 2] = f32::NAN;
        let nan = NpyArray::f32(vec![2, 10, 3], nan);
        let err = check("nan.npz", &[("observations", &nan), ("step_type", &good_types)], "observations[1, 4, 2]");
        assert!(matches!(err, DatasetError::NonFinite { env: 1, step: 4, dim: 2, .. }));

        let mut bad = types.clone();
        bad[7] = 3;
        let bad = NpyArray::u8(vec![2, 10], bad);
        let err = check("step3.npz", &[("observations", &good_obs), ("step_type", &bad)], "step_type[0, 7] = 3");
        assert!(matches!(err, DatasetError::UnknownStepType { env: 0, step: 7, value: 3, .. }));

        let meta = NpyArray::string("not json");
        let err =
            check("meta.npz", &[("observations", &good_obs), ("step_type", &good_types), ("meta", &meta)], "meta");
        assert!(matches!(err, DatasetError::Meta { .. }));

        let path = dir.path().join("garbage.npz");
        std::fs::write(&path, b"not a zip").unwrap();
        let err = OfflineDataset::load(&path).unwrap_err();
        assert!(matches!(err, DatasetError::Read { .. }) && err.to_string().contains("garbage.npz"), "{err}");
    }
}
