//! One library [`Runtime`] per GPU, and the ordering of its work with the caller's stream.
//!
//! The library orders all of a runtime's work on the runtime's one stream (a varlen call spreads
//! its batched calls over worker streams forked from it and joined back into it before the call
//! returns), and a runtime loads (JIT-compiles) its kernel modules once. torch's current stream
//! changes (side streams, the stream a CUDA graph is captured on), so one runtime per torch
//! stream would load the modules again for every stream, possibly during a graph capture.
//! Instead each device has one runtime on a private non-blocking stream, and every call is fenced
//! with torch's current stream by two events: the private stream waits for what torch queued
//! before the call, and torch's stream waits for the call's kernels. In eager mode that orders
//! the call exactly as if it ran on torch's stream; during a graph capture the private stream
//! joins the capture (fork) and is joined back (join) before the call returns, which is how CUDA
//! captures work across streams.
//!
//! Scratch memory: outside a capture, calls use the runtime's reusable workspace (the library's
//! ordinary `sageattn_into`). While the caller's stream is capturing, the workspace must not be
//! used: the graph would keep its address, and a later, larger eager call frees it (grow-only).
//! A captured call therefore prepares into its own stream-ordered allocation (`Prepared`), which
//! the capture records as a graph memory node allocated and freed inside the graph.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream};
use sageattention::varlen::check_varlen_inputs;
use sageattention::{
    sageattn_into, sageattn_varlen_into, Error, Options, Prepared, Runtime, TensorView,
    TensorViewMut,
};

use crate::args::Raw;
use crate::errors::Failure;

/// The runtime of one device and the two events that fence a call with the caller's stream.
pub(crate) struct Device {
    rt: Runtime,
    /// Recorded on the caller's stream; the runtime's stream waits for it.
    ready: CudaEvent,
    /// Recorded on the runtime's stream after the call; the caller's stream waits for it.
    done: CudaEvent,
    /// One call at a time per device (the events are reused).
    call: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn devices() -> &'static Mutex<HashMap<usize, Arc<Device>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    DEVICES.get_or_init(Default::default)
}

/// The device's entry if a call has opened it.
pub(crate) fn opened(ordinal: usize) -> Option<Arc<Device>> {
    lock(devices()).get(&ordinal).cloned()
}

/// The device's entry, created on first use.
pub(crate) fn device(ordinal: usize) -> Result<Arc<Device>, Failure> {
    let mut map = lock(devices());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    require_driver()?;
    result::init().map_err(|e| Failure::cuda("initialising the CUDA driver", e))?;
    let _restore = RestoreContext::save()?;
    let d = Arc::new(Device::open(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// Whether libcuda can be loaded (cudarc panics on the first driver call otherwise).
pub(crate) fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the driver library by its usual names.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

fn require_driver() -> Result<(), Failure> {
    if driver_present() {
        Ok(())
    } else {
        Err(Error::DriverUnavailable {
            reason: "libcuda could not be loaded (is an NVIDIA driver installed and on the \
                     library path?)"
                .into(),
        }
        .into())
    }
}

/// Puts back, on drop, the CUDA context that was current on the thread, or none if none was
/// (torch keeps its own notion of the current device, which the runtime-API derives from the
/// current context: binding another device's context must not leak out of a call).
struct RestoreContext(sys::CUcontext);

impl RestoreContext {
    /// Only after the driver was found and initialised (see [`device`]).
    fn save() -> Result<Self, Failure> {
        let current = result::ctx::get_current()
            .map_err(|e| Failure::cuda("reading the current CUDA context", e))?;
        Ok(RestoreContext(current.unwrap_or(std::ptr::null_mut())))
    }
}

impl Drop for RestoreContext {
    fn drop(&mut self) {
        // SAFETY: the handle was current on this thread when saved (or null, which unbinds), and
        // contexts are never destroyed here (torch and this module hold the primary contexts
        // they use).
        let _ = unsafe { result::ctx::set_current(self.0) };
    }
}

/// A view of a tensor that the caller (torch) owns: no cudarc stream tracking.
fn view(r: &Raw) -> TensorView<'static> {
    // SAFETY: the Python front passes live torch tensors that it keeps alive for the call; the
    // library validates the geometry and asks the driver that the memory belongs to the device
    // before launching; ordering with torch's stream is done with the fence events.
    unsafe { TensorView::from_raw(r.ptr, r.dtype, r.shape, r.strides, r.ordinal) }
}

fn view_mut(r: &Raw) -> TensorViewMut<'static> {
    // SAFETY: as `view`; the front allocates the output for this call alone.
    unsafe { TensorViewMut::from_raw(r.ptr, r.dtype, r.shape, r.strides, r.ordinal) }
}

/// torch's LSE tensor as the `CudaSlice` the library takes, never freed by us: dropping the
/// guard leaks the slice (torch owns the memory).
struct BorrowedSlice(Option<CudaSlice<f32>>);

impl Drop for BorrowedSlice {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            // With event tracking off (see `Device::open`) this only drops the stream handle.
            let _ = s.leak();
        }
    }
}

