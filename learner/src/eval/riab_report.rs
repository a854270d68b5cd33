//! The RatInABox section of a report: the thesis's place-cell analyses (`dsm-algorithm.md` §8.4,
//! `ratinabox-spec.md` §5) for every `riab-*` checkpoint.
//!
//! The state is the place-cell vector, so every analysis starts from the true vectors on a grid
//! of positions ([`World`]) and reads the model's predictions back into space through a decoder
//! (the nearest true vector, [`Decoder`]). For each model:
//! - **predicted rate maps**: per cell, the mean predicted rate over atoms and samples at every
//!   source position, against the cell's true map (cosine similarity, Pearson r);
//! - **predicted occupancy** from a few source positions: decoded samples per atom and for the
//!   mixture, against the simulator's discounted occupancy (sliced W1 on positions, binned
//!   Jensen–Shannon divergence);
//! - **field statistics** of predicted and true maps: Skaggs information with its shift test
//!   along a simulated trajectory, sparsity, fields at a fraction of the peak;
//! - **the spread across atoms**: per source, the RMS distance of the atoms' decoded positions
//!   from their mean, against the same spread of simulated futures;
//! - **remapping**: how the predicted maps move when the input vectors are noisy or some cells
//!   have new centres.
//!
//! Latents are fixed per atom: every source position and every distortion level uses the same
//! draws (the stream of its purpose), so maps vary smoothly over the arena and the remapping
//! curves measure the inputs' effect alone.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

use actor::envs::actor_critic::GoalPolicy;
use actor::envs::arena::Arena;
use actor::envs::config::{Centres, RiabConfig};
use actor::envs::geometry::Vec2;
use actor::envs::place_cells::PlaceCells;
use actor::envs::riab::experiment_cells;
use common::npz::NpyArray;
use common::rng;

use super::config::EvalConfig;
use super::decoder::Decoder;
use super::distribution_metrics::{self as dm, Summary};
use super::grid::Grid;
use super::model::TrainedModel;
use super::place_fields::{self, BinnedTrajectory, ShiftTest};
use super::report::{finite, ReportDir};
use super::riab_rollouts::Simulator;
use figures::{self as plot, HeatPanel, LinePanel};

/// Projections of the sliced Wasserstein distance, equally spaced over [0, π).
const SLICES: usize = 64;
/// True vectors at random positions on which the decoder's error is measured.
const DECODER_TEST_POINTS: usize = 1000;

/// The env of the checkpoint, rebuilt: everything that does not depend on the model.
pub struct World {
    pub config: RiabConfig,
    arena: Arena,
    cells: PlaceCells,
    grid: Grid,
    /// The bins inside the arena: the source positions.
    sources: Vec<usize>,
    /// True vectors at the sources, `[source × cell]`.
    source_vectors: Vec<f32>,
    /// True rate maps, `[cell × bin]` (NaN outside the arena).
    true_maps: Vec<f64>,
    decoder: Decoder,
    decoder_error: (f64, f64),
    sim: Simulator,
    trajectory: BinnedTrajectory,
    shifts: Vec<usize>,
    remap: Remap,
    walls: Vec<[[f64; 2]; 2]>,
}

/// The remapping experiment's inputs: per level, the distorted vectors at the remap grid's sources.
struct Remap {
    sources: Vec<Vec2>,
    clean: Vec<f32>,
    noise: Vec<(f64, Vec<f32>)>,
    shift: Vec<(f64, Vec<f32>)>,
}

/// The simulator's answers for one discount.
struct Truth {
    /// Per occupancy source: Monte-Carlo positions.
    occupancy: Vec<Vec<[f64; 2]>>,
    /// Per source: the RMS distance of simulated futures' decoded positions from their mean.
    spread: Vec<f64>,
}

/// Numbers of one model.
pub struct RiabSection {
    pub json: Value,
    pub headline: Vec<(String, f64)>,
    pub markdown: String,
    /// Remapping curves `(level, cosine, decoded error)`, noise then shift, for the joint figure.
    remap_noise: Vec<[f64; 3]>,
    remap_shift: Vec<[f64; 3]>,
    label: String,
}

