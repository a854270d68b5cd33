//! The CUDA kernels checked without a GPU: compiled to PTX by NVRTC (every kernel, for every
//! config in `configs/`), and compiled for the host with `-DDSM_HOST` by the system's C++ compiler,
//! then run against the CPU fused engine on random inputs.
//!
//! The host build uses `-ffp-contract=off` (no fused multiply-adds, as the CPU engine has none), so
//! a kernel that sums in the CPU engine's order must match it bit for bit; the others (the loss,
//! whose kernels differ in the last ulps, and whose pulls sum in another order) match at f32
//! tolerances stated in each test.
//!
//! NVRTC is NVIDIA's `libnvrtc` (`.ci/run` installs it from PyPI); without it the PTX test says so
//! and passes, unless `DSM_REQUIRE_NVRTC=1` (set by `.ci/run` once the install worked), where it
//! fails. Without a C++ compiler the host tests say so and pass (every CI machine has g++).

use rand::Rng;

use super::host_backend::host_library;
use super::nvrtc;
use super::source::{ArgKind, ModelKernels, KERNELS};
use crate::fused::adam::{polyak, AdamConfig};
use crate::fused::kernel::FusedKernel;
use crate::fused::mmd::{delta_row, MmdScratch, Needs, Outer, RowShape};
use crate::fused::network::{self, Spectral};
use crate::loss::kernels::Kernel;

/// The kernels of the default δ-model (RQ mixture inner, IMQ outer) for embeddings of `embed`.
fn model(embed: usize) -> ModelKernels {
    ModelKernels {
        embed,
        inner: FusedKernel::new(&Kernel::rq_default()).unwrap(),
        outer: FusedKernel::new(&Kernel::imq(1.0)).unwrap(),
    }
}

/// A function of the host library by name.
macro_rules! host_fn {
    ($lib:expr, $name:literal : fn($($arg:ty),*)) => {{
        // SAFETY: the signature is the kernel's (see kernels/*.cu).
        let f: libloading::Symbol<unsafe extern "C" fn($($arg),*)> =
            unsafe { $lib.get(concat!($name, "\0").as_bytes()) }.expect($name);
        f
    }};
}

fn random(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn rng(name: &str) -> common::rng::StreamRng {
    common::rng::stream(11, &["cuda-host".into(), name.into()])
}

/// Every configuration's kernels compile to PTX (with NVRTC), and every kernel the engine loads
/// is in it.
#[test]
fn every_kernel_compiles_to_ptx() {
    let required = std::env::var("DSM_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    if !nvrtc::nvrtc_present() {
        assert!(!required, "DSM_REQUIRE_NVRTC=1 but {}", nvrtc::NvrtcError::Missing);
        eprintln!("skipped: {}", nvrtc::NvrtcError::Missing);
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs");
    let mut models = vec![model(8), model(2)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let doc = common::config::ConfigDoc::load(&path).unwrap();
        let config = crate::config::LearnerConfig::resolve(&doc).unwrap();
        let m = &config.model;
        let (Some(inner), Some(outer)) = (FusedKernel::new(&m.inner()), FusedKernel::new(&m.outer())) else {
            continue;
        };
        models.push(ModelKernels { embed: m.embedding_dim, inner, outer });
    }
    for m in &models {
        let ptx = nvrtc::compile(&m.source(), nvrtc::DEFAULT_ARCH).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for (name, params) in KERNELS {
            let entry = format!(".entry {name}(");
            let at = text.find(&entry).unwrap_or_else(|| panic!("kernel {name} missing from the PTX"));
            let list = &text[at + entry.len()..];
            let list = &list[..list.find(')').expect("parameter list")];
            let kinds: Vec<ArgKind> = list
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    if p.starts_with(".param .u32") {
                        ArgKind::U32
                    } else if p.starts_with(".param .f32") {
                        ArgKind::F32
                    } else if p.starts_with(".param .u64") {
                        ArgKind::Ptr
                    } else {
                        panic!("kernel {name}: unexpected parameter {p}")
                    }
                })
                .collect();
            assert_eq!(&kinds[..], *params, "kernel {name}: the PTX's parameters against source::KERNELS");
        }
    }
    eprintln!("compiled {} models' kernels to PTX", models.len());
}

