//! What the device engine needs from a device: memory, kernel launches by the table of
//! `cuda::source`, and row-major matrix products.
//!
//! Two implementations: the CUDA driver through cudarc (`cuda::driver`, the real one), and the host
//! build of the same kernels (the tests' `HostBackend`), which runs the engine's whole iteration —
//! every layout, launch and product — on the CPU, where it is checked against the fused engine.
//! So the only code that a GPU alone can check is the thin layer that turns these calls into
//! cudarc calls.

use std::marker::PhantomData;

use anyhow::Result;

use super::source::{ArgKind, Kernel};
use crate::fused::collective::Collective;

/// One allocation of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(pub usize);

/// A byte address: an allocation and an offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub buf: BufId,
    pub byte: usize,
}

/// A kernel argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    U32(u32),
    F32(f32),
    Ptr(Addr),
}

impl Arg {
    pub fn kind(&self) -> ArgKind {
        match self {
            Arg::U32(_) => ArgKind::U32,
            Arg::F32(_) => ArgKind::F32,
            Arg::Ptr(_) => ArgKind::Ptr,
        }
    }
}

/// `len` values of `T` at element `off` of an allocation.
#[derive(Debug)]
pub struct View<T> {
    pub buf: BufId,
    pub off: usize,
    pub len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for View<T> {}

impl<T> View<T> {
    pub fn new(buf: BufId, len: usize) -> View<T> {
        View { buf, off: 0, len, _t: PhantomData }
    }

    /// Elements `off..off + len` of this view.
    pub fn sub(self, off: usize, len: usize) -> View<T> {
        assert!(off + len <= self.len, "view {off}+{len} past a view of {}", self.len);
        View { buf: self.buf, off: self.off + off, len, _t: PhantomData }
    }

    pub fn addr(self) -> Addr {
        Addr { buf: self.buf, byte: self.off * std::mem::size_of::<T>() }
    }

    pub fn arg(self) -> Arg {
        Arg::Ptr(self.addr())
    }

    pub fn bytes(self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

/// `C = op(A)·op(B) (+ C)`, row-major, `batch` times with element strides between the batch's
/// matrices (a stride 0 shares one matrix). op(A) is m×k (A stored `[m][k]`, or `[k][m]` when
/// `ta`), op(B) is k×n (`[k][n]`, or `[n][k]` when `tb`), C is `[m][n]`; all contiguous.
#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub a: View<f32>,
    pub b: View<f32>,
    pub c: View<f32>,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub accumulate: bool,
}

impl Gemm {
    /// One product `C (+)= op(A)·op(B)`.
    pub fn one(m: usize, n: usize, k: usize, a: View<f32>, b: View<f32>, c: View<f32>) -> Gemm {
        Gemm {
            m,
            n,
            k,
            ta: false,
            tb: false,
            a,
            b,
            c,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            accumulate: false,
        }
    }

    pub fn t_a(mut self) -> Gemm {
        self.ta = true;
        self
    }

    pub fn t_b(mut self) -> Gemm {
        self.tb = true;
        self
    }

    pub fn add(mut self) -> Gemm {
        self.accumulate = true;
        self
    }

    /// `batch` products, the matrices `stride_*` elements apart.
    pub fn batched(mut self, batch: usize, stride_a: usize, stride_b: usize, stride_c: usize) -> Gemm {
        (self.batch, self.stride_a, self.stride_b, self.stride_c) = (batch, stride_a, stride_b, stride_c);
        self
    }