impl World {
    pub fn build(config: &RiabConfig, seed: u64, policy: Option<Arc<GoalPolicy>>, eval: &EvalConfig) -> Result<World> {
        let arena = Arena::new(&config.arena);
        let cells = experiment_cells(config, &arena, seed);
        let n = cells.len();
        let grid = Grid::over(&arena, eval.grid_dx).context("eval.grid_dx")?;
        let sources = grid.inside_bins();
        let mut rates = vec![0.0; n];
        let mut source_vectors = Vec::with_capacity(sources.len() * n);
        let mut true_maps = vec![f64::NAN; n * grid.len()];
        for &k in &sources {
            cells.rates_at(&arena, grid.centre(k), &mut rates);
            source_vectors.extend(rates.iter().map(|&r| r as f32));
            for (c, r) in rates.iter().enumerate() {
                true_maps[c * grid.len() + k] = *r;
            }
        }
        let decoder = Decoder::new(&cells, &arena, eval.decoder_dx).context("eval.decoder_dx")?;
        let decoder_error = {
            let mut r = rng::stream(eval.seed, &["riab".into(), "decoder-test".into()]);
            let points: Vec<Vec2> = (0..DECODER_TEST_POINTS).map(|_| arena.sample_random(&mut r)).collect();
            let mut q = Vec::with_capacity(points.len() * n);
            for p in &points {
                cells.rates_at(&arena, *p, &mut rates);
                q.extend(rates.iter().map(|&v| v as f32));
            }
            let errors: Vec<f64> =
                decoder.decode(&q).iter().zip(&points).map(|(d, p)| (d[0] - p.x).hypot(d[1] - p.y)).collect();
            (errors.iter().sum::<f64>() / errors.len() as f64, errors.iter().cloned().fold(0.0, f64::max))
        };
        for (i, s) in eval.occupancy_sources.iter().enumerate() {
            if !arena.contains(Vec2::new(s[0], s[1])) {
                bail!("eval.occupancy_sources[{i}] = {s:?} lies outside the arena (extent {:?})", arena.extent());
            }
        }
        let sim = Simulator::new(config, seed, policy, eval.seed, eval.threads())?;
        let positions = sim.trajectory(eval.si_trajectory_seconds)?;
        let trajectory = BinnedTrajectory::new(&grid, &positions, config.dt);
        let mut r = rng::stream(eval.seed, &["riab".into(), "shifts".into()]);
        let shifts =
            place_fields::draw_shifts(positions.len(), config.dt, eval.si_min_shift_seconds, eval.si_shuffles, &mut r)
                .context("eval.si_trajectory_seconds is too short for eval.si_min_shift_seconds")?;
        let remap = Remap::build(config, &arena, &cells, eval)?;
        let walls = arena.walls().iter().map(|w| [[w.a.x, w.a.y], [w.b.x, w.b.y]]).collect();
        Ok(World {
            config: config.clone(),
            arena,
            cells,
            grid,
            sources,
            source_vectors,
            true_maps,
            decoder,
            decoder_error,
            sim,
            trajectory,
            shifts,
            remap,
            walls,
        })
    }

    fn n(&self) -> usize {
        self.cells.len()
    }

    fn truth(&self, gamma: f64, from_source: bool, eval: &EvalConfig) -> Result<Truth> {
        let occupancy = eval
            .occupancy_sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                self.sim.occupancy(
                    &format!("occupancy-{i}"),
                    Vec2::new(s[0], s[1]),
                    gamma,
                    from_source,
                    eval.mc_rollouts,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let starts: Vec<Vec2> = self.sources.iter().map(|&k| self.grid.centre(k)).collect();
        let k = eval.spread_rollouts;
        let vectors = self.sim.discounted_observations("spread", &starts, k, gamma, from_source)?;
        let decoded = self.decoder.decode(&vectors);
        let spread = decoded.chunks(k).map(rms_spread).collect();
        Ok(Truth { occupancy, spread })
    }

    fn figure_panel(&self, title: String, values: Vec<f64>, marker: Option<[f64; 2]>) -> HeatPanel {
        HeatPanel {
            title,
            values,
            nx: self.grid.nx,
            ny: self.grid.ny,
            extent: self.grid.extent(),
            walls: self.walls.clone(),
            marker,
        }
    }

    /// A per-source value spread onto the grid (NaN outside the arena).
    fn on_grid(&self, per_source: &[f64]) -> Vec<f64> {
        let mut out = vec![f64::NAN; self.grid.len()];
        for (&k, v) in self.sources.iter().zip(per_source) {
            out[k] = *v;
        }
        out
    }
}

impl Remap {
    fn build(config: &RiabConfig, arena: &Arena, cells: &PlaceCells, eval: &EvalConfig) -> Result<Remap> {
        let grid = Grid::over(arena, eval.remap_grid_dx).context("eval.remap_grid_dx")?;
        let sources: Vec<Vec2> = grid.inside_bins().into_iter().map(|k| grid.centre(k)).collect();
        let vectors = |cells: &PlaceCells| {
            let mut rates = vec![0.0; cells.len()];
            let mut out = Vec::with_capacity(sources.len() * cells.len());
            for p in &sources {
                cells.rates_at(arena, *p, &mut rates);
                out.extend(rates.iter().map(|&r| r as f32));
            }
            out
        };
        let clean = vectors(cells);
        let noise = eval
            .remap_noise_std
            .iter()
            .enumerate()
            .map(|(i, &sd)| {
                let mut r = rng::stream(eval.seed, &["riab".into(), "remap-noise".into(), i.into()]);
                let normal = Normal::new(0.0, sd).expect("checked: sd ≥ 0");
                (sd, clean.iter().map(|v| v + normal.sample(&mut r) as f32).collect())
            })
            .collect();
        // One order of the cells and one set of new centres for every level: a larger fraction
        // moves the same cells as a smaller one, and more.
        let n = cells.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng::stream(eval.seed, &["riab".into(), "remap-order".into()]));
        let mut r = rng::stream(eval.seed, &["riab".into(), "remap-centres".into()]);
        let moved: Vec<Vec2> = (0..n).map(|_| arena.sample_random(&mut r)).collect();
        let shift = eval
            .remap_shift_fraction
            .iter()
            .map(|&f| {
                let count = (f * n as f64).round() as usize;
                let mut centres: Vec<[f64; 2]> = cells.centres().iter().map(|c| [c.x, c.y]).collect();
                for &c in &order[..count] {
                    centres[c] = [moved[c].x, moved[c].y];
                }
                let mut shifted = config.cells.clone();
                shifted.centres = Centres::Explicit(centres);
                shifted.widths = actor::envs::config::Widths::PerCell(cells.widths().to_vec());
                let cells = PlaceCells::new(&shifted, arena, &mut rng::stream(0, &[]));
                (f, vectors(&cells))
            })
            .collect();
        Ok(Remap { sources, clean, noise, shift })
    }
}

