//! The CUDA runtime: a context, the stream all work is issued on, and the lazily loaded kernel
//! modules.
//!
//! [`Runtime`] is cheap to clone (it is an `Arc`); clones share the stream, the loaded modules and
//! the kernel cache. Modules are loaded (JIT-compiled by the driver from the embedded PTX) on the
//! first request of one of their kernels; the modules and kernels themselves are
//! `device/kernel.rs`.
//!
//! # Worker streams
//!
//! A varlen call runs its independent batched calls concurrently (`Runtime::fork`): a few worker
//! streams of the runtime's own, created on first use and kept, each with its own scratch
//! workspace (one workspace shared by concurrent calls would race). The caller never sees them:
//! they wait for an event recorded on the runtime's stream before their first launch, and the
//! runtime's stream waits for an event recorded on each of them before the call returns, so from
//! outside the call is ordered on the runtime's stream like any other. They are created with the
//! driver directly rather than with `CudaContext::new_stream`, which would switch cudarc into its
//! multi-stream mode (synchronizing the whole context the first time, and attaching events to
//! every slice afterwards) in contexts that had no cudarc stream: the ordering here is explicit,
//! with nothing for cudarc to track.

use super::alloc::DeviceAlloc;
use super::kernel::{lock, non_negative, Module};
use crate::types::dtype::Element;
use crate::types::error::{driver_library_present, CudaResultExt, Error, Result};
use cudarc::driver::{
    result as cu_result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtrMut,
    DeviceRepr, DeviceSlice, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use super::kernel::{Kernel, KernelResources, ModuleKind, DEFAULT_MAX_DYNAMIC_SMEM};

/// [`Error::DriverUnavailable`] unless the driver library can be loaded.
pub(crate) fn require_driver() -> Result<()> {
    if driver_library_present() {
        Ok(())
    } else {
        Err(Error::DriverUnavailable {
            reason: "libcuda could not be loaded (is an NVIDIA driver installed and on the \
                     library path?)"
                .into(),
        })
    }
}

/// Properties of the runtime's GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name, e.g. `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// Compute capability, major part.
    pub major: i32,
    /// Compute capability, minor part.
    pub minor: i32,
    /// Number of streaming multiprocessors.
    pub sm_count: u32,
    /// Peak SM clock in MHz.
    pub clock_mhz: u32,
    /// Peak memory clock in MHz.
    pub memory_clock_mhz: u32,
    /// Memory bus width in bits.
    pub memory_bus_width: u32,
    /// Total device memory in bytes.
    pub total_memory_bytes: u64,
    /// L2 cache size in bytes.
    pub l2_bytes: u64,
    /// Largest shared memory one block can opt in to, in bytes.
    pub max_shared_per_block_optin: u32,
}

/// Most streams one varlen call runs its batched calls on (the runtime's own and its workers):
/// the ceiling of [`Runtime::set_varlen_streams`].
pub const MAX_VARLEN_STREAMS: usize = 8;

/// Streams a varlen call uses unless [`Runtime::set_varlen_streams`] says otherwise. A handful
/// is enough to fill the GPU with short sequences while a long one runs; each worker stream
/// keeps a workspace as large as the largest call it ran.
pub const DEFAULT_VARLEN_STREAMS: usize = 4;

/// Shared memory the hardware reserves for each resident CTA (compute capability 8.x and 9.0),
/// beside what the kernel asks for.
pub const CTA_RESERVED_SMEM: u32 = 1024;

/// The dynamic shared memory that makes an SM of `per_sm` bytes hold as many CTAs of a kernel
/// asking for `smem` as an SM of `model` bytes would (at least one, within the block limit
/// `optin`): each CTA then takes `per_sm / ctas` with its reserved part.
fn occupancy_padded_smem(smem: u32, model: u32, per_sm: u32, optin: u32) -> u32 {
    let ctas = (model / (smem + CTA_RESERVED_SMEM)).max(1);
    let padded = (per_sm / ctas).saturating_sub(CTA_RESERVED_SMEM);
    smem.max(padded).min(optin)
}

