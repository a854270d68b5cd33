//! The [`Backend`] of a real GPU, through cudarc: the CUDA driver API for memory and launches
//! (the kernels compiled by NVRTC for the device's own architecture), cuBLAS for the products.
//!
//! One context and one stream per engine; every call is queued on the stream in order and only
//! `download` waits, so an iteration runs without a host round trip until its loss is read.
//! Allocations are raw device memory owned here (freed on drop) rather than cudarc's tracked
//! slices: with one stream nothing needs the events those record.
//!
//! The products run in full FP32 (cuBLAS's default math mode, no TF32): TF32 breaks the fused
//! engine's tolerances until a test on a GPU shows which products can take it.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{result as cu, sys, CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::backend::{check_args, Addr, Arg, Backend, BufId, Gemm};
use super::nvrtc;
use super::source::{Kernel, ModelKernels, KERNELS};

/// Threads per block of every launch (the kernels' results do not depend on it).
const BLOCK: u32 = 256;
/// The most blocks of one launch: the grid-stride loops cover the rest.
const MAX_BLOCKS: u32 = 65_535;

/// Whether a CUDA driver library can be loaded here. Never panics.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The backend of one GPU, driven by one thread at a time (replicas each own theirs).
pub struct CudaBackend {
    ordinal: usize,
    name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    blas: sys_blas::Handle,
    /// Device pointer and size of every allocation.
    bufs: Vec<(sys::CUdeviceptr, usize)>,
}

// SAFETY: the context, stream, functions and cuBLAS handle are used by one thread at a time (the
// engine owning the backend; replicas run on their own threads, each with its own backend), and
// every call binds the context to the calling thread first.
unsafe impl Send for CudaBackend {}

/// The cuBLAS handle, destroyed on drop.
mod sys_blas {
    use cudarc::cublas::{result, sys};

    pub struct Handle(pub sys::cublasHandle_t);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: created by `create_handle` and destroyed once.
            let _ = unsafe { result::destroy_handle(self.0) };
        }
    }
}

impl CudaBackend {
    /// A backend on GPU `ordinal` with `model`'s kernels compiled for it.
    pub fn new(ordinal: usize, model: &ModelKernels) -> Result<CudaBackend> {
        if !driver_present() {
            bail!("GPU {ordinal}: no CUDA driver (libcuda) on this machine");
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| anyhow!("GPU {ordinal}: {}", describe(e)))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) =
            ctx.compute_capability().map_err(|e| anyhow!("GPU {ordinal} ({name}): {}", describe(e)))?;
        let arch = format!("compute_{major}{minor}");
        let ptx = nvrtc::compile(&model.source(), &arch).with_context(|| format!("GPU {ordinal} ({name})"))?;
        let module = ctx
            .load_module(ptx)
            .map_err(|e| anyhow!("GPU {ordinal} ({name}): loading the kernels: {}", describe(e)))?;
        let functions = KERNELS
            .iter()
            .map(|(k, _)| module.load_function(k).map_err(|e| anyhow!("GPU {ordinal}: kernel {k}: {}", describe(e))))
            .collect::<Result<Vec<_>>>()?;
        let stream = ctx.new_stream().map_err(|e| anyhow!("GPU {ordinal} ({name}): {}", describe(e)))?;
        // SAFETY: the cuBLAS library is probed before any call into it.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("GPU {ordinal} ({name}): cuBLAS (libcublas) is not on this machine's library path");
        }
        let handle = cudarc::cublas::result::create_handle().map_err(|e| anyhow!("GPU {ordinal}: cuBLAS: {e:?}"))?;
        let blas = sys_blas::Handle(handle);
        // SAFETY: a live handle and a live stream of this context.
        unsafe { cudarc::cublas::result::set_stream(blas.0, stream.cu_stream() as _) }
            .map_err(|e| anyhow!("GPU {ordinal}: cuBLAS: {e:?}"))?;
        Ok(CudaBackend { ordinal, name, ctx, stream, functions, blas, bufs: Vec::new() })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The stream every call of this backend is queued on (for NCCL).
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// "GPU 0 (NVIDIA H100 80GB HBM3)".
    pub fn describe(&self) -> String {
        format!("GPU {} ({})", self.ordinal, self.name)
    }

    fn ptr(&self, a: Addr) -> sys::CUdeviceptr {
        let (base, len) = self.bufs[a.buf.0];
        debug_assert!(a.byte <= len);
        base + a.byte as u64
    }

    /// Makes this backend's context current on the calling thread (replicas move between threads).
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| self.fail("binding the context", e))
    }

    fn fail(&self, what: &str, e: cu::DriverError) -> anyhow::Error {
        anyhow!("{}: {what}: {}", self.describe(), describe(e))
    }

    /// Waits for every queued call.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| self.fail("synchronising", e))
    }
}

/// The driver's name and text for an error.
fn describe(e: cu::DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{:?} ({})", e.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        for (ptr, _) in self.bufs.drain(..) {
            // SAFETY: allocated by `malloc_sync` and freed once, after the stream is idle.
            let _ = unsafe { cu::free_sync(ptr) };
        }
    }
}

impl Backend for CudaBackend {
    fn address(&mut self, a: Addr) -> u64 {
        self.ptr(a)
    }

