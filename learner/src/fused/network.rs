//! The δ-model's two networks on flat buffers, forward and backward, for a block of batch rows:
//! the per-atom generator MLPs with the split first layer, and φ, the residual MLP with spectral
//! norm. The layouts are those of the burn modules (`model::generator`, `model::discriminator`),
//! so parameters copy across unchanged.

use super::matmul::{mm, mm_nt, mm_tn};
use super::simd::simd_fn;
use crate::model::generator::LEAKY_RELU_SLOPE;

const SLOPE: f32 = LEAKY_RELU_SLOPE as f32;

// The leaky ReLUs below multiply by a selected factor (1 or the slope) rather than selecting
// between `x` and `x·slope`: the result is identical (x·1 = x, NaN included), and the compiler
// emits a blend and a plain store instead of a masked store.

simd_fn! {
    /// `dst ← lrelu(src)`.
    pub(crate) fn copy_lrelu(src: &[f32], dst: &mut [f32]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = x * if x < 0.0 { SLOPE } else { 1.0 };
        }
    }
}

simd_fn! {
    /// `g ∘= lrelu′` given the activation's output `a` (the sign of the output is that of the input).
    pub(crate) fn lrelu_backward(g: &mut [f32], a: &[f32]) {
        for (g, &a) in g.iter_mut().zip(a) {
            *g *= if a < 0.0 { SLOPE } else { 1.0 };
        }
    }
}

simd_fn! {
    /// `v[r] += bias` for every row r of `v`, then lrelu when `act`.
    pub(crate) fn add_bias(v: &mut [f32], bias: &[f32], act: bool) {
        for row in v.chunks_exact_mut(bias.len()) {
            for (x, b) in row.iter_mut().zip(bias) {
                let y = *x + b;
                *x = y * if act && y < 0.0 { SLOPE } else { 1.0 };
            }
        }
    }
}

simd_fn! {
    /// Row block r of `v` (`inner` rows of `rows.len() / blocks` values) gets row r of `rows`
    /// added, then lrelu when `act`: the per-(row, atom) part of the generator's first layer.
    pub(crate) fn add_row_blocks(v: &mut [f32], rows: &[f32], width: usize, inner: usize, act: bool) {
        for (block, r) in v.chunks_exact_mut(inner * width).zip(rows.chunks_exact(width)) {
            for row in block.chunks_exact_mut(width) {
                for (x, b) in row.iter_mut().zip(r) {
                    let y = *x + b;
                    *x = y * if act && y < 0.0 { SLOPE } else { 1.0 };
                }
            }
        }
    }
}

simd_fn! {
    /// `out += Σ_rows g`.
    pub(crate) fn column_sums_into(g: &[f32], width: usize, out: &mut [f32]) {
        for row in g.chunks_exact(width) {
            for (o, x) in out.iter_mut().zip(row) {
                *o += x;
            }
        }
    }
}

