//! Matrix products on row-major `f32` slices, through a crate that picks AVX-512, AVX2+FMA or
//! SSE kernels at run time (one binary for every x86-64 machine).
//!
//! Two crates were measured (`learner_bench`, docs/benchmarks.md): `matrixmultiply` (bluss) and
//! `gemm` (sarah-ek). The engine's products are small and skinny (32-wide at the thesis sizes,
//! 256-wide at Pendulum's) and run on one thread each (the engine splits batch rows across
//! threads itself), so the default is the one that wins there; the other stays selectable for the
//! benchmark with [`set_backend`].
//!
//! Every function checks the slice lengths against the shapes before handing raw pointers to the
//! crate, so a shape bug panics instead of reading out of bounds.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which crate computes the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmBackend {
    /// `matrixmultiply::sgemm` (AVX2/FMA dispatch, packing tuned for small matrices).
    Matrixmultiply,
    /// `gemm::gemm` (AVX-512/AVX2 dispatch), single-threaded.
    Gemm,
}

/// `gemm` by default: it measured 5–10% faster than `matrixmultiply` on the thesis sizes
/// (docs/benchmarks.md).
static BACKEND: AtomicU8 = AtomicU8::new(1);

/// Selects the crate for every later product of this process (the benchmark compares both).
pub fn set_backend(backend: GemmBackend) {
    BACKEND.store(backend as u8, Ordering::Relaxed);
}

/// The crate in use.
pub fn backend() -> GemmBackend {
    match BACKEND.load(Ordering::Relaxed) {
        0 => GemmBackend::Matrixmultiply,
        _ => GemmBackend::Gemm,
    }
}

/// A matrix operand: a slice and its row and column strides (in elements).
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Operand<'_> {
    /// One past the largest index an `rows × cols` matrix with these strides reads.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(
            last < self.data.len(),
            "{what}: a {rows}×{cols} operand needs {} elements, got {}",
            last + 1,
            self.data.len()
        );
    }
}

/// `C (m×n, row-major, row stride rsc) = [C +] A (m×k) · B (k×n)`.
#[allow(clippy::too_many_arguments)]
fn product(m: usize, k: usize, n: usize, a: Operand, b: Operand, c: &mut [f32], rsc: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    assert!((m - 1) * rsc + n <= c.len(), "C: a {m}×{n} result needs {} elements, got {}", (m - 1) * rsc + n, c.len());
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(rsc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the checks above bound every index the crates read or write by the slice lengths.
    unsafe {
        match backend() {
            GemmBackend::Matrixmultiply => matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.data.as_ptr(),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr(),
                b.rs as isize,
                b.cs as isize,
                if accumulate { 1.0 } else { 0.0 },
                c.as_mut_ptr(),
                rsc as isize,
                1,
            ),
            GemmBackend::Gemm => gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                rsc as isize,
                accumulate,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr(),
                b.cs as isize,
                b.rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            ),
        }
    }
}

/// `C[m×n] (+)= A[m×k] · B[k×n]`, all row-major and contiguous.
pub fn mm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    product(m, k, n, Operand { data: a, rs: k, cs: 1 }, Operand { data: b, rs: n, cs: 1 }, c, n, accumulate);
}

/// `C[k×n] (+)= Aᵀ · B` with A stored `[m×k]` and B `[m×n]`: a weight gradient `xᵀ·dy`.
pub fn mm_tn(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    product(k, m, n, Operand { data: a, rs: 1, cs: k }, Operand { data: b, rs: n, cs: 1 }, c, n, accumulate);
}

/// `C[m×k] (+)= A · Bᵀ` with A stored `[m×n]` and B `[k×n]`: an input gradient `dy·Wᵀ`.
pub fn mm_nt(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], accumulate: bool) {
    product(m, n, k, Operand { data: a, rs: n, cs: 1 }, Operand { data: b, rs: 1, cs: n }, c, k, accumulate);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        m: usize,
        k: usize,
        n: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| f64::from(a(i, l)) * f64::from(b(l, j))).sum::<f64>() as f32;
            }
        }
        c
    }

    fn close(x: &[f32], y: &[f32]) {
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// All three layouts, both crates, with and without accumulation, against a naive f64 loop.
    #[test]
    fn products_match_a_naive_loop() {
        let (m, k, n) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.11).cos()).collect();
        let bt: Vec<f32> = (0..n * k).map(|v| b[(v % k) * n + v / k]).collect(); // [n×k] = Bᵀ stored row-major
        let at: Vec<f32> = (0..k * m).map(|v| a[(v % m) * k + v / m]).collect(); // [k×m]
        let want = naive(m, k, n, |i, l| a[i * k + l], |l, j| b[l * n + j]);
        for backend in [GemmBackend::Matrixmultiply, GemmBackend::Gemm] {
            set_backend(backend);
            let mut c = vec![1.0; m * n];
            mm(m, k, n, &a, &b, &mut c, false);
            close(&c, &want);
            mm(m, k, n, &a, &b, &mut c, true);
            close(&c, &want.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
            // Aᵀ·B with A stored [k×m]: the same product.
            let mut c = vec![0.0; m * n];
            mm_tn(k, m, n, &at, &b, &mut c, false);
            close(&c, &want);
            // A·(Bᵀ)ᵀ with Bᵀ stored [n×k].
            let mut c = vec![0.0; m * n];
            mm_nt(m, k, n, &a, &bt, &mut c, false);
            close(&c, &want);
        }
        set_backend(GemmBackend::Gemm);
    }

    #[test]
    #[should_panic(expected = "operand needs")]
    fn short_slices_panic() {
        let mut c = vec![0.0; 4];
        mm(2, 3, 2, &[0.0; 5], &[0.0; 6], &mut c, false);
    }
}