    /// Checks that every matrix of the batch lies inside its view.
    pub fn check(&self) {
        let last = self.batch.saturating_sub(1);
        let within = |v: &View<f32>, stride: usize, len: usize, what: &str| {
            assert!(last * stride + len <= v.len, "gemm {what}: {} + {len} past a view of {}", last * stride, v.len);
        };
        within(&self.a, self.stride_a, self.m * self.k, "A");
        within(&self.b, self.stride_b, self.k * self.n, "B");
        within(&self.c, self.stride_c, self.m * self.n, "C");
    }
}

/// The buffer a device collective sums: `len` f32 at an address of the backend's memory (a device
/// pointer; a host address for the host backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlice {
    pub ptr: u64,
    pub len: usize,
}

/// How the device replicas of one model sum their gradients (NCCL across GPUs).
pub type DeviceCollective = Box<dyn Collective<Buffer = DeviceSlice> + Send + Sync>;

/// A device the engine runs on. Work is queued in order (one stream); `download` waits for it.
pub trait Backend {
    /// The address of `a` in this backend's memory, for a collective.
    fn address(&mut self, a: Addr) -> u64;
    /// Waits until every queued call is done.
    fn synchronize(&mut self) -> Result<()>;
    /// `bytes` of zeroed device memory.
    fn alloc(&mut self, bytes: usize) -> Result<BufId>;
    fn upload(&mut self, dst: Addr, data: &[u8]) -> Result<()>;
    fn download(&mut self, src: Addr, out: &mut [u8]) -> Result<()>;
    fn copy(&mut self, dst: Addr, src: Addr, bytes: usize) -> Result<()>;
    fn zero(&mut self, dst: Addr, bytes: usize) -> Result<()>;
    /// Runs `kernel` over `work` items (its grid-stride loop's bound; the launch size is the
    /// backend's choice, and no kernel's result depends on it).
    fn launch(&mut self, kernel: Kernel, work: usize, args: &[Arg]) -> Result<()>;
    fn gemm(&mut self, g: &Gemm) -> Result<()>;
}

/// Checks a launch's arguments against the kernel table (a mismatch is a bug in the engine).
pub fn check_args(kernel: Kernel, args: &[Arg]) {
    let kinds: Vec<ArgKind> = args.iter().map(Arg::kind).collect();
    assert_eq!(&kinds[..], kernel.params(), "arguments of {}", kernel.name());
}

/// Typed helpers over any backend.
pub trait BackendExt: Backend {
    fn alloc_f32(&mut self, len: usize) -> Result<View<f32>> {
        Ok(View::new(self.alloc(len.max(1) * 4)?, len))
    }

    fn alloc_u32(&mut self, len: usize) -> Result<View<u32>> {
        Ok(View::new(self.alloc(len.max(1) * 4)?, len))
    }

    fn alloc_u8(&mut self, len: usize) -> Result<View<u8>> {
        Ok(View::new(self.alloc(len.max(1))?, len))
    }

    fn alloc_f64(&mut self, len: usize) -> Result<View<f64>> {
        Ok(View::new(self.alloc(len.max(1) * 8)?, len))
    }

    fn upload_f32(&mut self, dst: View<f32>, data: &[f32]) -> Result<()> {
        assert_eq!(dst.len, data.len(), "upload size");
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.upload(dst.addr(), &bytes)
    }

    fn upload_u32(&mut self, dst: View<u32>, data: &[u32]) -> Result<()> {
        assert_eq!(dst.len, data.len(), "upload size");
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.upload(dst.addr(), &bytes)
    }

    fn upload_u8(&mut self, dst: View<u8>, data: &[u8]) -> Result<()> {
        assert_eq!(dst.len, data.len(), "upload size");
        self.upload(dst.addr(), data)
    }

    fn download_f32(&mut self, src: View<f32>) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; src.bytes()];
        self.download(src.addr(), &mut bytes)?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn download_f64(&mut self, src: View<f64>) -> Result<Vec<f64>> {
        let mut bytes = vec![0u8; src.bytes()];
        self.download(src.addr(), &mut bytes)?;
        Ok(bytes.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    fn copy_f32(&mut self, dst: View<f32>, src: View<f32>) -> Result<()> {
        assert_eq!(dst.len, src.len, "copy size");
        self.copy(dst.addr(), src.addr(), src.bytes())
    }

    fn zero_f32(&mut self, dst: View<f32>) -> Result<()> {
        self.zero(dst.addr(), dst.bytes())
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}

/// Shorthands for launch arguments.
pub fn u(v: usize) -> Arg {
    Arg::U32(u32::try_from(v).expect("a kernel size fits in u32"))
}

pub fn f(v: f32) -> Arg {
    Arg::F32(v)
}