simd_fn! {
    /// `dst += src`.
    pub(crate) fn add_into(dst: &mut [f32], src: &[f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// The sizes of the generator: O atoms, layer widths `Z+S → W … W → S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenShape {
    pub atoms: usize,
    pub latent: usize,
    pub state: usize,
    /// Layer widths, `[Z+S, W, …, W, S]`.
    pub dims: Vec<usize>,
}

impl GenShape {
    pub fn new(atoms: usize, latent: usize, state: usize, hidden: usize, hidden_layers: usize) -> GenShape {
        let mut dims = vec![latent + state];
        dims.extend(std::iter::repeat_n(hidden, hidden_layers));
        dims.push(state);
        GenShape { atoms, latent, state, dims }
    }

    pub fn layers(&self) -> usize {
        self.dims.len() - 1
    }

    /// (weight length, bias length) of layer l, all atoms: `[O, in, out]` and `[O, out]`.
    pub fn layer_sizes(&self, l: usize) -> (usize, usize) {
        (self.atoms * self.dims[l] * self.dims[l + 1], self.atoms * self.dims[l + 1])
    }
}

/// Generator parameters (or gradients, or Adam moments): per layer, `[O, in, out]` and `[O, out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
}

impl GenParams {
    pub fn zeros(shape: &GenShape) -> GenParams {
        let (weights, biases) = (0..shape.layers())
            .map(|l| {
                let (w, b) = shape.layer_sizes(l);
                (vec![0.0; w], vec![0.0; b])
            })
            .unzip();
        GenParams { weights, biases }
    }

    /// Every buffer, weights then biases, layer by layer.
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut Vec<f32>> {
        self.weights.iter_mut().chain(self.biases.iter_mut())
    }

    pub fn buffers(&self) -> impl Iterator<Item = &Vec<f32>> {
        self.weights.iter().chain(self.biases.iter())
    }
}

/// Activations of one block of rows, atom-major: `acts[l]` is the input of layer l + 1,
/// `[O][N·I][W]`; `out` is `[O][N·I][S]`.
#[derive(Debug, Clone, Default)]
pub struct GenActs {
    pub acts: Vec<Vec<f32>>,
    pub out: Vec<f32>,
    /// Per-row part of the first layer, `s·W_s + b`, `[N][W]`.
    srow: Vec<f32>,
    grad: Vec<f32>,
    grad_next: Vec<f32>,
    grad_rows: Vec<f32>,
}

impl GenActs {
    pub fn new(shape: &GenShape, rows: usize, inner: usize) -> GenActs {
        let n = rows * inner;
        let w = shape.dims[1];
        let widest = shape.dims.iter().copied().max().unwrap_or(0);
        GenActs {
            acts: (1..shape.layers()).map(|l| vec![0.0; shape.atoms * n * shape.dims[l]]).collect(),
            out: vec![0.0; shape.atoms * n * shape.state],
            srow: vec![0.0; rows * w],
            grad: vec![0.0; n * widest],
            grad_next: vec![0.0; n * widest],
            grad_rows: vec![0.0; rows * w],
        }
    }
}

/// Forward pass for `rows` source states.
///
/// - `z`: `[O][rows·I][Z]` latents, atom-major;
/// - `s`: `[rows][S]`;
/// - result in `acts.out`, `[O][rows·I][S]`.
///
/// The first layer's `[z ; s]·W₀` is split as `z·W_z + (s·W_s + b₀)`: the second part depends only on
/// (row, atom), so it is computed once per row, not once per inner sample.
pub fn gen_forward(
    shape: &GenShape,
    p: &GenParams,
    z: &[f32],
    s: &[f32],
    rows: usize,
    inner: usize,
    acts: &mut GenActs,
) {
    let (zd, sd) = (shape.latent, shape.state);
    let n = rows * inner;
    let last = shape.layers() - 1;
    for a in 0..shape.atoms {
        let (d_in, w) = (shape.dims[0], shape.dims[1]);
        let w0 = &p.weights[0][a * d_in * w..(a + 1) * d_in * w];
        let (wz, ws) = w0.split_at(zd * w);
        // s·W_s + b₀ per row.
        mm(rows, sd, w, s, ws, &mut acts.srow, false);
        add_bias(&mut acts.srow, &p.biases[0][a * w..(a + 1) * w], false);
        let za = &z[a * n * zd..(a + 1) * n * zd];
        let first = if last == 0 {
            &mut acts.out[a * n * w..(a + 1) * n * w]
        } else {
            &mut acts.acts[0][a * n * w..(a + 1) * n * w]
        };
        mm(n, zd, w, za, wz, first, false);
        add_row_blocks(first, &acts.srow[..rows * w], w, inner, last > 0);
        for l in 1..=last {
            let (d_in, d_out) = (shape.dims[l], shape.dims[l + 1]);
            let wl = &p.weights[l][a * d_in * d_out..(a + 1) * d_in * d_out];
            let bl = &p.biases[l][a * d_out..(a + 1) * d_out];
            let (input, output) = if l == last {
                (&acts.acts[l - 1][a * n * d_in..(a + 1) * n * d_in], &mut acts.out[a * n * d_out..(a + 1) * n * d_out])
            } else {
                let (before, after) = acts.acts.split_at_mut(l);
                (&before[l - 1][a * n * d_in..(a + 1) * n * d_in], &mut after[0][a * n * d_out..(a + 1) * n * d_out])
            };
            mm(n, d_in, d_out, input, wl, output, false);
            add_bias(output, bl, l < last);
        }
    }
}

/// Backward pass of [`gen_forward`]: `gout` `[O][rows·I][S]` is ∂L/∂output; the parameter gradients
/// are added to `grads`.
#[allow(clippy::too_many_arguments)]
pub fn gen_backward(
    shape: &GenShape,
    p: &GenParams,
    z: &[f32],
    s: &[f32],
    rows: usize,
    inner: usize,
    acts: &mut GenActs,
    gout: &[f32],
    grads: &mut GenParams,
) {
    let (zd, sd) = (shape.latent, shape.state);
    let n = rows * inner;
    let last = shape.layers() - 1;
    for a in 0..shape.atoms {
        let d_last = shape.dims[last + 1];
        acts.grad[..n * d_last].copy_from_slice(&gout[a * n * d_last..(a + 1) * n * d_last]);
        for l in (1..=last).rev() {
            let (d_in, d_out) = (shape.dims[l], shape.dims[l + 1]);
            let input = &acts.acts[l - 1][a * n * d_in..(a + 1) * n * d_in];
            let g = &acts.grad[..n * d_out];
            mm_tn(n, d_in, d_out, input, g, &mut grads.weights[l][a * d_in * d_out..(a + 1) * d_in * d_out], true);
            column_sums_into(g, d_out, &mut grads.biases[l][a * d_out..(a + 1) * d_out]);
            let wl = &p.weights[l][a * d_in * d_out..(a + 1) * d_in * d_out];
            mm_nt(n, d_out, d_in, g, wl, &mut acts.grad_next[..n * d_in], false);
            lrelu_backward(&mut acts.grad_next[..n * d_in], input);
            std::mem::swap(&mut acts.grad, &mut acts.grad_next);
        }
        let (d_in, w) = (shape.dims[0], shape.dims[1]);
        let g = &acts.grad[..n * w];
        let gw0 = &mut grads.weights[0][a * d_in * w..(a + 1) * d_in * w];
        let (gwz, gws) = gw0.split_at_mut(zd * w);
        mm_tn(n, zd, w, &z[a * n * zd..(a + 1) * n * zd], g, gwz, true);
        acts.grad_rows[..rows * w].fill(0.0);
        for (r, block) in g.chunks_exact(inner * w).enumerate() {
            column_sums_into(block, w, &mut acts.grad_rows[r * w..(r + 1) * w]);
        }
        mm_tn(rows, sd, w, s, &acts.grad_rows[..rows * w], gws, true);
        column_sums_into(&acts.grad_rows[..rows * w], w, &mut grads.biases[0][a * w..(a + 1) * w]);
    }
}

/// The sizes of φ: an input layer S → W, `blocks` residual blocks of `per_block` W → W layers,
/// an output layer W → E.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhiShape {
    pub state: usize,
    pub hidden: usize,
    pub blocks: usize,
    pub per_block: usize,
    pub embedding: usize,
}

