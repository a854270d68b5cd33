//! A [`Backend`] that runs the kernels' host build (see `kernels/prelude.cuh`) on the CPU, and its
//! matrix products with the fused engine's `matmul`: the device engine's whole iteration without a
//! GPU, for the tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use libloading::Library;

use super::backend::{check_args, Addr, Arg, Backend, BufId, Gemm};
use super::source::{Kernel, ModelKernels, KERNELS};
use crate::fused::matmul::{mm, mm_nt, mm_tn};

/// The host build of `m`'s source (with its trampolines), compiled once per test process; `None`
/// (with a message) where there is no C++ compiler.
pub fn host_library(m: &ModelKernels) -> Option<Arc<Library>> {
    static LIBS: OnceLock<Mutex<HashMap<String, Arc<Library>>>> = OnceLock::new();
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let source = m.host_source();
    let mut libs = LIBS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = libs.get(&source) {
        return Some(lib.clone());
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").output().is_err() {
        eprintln!("skipped: no C++ compiler ({cxx}) to build the CUDA kernels for the host");
        return None;
    }
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
    let n = libs.len();
    let src_path: PathBuf = dir.path().join(format!("kernels{n}.cpp"));
    let lib_path = dir.path().join(format!("libkernels{n}.so"));
    std::fs::write(&src_path, &source).unwrap();
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", "-DDSM_HOST"])
        .args(["-Wall", "-Werror"])
        .arg(&src_path)
        .arg("-o")
        .arg(&lib_path)
        .output()
        .expect("run the C++ compiler");
    assert!(out.status.success(), "the kernels do not compile for the host:\n{}", String::from_utf8_lossy(&out.stderr));
    // SAFETY: a library built just now from our own source; its initialisers do nothing.
    let lib = Arc::new(unsafe { Library::new(&lib_path) }.expect("load the host kernels"));
    libs.insert(source, lib.clone());
    Some(lib)
}

type Trampoline = unsafe extern "C" fn(*const u64);

/// One allocation: 8-byte words, so every view of f32, u32, u8 or f64 is aligned.
struct HostBuf {
    words: Vec<u64>,
    bytes: usize,
}

pub struct HostBackend {
    _lib: Arc<Library>,
    calls: Vec<Trampoline>,
    bufs: Vec<HostBuf>,
    /// Kernel launches so far, by kernel.
    pub launches: Vec<usize>,
}

impl HostBackend {
    pub fn new(m: &ModelKernels) -> Option<HostBackend> {
        let lib = host_library(m)?;
        let calls = KERNELS
            .iter()
            .map(|(name, _)| {
                let symbol = format!("dsm_call_{name}\0");
                // SAFETY: every trampoline has this signature (source::host_source).
                *unsafe { lib.get::<Trampoline>(symbol.as_bytes()) }.unwrap_or_else(|e| panic!("{name}: {e}"))
            })
            .collect();
        Some(HostBackend { _lib: lib, calls, bufs: Vec::new(), launches: vec![0; KERNELS.len()] })
    }

    fn ptr(&mut self, a: Addr, bytes: usize) -> *mut u8 {
        let buf = &mut self.bufs[a.buf.0];
        assert!(a.byte + bytes <= buf.bytes, "access {}+{bytes} past an allocation of {}", a.byte, buf.bytes);
        // SAFETY: within the allocation (checked above).
        unsafe { (buf.words.as_mut_ptr() as *mut u8).add(a.byte) }
    }

    fn matrix(&mut self, a: Addr, len: usize) -> *mut f32 {
        self.ptr(a, len * 4) as *mut f32
    }
}