struct Inner {
    ctx: Arc<CudaContext>,
    cc: (i32, i32),
    smem_optin: u32,
    /// Shared memory of one SM (what its CTAs share).
    smem_per_sm: u32,
    /// Shared memory per SM that the portable kernels plan for instead of the device's, 0 for
    /// the device's ([`Runtime::emulate_smem_per_sm`]).
    smem_per_sm_model: AtomicU32,
    /// Whether the portable kernels may run their compact variants ([`Runtime::allow_compact`]).
    compact_allowed: AtomicBool,
    /// L2 cache bytes (the sm_90a causal launch order depends on whether K and V fit in it).
    l2_bytes: u64,
    /// Streaming multiprocessors (queried once: the preparation plan reads it on every call).
    sm_count: u32,
    modules: [Mutex<Option<Arc<Module>>>; 3],
    kernels: [Mutex<HashMap<String, Kernel>>; 3],
    /// The worker streams (see the module docs), created on first use. The lock is held from a
    /// fork to its join, so concurrent varlen calls on one runtime take turns enqueueing.
    workers: Mutex<Workers>,
    /// Streams a varlen call may use, 1..=[`MAX_VARLEN_STREAMS`].
    varlen_streams: AtomicUsize,
}

/// A stream and the scratch workspace of the calls issued on it.
struct Lane {
    /// Scratch memory reused by every `sageattn` call on this stream (grow-only; see
    /// [`Runtime::release_workspace`]). The lock is held while a call enqueues its kernels, so two
    /// threads sharing the stream cannot interleave their use of it.
    workspace: Mutex<Option<DeviceAlloc>>,
    stream: Arc<CudaStream>,
    /// Destroys the stream after the fields above are gone (worker lanes only; the runtime's own
    /// stream belongs to cudarc). Declared last: fields drop in order, and the workspace is freed
    /// in stream order on this stream.
    _owned: Option<OwnedStream>,
}

impl Lane {
    fn new(stream: Arc<CudaStream>, owned: Option<OwnedStream>) -> Self {
        Lane {
            workspace: Mutex::new(None),
            stream,
            _owned: owned,
        }
    }

    fn release_workspace(&self) {
        *self.workspace.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A stream handle created with the driver, destroyed on drop. Only the [`Lane`] that owns it
/// holds the cudarc wrapper of it, so nothing uses the handle after this drops.
struct OwnedStream {
    ctx: Arc<CudaContext>,
    cu_stream: sys::CUstream,
}

// SAFETY: a CUDA stream handle may be used and destroyed from any thread of its context.
unsafe impl Send for OwnedStream {}
// SAFETY: as above; this type never uses the handle through `&self`.
unsafe impl Sync for OwnedStream {}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        // SAFETY: created by `cu_result::stream::create` in `ctx` and destroyed once, here. Work
        // still queued on it completes first (the driver defers the release). An error can only
        // be reported by leaking, which is what ignoring it does.
        unsafe {
            let _ = self.ctx.bind_to_thread();
            let _ = cu_result::stream::destroy(self.cu_stream);
        }
    }
}

/// The worker lanes and their events, grown on demand.
#[derive(Default)]
struct Workers {
    /// Recorded on the runtime's stream at a fork; each worker waits for it.
    fork: Option<CudaEvent>,
    lanes: Vec<Worker>,
}

struct Worker {
    lane: Arc<Lane>,
    /// Recorded on the worker's stream at a join; the runtime's stream waits for it.
    done: CudaEvent,
}

/// A CUDA context, the stream all of this library's work is ordered on, and the kernel cache.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
    /// The stream this runtime issues on: the caller's for every `Runtime` the API hands out, a
    /// worker's for the runtimes a [`Fork`] lends.
    lane: Arc<Lane>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("ordinal", &self.ordinal())
            .field("compute_capability", &self.inner.cc)
            .field("stream", &self.lane.stream.cu_stream())
            .finish()
    }
}

/// Work of one call spread over the runtime's stream and worker streams, ordered after
/// everything queued on the runtime's stream before [`Runtime::fork`] and, once joined, before
/// everything queued there after. Dropping it joins too (ignoring errors), so an early return
/// still leaves every launch ordered before whatever follows on the runtime's stream.
pub(crate) struct Fork<'a> {
    main: &'a Runtime,
    /// Held until the join when workers take part: the events are reused by the next fork.
    workers: Option<MutexGuard<'a, Workers>>,
    /// `lanes[0]` is `main` itself, then one runtime per worker taking part.
    lanes: Vec<Runtime>,
    joined: bool,
}

