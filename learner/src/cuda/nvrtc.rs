//! Compiling the kernels to PTX with NVRTC, NVIDIA's run-time compiler.
//!
//! NVRTC needs no GPU and no driver, only `libnvrtc`, which NVIDIA publishes on PyPI
//! (`nvidia-cuda-nvrtc-cu12`); that is how CI compiles every kernel on a machine without a GPU.
//! cudarc loads the library with `dlopen` by its usual names, so its directory must be on
//! `LD_LIBRARY_PATH`. The library is probed first ([`nvrtc_present`]): calling into a missing one
//! would panic inside cudarc.

use cudarc::nvrtc::{CompileOptions, Ptx};

/// The virtual architecture the PTX targets when the caller has no device to ask (Hopper, the
/// H100 the engine is measured on). The driver compiles PTX for newer GPUs too.
pub const DEFAULT_ARCH: &str = "compute_90";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvrtcError {
    #[error(
        "NVRTC (libnvrtc.so) is not on this machine's library path: install NVIDIA's CUDA NVRTC \
         (`pip install nvidia-cuda-nvrtc-cu12`) and put its nvidia/cuda_nvrtc/lib directory on LD_LIBRARY_PATH"
    )]
    Missing,
    #[error("the CUDA kernels do not compile for {arch}:\n{log}")]
    Compile { arch: String, log: String },
}

/// Whether `libnvrtc` can be loaded here. Never panics.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; no NVRTC call is made.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles `source` (see `cuda::source`) to PTX for `arch` (e.g. `compute_90`).
///
/// IEEE division and square roots, no flush to zero: the kernels are checked against the CPU
/// engine at f32 tolerances. Multiply-adds are contracted (NVRTC's default), which is where the
/// device's results differ from the host-compiled kernels in the last bits.
pub fn compile(source: &str, arch: &str) -> Result<Ptx, NvrtcError> {
    if !nvrtc_present() {
        return Err(NvrtcError::Missing);
    }
    let opts = CompileOptions {
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("dsm_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| {
        let log = match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        };
        NvrtcError::Compile { arch: arch.to_string(), log }
    })
}