/// What one model predicts from a batch of source vectors: per source, per atom, the mean of
/// `samples` generated vectors (fixed latents: the same draws for every source).
fn atom_means(model: &TrainedModel, vectors: &[f32], samples: usize, eval: &EvalConfig, label: &str) -> Vec<f32> {
    let n = model.state_dim();
    let o = model.atoms();
    let count = vectors.len() / n;
    let threads = eval.threads().min(count.max(1));
    let per = count.div_ceil(threads);
    let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for k in t * per..((t + 1) * per).min(count) {
                        let x = model.sample(&vectors[k * n..(k + 1) * n], samples, eval.seed, label);
                        for a in 0..o {
                            let block = &x[a * samples * n..(a + 1) * samples * n];
                            let mut mean = vec![0.0f64; n];
                            for row in block.chunks(n) {
                                for (m, v) in mean.iter_mut().zip(row) {
                                    *m += *v as f64;
                                }
                            }
                            out.extend(mean.iter().map(|m| (m / samples as f64) as f32));
                        }
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a sampling thread panicked")).collect()
    });
    parts.into_iter().flatten().collect()
}

/// The mean over atoms of `[source × atom × cell]`: `[source × cell]`.
fn mixture_means(means: &[f32], atoms: usize, n: usize) -> Vec<f32> {
    means
        .chunks(atoms * n)
        .flat_map(|src| (0..n).map(move |c| src.chunks(n).map(|a| a[c]).sum::<f32>() / atoms as f32))
        .collect()
}

/// RMS distance of points from their mean (m).
fn rms_spread(points: &[[f64; 2]]) -> f64 {
    let k = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p[0]).sum::<f64>() / k, points.iter().map(|p| p[1]).sum::<f64>() / k);
    (points.iter().map(|p| (p[0] - mx).powi(2) + (p[1] - my).powi(2)).sum::<f64>() / k).sqrt()
}

fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ab, aa, bb) =
        a.iter().zip(b).fold((0.0, 0.0, 0.0), |(ab, aa, bb), (x, y)| (ab + x * y, aa + x * x, bb + y * y));
    (aa > 0.0 && bb > 0.0).then(|| ab / (aa * bb).sqrt())
}

fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let k = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / k, b.iter().sum::<f64>() / k);
    let ca: Vec<f64> = a.iter().map(|x| x - ma).collect();
    let cb: Vec<f64> = b.iter().map(|x| x - mb).collect();
    cosine(&ca, &cb).filter(|_| ca.iter().any(|v| v.abs() > 1e-12 * ma.abs().max(1.0)))
}

/// Spearman's ρ: Pearson r of the ranks (ties get their mean rank).
fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0.0; x.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
                j += 1;
            }
            for &k in &idx[i..=j] {
                r[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    pearson(&ranks(a), &ranks(b))
}

/// Sliced Wasserstein-1 between two point clouds: the mean over `SLICES` directions of the 1-D
/// W1 (SciPy's definition) of their projections. Exact 2-D W1 needs an optimal-transport solver;
/// the sliced distance is a metric on distributions and a lower bound of W1.
pub fn sliced_w1(a: &[[f64; 2]], b: &[[f64; 2]]) -> Option<f64> {
    let mut total = 0.0;
    for s in 0..SLICES {
        let t = std::f64::consts::PI * s as f64 / SLICES as f64;
        let (c, si) = (t.cos(), t.sin());
        let pa: Vec<f64> = a.iter().map(|p| c * p[0] + si * p[1]).collect();
        let pb: Vec<f64> = b.iter().map(|p| c * p[0] + si * p[1]).collect();
        total += dm::wasserstein_distance(&pa, &pb)?;
    }
    Some(total / SLICES as f64)
}

/// Jensen–Shannon divergence in bits (in [0, 1]) between two histograms that each sum to 1.
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter().zip(m).filter(|(x, _)| **x > 0.0).map(|(x, y)| x * (x / y).log2()).sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| 0.5 * (a + b)).collect();
    (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).clamp(0.0, 1.0)
}