impl PhiShape {
    pub fn layers(&self) -> usize {
        2 + self.blocks * self.per_block
    }

    /// (in, out) of layer k in forward order.
    pub fn dims(&self, k: usize) -> (usize, usize) {
        if k == 0 {
            (self.state, self.hidden)
        } else if k == self.layers() - 1 {
            (self.hidden, self.embedding)
        } else {
            (self.hidden, self.hidden)
        }
    }
}

/// φ's parameters: per layer the kernel W `[in, out]`, the bias `[out]` and the spectral-norm
/// vector u `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiParams {
    pub weights: Vec<Vec<f32>>,
    pub biases: Vec<Vec<f32>>,
    pub u: Vec<Vec<f32>>,
}

impl PhiParams {
    pub fn zeros(shape: &PhiShape) -> PhiParams {
        let mut p = PhiParams { weights: Vec::new(), biases: Vec::new(), u: Vec::new() };
        for k in 0..shape.layers() {
            let (i, o) = shape.dims(k);
            p.weights.push(vec![0.0; i * o]);
            p.biases.push(vec![0.0; o]);
            p.u.push(vec![0.0; o]);
        }
        p
    }
}

/// One power-iteration step of flax's `SpectralNorm` for one kernel (see `model::spectral_norm`):
/// v = l2n(u Wᵀ), u′ = l2n(v W), σ = v W u′ᵀ, W̄ = W/σ (W when σ = 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spectral {
    pub sigma: f32,
    pub v: Vec<f32>,
    pub u_new: Vec<f32>,
    pub w_bar: Vec<f32>,
}