/// The LSE output of a call: pointer, element count, device.
pub(crate) type LseArg = (u64, usize, usize);

/// Everything one call needs (for a varlen call, q, k, v and out are the packed views
/// `[1, heads, total, head_dim]` and the LSE is `[q_heads, total_q]`).
pub(crate) struct Call {
    pub q: Raw,
    pub k: Raw,
    pub v: Raw,
    pub out: Raw,
    pub lse: Option<LseArg>,
    pub opts: Options,
    /// torch's current stream on the device.
    pub stream: u64,
}

/// Everything one varlen call needs: the tensors and options, and the sequences.
pub(crate) struct VarlenCall {
    pub call: Call,
    /// Q's prefix sums (`batch + 1` entries).
    pub cu_seqlens_q: Vec<i32>,
    /// K's prefix sums.
    pub cu_seqlens_k: Vec<i32>,
    pub max_seqlen_q: usize,
    pub max_seqlen_k: usize,
}

impl VarlenCall {
    /// Every check of the call that needs no driver (the packed views, then the prefix sums by
    /// the library's rules), so that a bad `cu_seqlens` is a ValueError on any machine.
    pub(crate) fn check(&self) -> Result<(), Failure> {
        let c = &self.call;
        check_varlen_inputs(
            &view(&c.q),
            &view(&c.k),
            &view(&c.v),
            &self.cu_seqlens_q,
            &self.cu_seqlens_k,
            self.max_seqlen_q,
            self.max_seqlen_k,
            &c.opts,
        )?;
        Ok(())
    }
}

/// torch's LSE tensor as the library's `CudaSlice`, after checking that it is memory of `rt`'s
/// device; `None` when the call asks for no LSE.
fn borrowed_lse(rt: &Runtime, lse: Option<LseArg>) -> Result<BorrowedSlice, Failure> {
    let Some((ptr, len, ordinal)) = lse else {
        return Ok(BorrowedSlice(None));
    };
    // The library checks the LSE's length; the driver check that it is memory of this device
    // goes through a 1-row view of it.
    let len_i64 = i64::try_from(len).unwrap_or(i64::MAX);
    // SAFETY: as `view_mut`.
    let as_view = unsafe {
        TensorViewMut::from_raw(
            ptr,
            sageattention::DType::F32,
            [1, 1, 1, len],
            [len_i64, len_i64, len_i64, 1],
            ordinal,
        )
    };
    as_view.validate("lse")?;
    as_view.check_device_memory("lse", rt)?;
    // SAFETY: `ptr` is `len` f32 of device memory of this runtime's device (checked just above),
    // owned by torch for the call; the guard leaks the slice, so cudarc never frees it.
    Ok(BorrowedSlice(Some(unsafe {
        rt.stream().upgrade_device_ptr::<f32>(ptr, len)
    })))
}

