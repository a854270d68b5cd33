//! Choosing where tensors live, at run time.
//!
//! burn 0.21's CUDA backend is always compiled in (it builds without a CUDA toolkit, loading
//! `libcuda` with `dlopen` on first use). Touching it on a machine without a driver *panics*
//! inside burn's device thread rather than returning an error, so every GPU path is gated on
//! `cudarc::driver::sys::is_culib_present()` first. Without a driver the CPU (ndarray) backend
//! is used, and asking for GPUs is a clear error instead of a crash.

use std::fmt;

use burn::backend::cuda::CudaDevice;
use burn::backend::ndarray::NdArrayDevice;

/// Where one replica of the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    Cpu,
    Cuda { ordinal: usize },
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compute::Cpu => f.write_str("cpu (ndarray)"),
            Compute::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl Compute {
    pub fn ndarray_device(&self) -> Option<NdArrayDevice> {
        matches!(self, Compute::Cpu).then_some(NdArrayDevice::Cpu)
    }

    pub fn cuda_device(&self) -> Option<CudaDevice> {
        match self {
            Compute::Cuda { ordinal } => Some(CudaDevice::new(*ordinal)),
            Compute::Cpu => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("--gpus {0}: no CUDA driver (libcuda) on this machine; omit --gpus to train on the CPU")]
    NoDriver(String),
    #[error("--gpus lists GPU {0} twice")]
    Duplicate(usize),
}

/// Whether a CUDA driver library can be loaded here. Never panics.
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The replicas for a `--gpus` list: one per listed GPU, or the CPU when the list is empty.
/// `driver_present` is passed in (normally [`cuda_driver_present`]) so both branches are testable
/// on any machine.
pub fn select(gpus: &[usize], driver_present: bool) -> Result<Vec<Compute>, DeviceError> {
    if gpus.is_empty() {
        return Ok(vec![Compute::Cpu]);
    }
    if !driver_present {
        let list: Vec<String> = gpus.iter().map(|g| g.to_string()).collect();
        return Err(DeviceError::NoDriver(list.join(",")));
    }
    for (i, g) in gpus.iter().enumerate() {
        if gpus[..i].contains(g) {
            return Err(DeviceError::Duplicate(*g));
        }
    }
    Ok(gpus.iter().map(|&ordinal| Compute::Cuda { ordinal }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Tensor;

    #[test]
    fn selection_follows_the_flag_and_the_driver() {
        assert_eq!(select(&[], false).unwrap(), vec![Compute::Cpu]);
        assert_eq!(select(&[], true).unwrap(), vec![Compute::Cpu]);
        assert_eq!(select(&[0, 1], true).unwrap(), vec![Compute::Cuda { ordinal: 0 }, Compute::Cuda { ordinal: 1 }]);
        let err = select(&[0, 1], false).unwrap_err().to_string();
        assert!(err.contains("--gpus 0,1") && err.contains("no CUDA driver"), "{err}");
        assert_eq!(select(&[1, 1], true).unwrap_err(), DeviceError::Duplicate(1));
    }

    #[test]
    fn probing_the_driver_does_not_panic() {
        // On CI there is no driver and this must say so rather than crash.
        let _ = cuda_driver_present();
    }

    #[test]
    fn cpu_backend_computes() {
        let device = Compute::Cpu.ndarray_device().unwrap();
        let a = Tensor::<NdArray, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let b = a.clone().matmul(a);
        let v: Vec<f32> = b.into_data().to_vec().unwrap();
        assert_eq!(v, vec![7.0, 10.0, 15.0, 22.0]);
    }

    /// Runs only where a CUDA driver exists (never on CI): the same product on the GPU.
    #[test]
    fn cuda_backend_computes_when_a_driver_exists() {
        if !cuda_driver_present() {
            eprintln!("skipped: no CUDA driver");
            return;
        }
        let device = Compute::Cuda { ordinal: 0 }.cuda_device().unwrap();
        let a = Tensor::<burn::backend::Cuda, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let v: Vec<f32> = a.clone().matmul(a).into_data().to_vec().unwrap();
        assert_eq!(v, vec![7.0, 10.0, 15.0, 22.0]);
    }
}