impl Spectral {
    pub fn compute(&mut self, w: &[f32], u: &[f32], d_in: usize, d_out: usize) {
        let l2n = |x: &mut [f32]| {
            let norm: f32 = x.iter().map(|v| v * v).sum::<f32>();
            let inv = 1.0 / (norm + crate::model::spectral_norm::L2_NORMALIZE_EPS as f32).sqrt();
            for v in x {
                *v *= inv;
            }
        };
        self.v.resize(d_in, 0.0);
        self.u_new.resize(d_out, 0.0);
        for j in 0..d_in {
            self.v[j] = (0..d_out).map(|k| u[k] * w[j * d_out + k]).sum();
        }
        l2n(&mut self.v);
        self.u_new.fill(0.0);
        for j in 0..d_in {
            let vj = self.v[j];
            for k in 0..d_out {
                self.u_new[k] += vj * w[j * d_out + k];
            }
        }
        l2n(&mut self.u_new);
        let mut sigma = 0.0f32;
        for j in 0..d_in {
            let row: f32 = (0..d_out).map(|k| w[j * d_out + k] * self.u_new[k]).sum();
            sigma += self.v[j] * row;
        }
        self.sigma = sigma;
        let div = if sigma == 0.0 { 1.0 } else { sigma };
        self.w_bar.clear();
        self.w_bar.extend(w.iter().map(|x| x / div));
    }

    /// ∂L/∂W from ∂L/∂W̄ (`g`), added to `out`: `g/σ − (Σ g∘W̄)/σ · v u′ᵀ` (σ is differentiable in W
    /// through W itself; u′ and v are constants).
    pub fn backward(&self, g: &[f32], d_in: usize, d_out: usize, out: &mut [f32]) {
        if self.sigma == 0.0 {
            for (o, g) in out.iter_mut().zip(g) {
                *o += g;
            }
            return;
        }
        sigma_backward(g, &self.w_bar, &self.v, &self.u_new, self.sigma, d_in, d_out, out);
    }
}

simd_fn! {
    /// The body of [`Spectral::backward`] for σ ≠ 0.
    #[allow(clippy::too_many_arguments)]
    fn sigma_backward(g: &[f32], w_bar: &[f32], v: &[f32], u: &[f32], sigma: f32, d_in: usize, d_out: usize, out: &mut [f32]) {
        let inv = 1.0 / sigma;
        let dot: f32 = g.iter().zip(w_bar).map(|(a, b)| a * b).sum();
        let c = dot * inv;
        for j in 0..d_in {
            let cv = c * v[j];
            let (gr, or) = (&g[j * d_out..(j + 1) * d_out], &mut out[j * d_out..(j + 1) * d_out]);
            for k in 0..d_out {
                or[k] += gr[k] * inv - cv * u[k];
            }
        }
    }
}

/// Where φ's backward pass adds its parameter gradients: ∂L/∂W̄ and ∂L/∂b per layer.
pub type PhiGrads<'a> = (&'a mut [Vec<f32>], &'a mut [Vec<f32>]);

/// φ's stored inputs of every layer but the first, for one call on N samples.
#[derive(Debug, Clone, Default)]
pub struct PhiActs {
    inputs: Vec<Vec<f32>>,
    stream: Vec<f32>,
    g_stream: Vec<f32>,
    g: Vec<f32>,
    g_next: Vec<f32>,
}

impl PhiActs {
    pub fn new(shape: &PhiShape, n: usize) -> PhiActs {
        let w = shape.hidden;
        PhiActs {
            inputs: (0..shape.layers()).map(|k| if k == 0 { Vec::new() } else { vec![0.0; n * w] }).collect(),
            stream: vec![0.0; n * w],
            g_stream: vec![0.0; n * w],
            g: vec![0.0; n * w.max(shape.embedding)],
            g_next: vec![0.0; n * w],
        }
    }
}