fn summary_json(values: &[f64]) -> Result<Value> {
    match dm::summarize(values) {
        Some(Summary { mean, median, min, max }) => Ok(json!({
            "mean": finite("mean", mean)?, "median": finite("median", median)?,
            "min": finite("min", min)?, "max": finite("max", max)?, "count": values.len(),
        })),
        None => Ok(json!({ "count": 0 })),
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Field statistics of one set of maps.
struct FieldStats {
    tests: Vec<ShiftTest>,
    sparsity: Vec<f64>,
    counts: Vec<f64>,
    largest_area: Vec<f64>,
    /// Centroid of each cell's largest field (NaN where it has none).
    centroids: Vec<[f64; 2]>,
}

fn field_stats(world: &World, maps: &[f64], eval: &EvalConfig) -> FieldStats {
    let g = world.grid.len();
    let occupancy = world.trajectory.occupancy();
    let mut s = FieldStats { tests: vec![], sparsity: vec![], counts: vec![], largest_area: vec![], centroids: vec![] };
    for c in 0..world.n() {
        let map = &maps[c * g..(c + 1) * g];
        let clean: Vec<f64> = map.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
        let series: Vec<f64> = world.trajectory.bins.iter().map(|&b| clean[b]).collect();
        s.tests.push(place_fields::shift_test(&world.trajectory, &series, &world.shifts));
        s.sparsity.push(place_fields::sparsity(&clean, &occupancy));
        let fields = place_fields::fields(&clean, &world.grid, eval.field_threshold, eval.field_min_area);
        s.counts.push(fields.len() as f64);
        s.largest_area.push(fields.first().map_or(0.0, |f| f.area));
        s.centroids.push(fields.first().map_or([f64::NAN; 2], |f| f.centroid));
    }
    s
}

impl FieldStats {
    fn json(&self) -> Result<Value> {
        let info: Vec<f64> = self.tests.iter().map(|t| t.information).collect();
        let significant = self.tests.iter().filter(|t| t.significant()).count();
        Ok(json!({
            "skaggs_bits_per_spike": summary_json(&info)?,
            "significant_fraction": significant as f64 / self.tests.len().max(1) as f64,
            "sparsity": summary_json(&self.sparsity)?,
            "field_count": summary_json(&self.counts)?,
            "largest_field_area_m2": summary_json(&self.largest_area)?,
        }))
    }

    fn significant_fraction(&self) -> f64 {
        self.tests.iter().filter(|t| t.significant()).count() as f64 / self.tests.len().max(1) as f64
    }

    /// `[cell × 7]`: information, 95th percentile, p, sparsity, fields, largest area, centroid distance.
    fn array(&self, other: Option<&FieldStats>) -> NpyArray {
        let mut data = Vec::new();
        for c in 0..self.tests.len() {
            let t = &self.tests[c];
            let shift = other.map_or(f64::NAN, |o| {
                let (a, b) = (self.centroids[c], o.centroids[c]);
                (a[0] - b[0]).hypot(a[1] - b[1])
            });
            data.extend([
                t.information,
                t.threshold95,
                t.p_value,
                self.sparsity[c],
                self.counts[c],
                self.largest_area[c],
                shift,
            ]);
        }
        NpyArray::f64(vec![self.tests.len(), 7], data)
    }
}

/// Analyses one model and writes its arrays and figures under `prefix` (`""` or `"compare/"`).
pub fn evaluate(
    model: &TrainedModel,
    world: &World,
    eval: &EvalConfig,
    truths: &mut HashMap<(u64, bool), TruthHandle>,
    report: &mut ReportDir,
    prefix: &str,
) -> Result<RiabSection> {
    let n = world.n();
    if model.state_dim() != n {
        bail!(
            "{}: the env has {n} place cells, the checkpoint's model reads {}-float states",
            model.dir.display(),
            model.state_dim()
        );
    }
    let gamma = model.config.model.gamma;
    let from_source = model.config.model.cumulant_is_source_state;
    let key = (gamma.to_bits(), from_source);
    if let std::collections::hash_map::Entry::Vacant(slot) = truths.entry(key) {
        slot.insert(TruthHandle(world.truth(gamma, from_source, eval)?));
    }
    let truth = &truths[&key].0;
    let o = model.atoms();
    let g = world.grid.len();
    // "δ-model", "γ-model (the SR baseline)": the name without its article, for titles and legends.
    let name = model.config.model.name();
    let label = name.strip_prefix("a ").unwrap_or(&name).to_string();
    let step = model.step;
    let mut body = serde_json::Map::new();

    // Predicted rate maps.
    let means = atom_means(model, &world.source_vectors, eval.map_samples_per_atom, eval, "riab-map");
    let mixture = mixture_means(&means, o, n);
    let mut predicted_maps = vec![f64::NAN; n * g];
    for (s, &k) in world.sources.iter().enumerate() {
        for c in 0..n {
            predicted_maps[c * g + k] = mixture[s * n + c] as f64;
        }
    }
    let inside = |maps: &[f64], c: usize| -> Vec<f64> { world.sources.iter().map(|&k| maps[c * g + k]).collect() };
    let mut cosines = Vec::new();
    let mut pearsons = Vec::new();
    let mut per_cell = Vec::new();
    for c in 0..n {
        let (p, t) = (inside(&predicted_maps, c), inside(&world.true_maps, c));
        let (cs, pr) = (cosine(&p, &t), pearson(&p, &t));
        cosines.extend(cs);
        pearsons.extend(pr);
        let centre = world.cells.centres()[c];
        let mut cell = json!({ "cell": c, "centre": [centre.x, centre.y] });
        if let Some(v) = cs {
            cell["cosine"] = finite("cosine", v)?;
        }
        if let Some(v) = pr {
            cell["pearson"] = finite("pearson", v)?;
        }
        per_cell.push(cell);
    }
    let maps_file = report.array(
        &format!("{prefix}maps/predicted.npy"),
        &NpyArray::f64(vec![n, world.grid.ny, world.grid.nx], predicted_maps.clone()),
        "predicted rate maps [cell, y bin, x bin]: the mean predicted rate over atoms and samples from each source position (NaN outside the arena)",
    )?;
    let true_file = report.array(
        &format!("{prefix}maps/true.npy"),
        &NpyArray::f64(vec![n, world.grid.ny, world.grid.nx], world.true_maps.clone()),
        "true rate maps [cell, y bin, x bin] at the bin centres (NaN outside the arena)",
    )?;
    let means_file = report.array(
        &format!("{prefix}maps/atom_means.npy"),
        &NpyArray::f32(vec![world.sources.len(), o, n], means.clone()),
        "per source position (the grid's inside bins, in order) and atom: the mean predicted place-cell vector",
    )?;
    body.insert(
        "place_cells".into(),
        json!({
            "cells": per_cell,
            "cosine": summary_json(&cosines)?,
            "pearson": summary_json(&pearsons)?,
            "undefined_pearson": n - pearsons.len(),
            "predicted_maps": maps_file, "true_maps": true_file, "atom_means": means_file,
        }),
    );
    let shown: Vec<usize> = if eval.cells_shown == 0 {
        vec![]
    } else {
        (0..eval.cells_shown.min(n)).map(|i| i * n / eval.cells_shown.min(n)).collect()
    };
    if !shown.is_empty() {
        let mut panels = Vec::new();
        for &c in &shown {
            let centre = world.cells.centres()[c];
            let m = [centre.x, centre.y];
            panels.push(world.figure_panel(
                format!("cell {c}: true"),
                world.true_maps[c * g..(c + 1) * g].to_vec(),
                Some(m),
            ));
            panels.push(world.figure_panel(
                format!("cell {c}: {label}"),
                predicted_maps[c * g..(c + 1) * g].to_vec(),
                Some(m),
            ));
        }
        let file = format!("{prefix}place_cells.png");
        plot::heat_maps(
            &report.path(&file)?,
            &format!("{label} predicted place cells, step {step}"),
            &panels,
            "rate",
            false,
        )?;
        report.figure(
            &file,
            &format!(
                "{label}: each cell's true rate map beside its predicted map (the mean predicted rate from each source \
                 position; × the cell's centre). A predicted map is the cell's expected discounted future rate, so it is \
                 wider than the true field and leans the way the agent tends to move."
            ),
        );
    }

    // Field statistics.
    let predicted_stats = field_stats(world, &predicted_maps, eval);
    let true_stats = field_stats(world, &world.true_maps, eval);
    let stats_file = report.array(
        &format!("{prefix}fields/predicted.npy"),
        &predicted_stats.array(Some(&true_stats)),
        "per cell, on the predicted map: [Skaggs bits/spike, shift test 95th percentile, p, sparsity, fields, largest field m², distance of its centroid from the true map's (m)]",
    )?;
    let true_stats_file = report.array(
        &format!("{prefix}fields/true.npy"),
        &true_stats.array(None),
        "per cell, on the true map: [Skaggs bits/spike, shift test 95th percentile, p, sparsity, fields, largest field m², NaN]",
    )?;
    let displacement: Vec<f64> = predicted_stats
        .centroids
        .iter()
        .zip(&true_stats.centroids)
        .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
        .filter(|d| d.is_finite())
        .collect();
    body.insert(
        "fields".into(),
        json!({
            "predicted": predicted_stats.json()?, "true": true_stats.json()?,
            "centroid_displacement_m": summary_json(&displacement)?,
            "predicted_file": stats_file, "true_file": true_stats_file,
            "trajectory_seconds": eval.si_trajectory_seconds, "shuffles": world.shifts.len(),
            "threshold": eval.field_threshold, "min_area_m2": eval.field_min_area,
        }),
    );

    // Predicted occupancy.
    let mut occupancy = Vec::new();
    let (mut w1s, mut jss) = (Vec::new(), Vec::new());
    for (i, s) in eval.occupancy_sources.iter().enumerate() {
        let p = Vec2::new(s[0], s[1]);
        let mut rates = vec![0.0; n];
        world.cells.rates_at(&world.arena, p, &mut rates);
        let v: Vec<f32> = rates.iter().map(|&r| r as f32).collect();
        let m = eval.samples_per_atom;
        let x = model.sample(&v, m, eval.seed, "riab-occupancy");
        let decoded = world.decoder.decode(&x);
        let mc = &truth.occupancy[i];
        let mc_hist = world.grid.histogram(mc);
        let mix_hist = world.grid.histogram(&decoded);
        let mix_w1 = sliced_w1(&decoded, mc).context("occupancy: no samples")?;
        let mix_js = jensen_shannon(&mix_hist, &mc_hist);
        let mut atoms = Vec::new();
        let mut hists = vec![mc_hist.clone(), mix_hist.clone()];
        for a in 0..o {
            let pts = &decoded[a * m..(a + 1) * m];
            let h = world.grid.histogram(pts);
            atoms.push(json!({
                "w1": finite("w1", sliced_w1(pts, mc).context("occupancy: no samples")?)?,
                "js_bits": finite("js", jensen_shannon(&h, &mc_hist))?,
            }));
            hists.push(h);
        }
        let name = format!("x{:.2}_y{:.2}", s[0], s[1]);
        let samples_file = report.array(
            &format!("{prefix}occupancy/{name}/samples.npy"),
            &NpyArray::f64(vec![o, m, 2], decoded.iter().flatten().copied().collect()),
            "decoded positions (m) of the generated samples [atom, sample, (x, y)]",
        )?;
        let mc_file = report.array(
            &format!("{prefix}occupancy/{name}/mc.npy"),
            &NpyArray::f64(vec![mc.len(), 2], mc.iter().flatten().copied().collect()),
            "Monte-Carlo samples (m) of the discounted occupancy from the source [rollout, (x, y)]",
        )?;
        let hist_file = report.array(
            &format!("{prefix}occupancy/{name}/histograms.npy"),
            &NpyArray::f64(vec![o + 2, world.grid.ny, world.grid.nx], hists.iter().flatten().copied().collect()),
            "occupancy histograms on the grid, each summing to 1 [Monte-Carlo, mixture, atom 0, …]",
        )?;
        w1s.push(mix_w1);
        jss.push(mix_js);
        occupancy.push(json!({
            "source": s, "mixture": { "w1": finite("w1", mix_w1)?, "js_bits": finite("js", mix_js)? }, "atoms": atoms,
            "samples": samples_file, "mc": mc_file, "histograms": hist_file,
        }));
        let mut panels = vec![
            world.figure_panel("Monte-Carlo".into(), hists[0].clone(), Some(*s)),
            world.figure_panel(format!("{label}: mixture"), hists[1].clone(), Some(*s)),
        ];
        if o > 1 {
            for a in 0..o {
                panels.push(world.figure_panel(format!("atom {a}"), hists[a + 2].clone(), Some(*s)));
            }
        }
        let file = format!("{prefix}occupancy/{name}.png");
        plot::heat_maps(
            &report.path(&file)?,
            &format!("{label} predicted occupancy from ({:.2}, {:.2}), step {step}", s[0], s[1]),
            &panels,
            "probability per bin",
            true,
        )?;
        report.figure(
            &file,
            &format!(
                "{label}: where the agent will be, discounted by γ = {gamma}, from the × — the simulator's truth first, then \
                 the model's mixture and each atom (decoded samples, binned). Sliced W1 {mix_w1:.3} m, JS {mix_js:.3} bits."
            ),
        );
    }
    body.insert(
        "occupancy".into(),
        json!({ "sources": occupancy, "w1": summary_json(&w1s)?, "js_bits": summary_json(&jss)?,
                "rollouts": eval.mc_rollouts, "samples_per_atom": eval.samples_per_atom,
                "w1_definition": format!("sliced Wasserstein-1 over {SLICES} directions (m)") }),
    );

    // The spread across atoms.
    let decoded_atoms = world.decoder.decode(&means);
    let spread: Vec<f64> = decoded_atoms.chunks(o).map(rms_spread).collect();
    let spread_file = report.array(
        &format!("{prefix}spread/atoms.npy"),
        &NpyArray::f64(vec![world.grid.ny, world.grid.nx], world.on_grid(&spread)),
        "per source bin: RMS distance (m) of the atoms' decoded mean vectors from their mean (0 for one atom)",
    )?;
    let true_spread_file = report.array(
        &format!("{prefix}spread/true.npy"),
        &NpyArray::f64(vec![world.grid.ny, world.grid.nx], world.on_grid(&truth.spread)),
        "per source bin: RMS distance (m) of simulated futures' decoded discounted-mean vectors from their mean",
    )?;
    let positions_file = report.array(
        &format!("{prefix}spread/atom_positions.npy"),
        &NpyArray::f64(vec![world.sources.len(), o, 2], decoded_atoms.iter().flatten().copied().collect()),
        "per source position and atom: the decoded position (m) of the atom's mean vector",
    )?;
    let mut spread_json = json!({
        "atoms_m": summary_json(&spread)?, "true_m": summary_json(&truth.spread)?,
        "atoms": spread_file, "true": true_spread_file, "atom_positions": positions_file,
        "rollouts_per_source": eval.spread_rollouts,
    });
    let spread_pearson = if o > 1 { pearson(&spread, &truth.spread) } else { None };
    if let Some(r) = spread_pearson {
        spread_json["pearson_with_true"] = finite("pearson", r)?;
    }
    if let Some(r) = (o > 1).then(|| spearman(&spread, &truth.spread)).flatten() {
        spread_json["spearman_with_true"] = finite("spearman", r)?;
    }
    body.insert("spread".into(), spread_json);
    if o > 1 {
        let file = format!("{prefix}spread.png");
        let panels = [
            world.figure_panel(format!("{label}: spread across atoms"), world.on_grid(&spread), None),
            world.figure_panel("simulated futures".into(), world.on_grid(&truth.spread), None),
        ];
        plot::heat_maps(
            &report.path(&file)?,
            &format!("How uncertain the future is, step {step}"),
            &panels,
            "RMS spread (m)",
            false,
        )?;
        report.figure(
            &file,
            &format!(
                "{label}: per source position, how far apart the atoms' decoded positions lie (left), against how far \
                 apart simulated futures end up (right, each future's discounted mean, decoded the same way). The thesis's \
                 claim is that atoms spread where the future is uncertain: Pearson r {}.",
                spread_pearson.map_or("undefined".into(), |r| format!("{r:.3}"))
            ),
        );
    }

    // Remapping.
    let r_count = world.remap.sources.len();
    let base = mixture_means(&atom_means(model, &world.remap.clean, eval.map_samples_per_atom, eval, "riab-map"), o, n);
    let base_pos = world.decoder.decode(&base);
    let curve = |levels: &[(f64, Vec<f32>)]| -> Vec<[f64; 3]> {
        levels
            .iter()
            .map(|(level, inputs)| {
                let pred = mixture_means(&atom_means(model, inputs, eval.map_samples_per_atom, eval, "riab-map"), o, n);
                let cos: Vec<f64> = (0..n)
                    .filter_map(|c| {
                        let a: Vec<f64> = (0..r_count).map(|r| pred[r * n + c] as f64).collect();
                        let b: Vec<f64> = (0..r_count).map(|r| base[r * n + c] as f64).collect();
                        cosine(&a, &b)
                    })
                    .collect();
                let pos = world.decoder.decode(&pred);
                let err =
                    mean(&pos.iter().zip(&base_pos).map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1])).collect::<Vec<_>>());
                [*level, if cos.is_empty() { 0.0 } else { mean(&cos) }, err]
            })
            .collect()
    };
    let remap_noise = curve(&world.remap.noise);
    let remap_shift = curve(&world.remap.shift);
    let noise_file = report.array(
        &format!("{prefix}remapping/noise.npy"),
        &NpyArray::f64(vec![remap_noise.len(), 3], remap_noise.iter().flatten().copied().collect()),
        "input noise: [noise std, mean cosine similarity of the predicted maps to the undistorted prediction, mean decoded-position error (m)]",
    )?;
    let shift_file = report.array(
        &format!("{prefix}remapping/shift.npy"),
        &NpyArray::f64(vec![remap_shift.len(), 3], remap_shift.iter().flatten().copied().collect()),
        "moved cell centres: [fraction moved, mean cosine similarity to the undistorted prediction, mean decoded-position error (m)]",
    )?;
    let levels = |c: &[[f64; 3]]| -> Result<Vec<Value>> {
        c.iter()
            .map(|l| Ok(json!({ "level": l[0], "cosine": finite("cosine", l[1])?, "decoded_error_m": finite("error", l[2])? })))
            .collect()
    };
    body.insert(
        "remapping".into(),
        json!({ "noise": levels(&remap_noise)?, "shift": levels(&remap_shift)?, "noise_file": noise_file,
                "shift_file": shift_file, "sources": r_count, "grid_dx": eval.remap_grid_dx }),
    );
    body.insert(
        "decoder".into(),
        json!({ "method": "nearest true population vector", "grid_dx": eval.decoder_dx,
                "error_mean_m": finite("decoder error", world.decoder_error.0)?,
                "error_max_m": finite("decoder error", world.decoder_error.1)?, "test_points": DECODER_TEST_POINTS }),
    );
    body.insert(
        "grid".into(),
        json!({ "dx": world.grid.dx, "nx": world.grid.nx, "ny": world.grid.ny, "extent": world.grid.extent(),
                "sources": world.sources.len() }),
    );

    let mut headline = vec![
        ("map_cosine_mean".to_string(), mean(&cosines)),
        ("map_pearson_mean".to_string(), mean(&pearsons)),
        ("occupancy_w1_mean".to_string(), mean(&w1s)),
        ("occupancy_js_mean".to_string(), mean(&jss)),
        ("si_significant_fraction".to_string(), predicted_stats.significant_fraction()),
        ("atom_spread_mean".to_string(), mean(&spread)),
    ];
    if let Some(r) = spread_pearson {
        headline.push(("spread_pearson".to_string(), r));
    }
    let markdown = markdown(
        &label,
        &MdNumbers {
            cosines: &cosines,
            pearsons: &pearsons,
            w1s: &w1s,
            jss: &jss,
            predicted: &predicted_stats,
            truth: &true_stats,
            displacement: &displacement,
            spread: &spread,
            true_spread: &truth.spread,
            spread_pearson,
            remap_noise: &remap_noise,
            remap_shift: &remap_shift,
            decoder_error: world.decoder_error,
        },
    );
    let mut json = Value::Object(body);
    json["headline"] = Value::Object(headline.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
    Ok(RiabSection { json, headline, markdown, remap_noise, remap_shift, label })
}

