//! The δ-model loss of one batch row, forward and backward, on flat buffers: the fused form of
//! `loss::mmd::pair_block_means` → `inner_mmd_matrices` → clip → median → outer MMD
//! (dsm-algorithm.md §3.5).
//!
//! For a row with P = O·I embedded samples per side:
//! 1. **pair blocks**: every kernel value of the x–x, y–y and x–y sample pairs is computed once
//!    (the symmetric x–x and y–y matrices only above the diagonal), summed into its O×O block,
//!    and its derivative k′ cached for the backward pass. The block means give the U-statistic self
//!    terms s(P) and the cross means c(P, Q), and `MMD²_U(P,Q) = s(P) + s(Q) − 2c(P,Q)` (the self-term
//!    reuse; on the diagonal the all-pairs mean is `s + (k(0) − s)/I`, as in the burn engine);
//! 2. the inner distances are clipped at 0;
//! 3. the outer bandwidth is the median of the 2·O(O−1) + O² values, found by selection
//!    (`select_nth_unstable`), not by a sort; the mean of the two middle values for an even count,
//!    floored at 1e-6, and a constant of the gradient;
//! 4. the outer V-statistic with the outer kernel.
//!
//! All squared distances of a row are computed first (in a transposed `[E][P]` layout, so the loops
//! run over samples and vectorise), then the kernel is evaluated on all ~P² of them in one call:
//! that pass is most of the row's work, and a long straight loop is what makes it fast.
//!
//! The backward pass turns the cached k′ into per-pair weights `W_pq = 2·w_block·k′_pq` and pulls
//! every point by `Σ_q W_pq (a_p − b_q) = (Σ_q W_pq)·a_p − (W·B)_p`: a small product over rows of
//! `[P][E]`, vectorised along E. A copy of the whole row function is compiled for AVX2+FMA and
//! chosen at run time.

// Index loops are the vectorisable form of these hot loops (fixed 8-lane accumulators, several
// arrays indexed alike), and the row function takes every buffer it works on.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use super::kernel::FusedKernel;
use crate::loss::mmd::MIN_BANDWIDTH;

/// The outer level of the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Outer {
    pub kernel: FusedKernel,
    /// The median heuristic per row (true, the δ-model) or a fixed bandwidth.
    pub median: bool,
    pub fixed_bandwidth: f32,
}

/// Which gradients a step needs: the generator step needs the x side only, the discriminator step both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub x: bool,
    pub y: bool,
}

/// Buffers of one thread, sized once for (O, I, E).
#[derive(Debug, Clone, Default)]
pub struct MmdScratch {
    /// The samples of each side transposed, `[E][P]`, so that distance loops run over samples.
    xt: Vec<f32>,
    yt: Vec<f32>,
    /// Squared distances, kernel values and k′ of every pair, packed: the x–x upper triangle
    /// (row-major, q > p), then the y–y upper triangle, then the full x–y matrix `[P][P]`.
    dist: Vec<f32>,
    kval: Vec<f32>,
    kder: Vec<f32>,
    /// Per-pair gradient weights of one matrix, dense `[P][P]`.
    wfull: Vec<f32>,
    /// Block sums, `[O][O]`.
    sxx: Vec<f32>,
    syy: Vec<f32>,
    sxy: Vec<f32>,
    outer: OuterScratch,
    /// Per-block weights, `[O][O]`.
    wxx: Vec<f32>,
    wyy: Vec<f32>,
    wxy: Vec<f32>,
    colsum: Vec<f32>,
}

/// The outer level's buffers: the inner distances (clipped), then the outer kernel's arguments,
/// values and derivatives, and the gradients of the loss with respect to the distances, each
/// `[3][O][O]` (xx, yy, xy).
#[derive(Debug, Clone, Default)]
pub struct OuterScratch {
    pub d: Vec<f32>,
    u: Vec<f32>,
    ko: Vec<f32>,
    dko: Vec<f32>,
    pub g: Vec<f32>,
    values: Vec<f32>,
}

