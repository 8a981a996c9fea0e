//! A raw device allocation, freed in stream order: the scratch memory of attention calls.
//!
//! Raw driver memory, not cudarc slices: scratch buffers live on the runtime's stream only, so they
//! need none of cudarc's cross-stream event tracking, and leaving it out removes some forty driver
//! calls per call (measured as host-bound time at small N, see docs/perf-notes.md).

use std::sync::Arc;

use cudarc::driver::{result, CudaStream};

use crate::types::error::{CudaResultExt, Result};

/// A raw device allocation, freed in stream order on drop.
pub(crate) struct DeviceAlloc {
    ptr: u64,
    bytes: usize,
    stream: Arc<CudaStream>,
}

impl DeviceAlloc {
    /// `bytes` (> 0) uninitialised bytes, allocated in stream order on `stream`.
    pub(crate) fn new(stream: &Arc<CudaStream>, bytes: usize) -> Result<Self> {
        stream
            .context()
            .bind_to_thread()
            .op("binding the context")?;
        // SAFETY: the stream is live (we hold it); the memory is used only on this stream (every
        // kernel that touches it is launched there) and freed there on drop.
        let ptr = unsafe { result::malloc_async(stream.cu_stream(), bytes) }
            .with_op(|| format!("allocating {bytes} bytes of scratch memory"))?;
        Ok(DeviceAlloc {
            ptr,
            bytes,
            stream: stream.clone(),
        })
    }

    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_async` on this stream and freed once; stream order makes
        // every kernel queued before this point finish with the memory first. An error here can
        // only be reported by leaking, which is what ignoring it does.
        unsafe {
            let _ = self.stream.context().bind_to_thread();
            let _ = result::free_async(self.ptr, self.stream.cu_stream());
        }
    }
}
