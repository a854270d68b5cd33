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
//! The backward pass walks the same pairs with the cached k′: the gradient of a pair's kernel value
//! is the weight of its block, so one pass per matrix gives the gradients of both samples. Loops
//! run over the samples of the other side in a `[E][P]` (transposed) layout, so the compiler
//! vectorises them; a copy of the whole row function is compiled for AVX2+FMA and chosen at run time.

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
    xt: Vec<f32>,
    yt: Vec<f32>,
    gxt: Vec<f32>,
    gyt: Vec<f32>,
    /// Cached k′ of the x–x, y–y and x–y pairs, `[P][P]`.
    dxx: Vec<f32>,
    dyy: Vec<f32>,
    dxy: Vec<f32>,
    dist: Vec<f32>,
    kval: Vec<f32>,
    kder: Vec<f32>,
    wrow: Vec<f32>,
    /// Block sums, `[O][O]`.
    sxx: Vec<f32>,
    syy: Vec<f32>,
    sxy: Vec<f32>,
    /// Inner distances (clipped) and the gradients of the loss with respect to them, `[O][O]`.
    d: [Vec<f32>; 3],
    g: [Vec<f32>; 3],
    /// Per-pair weights, `[O][O]`.
    wxx: Vec<f32>,
    wyy: Vec<f32>,
    wxy: Vec<f32>,
    values: Vec<f32>,
}