impl Fork<'_> {
    /// The runtime that issues on stream `i` (0: the runtime's own stream).
    pub(crate) fn lane(&self, i: usize) -> &Runtime {
        &self.lanes[i]
    }

    /// Makes the runtime's stream wait for everything queued so far on the workers taking part.
    pub(crate) fn join(mut self) -> Result<()> {
        self.join_workers()
    }

    fn join_workers(&mut self) -> Result<()> {
        let Some(workers) = self.workers.as_ref().filter(|_| !self.joined) else {
            return Ok(());
        };
        self.joined = true;
        let main = self.main.stream();
        // Every worker is waited for even when one fails, so that as much as possible stays
        // ordered; the first error is reported.
        let mut result = Ok(());
        for worker in &workers.lanes[..self.lanes.len() - 1] {
            let joined = worker
                .done
                .record(&worker.lane.stream)
                .and_then(|()| main.wait(&worker.done))
                .op("joining a worker stream back into the runtime's stream");
            result = result.and(joined);
        }
        result
    }
}

impl Drop for Fork<'_> {
    fn drop(&mut self) {
        let _ = self.join_workers();
    }
}

fn device_attr(ctx: &CudaContext, attr: sys::CUdevice_attribute) -> Result<i32> {
    ctx.attribute(attr)
        .with_op(|| format!("querying device attribute {attr:?}"))
}

impl Runtime {
    /// Opens device `ordinal` (its primary context) and creates a new non-blocking stream for
    /// this runtime.
    ///
    /// Errors: [`Error::DriverUnavailable`] without a driver, [`Error::Cuda`] if the device does
    /// not exist or the context or stream cannot be created. Does not check the compute
    /// capability (see [`Runtime::require_sm80`]).
    pub fn new(ordinal: usize) -> Result<Self> {
        require_driver()?;
        let ctx = CudaContext::new(ordinal)
            .with_op(|| format!("creating a CUDA context on device {ordinal}"))?;
        let stream = ctx
            .new_stream()
            .with_op(|| format!("creating a stream on device {ordinal}"))?;
        Self::with_parts(ctx, stream)
    }