/// NVRTC's own error reaches the caller, with the log naming the line.
#[test]
fn a_kernel_that_does_not_compile_is_a_clear_error() {
    if !nvrtc::nvrtc_present() {
        eprintln!("skipped: {}", nvrtc::NvrtcError::Missing);
        return;
    }
    let err = nvrtc::compile("extern \"C\" __global__ void broken() { undeclared(); }", nvrtc::DEFAULT_ARCH)
        .unwrap_err()
        .to_string();
    assert!(err.contains("compute_90") && err.contains("undeclared"), "{err}");
}

#[test]
fn adam_and_polyak_are_the_cpu_engines_bit_for_bit() {
    let Some(lib) = host_library(&model(8)) else { return };
    let adam = host_fn!(lib, "adam_update": fn(u32, *mut f32, *const f32, *mut f32, *mut f32, f32, f32, f32, f32, f32, f32, f32));
    let polyak_k = host_fn!(lib, "polyak_update": fn(u32, f32, f32, *mut f32, *const f32));
    let mut r = rng("adam");
    let n = 1000;
    let cfg = AdamConfig::new(6.25e-5, 1.5e-4);
    let (mut p, grad, mut m, mut v) =
        (random(&mut r, n, 1.0), random(&mut r, n, 0.1), random(&mut r, n, 0.01), vec![0.0; n]);
    let v0: Vec<f32> = random(&mut r, n, 1e-3).iter().map(|x| x.abs()).collect();
    v.copy_from_slice(&v0);
    let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
    for t in 1..=3u64 {
        cfg.step(t, &mut p, &grad, &mut m, &mut v);
        let time = t as i32;
        let b2 = (1.0 - cfg.beta2.powi(time)).sqrt();
        let c = b2 / (1.0 - cfg.beta1.powi(time));
        let (f1, f2) = (1.0 - cfg.beta1, 1.0 - cfg.beta2);
        // SAFETY: every buffer holds n values.
        unsafe {
            adam(
                n as u32,
                p2.as_mut_ptr(),
                grad.as_ptr(),
                m2.as_mut_ptr(),
                v2.as_mut_ptr(),
                cfg.beta1,
                f1,
                cfg.beta2,
                f2,
                c,
                cfg.eps * b2,
                cfg.lr,
            )
        };
    }
    assert_eq!((p, m, v), (p2, m2, v2));
    let (mut t1, online) = (random(&mut r, n, 1.0), random(&mut r, n, 1.0));
    let mut t2 = t1.clone();
    polyak(0.01, &mut t1, &online);
    // SAFETY: both buffers hold n values.
    unsafe { polyak_k(n as u32, (1.0 - 0.01f64) as f32, 0.01f64 as f32, t2.as_mut_ptr(), online.as_ptr()) };
    assert_eq!(t1, t2);
}