/// The simulator's truths, kept across the models of one report (keyed by γ and the source term).
pub struct TruthHandle(Truth);

struct MdNumbers<'a> {
    cosines: &'a [f64],
    pearsons: &'a [f64],
    w1s: &'a [f64],
    jss: &'a [f64],
    predicted: &'a FieldStats,
    truth: &'a FieldStats,
    displacement: &'a [f64],
    spread: &'a [f64],
    true_spread: &'a [f64],
    spread_pearson: Option<f64>,
    remap_noise: &'a [[f64; 3]],
    remap_shift: &'a [[f64; 3]],
    decoder_error: (f64, f64),
}

fn markdown(label: &str, m: &MdNumbers<'_>) -> String {
    let info = |s: &FieldStats| mean(&s.tests.iter().map(|t| t.information).collect::<Vec<_>>());
    let last =
        |c: &[[f64; 3]]| c.last().map_or("—".to_string(), |l| format!("{:.3} / {:.3} m at {}", l[1], l[2], l[0]));
    format!(
        "| {label} | value |\n|---|---|\n\
         | predicted vs true rate maps: cosine (mean over cells) | {:.3} |\n\
         | predicted vs true rate maps: Pearson r (mean over cells) | {:.3} |\n\
         | predicted occupancy vs Monte-Carlo: sliced W1 (mean over sources) | {:.3} m |\n\
         | predicted occupancy vs Monte-Carlo: Jensen–Shannon (mean over sources) | {:.3} bits |\n\
         | Skaggs information, predicted / true maps (mean over cells) | {:.3} / {:.3} bits/spike |\n\
         | cells above the shift test's 95th percentile, predicted / true | {:.0} % / {:.0} % |\n\
         | sparsity, predicted / true (mean) | {:.3} / {:.3} |\n\
         | fields per cell, predicted / true (mean) | {:.2} / {:.2} |\n\
         | largest field, predicted / true (mean; a Gaussian cell of width 0.2 m: 0.405 m² away from walls) | {:.3} / {:.3} m² |\n\
         | field centroid, predicted from true (mean distance) | {:.3} m |\n\
         | spread across atoms / of simulated futures (mean RMS) | {:.3} / {:.3} m |\n\
         | spread across atoms vs simulated futures, Pearson r over sources | {} |\n\
         | remapping, largest input noise: cosine / decoded error | {} |\n\
         | remapping, most centres moved: cosine / decoded error | {} |\n\
         | decoder error on true vectors, mean / max | {:.4} / {:.4} m |\n",
        mean(m.cosines),
        mean(m.pearsons),
        mean(m.w1s),
        mean(m.jss),
        info(m.predicted),
        info(m.truth),
        100.0 * m.predicted.significant_fraction(),
        100.0 * m.truth.significant_fraction(),
        mean(&m.predicted.sparsity),
        mean(&m.truth.sparsity),
        mean(&m.predicted.counts),
        mean(&m.truth.counts),
        mean(&m.predicted.largest_area),
        mean(&m.truth.largest_area),
        mean(m.displacement),
        mean(m.spread),
        mean(m.true_spread),
        m.spread_pearson.map_or("undefined (one atom)".to_string(), |r| format!("{r:.3}")),
        last(m.remap_noise),
        last(m.remap_shift),
        m.decoder_error.0,
        m.decoder_error.1,
    )
}