    /// Uses the caller's cudarc stream (and its context); all of the library's work is issued on
    /// it, so it is ordered with the caller's own work on that stream. (A varlen call also runs
    /// work on worker streams of the runtime's, which wait for this stream when the call starts
    /// and which this stream waits for before the call returns: the same ordering.)
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context().clone();
        ctx.bind_to_thread()
            .with_op(|| format!("binding the context of device {}", ctx.ordinal()))?;
        Self::with_parts(ctx, stream)
    }

    fn with_parts(ctx: Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self> {
        let cc = ctx
            .compute_capability()
            .op("querying the compute capability")?;
        let smem_optin = non_negative(device_attr(
            &ctx,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?);
        let smem_per_sm = non_negative(device_attr(
            &ctx,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
        )?);
        let l2_bytes = u64::from(non_negative(device_attr(
            &ctx,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE,
        )?));
        let sm_count = non_negative(device_attr(
            &ctx,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?);
        Ok(Runtime {
            inner: Arc::new(Inner {
                ctx,
                cc,
                smem_optin,
                smem_per_sm,
                smem_per_sm_model: AtomicU32::new(0),
                compact_allowed: AtomicBool::new(true),
                l2_bytes,
                sm_count,
                modules: Default::default(),
                kernels: Default::default(),
                workers: Mutex::new(Workers::default()),
                varlen_streams: AtomicUsize::new(DEFAULT_VARLEN_STREAMS),
            }),
            lane: Arc::new(Lane::new(stream, None)),
        })
    }

    /// Runs `f` with at least `bytes` of the runtime's scratch workspace (its device address),
    /// growing it first if needed, while holding the workspace lock. `f` must only enqueue work
    /// on the runtime's stream; stream order makes the next user wait for it.
    pub(crate) fn with_workspace<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        let mut ws = self
            .lane
            .workspace
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ws.as_ref().is_none_or(|w| w.bytes() < bytes) {
            // Free the old one first (stream-ordered) so peak memory is not old + new.
            *ws = None;
            *ws = Some(DeviceAlloc::new(&self.lane.stream, bytes.max(1 << 20))?);
        }
        let ptr = ws.as_ref().map_or(0, DeviceAlloc::ptr);
        f(ptr)
    }

    /// Frees the scratch workspaces `sageattn` and `sageattn_varlen` keep between calls
    /// (stream-ordered); the next call allocates them again. The runtime's workspace is about
    /// `(qo_len·q_heads + kv_len·kv_heads)·head_dim·batch` bytes for the largest call so far (plus
    /// V for bf16 inputs); each worker stream of varlen calls keeps one as large as the largest
    /// batched call it ran.
    pub fn release_workspace(&self) {
        self.lane.release_workspace();
        let workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        for worker in &workers.lanes {
            worker.lane.release_workspace();
        }
    }

    /// How many streams a varlen call may run its batched calls on (see
    /// [`set_varlen_streams`](Runtime::set_varlen_streams)).
    pub fn varlen_streams(&self) -> usize {
        self.inner.varlen_streams.load(Ordering::Relaxed)
    }

    /// Sets how many streams a varlen call may run its batched calls on concurrently, this
    /// runtime's own included (clamped to `1..=MAX_VARLEN_STREAMS`; default
    /// [`DEFAULT_VARLEN_STREAMS`]); shared by the runtime's clones. 1 runs every batched call on
    /// the runtime's stream, one after another. Either way the results are the same, bit for bit.
    pub fn set_varlen_streams(&self, streams: usize) {
        self.inner
            .varlen_streams
            .store(streams.clamp(1, MAX_VARLEN_STREAMS), Ordering::Relaxed);
    }

    /// Whether the runtime's stream is being captured into a CUDA graph. A failed query counts
    /// as capturing: the caller then keeps to the runtime's stream, as it would in a capture.
    pub(crate) fn is_capturing(&self) -> bool {
        // SAFETY: a query of the live stream handle (allowed during a capture).
        let status = unsafe { cu_result::stream::is_capturing(self.lane.stream.cu_stream()) };
        !matches!(
            status,
            Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        )
    }

    /// Forks `streams - 1` worker streams (created on first use) from the runtime's stream: each
    /// waits for everything queued on the runtime's stream so far. The [`Fork`] lends one
    /// runtime per stream (the first is this one) and joins them back into this runtime's
    /// stream. Must not be called during a graph capture of the runtime's stream (worker
    /// creation is not capturable); `streams` ≤ [`MAX_VARLEN_STREAMS`].
    ///
    /// The worker runtimes issue only on their own stream and use their own workspace; the
    /// caller orders their access to its buffers (every launch on a worker is ordered after the
    /// fork and before whatever follows the join on this runtime's stream).
    pub(crate) fn fork(&self, streams: usize) -> Result<Fork<'_>> {
        debug_assert!((1..=MAX_VARLEN_STREAMS).contains(&streams));
        let extra = streams.saturating_sub(1);
        let mut fork = Fork {
            main: self,
            workers: None,
            lanes: vec![self.clone()],
            joined: false,
        };
        if extra == 0 {
            return Ok(fork);
        }
        let mut workers = self.inner.workers.lock().unwrap_or_else(|e| e.into_inner());
        self.bind()?;
        if workers.fork.is_none() {
            workers.fork = Some(self.new_event()?);
        }
        while workers.lanes.len() < extra {
            let lane = self.new_worker_lane()?;
            workers.lanes.push(Worker {
                lane: Arc::new(lane),
                done: self.new_event()?,
            });
        }
        // An error on the way leaves only waits queued on the workers: nothing to join.
        let event = workers.fork.as_ref().expect("created above");
        event
            .record(self.stream())
            .op("recording the fork event on the runtime's stream")?;
        for worker in &workers.lanes[..extra] {
            worker
                .lane
                .stream
                .wait(event)
                .op("making a worker stream wait for the runtime's stream")?;
            fork.lanes.push(Runtime {
                inner: self.inner.clone(),
                lane: worker.lane.clone(),
            });
        }
        fork.workers = Some(workers);
        Ok(fork)
    }

    fn new_event(&self) -> Result<CudaEvent> {
        self.inner
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .with_op(|| format!("creating an event on device {}", self.ordinal()))
    }

    /// A non-blocking stream of the runtime's context, made with the driver (see the module
    /// docs), with an empty workspace.
    fn new_worker_lane(&self) -> Result<Lane> {
        let ctx = &self.inner.ctx;
        let cu_stream = cu_result::stream::create(cu_result::stream::StreamKind::NonBlocking)
            .with_op(|| format!("creating a worker stream on device {}", self.ordinal()))?;
        let owned = OwnedStream {
            ctx: ctx.clone(),
            cu_stream,
        };
        // SAFETY: a live stream of this context (bound by the caller), kept alive by `owned`,
        // which the lane drops after the wrapper and the workspace that holds a clone of it.
        let stream = unsafe { ctx.wrap_borrowed_stream(cu_stream) };
        Ok(Lane::new(stream, Some(owned)))
    }

    /// The stream all work is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.lane.stream
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.inner.ctx.ordinal()
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.cc
    }

    /// L2 cache size in bytes.
    pub fn l2_bytes(&self) -> u64 {
        self.inner.l2_bytes
    }

    /// Makes the runtime's context current on the calling thread (surfacing any error cudarc
    /// recorded in the context meanwhile).
    pub fn bind(&self) -> Result<()> {
        self.inner
            .ctx
            .bind_to_thread()
            .with_op(|| format!("binding the context of device {}", self.ordinal()))
    }

    /// Waits until all work issued on the runtime's stream has finished. Errors from
    /// asynchronous kernel failures surface here.
    pub fn synchronize(&self) -> Result<()> {
        self.lane
            .stream
            .synchronize()
            .with_op(|| format!("synchronizing the stream of device {}", self.ordinal()))
    }

    /// Name, compute capability, SM count, clocks, memory and cache sizes of the device.
    pub fn device_info(&self) -> Result<DeviceInfo> {
        use sys::CUdevice_attribute as A;
        let ctx = &*self.inner.ctx;
        let attr = |a| device_attr(ctx, a).map(non_negative);
        Ok(DeviceInfo {
            name: ctx.name().op("querying the device name")?,
            major: self.inner.cc.0,
            minor: self.inner.cc.1,
            sm_count: self.inner.sm_count,
            clock_mhz: attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000,
            memory_clock_mhz: attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? / 1000,
            memory_bus_width: attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
            total_memory_bytes: ctx.total_mem().op("querying the device memory size")? as u64,
            l2_bytes: self.inner.l2_bytes,
            max_shared_per_block_optin: self.inner.smem_optin,
        })
    }

    /// Number of streaming multiprocessors (as [`DeviceInfo::sm_count`], queried once when the
    /// runtime was made).
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }

    /// Shared memory per SM that the portable kernels' choice of variant plans for: the
    /// device's, unless [`Self::emulate_smem_per_sm`] set another.
    pub fn smem_per_sm(&self) -> u32 {
        match self.inner.smem_per_sm_model.load(Ordering::Relaxed) {
            0 => self.inner.smem_per_sm,
            model => model,
        }
    }

    /// A measuring proxy, not for production: the portable f16 kernels choose their variant as
    /// on a device whose SMs have `bytes` of shared memory (e.g. 100 KiB, sm_86 and sm_89: the
    /// RTX 3090 and 4090), and their launches ask for enough dynamic shared memory that no more
    /// CTAs fit on one of this device's SMs than would fit there. It only lowers occupancy (and
    /// changes which compiled tile size runs); results are those of the variant chosen. `None`
    /// (or a model at least the device's) restores the device's own plan.
    #[doc(hidden)]
    pub fn emulate_smem_per_sm(&self, bytes: Option<u32>) {
        let model = bytes.filter(|&b| b < self.inner.smem_per_sm).unwrap_or(0);
        self.inner.smem_per_sm_model.store(model, Ordering::Relaxed);
    }

    /// A measuring aid, not for production: whether the portable f16 kernels may choose their
    /// compact variants where they pay (the default), or keep the 64-key ones everywhere — with
    /// [`Self::emulate_smem_per_sm`], the baseline a compact variant is measured against.
    #[doc(hidden)]
    pub fn allow_compact(&self, allow: bool) {
        self.inner.compact_allowed.store(allow, Ordering::Relaxed);
    }

    /// See [`Self::allow_compact`].
    pub(crate) fn compact_allowed(&self) -> bool {
        self.inner.compact_allowed.load(Ordering::Relaxed)
    }

    /// The dynamic shared memory a portable kernel's launch asks for: `smem`, or under
    /// [`Self::emulate_smem_per_sm`] enough more that this device's SMs hold no more CTAs than
    /// the modelled ones (each CTA also takes [`CTA_RESERVED_SMEM`]), within the block limit.
    pub(crate) fn occupancy_smem(&self, smem: u32) -> u32 {
        let model = self.inner.smem_per_sm_model.load(Ordering::Relaxed);
        if model == 0 {
            return smem;
        }
        occupancy_padded_smem(smem, model, self.inner.smem_per_sm, self.inner.smem_optin)
    }

    /// [`Error::UnsupportedDevice`] unless the device has compute capability 8.0 or newer.
    pub fn require_sm80(&self) -> Result<()> {
        let (major, minor) = self.inner.cc;
        if major >= 8 {
            return Ok(());
        }
        Err(Error::UnsupportedDevice {
            name: self.inner.ctx.name().unwrap_or_else(|_| "<unknown>".into()),
            major,
            minor,
        })
    }

    /// Loads (once per runtime, shared by clones) the module `kind`, JIT-compiling its PTX.
    fn module(&self, kind: ModuleKind) -> Result<Arc<Module>> {
        let mut slot = lock(&self.inner.modules[kind.index()]);
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        if kind == ModuleKind::Portable {
            self.require_sm80()?;
        }
        let image = kind.image(self.inner.cc)?;
        self.bind()?;
        let module = Arc::new(Module::load(&self.inner.ctx, kind, &image, self.inner.cc)?);
        *slot = Some(module.clone());
        Ok(module)
    }

    /// The kernel `name` of module `kind`, loading the module on first use and caching the
    /// kernel.
    ///
    /// Errors: [`Error::UnsupportedDevice`] before sm_80, [`Error::ModuleUnavailable`] for the
    /// Hopper module on a device other than 9.0 or for a build without PTX,
    /// [`Error::KernelNotFound`], [`Error::Cuda`] if JIT compilation fails (with the JIT log).
    pub fn function(&self, kind: ModuleKind, name: &str) -> Result<Kernel> {
        let mut cache = lock(&self.inner.kernels[kind.index()]);
        if let Some(k) = cache.get(name) {
            return Ok(k.clone());
        }
        let module = self.module(kind)?;
        let symbol = Kernel::symbol(kind, name)?;
        self.bind()?;
        let kernel = Kernel::load(module, kind, name, symbol)?;
        cache.insert(name.to_owned(), kernel.clone());
        Ok(kernel)
    }

    /// Registers, local memory, static shared memory and block size limit of a kernel (loading
    /// it if needed).
    pub fn function_resources(&self, kind: ModuleKind, name: &str) -> Result<KernelResources> {
        Ok(self.function(kind, name)?.resources())
    }

    /// Launches `func` on the runtime's stream with one by-value parameter struct.
    ///
    /// Checks the launch configuration against the kernel and the device
    /// ([`Error::KernelResources`]), raises the kernel's dynamic shared memory limit to the
    /// device maximum the first time `dynamic_smem` exceeds 48 KiB, and reports a failed launch
    /// as [`Error::Cuda`] naming the kernel.
    ///
    /// # Safety
    ///
    /// `P` must be exactly the parameter struct the kernel was compiled for (`#[repr(C)]`, same
    /// fields and layout); every pointer in it must be valid device memory, of this runtime's
    /// context, for every access the kernel makes with the given grid, and must stay valid and
    /// unaliased by conflicting accesses until the kernel has finished (stream-ordered: keep
    /// [`AccessGuard`](crate::tensor::AccessGuard)s alive until this returns).
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        func: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_smem: u32,
        params: &P,
    ) -> Result<()> {
        func.check_launch(
            &self.inner.ctx,
            grid,
            block,
            dynamic_smem,
            self.inner.smem_optin,
        )?;
        self.bind()?;
        func.raise_smem_limit(dynamic_smem, self.inner.smem_optin)?;
        // SAFETY: forwarded to the caller (parameter struct, pointers, lifetimes); the
        // configuration was checked against the kernel's and the device's limits above.
        unsafe { func.launch_on(&self.lane.stream, grid, block, dynamic_smem, params) }
    }

    /// Allocates `len` zeroed elements on the runtime's stream (stream-ordered).
    ///
    /// Errors: [`Error::InvalidOption`] for `len == 0`, [`Error::TooLarge`] if the byte size
    /// overflows, [`Error::Cuda`] when out of memory.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        let bytes = alloc_bytes::<T>(len)?;
        self.lane.stream.alloc_zeros(len).with_op(|| {
            format!(
                "allocating {bytes} zeroed bytes on device {}",
                self.ordinal()
            )
        })
    }

    /// Allocates `len` elements on the runtime's stream without initialising them (for scratch
    /// buffers that a kernel fully writes before anything reads them).
    ///
    /// # Safety
    ///
    /// The contents are undefined until written: nothing may read an element (on the device or
    /// by copying to the host) before it has been written.
    pub unsafe fn alloc_uninit<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        let bytes = alloc_bytes::<T>(len)?;
        // SAFETY: forwarded to the caller (see above).
        unsafe { self.lane.stream.alloc(len) }
            .with_op(|| format!("allocating {bytes} bytes on device {}", self.ordinal()))
    }

    /// Sets every byte of `slice` to `byte` on the runtime's stream (stream-ordered). Every bit
    /// pattern is a valid [`Element`]; `0xFF` is NaN for the float types.
    pub fn fill_bytes<T: Element>(&self, slice: &mut CudaSlice<T>, byte: u8) -> Result<()> {
        // SAFETY: every bit pattern is a valid `Element` (sealed: f16, bf16, f32, i8).
        unsafe { self.memset_bytes(slice, byte) }
    }

    /// Sets every byte of `slice` to `byte` on the runtime's stream (stream-ordered).
    ///
    /// # Safety
    ///
    /// A `T` whose bytes are all `byte` must be a valid value (true for the integer and float
    /// types).
    pub(crate) unsafe fn memset_bytes<T>(&self, slice: &mut CudaSlice<T>, byte: u8) -> Result<()> {
        self.bind()?;
        let bytes = DeviceSlice::num_bytes(slice);
        let stream = &self.lane.stream;
        let (ptr, _guard) = slice.device_ptr_mut(stream);
        // SAFETY: `ptr` is the start of `slice`'s allocation of `bytes` bytes; the guard keeps the
        // write ordered with other users of the slice; the caller guarantees the pattern is a
        // valid `T`.
        unsafe { cu_result::memset_d8_async(ptr, byte, bytes, stream.cu_stream()) }
            .with_op(|| format!("filling {bytes} bytes with {byte:#04x}"))
    }
}