#[test]
fn network_element_wise_kernels_are_the_cpu_engines_bit_for_bit() {
    let Some(lib) = host_library(&model(8)) else { return };
    let add_bias = host_fn!(lib, "add_bias": fn(u32, u32, u32, *mut f32, *const f32, u32));
    let add_row_blocks = host_fn!(lib, "add_row_blocks": fn(u32, u32, u32, *mut f32, *const f32, u32));
    let copy_lrelu = host_fn!(lib, "copy_lrelu": fn(u32, *const f32, *mut f32));
    let lrelu_backward = host_fn!(lib, "lrelu_backward": fn(u32, *mut f32, *const f32));
    let add_into = host_fn!(lib, "add_into": fn(u32, *mut f32, *const f32));
    let column_sums = host_fn!(lib, "column_sums": fn(u32, u32, u32, *const f32, *mut f32, u32));
    let mut r = rng("network");
    let (groups, rows, width, inner) = (3usize, 12usize, 7usize, 4usize);
    let n = groups * rows * width;
    let x = random(&mut r, n, 2.0);
    let bias = random(&mut r, groups * width, 1.0);
    for act in [false, true] {
        // Per group, the CPU's add_bias on that group's rows with its bias.
        let mut want = x.clone();
        for g in 0..groups {
            network::add_bias(
                &mut want[g * rows * width..(g + 1) * rows * width],
                &bias[g * width..(g + 1) * width],
                act,
            );
        }
        let mut got = x.clone();
        // SAFETY: sizes as above.
        unsafe { add_bias(groups as u32, rows as u32, width as u32, got.as_mut_ptr(), bias.as_ptr(), act as u32) };
        assert_eq!(got, want, "add_bias act={act}");
        // Row blocks: `inner` consecutive rows share one row of `blocks` (groups·rows/inner of them).
        let blocks = random(&mut r, n / inner, 1.0);
        let mut want = x.clone();
        network::add_row_blocks(&mut want, &blocks, width, inner, act);
        let mut got = x.clone();
        // SAFETY: sizes as above.
        unsafe {
            add_row_blocks(
                (groups * rows) as u32,
                width as u32,
                inner as u32,
                got.as_mut_ptr(),
                blocks.as_ptr(),
                act as u32,
            )
        };
        assert_eq!(got, want, "add_row_blocks act={act}");
    }
    let mut want = vec![0.0; n];
    network::copy_lrelu(&x, &mut want);
    let mut got = vec![0.0; n];
    // SAFETY: n values each.
    unsafe { copy_lrelu(n as u32, x.as_ptr(), got.as_mut_ptr()) };
    assert_eq!(got, want);
    let g0 = random(&mut r, n, 1.0);
    let (mut want, mut got) = (g0.clone(), g0.clone());
    network::lrelu_backward(&mut want, &x);
    // SAFETY: n values each.
    unsafe { lrelu_backward(n as u32, got.as_mut_ptr(), x.as_ptr()) };
    assert_eq!(got, want);
    let (mut want, mut got) = (g0.clone(), g0.clone());
    network::add_into(&mut want, &x);
    // SAFETY: n values each.
    unsafe { add_into(n as u32, got.as_mut_ptr(), x.as_ptr()) };
    assert_eq!(got, want);
    for accumulate in [0u32, 1] {
        let start = random(&mut r, groups * width, 1.0);
        let mut want = if accumulate == 1 { start.clone() } else { vec![0.0; groups * width] };
        for g in 0..groups {
            network::column_sums_into(
                &x[g * rows * width..(g + 1) * rows * width],
                width,
                &mut want[g * width..(g + 1) * width],
            );
        }
        let mut got = start.clone();
        // SAFETY: sizes as above.
        unsafe { column_sums(groups as u32, rows as u32, width as u32, x.as_ptr(), got.as_mut_ptr(), accumulate) };
        assert_eq!(got, want, "column_sums accumulate={accumulate}");
    }
}

