//! The [`Collective`] of GPU replicas: NCCL's all-reduce on each replica's stream, in place on
//! device memory (no copy through the host).
//!
//! The communicators of one process's GPUs come from `ncclCommInitAll`; every replica thread
//! calls `all_reduce_sum` with its own member, and the sum is ordered on its stream like any
//! launch. NCCL refuses two ranks on one device, so a single GPU can only run a group of one.

use anyhow::{anyhow, bail, Result};
use cudarc::nccl::{result as nccl, sys};

use super::backend::DeviceSlice;
use super::driver::CudaBackend;
use crate::fused::collective::Collective;

pub struct NcclCollective {
    rank: usize,
    size: usize,
    comm: sys::ncclComm_t,
    stream: sys::cudaStream_t,
}

// SAFETY: a member is used by the one replica thread that owns it (NCCL communicators may be
// driven from any thread, one at a time).
unsafe impl Send for NcclCollective {}
// SAFETY: `all_reduce_sum` takes `&self` but each member is only ever called by its own replica.
unsafe impl Sync for NcclCollective {}

/// Whether NCCL (libnccl) can be loaded here. Never panics.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

impl NcclCollective {
    /// One member per backend, in order (rank r is `backends[r]`'s GPU and stream).
    pub fn group(backends: &[&CudaBackend]) -> Result<Vec<NcclCollective>> {
        if !nccl_present() {
            bail!("NCCL (libnccl) is not on this machine's library path; it is needed to train on several GPUs");
        }
        let devices: Vec<i32> = backends.iter().map(|b| b.ordinal() as i32).collect();
        let mut comms: Vec<sys::ncclComm_t> = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `comms` has one slot per device in `devices`.
        unsafe { nccl::comm_init_all(comms.as_mut_ptr(), devices.len() as i32, devices.as_ptr()) }
            .map_err(|e| anyhow!("NCCL: creating communicators for GPUs {devices:?}: {e:?}"))?;
        let size = devices.len();
        Ok(comms
            .into_iter()
            .zip(backends)
            .enumerate()
            .map(|(rank, (comm, b))| NcclCollective { rank, size, comm, stream: b.cu_stream() as sys::cudaStream_t })
            .collect())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: created by `comm_init_all` and destroyed once.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}

impl Collective for NcclCollective {
    type Buffer = DeviceSlice;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, buf: &mut DeviceSlice) -> Result<()> {
        let p = buf.ptr as *mut std::ffi::c_void;
        // SAFETY: `buf` is `len` f32 of device memory on this member's GPU, summed in place on
        // this member's stream (the engine reads it back only after the stream has passed it).
        unsafe {
            nccl::all_reduce(
                p,
                p,
                buf.len,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream,
            )
        }
        .map_err(|e| anyhow!("NCCL all-reduce of {} floats (rank {} of {}): {e:?}", buf.len, self.rank, self.size))?;
        Ok(())
    }
}

/// An in-process collective for GPU replicas that goes through the host: each member copies its
/// buffer out, the members sum by the CPU replicas' [`ThreadCollective`] tree, and copy the sum
/// back. Slower than NCCL, and for what NCCL cannot do: several replicas on one GPU (the `gpu`
/// tests' 1-against-2-replicas check).
///
/// [`ThreadCollective`]: crate::fused::collective::ThreadCollective
pub struct StagedCollective(pub crate::fused::collective::ThreadCollective);

impl Collective for StagedCollective {
    type Buffer = DeviceSlice;

    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn all_reduce_sum(&self, buf: &mut DeviceSlice) -> Result<()> {
        use cudarc::driver::result as cu;
        let mut host = vec![0f32; buf.len];
        // SAFETY: `buf` is `len` f32 of device memory of the calling replica, whose context is
        // current on this thread and whose stream was synchronised before the call.
        unsafe { cu::memcpy_dtoh_sync(&mut host, buf.ptr) }.map_err(|e| anyhow!("copying gradients out: {e:?}"))?;
        self.0.all_reduce_sum(&mut host)?;
        // SAFETY: as above.
        unsafe { cu::memcpy_htod_sync(buf.ptr, &host) }.map_err(|e| anyhow!("copying gradients back: {e:?}"))?;
        Ok(())
    }
}