/// φ(x) for `n` samples `x` `[n, S]` with the normalised kernels `w_bar`, into `out` `[n, E]`.
pub fn phi_forward(
    shape: &PhiShape,
    w_bar: &[&[f32]],
    biases: &[Vec<f32>],
    x: &[f32],
    n: usize,
    acts: &mut PhiActs,
    out: &mut [f32],
) {
    let w = shape.hidden;
    let stream = &mut acts.stream[..n * w];
    mm(n, shape.state, w, x, w_bar[0], stream, false);
    add_bias(stream, &biases[0], false);
    let mut k = 1;
    for _ in 0..shape.blocks {
        for j in 0..shape.per_block {
            let (before, rest) = acts.inputs.split_at_mut(k);
            let input = &mut rest[0][..n * w];
            if j == 0 {
                copy_lrelu(stream, input);
            } else {
                mm(n, w, w, &before[k - 1][..n * w], w_bar[k - 1], input, false);
                add_bias(input, &biases[k - 1], true);
            }
            k += 1;
        }
        // The block's last layer adds onto the residual stream.
        mm(n, w, w, &acts.inputs[k - 1][..n * w], w_bar[k - 1], stream, true);
        add_bias(stream, &biases[k - 1], false);
    }
    // Here k is the output layer.
    let input = &mut acts.inputs[k][..n * w];
    copy_lrelu(stream, input);
    mm(n, w, shape.embedding, input, w_bar[k], &mut out[..n * shape.embedding], false);
    add_bias(&mut out[..n * shape.embedding], &biases[k], false);
}

/// The backward pass of the last [`phi_forward`] on these `acts`: `gout` `[n, E]` is ∂L/∂φ(x).
/// Adds ∂L/∂W̄ to `gw` and ∂L/∂b to `gb` when `gw` is given, and writes ∂L/∂x `[n, S]` to `gx` when
/// given.
#[allow(clippy::too_many_arguments)]
pub fn phi_backward(
    shape: &PhiShape,
    w_bar: &[&[f32]],
    x: &[f32],
    n: usize,
    acts: &mut PhiActs,
    gout: &[f32],
    mut weights: Option<PhiGrads<'_>>,
    gx: Option<&mut [f32]>,
) {
    let (w, e) = (shape.hidden, shape.embedding);
    let last = shape.layers() - 1;
    let gout = &gout[..n * e];
    if let Some((gw, gb)) = weights.as_mut() {
        mm_tn(n, w, e, &acts.inputs[last][..n * w], gout, &mut gw[last], true);
        column_sums_into(gout, e, &mut gb[last]);
    }
    let gs = &mut acts.g_stream[..n * w];
    mm_nt(n, e, w, gout, w_bar[last], gs, false);
    lrelu_backward(gs, &acts.inputs[last][..n * w]);
    let mut k = last;
    for _ in 0..shape.blocks {
        // Through the block MLP, last layer first; the skip passes gs unchanged.
        acts.g[..n * w].copy_from_slice(&acts.g_stream[..n * w]);
        for _ in 0..shape.per_block {
            k -= 1;
            let input = &acts.inputs[k][..n * w];
            if let Some((gw, gb)) = weights.as_mut() {
                mm_tn(n, w, w, input, &acts.g[..n * w], &mut gw[k], true);
                column_sums_into(&acts.g[..n * w], w, &mut gb[k]);
            }
            mm_nt(n, w, w, &acts.g[..n * w], w_bar[k], &mut acts.g_next[..n * w], false);
            lrelu_backward(&mut acts.g_next[..n * w], input);
            std::mem::swap(&mut acts.g, &mut acts.g_next);
        }
        add_into(&mut acts.g_stream[..n * w], &acts.g[..n * w]);
    }
    debug_assert_eq!(k, 1);
    let gs = &acts.g_stream[..n * w];
    if let Some((gw, gb)) = weights.as_mut() {
        mm_tn(n, shape.state, w, x, gs, &mut gw[0], true);
        column_sums_into(gs, w, &mut gb[0]);
    }
    if let Some(gx) = gx {
        mm_nt(n, w, shape.state, gs, w_bar[0], &mut gx[..n * shape.state], false);
    }
}