#[test]
fn spectral_norm_chain_is_the_cpu_engines() {
    let Some(lib) = host_library(&model(8)) else { return };
    let spectral_v = host_fn!(lib, "spectral_v": fn(u32, u32, *const f32, *const f32, *mut f32));
    let l2_normalize = host_fn!(lib, "l2_normalize": fn(u32, *mut f32));
    let spectral_u = host_fn!(lib, "spectral_u": fn(u32, u32, *const f32, *const f32, *mut f32));
    let spectral_rows = host_fn!(lib, "spectral_rows": fn(u32, u32, *const f32, *const f32, *mut f32));
    let spectral_sigma = host_fn!(lib, "spectral_sigma": fn(u32, *const f32, *const f32, *mut f32));
    let spectral_wbar = host_fn!(lib, "spectral_wbar": fn(u32, *const f32, *const f32, *mut f32));
    let row_dots = host_fn!(lib, "row_dots": fn(u32, u32, *const f32, *const f32, *mut f32));
    let sum_vector = host_fn!(lib, "sum_vector": fn(u32, *const f32, *mut f32));
    let sigma_backward = host_fn!(lib, "sigma_backward": fn(u32, u32, *const f32, *const f32, *const f32, *const f32, *const f32, *mut f32));
    let mut r = rng("spectral");
    for (d_in, d_out) in [(5usize, 9usize), (32, 32), (17, 3)] {
        let w = random(&mut r, d_in * d_out, 0.5);
        let u = random(&mut r, d_out, 1.0);
        let mut cpu = Spectral::default();
        cpu.compute(&w, &u, d_in, d_out);
        let (mut v, mut u_new, mut rows, mut sigma, mut w_bar) =
            (vec![0.0; d_in], vec![0.0; d_out], vec![0.0; d_in], [0.0f32], vec![0.0; d_in * d_out]);
        let (di, d_o) = (d_in as u32, d_out as u32);
        // SAFETY: every buffer has the size its kernel indexes.
        unsafe {
            spectral_v(di, d_o, w.as_ptr(), u.as_ptr(), v.as_mut_ptr());
            l2_normalize(di, v.as_mut_ptr());
            spectral_u(di, d_o, w.as_ptr(), v.as_ptr(), u_new.as_mut_ptr());
            l2_normalize(d_o, u_new.as_mut_ptr());
            spectral_rows(di, d_o, w.as_ptr(), u_new.as_ptr(), rows.as_mut_ptr());
            spectral_sigma(di, v.as_ptr(), rows.as_ptr(), sigma.as_mut_ptr());
            spectral_wbar(di * d_o, w.as_ptr(), sigma.as_ptr(), w_bar.as_mut_ptr());
        }
        assert_eq!((&v, &u_new, sigma[0], &w_bar), (&cpu.v, &cpu.u_new, cpu.sigma, &cpu.w_bar), "{d_in}x{d_out}");
        // The backward: the dot product sums by rows here, so f32 tolerance (relative 1e-5).
        let g = random(&mut r, d_in * d_out, 1.0);
        let start = random(&mut r, d_in * d_out, 1.0);
        let mut want = start.clone();
        cpu.backward(&g, d_in, d_out, &mut want);
        let (mut partial, mut dot, mut got) = (vec![0.0; d_in], [0.0f32], start.clone());
        // SAFETY: as above.
        unsafe {
            row_dots(di, d_o, g.as_ptr(), w_bar.as_ptr(), partial.as_mut_ptr());
            sum_vector(di, partial.as_ptr(), dot.as_mut_ptr());
            sigma_backward(
                di,
                d_o,
                g.as_ptr(),
                v.as_ptr(),
                u_new.as_ptr(),
                sigma.as_ptr(),
                dot.as_ptr(),
                got.as_mut_ptr(),
            );
        }
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * scale, "sigma_backward {a} vs {b}");
        }
    }
}