impl Backend for HostBackend {
    fn address(&mut self, a: Addr) -> u64 {
        self.ptr(a, 0) as u64
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufId> {
        self.bufs.push(HostBuf { words: vec![0; bytes.div_ceil(8)], bytes });
        Ok(BufId(self.bufs.len() - 1))
    }

    fn upload(&mut self, dst: Addr, data: &[u8]) -> Result<()> {
        let p = self.ptr(dst, data.len());
        // SAFETY: `ptr` checked the range.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    fn download(&mut self, src: Addr, out: &mut [u8]) -> Result<()> {
        let p = self.ptr(src, out.len());
        // SAFETY: `ptr` checked the range.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn copy(&mut self, dst: Addr, src: Addr, bytes: usize) -> Result<()> {
        let s = self.ptr(src, bytes);
        let d = self.ptr(dst, bytes);
        // SAFETY: both ranges checked; `copy` allows overlap.
        unsafe { std::ptr::copy(s, d, bytes) };
        Ok(())
    }

    fn zero(&mut self, dst: Addr, bytes: usize) -> Result<()> {
        let d = self.ptr(dst, bytes);
        // SAFETY: checked the range.
        unsafe { std::ptr::write_bytes(d, 0, bytes) };
        Ok(())
    }

    fn launch(&mut self, kernel: Kernel, _work: usize, args: &[Arg]) -> Result<()> {
        check_args(kernel, args);
        let slots: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::U32(v) => u64::from(v),
                Arg::F32(v) => u64::from(v.to_bits()),
                Arg::Ptr(addr) => self.ptr(addr, 0) as u64,
            })
            .collect();
        self.launches[kernel as usize] += 1;
        // SAFETY: the arguments match the kernel's parameters (checked), and every pointer is
        // inside an allocation of this backend; the kernels stay within the sizes they are given.
        unsafe { (self.calls[kernel as usize])(slots.as_ptr()) };
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        g.check();
        for j in 0..g.batch {
            let (la, lb, lc) = (g.m * g.k, g.k * g.n, g.m * g.n);
            let pa = self.matrix(g.a.sub(j * g.stride_a, la).addr(), la);
            let pb = self.matrix(g.b.sub(j * g.stride_b, lb).addr(), lb);
            let pc = self.matrix(g.c.sub(j * g.stride_c, lc).addr(), lc);
            // SAFETY: each range lies inside its allocation (checked), and C never overlaps A or B
            // (the engine's products write buffers they do not read).
            let (a, b, c) = unsafe {
                (
                    std::slice::from_raw_parts(pa, la),
                    std::slice::from_raw_parts(pb, lb),
                    std::slice::from_raw_parts_mut(pc, lc),
                )
            };
            match (g.ta, g.tb) {
                (false, false) => mm(g.m, g.k, g.n, a, b, c, g.accumulate),
                // C[m×n] = Aᵀ·B with A stored [k][m]: `mm_tn` over the k rows.
                (true, false) => mm_tn(g.k, g.m, g.n, a, b, c, g.accumulate),
                // C[m×n] = A·Bᵀ with B stored [n][k].
                (false, true) => mm_nt(g.m, g.k, g.n, a, b, c, g.accumulate),
                (true, true) => anyhow::bail!("no product needs both operands transposed"),
            }
        }
        Ok(())
    }
}

/// A [`DeviceCollective`](super::backend::DeviceCollective) over host backends of one process:
/// the thread collective of the CPU replicas, on the backends' memory.
pub struct HostMemoryCollective(pub crate::fused::collective::ThreadCollective);

impl crate::fused::collective::Collective for HostMemoryCollective {
    type Buffer = super::backend::DeviceSlice;

    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn all_reduce_sum(&self, buf: &mut Self::Buffer) -> Result<()> {
        // SAFETY: `buf` is `len` f32 of a live host backend allocation (DeviceEngine passes its
        // own packed gradient buffer), not touched by anyone else during the call.
        let data = unsafe { std::slice::from_raw_parts_mut(buf.ptr as *mut f32, buf.len) };
        let mut v = data.to_vec();
        self.0.all_reduce_sum(&mut v)?;
        data.copy_from_slice(&v);
        Ok(())
    }
}