impl OuterScratch {
    pub fn new(o: usize) -> OuterScratch {
        let oo = o * o;
        OuterScratch {
            d: vec![0.0; 3 * oo],
            u: vec![0.0; 3 * oo],
            ko: vec![0.0; 3 * oo],
            dko: vec![0.0; 3 * oo],
            g: vec![0.0; 3 * oo],
            values: Vec::with_capacity(3 * oo),
        }
    }
}

impl MmdScratch {
    pub fn new(o: usize, i: usize, _e: usize) -> MmdScratch {
        let p = o * i;
        let oo = o * o;
        let pairs = p * (p - 1) + p * p;
        MmdScratch {
            xt: Vec::new(),
            yt: Vec::new(),
            dist: vec![0.0; pairs],
            kval: vec![0.0; pairs],
            kder: vec![0.0; pairs],
            wfull: vec![0.0; p * p],
            sxx: vec![0.0; oo],
            syy: vec![0.0; oo],
            sxy: vec![0.0; oo],
            outer: OuterScratch::new(o),
            wxx: vec![0.0; oo],
            wyy: vec![0.0; oo],
            wxy: vec![0.0; oo],
            colsum: vec![0.0; p],
        }
    }
}

/// Shapes of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowShape {
    pub o: usize,
    pub i: usize,
    pub e: usize,
}