/// The generated C kernels against `FusedKernel::eval`, for every kernel family: the integer and
/// half-integer powers are the same products (bit for bit), the general power (α = 0.2) and the
/// exponential differ from the CPU's polynomial ln/exp by a few ulps (relative 1e-6).
#[test]
fn generated_kernels_match_fused_kernel_eval() {
    let kernels = [
        (Kernel::rq_default(), 1e-6),
        (Kernel::RationalQuadratic(vec![0.5, 1.0, 2.0, 3.5, 7.0]), 0.0),
        (Kernel::imq(1.0), 0.0),
        (Kernel::cauchy(0.5), 0.0),
        (Kernel::rbf(2.0), 1e-6),
    ];
    let d: Vec<f32> = (0..2000).map(|j| j as f32 * 0.01).chain([1e-7, 55.5, 1e4]).collect();
    for (kernel, tol) in kernels {
        let f = FusedKernel::new(&kernel).unwrap();
        let m = ModelKernels { embed: 8, inner: f.clone(), outer: f.clone() };
        let Some(lib) = host_library(&m) else { return };
        let eval = host_fn!(lib, "eval_inner_kernel": fn(u32, *const f32, *mut f32, *mut f32));
        let (mut k, mut dk) = (vec![0.0; d.len()], vec![0.0; d.len()]);
        // SAFETY: d.len() values each.
        unsafe { eval(d.len() as u32, d.as_ptr(), k.as_mut_ptr(), dk.as_mut_ptr()) };
        let (mut wk, mut wdk) = (vec![0.0; d.len()], vec![0.0; d.len()]);
        f.eval(&d, &mut wk, &mut wdk);
        for j in 0..d.len() {
            for (got, want, what) in [(k[j], wk[j], "k"), (dk[j], wdk[j], "k'")] {
                let err = (got - want).abs();
                assert!(err <= tol * want.abs().max(1e-30), "{kernel:?} {what}({}) = {got}, CPU {want}", d[j]);
            }
        }
    }
}