impl MmdScratch {
    pub fn new(o: usize, i: usize, e: usize) -> MmdScratch {
        let p = o * i;
        let oo = o * o;
        MmdScratch {
            xt: vec![0.0; e * p],
            yt: vec![0.0; e * p],
            gxt: vec![0.0; e * p],
            gyt: vec![0.0; e * p],
            dxx: vec![0.0; p * p],
            dyy: vec![0.0; p * p],
            dxy: vec![0.0; p * p],
            dist: vec![0.0; p],
            kval: vec![0.0; p],
            kder: vec![0.0; p],
            wrow: vec![0.0; p],
            sxx: vec![0.0; oo],
            syy: vec![0.0; oo],
            sxy: vec![0.0; oo],
            d: [vec![0.0; oo], vec![0.0; oo], vec![0.0; oo]],
            g: [vec![0.0; oo], vec![0.0; oo], vec![0.0; oo]],
            wxx: vec![0.0; oo],
            wyy: vec![0.0; oo],
            wxy: vec![0.0; oo],
            values: Vec::with_capacity(3 * oo),
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

fn transpose_in(src: &[f32], p: usize, e: usize, dst: &mut [f32]) {
    for q in 0..p {
        for k in 0..e {
            dst[k * p + q] = src[q * e + k];
        }
    }
}

fn transpose_out(src: &[f32], p: usize, e: usize, dst: &mut [f32]) {
    for q in 0..p {
        for k in 0..e {
            dst[q * e + k] = src[k * p + q];
        }
    }
}

/// `dist[j] = Σ_e (point[e] − cols[e][lo + j])²` for j in 0..hi−lo.
#[inline(always)]
fn distances(point: &[f32], cols: &[f32], p: usize, lo: usize, hi: usize, dist: &mut [f32]) {
    let dist = &mut dist[..hi - lo];
    dist.fill(0.0);
    for (k, &pk) in point.iter().enumerate() {
        let col = &cols[k * p + lo..k * p + hi];
        for (d, &c) in dist.iter_mut().zip(col) {
            let t = pk - c;
            *d += t * t;
        }
    }
}

/// Σ_j (point_e − cols[e][lo+j])·w[j] for one coordinate e, and `grad[lo+j] −= (…)·w[j]` when a
/// gradient of the other side is wanted; 8 partial sums so that the loop vectorises.
#[inline(always)]
fn pull(pe: f32, col: &[f32], w: &[f32], grad: Option<&mut [f32]>) -> f32 {
    let n = w.len();
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    match grad {
        Some(g) => {
            let g = &mut g[..n];
            for c in 0..chunks {
                for l in 0..8 {
                    let j = c * 8 + l;
                    let t = (pe - col[j]) * w[j];
                    acc[l] += t;
                    g[j] -= t;
                }
            }
            for j in chunks * 8..n {
                let t = (pe - col[j]) * w[j];
                acc[0] += t;
                g[j] -= t;
            }
        }
        None => {
            for c in 0..chunks {
                for l in 0..8 {
                    let j = c * 8 + l;
                    acc[l] += (pe - col[j]) * w[j];
                }
            }
            for j in chunks * 8..n {
                acc[0] += (pe - col[j]) * w[j];
            }
        }
    }
    acc.iter().sum()
}

/// Kernel sums over the pairs of one side with itself (q > p), into `[O][O]` block sums (upper
/// triangle), caching k′ in `kd[p][q]` when `keep`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn self_pairs(
    t: &[f32],
    sh: RowShape,
    kernel: &FusedKernel,
    sums: &mut [f32],
    kd: &mut [f32],
    keep: bool,
    dist: &mut [f32],
    kval: &mut [f32],
    kder: &mut [f32],
) {
    let (o, i, e) = (sh.o, sh.i, sh.e);
    let p_all = o * i;
    sums.fill(0.0);
    let mut point = [0.0f32; 64];
    for p in 0..p_all.saturating_sub(1) {
        for k in 0..e {
            point[k] = t[k * p_all + p];
        }
        let (lo, hi) = (p + 1, p_all);
        distances(&point[..e], t, p_all, lo, hi, dist);
        kernel.eval(&dist[..hi - lo], kval, kder);
        if keep {
            kd[p * p_all + lo..p * p_all + hi].copy_from_slice(&kder[..hi - lo]);
        }
        let ap = p / i;
        for aq in ap..o {
            let (qlo, qhi) = ((aq * i).max(lo), (aq + 1) * i);
            sums[ap * o + aq] += kval[qlo - lo..qhi - lo].iter().sum::<f32>();
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
    assert!(e <= 64, "embeddings wider than 64 are not supported by the fused engine");
    assert_eq!(xe.len(), p_all * e);
    assert_eq!(ye.len(), p_all * e);
    transpose_in(xe, p_all, e, &mut s.xt);
    transpose_in(ye, p_all, e, &mut s.yt);
    let grad = needs.x || needs.y;

    // 1. Pair blocks.
    self_pairs(&s.xt, sh, inner, &mut s.sxx, &mut s.dxx, needs.x, &mut s.dist, &mut s.kval, &mut s.kder);
    self_pairs(&s.yt, sh, inner, &mut s.syy, &mut s.dyy, needs.y, &mut s.dist, &mut s.kval, &mut s.kder);
    s.sxy.fill(0.0);
    let mut point = [0.0f32; 64];
    for p in 0..p_all {
        for k in 0..e {
            point[k] = s.xt[k * p_all + p];
        }
        distances(&point[..e], &s.yt, p_all, 0, p_all, &mut s.dist);
        inner.eval(&s.dist[..p_all], &mut s.kval, &mut s.kder);
        if grad {
            s.dxy[p * p_all..(p + 1) * p_all].copy_from_slice(&s.kder[..p_all]);
        }
        let ap = p / i;
        for aq in 0..o {
            s.sxy[ap * o + aq] += s.kval[aq * i..(aq + 1) * i].iter().sum::<f32>();
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
            s.d[0][a * o + b] = clip(raw(&s.sxx, a, b));
            s.d[1][a * o + b] = clip(raw(&s.syy, a, b));
            let dxy = self_term(&s.sxx, a) + self_term(&s.syy, b) - 2.0 * s.sxy[a * o + b] / ii;
            s.d[2][a * o + b] = clip(dxy);
        }
    }
    // 3. The outer bandwidth.
    let h = if outer.median {
        s.values.clear();
        for a in 0..o {
            for b in 0..o {
                if a != b {
                    s.values.push(s.d[0][a * o + b]);
                    s.values.push(s.d[1][a * o + b]);
                }
            }
        }
        s.values.extend_from_slice(&s.d[2]);
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
    let inv_oo = 1.0 / (o * o) as f32;
    let mut terms = [0.0f32; 3];
    for (m, sign) in [(0usize, 1.0f32), (1, 1.0), (2, -2.0)] {
        for ab in 0..o * o {
            let d = s.d[m][ab];
            let (k, dk) = outer.kernel.eval_one(d / h);
            terms[m] += k;
            s.g[m][ab] = if d > 0.0 { scale * sign * inv_oo * dk / h } else { 0.0 };
        }
    }
    let loss = (terms[0] + terms[1] - 2.0 * terms[2]) * inv_oo;
    if !grad {
        return loss;
    }

    // Backward to the block means, then to per-pair weights w (∂L/∂k of one unordered pair).
    let (gxx, gyy, gxy) = (&s.g[0], &s.g[1], &s.g[2]);
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
    for ab in 0..o * o {
        s.wxy[ab] = -2.0 * gxy[ab] / ii;
    }

    s.gxt.fill(0.0);
    s.gyt.fill(0.0);
    for (side, want) in [(0usize, needs.x), (1, needs.y)] {
        if !want {
            continue;
        }
        let (t, kd, w, gt) =
            if side == 0 { (&s.xt, &s.dxx, &s.wxx, &mut s.gxt) } else { (&s.yt, &s.dyy, &s.wyy, &mut s.gyt) };
        for p in 0..p_all.saturating_sub(1) {
            let (lo, hi) = (p + 1, p_all);
            let ap = p / i;
            for aq in ap..o {
                let (qlo, qhi) = ((aq * i).max(lo), (aq + 1) * i);
                let wa = 2.0 * w[ap * o + aq];
                for q in qlo..qhi {
                    s.wrow[q - lo] = wa * kd[p * p_all + q];
                }
            }
            for k in 0..e {
                let pe = t[k * p_all + p];
                let acc = pull(
                    pe,
                    &t[k * p_all + lo..k * p_all + hi],
                    &s.wrow[..hi - lo],
                    Some(&mut gt[k * p_all + lo..k * p_all + hi]),
                );
                gt[k * p_all + p] += acc;
            }
        }
    }
    for p in 0..p_all {
        let ap = p / i;
        for aq in 0..o {
            let wa = 2.0 * s.wxy[ap * o + aq];
            for q in aq * i..(aq + 1) * i {
                s.wrow[q] = wa * s.dxy[p * p_all + q];
            }
        }
        for k in 0..e {
            let pe = s.xt[k * p_all + p];
            let col = &s.yt[k * p_all..(k + 1) * p_all];
            let g = if needs.y { Some(&mut s.gyt[k * p_all..(k + 1) * p_all]) } else { None };
            let acc = pull(pe, col, &s.wrow[..p_all], g);
            s.gxt[k * p_all + p] += acc;
        }
    }
    if needs.x {
        transpose_out(&s.gxt, p_all, e, gx);
    }
    if needs.y {
        transpose_out(&s.gyt, p_all, e, gy);
    }
    loss
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