    fn synchronize(&mut self) -> Result<()> {
        CudaBackend::synchronize(self)
    }

    fn alloc(&mut self, bytes: usize) -> Result<BufId> {
        self.bind()?;
        // SAFETY: a plain allocation in this backend's context, zeroed before use.
        let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }.map_err(|e| {
            let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
            let mib = |b: usize| b / (1 << 20);
            let what = format!("allocating {} MiB ({} of {} MiB free)", mib(bytes), mib(free), mib(total));
            self.fail(&what, e)
        })?;
        // SAFETY: `ptr` holds `bytes.max(1)` bytes.
        unsafe { cu::memset_d8_async(ptr, 0, bytes.max(1), self.stream.cu_stream()) }
            .map_err(|e| self.fail("zeroing", e))?;
        self.bufs.push((ptr, bytes));
        Ok(BufId(self.bufs.len() - 1))
    }

    fn upload(&mut self, dst: Addr, data: &[u8]) -> Result<()> {
        self.bind()?;
        let (p, s) = (self.ptr(dst), self.stream.cu_stream());
        // SAFETY: the destination range lies in one allocation (the engine's views are checked),
        // and the copy completes before `data` is released: the stream is synchronised here, as
        // the host buffer is pageable and reused by the caller.
        unsafe { cu::memcpy_htod_async(p, data, s) }.map_err(|e| self.fail("copying to the GPU", e))?;
        self.synchronize()
    }

    fn download(&mut self, src: Addr, out: &mut [u8]) -> Result<()> {
        self.bind()?;
        let (p, s) = (self.ptr(src), self.stream.cu_stream());
        // SAFETY: as `upload`; the stream is synchronised before `out` is read.
        unsafe { cu::memcpy_dtoh_async(out, p, s) }.map_err(|e| self.fail("copying from the GPU", e))?;
        self.synchronize()
    }

    fn copy(&mut self, dst: Addr, src: Addr, bytes: usize) -> Result<()> {
        self.bind()?;
        let (d, s, st) = (self.ptr(dst), self.ptr(src), self.stream.cu_stream());
        // SAFETY: both ranges lie in allocations of this backend.
        unsafe { cu::memcpy_dtod_async(d, s, bytes, st) }.map_err(|e| self.fail("copying on the GPU", e))
    }

    fn zero(&mut self, dst: Addr, bytes: usize) -> Result<()> {
        self.bind()?;
        let (d, st) = (self.ptr(dst), self.stream.cu_stream());
        // SAFETY: the range lies in an allocation of this backend.
        unsafe { cu::memset_d8_async(d, 0, bytes, st) }.map_err(|e| self.fail("zeroing", e))
    }

    fn launch(&mut self, kernel: Kernel, work: usize, args: &[Arg]) -> Result<()> {
        check_args(kernel, args);
        // The values the launch points at, in order (each vector is sized first, so the
        // references stay valid).
        let mut ints = Vec::with_capacity(args.len());
        let mut floats = Vec::with_capacity(args.len());
        let mut ptrs = Vec::with_capacity(args.len());
        for a in args {
            match *a {
                Arg::U32(v) => ints.push(v),
                Arg::F32(v) => floats.push(v),
                Arg::Ptr(addr) => ptrs.push(self.ptr(addr)),
            }
        }
        let function = &self.functions[kernel as usize];
        let mut builder = self.stream.launch_builder(function);
        let (mut i, mut f, mut p) = (0, 0, 0);
        for a in args {
            match a {
                Arg::U32(_) => {
                    builder.arg(&ints[i]);
                    i += 1;
                }
                Arg::F32(_) => {
                    builder.arg(&floats[f]);
                    f += 1;
                }
                Arg::Ptr(_) => {
                    builder.arg(&ptrs[p]);
                    p += 1;
                }
            }
        }
        let blocks = (work.max(1) as u64).div_ceil(u64::from(BLOCK)).min(u64::from(MAX_BLOCKS)) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the arguments match the kernel's parameters (checked against the table the PTX
        // test checks), every pointer lies in a live allocation, and the kernels index only the
        // sizes they are given.
        unsafe { builder.launch(cfg) }.map_err(|e| self.fail(&format!("launching {}", kernel.name()), e))?;
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<()> {
        self.bind()?;
        g.check();
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so cuBLAS gets B as its
        // first operand (see backend::Gemm for the storage of each).
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
        let ldb = if g.tb { k } else { n };
        let lda = if g.ta { m } else { k };
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        let (pa, pb, pc) = (self.ptr(g.a.addr()), self.ptr(g.b.addr()), self.ptr(g.c.addr()));
        // SAFETY: every matrix of the batch lies inside its view (checked), the handle is bound to
        // this backend's stream, and alpha/beta are host scalars that outlive the call.
        unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                self.blas.0,
                op(g.tb),
                op(g.ta),
                n,
                m,
                k,
                &alpha,
                pb as *const f32,
                ldb,
                g.stride_b as i64,
                pa as *const f32,
                lda,
                g.stride_a as i64,
                &beta,
                pc as *mut f32,
                n,
                g.stride_c as i64,
                g.batch as i32,
            )
        }
        .map_err(|e| anyhow!("{}: cuBLAS sgemm ({}×{}×{}, batch {}): {e:?}", self.describe(), g.m, g.n, g.k, g.batch))
    }
}