/// The three loss launches (pair sums, outer level, pulls) and the loss sum, for a batch of rows,
/// against `delta_row` row by row. The kernel values differ in the last ulps and the pulls sum in
/// another order, so: losses to 1e-5 relative, gradients to 1e-4 of the largest.
fn check_delta_rows(
    rows: usize,
    o: usize,
    i: usize,
    e: usize,
    median: bool,
    seed: &str,
    golden: Option<(Vec<f32>, Vec<f32>)>,
) -> Vec<f32> {
    let m = model(e);
    let lib = host_library(&m).expect("checked by the caller");
    let pair_sums = host_fn!(lib, "delta_pair_sums": fn(u32, u32, u32, *const f32, *const f32, *mut f32));
    let outer_k = host_fn!(lib, "delta_outer": fn(u32, u32, u32, f32, u32, f32, *const f32, *mut f32, *mut f32, *mut f32, *mut f32));
    let pull =
        host_fn!(lib, "delta_pull": fn(u32, u32, u32, u32, *const f32, *const f32, *const f32, *mut f32, *mut f32));
    let sum_losses = host_fn!(lib, "sum_row_losses": fn(u32, u32, *const f32, *mut f64, *mut f64));
    let p = o * i;
    let (xe, ye) = match golden {
        Some(xy) => xy,
        None => {
            let mut r = rng(seed);
            // Atoms apart, samples jittered: no inner distance at the clip, real gradients.
            let mut side = |spread: f32| -> Vec<f32> {
                let mut v = Vec::with_capacity(rows * p * e);
                for _ in 0..rows {
                    let centres = random(&mut r, o * e, spread);
                    for a in 0..o {
                        for _ in 0..i {
                            for k in 0..e {
                                v.push(centres[a * e + k] + r.random_range(-0.3..0.3f32));
                            }
                        }
                    }
                }
                v
            };
            (side(2.0), side(2.0))
        }
    };
    let scale = -1.0 / rows as f32;
    let outer = Outer { kernel: m.outer.clone(), median, fixed_bandwidth: 0.7 };
    let mut scratch = MmdScratch::new(o, i, e);
    let (mut want_gx, mut want_gy) = (vec![0.0; rows * p * e], vec![0.0; rows * p * e]);
    let mut want_loss = Vec::new();
    for b in 0..rows {
        let at = b * p * e..(b + 1) * p * e;
        let (gx, gy) = (&mut want_gx[at.clone()], &mut want_gy[at.clone()]);
        let needs = Needs { x: true, y: true };
        let shape = RowShape { o, i, e };
        want_loss.push(delta_row(
            &xe[at.clone()],
            &ye[at],
            shape,
            &m.inner,
            &outer,
            scale,
            needs,
            gx,
            gy,
            &mut scratch,
        ));
    }
    let oo = o * o;
    let mut sums = vec![0.0f32; rows * 3 * oo];
    let mut dist = vec![0.0f32; rows * 3 * oo];
    let mut values = vec![0.0f32; rows * (2 * o * (o - 1) + oo)];
    let mut weights = vec![0.0f32; rows * 3 * oo];
    let mut loss = vec![0.0f32; rows];
    let (mut gx, mut gy) = (vec![f32::NAN; rows * p * e], vec![f32::NAN; rows * p * e]);
    let mut partial = vec![0.0f64; rows.div_ceil(8)];
    let mut total = [0.0f64];
    let (r32, o32, i32_) = (rows as u32, o as u32, i as u32);
    // SAFETY: every buffer has the size its kernel indexes (see delta_mmd.cu's layouts).
    unsafe {
        pair_sums(r32, o32, i32_, xe.as_ptr(), ye.as_ptr(), sums.as_mut_ptr());
        outer_k(
            r32,
            o32,
            i32_,
            scale,
            median as u32,
            0.7,
            sums.as_ptr(),
            dist.as_mut_ptr(),
            values.as_mut_ptr(),
            weights.as_mut_ptr(),
            loss.as_mut_ptr(),
        );
        pull(r32, o32, i32_, 2, xe.as_ptr(), ye.as_ptr(), weights.as_ptr(), gx.as_mut_ptr(), gy.as_mut_ptr());
        sum_losses(r32, 8, loss.as_ptr(), partial.as_mut_ptr(), total.as_mut_ptr());
    }
    for b in 0..rows {
        let (got, want) = (loss[b], want_loss[b]);
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "row {b}: loss {got} vs CPU {want}");
    }
    let cpu_total: f64 = want_loss.iter().map(|&l| f64::from(l)).sum();
    assert!(
        (total[0] - cpu_total).abs() <= 1e-5 * cpu_total.abs().max(1e-3),
        "summed loss {} vs {cpu_total}",
        total[0]
    );
    let largest = want_gx.iter().chain(&want_gy).fold(0.0f32, |m, g| m.max(g.abs()));
    for (side, got, want) in [("x", &gx, &want_gx), ("y", &gy, &want_gy)] {
        for (j, (a, b)) in got.iter().zip(want.iter()).enumerate() {
            assert!((a - b).abs() <= 1e-4 * largest, "∂L/∂{side}[{j}] = {a}, CPU {b} (largest {largest})");
        }
    }
    // The generator step's launch computes the x side alone, and the same values.
    let mut gx1 = vec![f32::NAN; rows * p * e];
    // SAFETY: as above; gy is not written with one side.
    unsafe {
        pull(r32, o32, i32_, 1, xe.as_ptr(), ye.as_ptr(), weights.as_ptr(), gx1.as_mut_ptr(), std::ptr::null_mut())
    };
    assert_eq!(gx1, gx);
    loss
}

#[test]
fn delta_loss_kernels_match_the_cpu_rows() {
    if host_library(&model(8)).is_none() {
        return;
    }
    check_delta_rows(5, 4, 5, 8, true, "median", None);
    check_delta_rows(3, 3, 6, 8, false, "fixed", None);
    // An odd number of rows per block and more than one block of the loss sum.
    check_delta_rows(11, 2, 3, 8, true, "blocks", None);
}