/// Byte size of `len` elements of `T`, which must be non-zero and fit in i64.
fn alloc_bytes<T>(len: usize) -> Result<usize> {
    if len == 0 {
        return Err(Error::InvalidOption(
            "cannot allocate a device buffer of 0 elements".into(),
        ));
    }
    len.checked_mul(std::mem::size_of::<T>())
        .filter(|&b| i64::try_from(b).is_ok())
        .ok_or_else(|| Error::TooLarge {
            tensor: "buffer",
            reason: format!(
                "{len} elements of {} bytes overflow i64",
                std::mem::size_of::<T>()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_huge_allocations_rejected() {
        assert!(matches!(
            alloc_bytes::<f32>(0),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            alloc_bytes::<f32>(usize::MAX / 2),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(alloc_bytes::<f32>(10).unwrap(), 40);
    }

    /// The occupancy proxy: on an H200 SM (228 KiB, 227 KiB per block), the padded request
    /// holds exactly as many CTAs as a modelled SM would hold unpadded ones (at least one), for
    /// every request size the portable kernels make and models of 100 and 164 KiB.
    #[test]
    fn occupancy_padding_reproduces_the_modelled_ctas_per_sm() {
        let (per_sm, optin) = (228 * 1024, 227 * 1024);
        let fit = |smem: u32, sm: u32| sm / (smem + CTA_RESERVED_SMEM);
        for model in [100 * 1024, 164 * 1024] {
            for smem in (4 * 1024..=99 * 1024).step_by(512) {
                let padded = occupancy_padded_smem(smem, model, per_sm, optin);
                assert!(padded >= smem && padded <= optin, "{smem} {model}");
                assert_eq!(
                    fit(padded, per_sm),
                    fit(smem, model).max(1),
                    "smem {smem}, model {model}: padded {padded}"
                );
            }
        }
        // The compact d = 128 f16 variant on a 100 KiB model: two CTAs; the 64-key one: one.
        assert_eq!(
            fit(
                occupancy_padded_smem(35_840, 100 * 1024, per_sm, optin),
                per_sm
            ),
            2
        );
        assert_eq!(
            fit(
                occupancy_padded_smem(62_464, 100 * 1024, per_sm, optin),
                per_sm
            ),
            1
        );
    }
}