/// L_b of one row, and, as `Needs` asks, `scale · ∂L_b/∂xe` into `gx` and `scale · ∂L_b/∂ye` into
/// `gy` (both `[P, E]`, overwritten).
///
/// `xe`, `ye`: `[P, E]` = `[O, I, E]` row-major embeddings of the model samples and the targets.
#[allow(clippy::too_many_arguments)]
pub fn delta_row(
    xe: &[f32],
    ye: &[f32],
    shape: RowShape,
    inner: &FusedKernel,
    outer: &Outer,
    scale: f32,
    needs: Needs,
    gx: &mut [f32],
    gy: &mut [f32],
    s: &mut MmdScratch,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { delta_row_avx2(xe, ye, shape, inner, outer, scale, needs, gx, gy, s) };
        }
    }
    delta_row_impl(xe, ye, shape, inner, outer, scale, needs, gx, gy, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn delta_row_avx2(
    xe: &[f32],
    ye: &[f32],
    shape: RowShape,
    inner: &FusedKernel,
    outer: &Outer,
    scale: f32,
    needs: Needs,
    gx: &mut [f32],
    gy: &mut [f32],
    s: &mut MmdScratch,
) -> f32 {
    delta_row_impl(xe, ye, shape, inner, outer, scale, needs, gx, gy, s)
}

pub(super) fn transpose_in(src: &[f32], p: usize, e: usize, dst: &mut Vec<f32>) {
    dst.resize(p * e, 0.0);
    for q in 0..p {
        for k in 0..e {
            dst[k * p + q] = src[q * e + k];
        }
    }
}

/// `dist[j] = Σ_e (cols[e][p] − cols2[e][lo + j])²` for j in 0..len, the transposed layouts `[E][P]`.
#[inline(always)]
pub(super) fn distances(t: &[f32], p: usize, other: &[f32], lo: usize, p_all: usize, e: usize, dist: &mut [f32]) {
    let len = p_all - lo;
    let dist = &mut dist[..len];
    dist.fill(0.0);
    for k in 0..e {
        let pk = t[k * p_all + p];
        let col = &other[k * p_all + lo..(k + 1) * p_all];
        for (d, &c) in dist.iter_mut().zip(col) {
            let t = pk - c;
            *d += t * t;
        }
    }
}

/// Start of row p of a packed upper triangle (pairs q > p) of P points.
#[inline(always)]
fn tri_offset(p: usize, p_all: usize) -> usize {
    p * (p_all - 1) - p * p.saturating_sub(1) / 2
}

/// Sums the kernel values of one side's packed triangle into `[O][O]` block sums (upper triangle).
fn block_sums_self(kval: &[f32], sh: RowShape, sums: &mut [f32]) {
    let (o, i) = (sh.o, sh.i);
    let p_all = o * i;
    sums.fill(0.0);
    for p in 0..p_all.saturating_sub(1) {
        let row = &kval[tri_offset(p, p_all)..];
        let lo = p + 1;
        let ap = p / i;
        for aq in ap..o {
            let (qlo, qhi) = ((aq * i).max(lo), (aq + 1) * i);
            sums[ap * o + aq] += row[qlo - lo..qhi - lo].iter().sum::<f32>();
        }
    }
}

/// `out[p] += rs_p·a_p − Σ_q w[p][q]·b_q`, `rs_p = Σ_q w[p][q]`, on rows of `[P][E]`: the gradient
/// with respect to the a side of `Σ_pq w_pq·‖a_p − b_q‖²/2`, the pull of every pair on its first point.
///
/// Four rows of W at a time: each `b_q` is loaded once for four accumulators, and the four
/// dependency chains overlap (a single chain of P adds would be latency-bound).
#[inline(always)]
pub(super) fn pull_rows(w: &[f32], a: &[f32], b: &[f32], p_all: usize, e: usize, out: &mut [f32]) {
    // The usual embedding widths get a copy with E known, so the accumulators stay in registers.
    match e {
        8 => pull_rows_e::<8>(w, a, b, p_all, e, out),
        16 => pull_rows_e::<16>(w, a, b, p_all, e, out),
        _ => pull_rows_e::<0>(w, a, b, p_all, e, out),
    }
}

/// [`pull_rows`] for E values a point: the constant `E`, or `e` (≤ 64) when `E` is 0.
#[inline(always)]
fn pull_rows_e<const E: usize>(w: &[f32], a: &[f32], b: &[f32], p_all: usize, e: usize, out: &mut [f32]) {
    const R: usize = 4;
    let e = if E == 0 { e } else { E };
    let mut p0 = 0;
    while p0 < p_all {
        let rows = R.min(p_all - p0);
        let mut rs = [0.0f32; R];
        let mut acc = [[0.0f32; 64]; R];
        for q in 0..p_all {
            let bq = &b[q * e..(q + 1) * e];
            for r in 0..R {
                // Rows past the end read row p0 again and are dropped below.
                let p = if r < rows { p0 + r } else { p0 };
                let wv = w[p * p_all + q];
                rs[r] += wv;
                let acc = &mut acc[r][..e];
                for k in 0..e {
                    acc[k] += wv * bq[k];
                }
            }
        }
        for r in 0..rows {
            let p = p0 + r;
            let ap = &a[p * e..(p + 1) * e];
            let op = &mut out[p * e..(p + 1) * e];
            for k in 0..e {
                op[k] += rs[r] * ap[k] - acc[r][k];
            }
        }
        p0 += R;
    }
}

/// The b side of the same sum: `out[q] += cs_q·b_q − Σ_p w[p][q]·a_p`, `cs_q = Σ_p w[p][q]`, walking
/// W row by row so that memory is read in order.
#[inline(always)]
pub(super) fn pull_cols(w: &[f32], a: &[f32], b: &[f32], p_all: usize, e: usize, cs: &mut [f32], out: &mut [f32]) {
    match e {
        8 => pull_cols_e::<8>(w, a, b, p_all, e, cs, out),
        16 => pull_cols_e::<16>(w, a, b, p_all, e, cs, out),
        _ => pull_cols_e::<0>(w, a, b, p_all, e, cs, out),
    }
}

/// [`pull_cols`] for E values a point: the constant `E`, or `e` when `E` is 0.
#[inline(always)]
fn pull_cols_e<const E: usize>(
    w: &[f32],
    a: &[f32],
    b: &[f32],
    p_all: usize,
    e: usize,
    cs: &mut [f32],
    out: &mut [f32],
) {
    let e = if E == 0 { e } else { E };
    let cs = &mut cs[..p_all];
    cs.fill(0.0);
    for p in 0..p_all {
        let wrow = &w[p * p_all..(p + 1) * p_all];
        let ap = &a[p * e..(p + 1) * e];
        for q in 0..p_all {
            let wv = wrow[q];
            cs[q] += wv;
            let oq = &mut out[q * e..(q + 1) * e];
            for k in 0..e {
                oq[k] -= wv * ap[k];
            }
        }
    }
    for q in 0..p_all {
        let bq = &b[q * e..(q + 1) * e];
        let oq = &mut out[q * e..(q + 1) * e];
        for k in 0..e {
            oq[k] += cs[q] * bq[k];
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn delta_row_impl(
    xe: &[f32],
    ye: &[f32],
    sh: RowShape,
    inner: &FusedKernel,
    outer: &Outer,
    scale: f32,
    needs: Needs,
    gx: &mut [f32],
    gy: &mut [f32],
    s: &mut MmdScratch,
) -> f32 {
    let (o, i, e) = (sh.o, sh.i, sh.e);
    let p_all = o * i;
    let oo = o * o;
    assert!(e <= 64, "embeddings wider than 64 are not supported by the fused engine");
    assert_eq!(xe.len(), p_all * e);
    assert_eq!(ye.len(), p_all * e);
    transpose_in(xe, p_all, e, &mut s.xt);
    transpose_in(ye, p_all, e, &mut s.yt);
    let grad = needs.x || needs.y;

    // 1. Every pair's squared distance, then the kernel on all of them in one pass.
    let tri = p_all * (p_all - 1) / 2;
    let (xx0, yy0, xy0) = (0, tri, 2 * tri);
    for p in 0..p_all.saturating_sub(1) {
        let off = tri_offset(p, p_all);
        distances(&s.xt, p, &s.xt, p + 1, p_all, e, &mut s.dist[xx0 + off..]);
        distances(&s.yt, p, &s.yt, p + 1, p_all, e, &mut s.dist[yy0 + off..]);
    }
    for p in 0..p_all {
        distances(&s.xt, p, &s.yt, 0, p_all, e, &mut s.dist[xy0 + p * p_all..]);
    }
    let total = xy0 + p_all * p_all;
    inner.eval(&s.dist[..total], &mut s.kval[..total], &mut s.kder[..total]);
    block_sums_self(&s.kval[xx0..yy0], sh, &mut s.sxx);
    block_sums_self(&s.kval[yy0..xy0], sh, &mut s.syy);
    s.sxy.fill(0.0);
    for p in 0..p_all {
        let row = &s.kval[xy0 + p * p_all..xy0 + (p + 1) * p_all];
        let ap = p / i;
        for aq in 0..o {
            s.sxy[ap * o + aq] += row[aq * i..(aq + 1) * i].iter().sum::<f32>();
        }
    }
    let (ii, upairs) = ((i * i) as f32, (i * (i - 1)) as f32);
    let k0 = inner.k_zero();
    // Self terms s(X_a) = mean over ordered pairs i ≠ j = 2·(unordered sum)/(I(I−1)).
    let self_term = |sums: &[f32], a: usize| 2.0 * sums[a * o + a] / upairs;
    let raw = |sums: &[f32], a: usize, b: usize| -> f32 {
        if a == b {
            let sa = self_term(sums, a);
            -2.0 * (k0 - sa) / i as f32
        } else {
            let m = sums[a.min(b) * o + a.max(b)] / ii;
            self_term(sums, a) + self_term(sums, b) - 2.0 * m
        }
    };
    // 2. Inner distances, clipped at 0 (a raw value ≤ 0 gets no gradient). Not `f32::max`, which
    // would turn a NaN into 0 and hide a diverged model: NaN must reach the loss.
    let clip = |v: f32| if v < 0.0 { 0.0 } else { v };
    for a in 0..o {
        for b in 0..o {
            s.outer.d[a * o + b] = clip(raw(&s.sxx, a, b));
            s.outer.d[oo + a * o + b] = clip(raw(&s.syy, a, b));
            let dxy = self_term(&s.sxx, a) + self_term(&s.syy, b) - 2.0 * s.sxy[a * o + b] / ii;
            s.outer.d[2 * oo + a * o + b] = clip(dxy);
        }
    }
    // 3–4. The outer bandwidth and V-statistic.
    let loss = outer_level(&mut s.outer, o, outer, scale);
    if !grad {
        return loss;
    }

    // Backward to the block means, then to per-block weights w (∂L/∂k of one unordered pair).
    let g = &s.outer.g;
    let (gxx, gyy, gxy) = (&g[..oo], &g[oo..2 * oo], &g[2 * oo..]);
    for (gm, w, side) in [(gxx, &mut s.wxx, 0), (gyy, &mut s.wyy, 1)] {
        for a in 0..o {
            // ∂L/∂s(a): from this matrix's row and column a, the diagonal's 2/I, and the cross matrix.
            let mut gs = 2.0 * gm[a * o + a] / i as f32;
            for b in 0..o {
                if b != a {
                    gs += gm[a * o + b] + gm[b * o + a];
                }
                gs += if side == 0 { gxy[a * o + b] } else { gxy[b * o + a] };
            }
            w[a * o + a] = gs * 2.0 / upairs;
            for b in a + 1..o {
                w[a * o + b] = -2.0 * (gm[a * o + b] + gm[b * o + a]) / ii;
            }
        }
    }
    for ab in 0..oo {
        s.wxy[ab] = -2.0 * gxy[ab] / ii;
    }

    // Per-pair weights 2·w_block·k′ (∂L/∂‖a − b‖² is w·k′, and ∂‖a − b‖²/∂a = 2(a − b)), then the
    // pulls of the pairs on their points.
    gx[..p_all * e].fill(0.0);
    gy[..p_all * e].fill(0.0);
    for (side, want) in [(0usize, needs.x), (1, needs.y)] {
        if !want {
            continue;
        }
        let (w, base, pts, out) = if side == 0 { (&s.wxx, xx0, xe, &mut *gx) } else { (&s.wyy, yy0, ye, &mut *gy) };
        let wf = &mut s.wfull;
        for p in 0..p_all {
            wf[p * p_all + p] = 0.0;
            let off = base + tri_offset(p, p_all);
            let ap = p / i;
            for aq in ap..o {
                let wa = 2.0 * w[ap * o + aq];
                for q in (aq * i).max(p + 1)..(aq + 1) * i {
                    let v = wa * s.kder[off + q - p - 1];
                    wf[p * p_all + q] = v;
                    wf[q * p_all + p] = v;
                }
            }
        }
        pull_rows(wf, pts, pts, p_all, e, out);
    }
    let wf = &mut s.wfull;
    for p in 0..p_all {
        let ap = p / i;
        let kd = &s.kder[xy0 + p * p_all..xy0 + (p + 1) * p_all];
        for aq in 0..o {
            let wa = 2.0 * s.wxy[ap * o + aq];
            for q in aq * i..(aq + 1) * i {
                wf[p * p_all + q] = wa * kd[q];
            }
        }
    }
    if needs.x {
        pull_rows(wf, xe, ye, p_all, e, gx);
    }
    if needs.y {
        pull_cols(wf, xe, ye, p_all, e, &mut s.colsum, gy);
    }
    loss
}

/// Steps 3 and 4 of the loss of one row, on the clipped inner distances in `s.d`: the outer
/// bandwidth (the median of the 2·O(O−1) + O² values, floored at 1e-6, or the fixed one), the
/// outer V-statistic L_b (returned), and `scale · ∂L_b/∂D` into `s.g` (0 where D was clipped).
#[inline(always)]
pub(super) fn outer_level(s: &mut OuterScratch, o: usize, outer: &Outer, scale: f32) -> f32 {
    let oo = o * o;
    let h = if outer.median {
        s.values.clear();
        for a in 0..o {
            for b in 0..o {
                if a != b {
                    s.values.push(s.d[a * o + b]);
                    s.values.push(s.d[oo + a * o + b]);
                }
            }
        }
        s.values.extend_from_slice(&s.d[2 * oo..3 * oo]);
        let m = median(&mut s.values);
        if m < MIN_BANDWIDTH as f32 {
            MIN_BANDWIDTH as f32
        } else {
            m
        }
    } else {
        outer.fixed_bandwidth
    };
    // 4. The outer V-statistic, and the gradient of L_b with respect to each clipped distance.
    let inv_h = 1.0 / h;
    for (u, d) in s.u.iter_mut().zip(&s.d) {
        *u = d / h;
    }
    outer.kernel.eval(&s.u, &mut s.ko, &mut s.dko);
    let inv_oo = 1.0 / oo as f32;
    let mut terms = [0.0f32; 3];
    for (m, sign) in [(0usize, 1.0f32), (1, 1.0), (2, -2.0)] {
        let coef = scale * sign * inv_oo * inv_h;
        for ab in m * oo..(m + 1) * oo {
            terms[m] += s.ko[ab];
            s.g[ab] = if s.d[ab] > 0.0 { coef * s.dko[ab] } else { 0.0 };
        }
    }
    (terms[0] + terms[1] - 2.0 * terms[2]) * inv_oo
}

/// The median of `values` (reordered), the mean of the two middle values for an even count.
pub fn median(values: &mut [f32]) -> f32 {
    let n = values.len();
    assert!(n > 0, "median of no values");
    let cmp = |a: &f32, b: &f32| a.total_cmp(b);
    let mid = n / 2;
    let (_, &mut upper, _) = values.select_nth_unstable_by(mid, cmp);
    if n % 2 == 1 {
        upper
    } else {
        // The lower middle is the largest of the values left of `mid`.
        let lower = values[..mid].iter().copied().max_by(cmp).expect("n ≥ 2");
        (lower + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::kernels::Kernel;

    /// The §9.2 example of dsm-algorithm.md: O = 3, I = 4, S = 2 (the samples are the embeddings).
    fn golden_rows() -> (Vec<f32>, Vec<f32>) {
        let y = [[0.5, 0.5], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]];
        let x = [[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [[1.1, 0.1], [1.1, 0.1], [0.1, 2.1], [0.1, 2.1]], y];
        let yy = [y.map(|p| p.map(|c| c + 1.0)), y, [[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]];
        let flat = |a: [[[f32; 2]; 4]; 3]| a.iter().flatten().flatten().copied().collect::<Vec<f32>>();
        (flat(x), flat(yy))
    }

    /// The loss of the example's sizes; `bandwidth` None is the median heuristic.
    fn golden_loss(
        xe: &[f32],
        ye: &[f32],
        bandwidth: Option<f32>,
        needs: Needs,
        gx: &mut [f32],
        gy: &mut [f32],
    ) -> f32 {
        let inner = FusedKernel::new(&Kernel::rq_default()).unwrap();
        let kernel = FusedKernel::new(&Kernel::imq(1.0)).unwrap();
        let outer = Outer { kernel, median: bandwidth.is_none(), fixed_bandwidth: bandwidth.unwrap_or(1.0) };
        let shape = RowShape { o: 3, i: 4, e: 2 };
        let mut scratch = MmdScratch::new(3, 4, 2);
        delta_row(xe, ye, shape, &inner, &outer, 1.0, needs, gx, gy, &mut scratch)
    }

    /// The golden δ-loss of UP's code (jax 0.4.23 CPU, float32) on the §9.2 example: outer IMQ MMD²
    /// with the median heuristic, V-statistic, over RQ-mixture inner MMD²_U clipped at 0: 0.22193120
    /// (the burn loss meets it in `loss::outer`). A sum of a few terms of size ≤ 1, so 1e-6.
    #[test]
    #[allow(clippy::excessive_precision)]
    fn golden_delta_loss() {
        let (x, y) = golden_rows();
        let (mut gx, mut gy) = (vec![0.0; 24], vec![0.0; 24]);
        let none = Needs { x: false, y: false };
        let loss = golden_loss(&x, &y, None, none, &mut gx, &mut gy);
        assert!((loss - 0.221_931_20).abs() < 1e-6, "fused δ-loss {loss}");
        // With gradients asked for, the loss is the same.
        let both = Needs { x: true, y: true };
        assert_eq!(golden_loss(&x, &y, None, both, &mut gx, &mut gy), loss);
    }

    /// The gradients of the row loss against central differences, at a point where the atoms are
    /// apart (each side's atoms shifted to their own places, samples jittered), so that no inner
    /// distance sits at the clip and the gradients are large. The outer bandwidth is fixed: the
    /// median heuristic's bandwidth is a constant of the gradient (as in the reference), which a
    /// finite difference would not hold constant. f32 differences with step 1e-3 carry
    /// an error of about ε_f32·L/h ≈ 1e-5, hence 2% of the largest gradient plus 2e-5.
    #[test]
    fn row_gradients_match_finite_differences() {
        let (mut x, mut y) = golden_rows();
        let mut rng = common::rng::stream(3, &["fd".into()]);
        let (xs, ys) = ([[0.0, 0.0], [2.0, 0.0], [0.0, 2.5]], [[0.7, 0.7], [2.5, -0.5], [-0.5, 3.5]]);
        for (side, shifts) in [(&mut x, xs), (&mut y, ys)] {
            for (k, v) in side.iter_mut().enumerate() {
                *v = 0.5 * *v + shifts[k / 8][k % 2] + rand::Rng::random_range(&mut rng, -0.2..0.2f32);
            }
        }
        let both = Needs { x: true, y: true };
        let (mut gx, mut gy) = (vec![0.0; 24], vec![0.0; 24]);
        golden_loss(&x, &y, Some(0.5), both, &mut gx, &mut gy);
        let largest = gx.iter().chain(&gy).fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(largest > 5e-3, "the test point must have real gradients ({largest})");
        let none = Needs { x: false, y: false };
        let (mut sx, mut sy) = (vec![0.0; 24], vec![0.0; 24]);
        let h = 1e-3f32;
        for side in 0..2 {
            for k in 0..24 {
                let at = |delta: f32, sx: &mut [f32], sy: &mut [f32]| {
                    let (mut xp, mut yp) = (x.clone(), y.clone());
                    if side == 0 {
                        xp[k] += delta;
                    } else {
                        yp[k] += delta;
                    }
                    f64::from(golden_loss(&xp, &yp, Some(0.5), none, sx, sy))
                };
                let fd = (at(h, &mut sx, &mut sy) - at(-h, &mut sx, &mut sy)) / (2.0 * f64::from(h));
                let got = f64::from(if side == 0 { gx[k] } else { gy[k] });
                let tol = 2e-2 * f64::from(largest) + 2e-5;
                assert!((got - fd).abs() < tol, "side {side} coordinate {k}: gradient {got} vs difference {fd}");
            }
        }
    }

    #[test]
    fn median_by_selection_matches_a_sort() {
        for n in 1..40 {
            let v: Vec<f32> = (0..n).map(|k| ((k * 7919) % 31) as f32 * 0.5).collect();
            let mut sorted = v.clone();
            sorted.sort_by(f32::total_cmp);
            let want = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
            let mut w = v.clone();
            assert_eq!(median(&mut w), want, "n = {n}");
        }
    }
}