/// The §9.2 golden example of dsm-algorithm.md (O = 3, I = 4, E = 2): 0.22193120 (UP's jax code).
#[test]
#[allow(clippy::excessive_precision)]
fn delta_loss_kernels_meet_the_golden_value() {
    if host_library(&model(2)).is_none() {
        return;
    }
    let y = [[0.5, 0.5], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]];
    let x = [[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], [[1.1, 0.1], [1.1, 0.1], [0.1, 2.1], [0.1, 2.1]], y];
    let yy = [y.map(|p| p.map(|c| c + 1.0)), y, [[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]];
    let flat = |a: [[[f32; 2]; 4]; 3]| a.iter().flatten().flatten().copied().collect::<Vec<f32>>();
    // With scale −1 (one row) the loss is L_b itself.
    let loss = check_delta_rows(1, 3, 4, 2, true, "golden", Some((flat(x), flat(yy))));
    assert!((loss[0] - 0.221_931_20).abs() < 1e-6, "δ-loss {}", loss[0]);
}

#[test]
fn layout_kernels_build_the_iterations_inputs() {
    let Some(lib) = host_library(&model(8)) else { return };
    let swap_axes = host_fn!(lib, "swap_axes": fn(u32, u32, u32, *const f32, *mut f32));
    let window_ends = host_fn!(lib, "window_ends": fn(u32, u32, u32, *const f32, *mut f32, *mut f32));
    let bellman = host_fn!(lib, "bellman_targets": fn(u32, u32, u32, u32, u32, u32, *const f32, *const u8, *const u32, *const f32, *mut f32));
    let mut r = rng("layout");
    let (d0, d1, len) = (3usize, 5usize, 4usize);
    let src = random(&mut r, d0 * d1 * len, 1.0);
    let mut dst = vec![0.0; src.len()];
    // SAFETY: sizes as above.
    unsafe { swap_axes(d0 as u32, d1 as u32, len as u32, src.as_ptr(), dst.as_mut_ptr()) };
    for j0 in 0..d0 {
        for j1 in 0..d1 {
            assert_eq!(&dst[(j1 * d0 + j0) * len..][..len], &src[(j0 * d1 + j1) * len..][..len]);
        }
    }
    // Windows of H = 3, S = 2, for 3 rows; row 1 has a LAST step, so it never bootstraps.
    let (rows, o, i, s, h) = (3usize, 2usize, 4usize, 2usize, 3usize);
    let obs = random(&mut r, rows * (h + 1) * s, 1.0);
    let mut types = vec![crate::train::dataset::STEP_MID; rows * (h + 1)];
    types[(h + 1) + 2] = crate::train::dataset::STEP_LAST;
    let horizons: Vec<u32> = (0..rows * o * i).map(|k| (k % (h + 1)) as u32).collect();
    let boot = random(&mut r, o * rows * i * s, 1.0);
    let (mut s0, mut sh, mut y) = (vec![0.0; rows * s], vec![0.0; rows * s], vec![0.0; rows * o * i * s]);
    // SAFETY: sizes as above.
    unsafe {
        window_ends(rows as u32, (h + 1) as u32, s as u32, obs.as_ptr(), s0.as_mut_ptr(), sh.as_mut_ptr());
        bellman(
            rows as u32,
            o as u32,
            i as u32,
            s as u32,
            h as u32,
            1,
            obs.as_ptr(),
            types.as_ptr(),
            horizons.as_ptr(),
            boot.as_ptr(),
            y.as_mut_ptr(),
        );
    }
    for row in 0..rows {
        assert_eq!(&s0[row * s..][..s], &obs[row * (h + 1) * s..][..s]);
        assert_eq!(&sh[row * s..][..s], &obs[(row * (h + 1) + h) * s..][..s]);
        for a in 0..o {
            for k in 0..i {
                let sample = (row * o + a) * i + k;
                let j = horizons[sample] as usize;
                let want = if row != 1 && j == h {
                    &boot[((a * rows + row) * i + k) * s..][..s]
                } else {
                    &obs[(row * (h + 1) + j) * s..][..s]
                };
                assert_eq!(&y[sample * s..][..s], want, "row {row} atom {a} sample {k}");
            }
        }
    }
}