impl Device {
    fn open(ordinal: usize) -> Result<Self, Failure> {
        require_driver()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Failure::cuda(format!("opening CUDA device {ordinal}"), e))?;
        // Before the first stream: cudarc would otherwise synchronize the whole context when the
        // first stream is created (illegal during a graph capture) and attach events to slices.
        // Nothing here needs its tracking: ordering is done with the fence events.
        // SAFETY: the only cudarc slice made in this context is the borrowed LSE, used on the
        // runtime's stream alone and never freed by us.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| Failure::cuda(format!("creating a stream on device {ordinal}"), e))?;
        let rt = Runtime::from_stream(stream)?;
        let event = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .map_err(|e| Failure::cuda(format!("creating an event on device {ordinal}"), e))
        };
        Ok(Device {
            ready: event()?,
            done: event()?,
            rt,
            call: Mutex::new(()),
        })
    }

    /// Compute capability of the device.
    pub(crate) fn compute_capability(&self) -> (i32, i32) {
        self.rt.compute_capability()
    }

    /// Frees the runtime's workspace (stream-ordered).
    pub(crate) fn release_workspace(&self) {
        let _call = lock(&self.call);
        self.rt.release_workspace();
    }

    /// The caller's stream, borrowed.
    fn caller_stream(&self, stream: u64) -> Arc<CudaStream> {
        // SAFETY: `stream` is torch's current stream of this device (the front passes
        // `torch.cuda.current_stream(device).cuda_stream`), alive for the call; the handle is
        // only used within the call.
        unsafe {
            self.rt
                .context()
                .wrap_borrowed_stream(stream as usize as sys::CUstream)
        }
    }

    /// Runs one attention call, ordered after the work already queued on `call.stream` and
    /// before anything queued there after it.
    pub(crate) fn run(&self, call: &Call) -> Result<(), Failure> {
        self.fenced(call.stream, |capturing| self.enqueue(call, capturing))
    }

    /// Runs one varlen call, fenced like [`Device::run`]. Not during a graph capture: the call
    /// chooses its batched calls from host-side lengths, on the runtime's workspace.
    pub(crate) fn run_varlen(&self, call: &VarlenCall) -> Result<(), Failure> {
        self.fenced(call.call.stream, |capturing| {
            if capturing {
                return Err(Failure::Runtime(
                    "sageattn_varlen cannot be captured in a CUDA graph (it chooses its calls \
                     from lengths read on the host); call it outside the capture"
                        .into(),
                ));
            }
            self.enqueue_varlen(call)
        })
    }

    /// Runs `enqueue(capturing)` on the runtime's stream, fenced with the caller's `stream`: the
    /// runtime's stream waits for what the caller queued before, and the caller's stream waits
    /// for what `enqueue` queued.
    fn fenced(
        &self,
        stream: u64,
        enqueue: impl FnOnce(bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let _call = lock(&self.call);
        let _restore = RestoreContext::save()?;
        self.rt.bind()?;
        let caller = self.caller_stream(stream);
        // SAFETY: a query of a live stream handle (allowed during a capture).
        let capturing = unsafe { result::stream::is_capturing(caller.cu_stream()) }
            .map_err(|e| Failure::cuda("asking whether torch's stream is capturing", e))?
            != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;

        self.ready
            .record(&caller)
            .map_err(|e| Failure::cuda("recording an event on torch's stream", e))?;
        self.rt
            .stream()
            .wait(&self.ready)
            .map_err(|e| Failure::cuda("making the library's stream wait for torch's", e))?;
        let ran = enqueue(capturing);
        // Join back whatever happened: an unjoined fork would break a capture.
        let joined = self
            .done
            .record(self.rt.stream())
            .and_then(|()| caller.wait(&self.done))
            .map_err(|e| Failure::cuda("making torch's stream wait for the library's", e));
        ran.and(joined)
    }

    fn enqueue_varlen(&self, c: &VarlenCall) -> Result<(), Failure> {
        let rt = &self.rt;
        let call = &c.call;
        let (q, k, v) = (view(&call.q), view(&call.k), view(&call.v));
        let mut out = view_mut(&call.out);
        let mut lse = borrowed_lse(rt, call.lse)?;
        sageattn_varlen_into(
            rt,
            &q,
            &k,
            &v,
            c.cu_seqlens_q.as_slice(),
            c.cu_seqlens_k.as_slice(),
            c.max_seqlen_q,
            c.max_seqlen_k,
            &mut out,
            lse.0.as_mut(),
            &call.opts,
        )?;
        Ok(())
    }

    fn enqueue(&self, call: &Call, capturing: bool) -> Result<(), Failure> {
        let rt = &self.rt;
        let (q, k, v) = (view(&call.q), view(&call.k), view(&call.v));
        let mut out = view_mut(&call.out);
        let mut lse = borrowed_lse(rt, call.lse)?;
        let mut opts = call.opts;
        opts.return_lse = lse.0.is_some();
        if capturing {
            let prepared = Prepared::new(rt, &q, &k, &v, &opts)?;
            prepared.attend_into(rt, &v, &mut out, lse.0.as_mut())?;
            // Dropping `prepared` frees its memory in stream order, inside the capture.
        } else {
            sageattn_into(rt, &q, &k, &v, &mut out, lse.0.as_mut(), &opts)?;
        }
        Ok(())
    }

    /// Times `iters` calls of the library's `sageattn_into` issued back to back from Rust on this
    /// runtime's stream, after `warmup` untimed ones: (GPU milliseconds per call between two
    /// events, host microseconds per call spent issuing them). The baseline of the overhead
    /// benchmark. Synchronizes the device's stream.
    pub(crate) fn time_library_call(
        &self,
        call: &Call,
        warmup: usize,
        iters: usize,
    ) -> Result<(f64, f64), Failure> {
        if iters == 0 {
            return Err(Failure::Value("iters must be at least 1".into()));
        }
        let _call = lock(&self.call);
        let _restore = RestoreContext::save()?;
        let rt = &self.rt;
        rt.bind()?;
        // Start after everything torch queued (the front also synchronizes the device).
        let caller = self.caller_stream(call.stream);
        self.ready
            .record(&caller)
            .and_then(|()| rt.stream().wait(&self.ready))
            .map_err(|e| Failure::cuda("ordering the timing after torch's stream", e))?;
        let (q, k, v) = (view(&call.q), view(&call.k), view(&call.v));
        let mut out = view_mut(&call.out);
        let timing_event = || {
            rt.context()
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| Failure::cuda("creating a timing event", e))
        };
        let (start, end) = (timing_event()?, timing_event()?);
        for _ in 0..warmup {
            sageattn_into(rt, &q, &k, &v, &mut out, None, &call.opts)?;
        }
        rt.synchronize()?;
        let t0 = Instant::now();
        start
            .record(rt.stream())
            .map_err(|e| Failure::cuda("recording the start event", e))?;
        for _ in 0..iters {
            sageattn_into(rt, &q, &k, &v, &mut out, None, &call.opts)?;
        }
        end.record(rt.stream())
            .map_err(|e| Failure::cuda("recording the end event", e))?;
        let host = t0.elapsed().as_secs_f64() * 1e6 / iters as f64;
        end.synchronize()
            .map_err(|e| Failure::cuda("waiting for the timed calls", e))?;
        let gpu = f64::from(
            start
                .elapsed_ms(&end)
                .map_err(|e| Failure::cuda("reading the elapsed time", e))?,
        ) / iters as f64;
        Ok((gpu, host))
    }
}