/// The remapping figure: both models' curves, when there are two.
pub fn remapping_figure(report: &mut ReportDir, sections: &[&RiabSection], step: u64) -> Result<()> {
    let series = |pick: fn(&RiabSection) -> &[[f64; 3]], col: usize| -> Vec<(String, Vec<[f64; 2]>)> {
        sections.iter().map(|s| (s.label.clone(), pick(s).iter().map(|l| [l[0], l[col]]).collect())).collect()
    };
    fn noise(s: &RiabSection) -> &[[f64; 3]] {
        &s.remap_noise
    }
    fn shift(s: &RiabSection) -> &[[f64; 3]] {
        &s.remap_shift
    }
    let panel = |title: &str, x: &str, y: &str, series| LinePanel {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        series,
    };
    let panels = [
        panel(
            "input noise: map similarity",
            "noise std (rate)",
            "cosine to the undistorted prediction",
            series(noise, 1),
        ),
        panel("input noise: decoded position", "noise std (rate)", "decoded-position error (m)", series(noise, 2)),
        panel(
            "moved centres: map similarity",
            "fraction of cells moved",
            "cosine to the undistorted prediction",
            series(shift, 1),
        ),
        panel(
            "moved centres: decoded position",
            "fraction of cells moved",
            "decoded-position error (m)",
            series(shift, 2),
        ),
    ];
    let file = "remapping.png";
    plot::line_panels(
        &report.path(file)?,
        &format!("Remapping: predictions under distorted inputs, step {step}"),
        &panels,
        (560, 420),
    )?;
    report.figure(
        file,
        "How the predicted maps degrade as the input place-cell vectors get noisier (left pair) or as more cells move to \
         new centres (right pair): cosine similarity of each cell's predicted map to the undistorted prediction, and \
         how far the decoded prediction moves; one curve per model.",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_between_distributions() {
        let a: Vec<[f64; 2]> = (0..100).map(|i| [i as f64 / 100.0, 0.0]).collect();
        let b: Vec<[f64; 2]> = a.iter().map(|p| [p[0] + 0.3, p[1]]).collect();
        // A shift by d along x projects to d·|cos θ| on each slice: the mean of |cos| is 2/π.
        let w = sliced_w1(&a, &b).unwrap();
        let mean_cos = (0..SLICES).map(|s| (std::f64::consts::PI * s as f64 / SLICES as f64).cos().abs()).sum::<f64>()
            / SLICES as f64;
        assert!((w - 0.3 * mean_cos).abs() < 1e-9, "{w}");
        assert!((mean_cos - 2.0 / std::f64::consts::PI).abs() < 1e-3);
        assert_eq!(sliced_w1(&a, &a), Some(0.0));
        // JS: 0 for equal histograms, 1 bit for disjoint ones.
        assert_eq!(jensen_shannon(&[0.5, 0.5, 0.0], &[0.5, 0.5, 0.0]), 0.0);
        assert!((jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((rms_spread(&[[0.0, 0.0], [2.0, 0.0]]) - 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 35.0]), Some(1.0));
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    }
}
