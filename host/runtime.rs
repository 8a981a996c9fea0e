//! The CUDA runtime: a context, the stream all work is issued on, and the lazily loaded kernel
//! modules.
//!
//! [`Runtime`] is cheap to clone (it is an `Arc`); clones share the stream, the loaded modules and
//! the kernel cache. Modules are loaded (JIT-compiled by the driver from the embedded PTX) on the
//! first request of one of their kernels.

use crate::error::{CudaResultExt, Error, Result};
use crate::scratch::DeviceAlloc;
use crate::tensor::Element;
use cudarc::driver::{
    result as cu_result, sys, CudaContext, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr,
    DeviceSlice, ValidAsZeroBits,
};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Dynamic shared memory a kernel may use without opting in (48 KiB).
pub const DEFAULT_MAX_DYNAMIC_SMEM: u32 = 48 * 1024;

/// Whether the CUDA driver library can be loaded. cudarc loads `libcuda` at run time and panics
/// when it is missing, so every path that may be the first driver call checks this first.
pub(crate) fn driver_library_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: `is_culib_present` only tries to dlopen the library by its usual names.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

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

/// Locks a mutex, ignoring poisoning: every critical section below leaves its data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which embedded PTX module a kernel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// Built for `sm_80`; runs on compute capability 8.0 and newer.
    Portable,
    /// Built for `sm_90a`; runs on compute capability 9.0 only.
    Hopper,
}

impl ModuleKind {
    /// `"portable"` or `"hopper"`.
    pub const fn name(self) -> &'static str {
        match self {
            ModuleKind::Portable => "portable",
            ModuleKind::Hopper => "hopper",
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            ModuleKind::Portable => crate::kernels::PTX_PORTABLE,
            ModuleKind::Hopper => crate::kernels::PTX_HOPPER,
        }
    }

    const fn index(self) -> usize {
        match self {
            ModuleKind::Portable => 0,
            ModuleKind::Hopper => 1,
        }
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

/// Resource usage of a compiled kernel, as reported by the driver after JIT compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelResources {
    /// Registers per thread.
    pub num_regs: u32,
    /// Local memory (register spills, local arrays) per thread, in bytes.
    pub local_bytes: u32,
    /// Statically allocated shared memory per block, in bytes.
    pub static_shared_bytes: u32,
    /// Largest block size the kernel can be launched with.
    pub max_threads: u32,
}

/// A loaded module; unloaded when the last [`Kernel`] using it and the runtime are gone.
struct Module {
    cu_module: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule handle may be used from any thread (driver API handles are not
// thread-bound); it is only unloaded once, in Drop, when no Kernel refers to it any more.
unsafe impl Send for Module {}
// SAFETY: as above; shared use only reads the handle.
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: the handle came from a successful load and is unloaded exactly once, here.
        self.ctx
            .record_err(unsafe { cu_result::module::unload(self.cu_module) });
    }
}

struct KernelInner {
    cu_function: sys::CUfunction,
    /// Keeps the module (and so `cu_function`) alive.
    module: Arc<Module>,
    kind: ModuleKind,
    name: String,
    resources: KernelResources,
    /// Whether the max-dynamic-shared-memory attribute was raised to the device maximum.
    smem_raised: Mutex<bool>,
}

// SAFETY: a CUfunction handle may be used from any thread; it stays valid while `module` is alive.
unsafe impl Send for KernelInner {}
// SAFETY: as above; the only mutable state is behind a Mutex.
unsafe impl Sync for KernelInner {}

/// A kernel of one of the embedded modules, obtained from [`Runtime::function`]. Cheap to clone.
#[derive(Clone)]
pub struct Kernel {
    inner: Arc<KernelInner>,
}

impl Kernel {
    /// The kernel's symbol name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The module it comes from.
    pub fn module_kind(&self) -> ModuleKind {
        self.inner.kind
    }
    /// Registers, local memory, static shared memory and block size limit.
    pub fn resources(&self) -> KernelResources {
        self.inner.resources
    }
    /// The raw driver handle (valid while this `Kernel` is alive).
    pub fn cu_function(&self) -> sys::CUfunction {
        self.inner.cu_function
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.inner.name)
            .field("module", &self.inner.kind)
            .field("resources", &self.inner.resources)
            .finish()
    }
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: (i32, i32),
    smem_optin: u32,
    modules: [Mutex<Option<Arc<Module>>>; 2],
    kernels: [Mutex<HashMap<String, Kernel>>; 2],
    /// Scratch memory reused by every `sageattn` call on this runtime (grow-only; see
    /// [`Runtime::release_workspace`]). The lock is held while a call enqueues its kernels, so two
    /// threads sharing the runtime cannot interleave their use of it.
    workspace: Mutex<Option<DeviceAlloc>>,
}

/// A CUDA context, the stream all of this library's work goes to, and the kernel cache.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("ordinal", &self.ordinal())
            .field("compute_capability", &self.inner.cc)
            .field("stream", &self.inner.stream.cu_stream())
            .finish()
    }
}

fn device_attr(ctx: &CudaContext, attr: sys::CUdevice_attribute) -> Result<i32> {
    ctx.attribute(attr)
        .with_op(|| format!("querying device attribute {attr:?}"))
}

/// A non-negative driver-reported quantity as u32.
fn non_negative(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
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
    /// it, so it is ordered with the caller's own work on that stream.
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
        Ok(Runtime {
            inner: Arc::new(Inner {
                ctx,
                stream,
                cc,
                smem_optin,
                modules: Default::default(),
                kernels: Default::default(),
                workspace: Mutex::new(None),
            }),
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
            .inner
            .workspace
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ws.as_ref().is_none_or(|w| w.bytes() < bytes) {
            // Free the old one first (stream-ordered) so peak memory is not old + new.
            *ws = None;
            *ws = Some(DeviceAlloc::new(&self.inner.stream, bytes.max(1 << 20))?);
        }
        let ptr = ws.as_ref().map_or(0, DeviceAlloc::ptr);
        f(ptr)
    }

    /// Frees the scratch workspace `sageattn` keeps between calls (stream-ordered); the next call
    /// allocates it again. The workspace is about `(qo_len·q_heads + kv_len·kv_heads)·head_dim·batch`
    /// bytes for the largest call so far (plus V for bf16 inputs).
    pub fn release_workspace(&self) {
        *self
            .inner
            .workspace
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The stream all work is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
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
        self.inner
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
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            clock_mhz: attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? / 1000,
            memory_clock_mhz: attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)? / 1000,
            memory_bus_width: attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
            total_memory_bytes: ctx.total_mem().op("querying the device memory size")? as u64,
            l2_bytes: u64::from(attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?),
            max_shared_per_block_optin: self.inner.smem_optin,
        })
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
        let unavailable = |reason: String| Error::ModuleUnavailable {
            module: kind.name(),
            reason,
        };
        let (major, minor) = self.inner.cc;
        match kind {
            ModuleKind::Portable => self.require_sm80()?,
            ModuleKind::Hopper if (major, minor) != (9, 0) => {
                return Err(unavailable(format!(
                    "it is built for sm_90a and needs compute capability 9.0, the device has \
                     {major}.{minor}"
                )))
            }
            ModuleKind::Hopper => {}
        }
        let ptx = kind.ptx();
        if ptx.trim().is_empty() {
            return Err(unavailable(
                "the library was built without PTX (SAGE_SKIP_PTX=1 or no PTX toolchain)".into(),
            ));
        }
        let image = CString::new(ptx)
            .map_err(|_| unavailable("the embedded PTX contains a NUL byte".into()))?;
        self.bind()?;
        let cu_module = load_ptx(&image).map_err(|(source, log)| Error::Cuda {
            op: format!(
                "loading the {} PTX module ({} bytes) for compute capability {major}.{minor}{}",
                kind.name(),
                ptx.len(),
                if log.is_empty() {
                    String::new()
                } else {
                    format!("; JIT log: {log}")
                }
            ),
            source,
        })?;
        let module = Arc::new(Module {
            cu_module,
            ctx: self.inner.ctx.clone(),
        });
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
        let not_found = || Error::KernelNotFound {
            module: kind.name(),
            name: name.to_owned(),
        };
        let c_name = CString::new(name).map_err(|_| not_found())?;
        self.bind()?;
        // SAFETY: `module.cu_module` is a loaded module kept alive by `module`.
        let cu_function = match unsafe { cu_result::module::get_function(module.cu_module, c_name) }
        {
            Ok(f) => f,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_FOUND => return Err(not_found()),
            Err(source) => {
                return Err(Error::Cuda {
                    op: format!("looking up kernel `{name}` in the {} module", kind.name()),
                    source,
                })
            }
        };
        let resources = function_attributes(cu_function, name)?;
        let kernel = Kernel {
            inner: Arc::new(KernelInner {
                cu_function,
                module,
                kind,
                name: name.to_owned(),
                resources,
                smem_raised: Mutex::new(false),
            }),
        };
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
    /// [`crate::tensor::AccessGuard`]s alive until this returns).
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        func: &Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_smem: u32,
        params: &P,
    ) -> Result<()> {
        let k = &*func.inner;
        if *k.module.ctx != *self.inner.ctx {
            return Err(Error::KernelResources {
                name: k.name.clone(),
                reason: format!(
                    "the kernel was loaded by a runtime of another context (device {}), this \
                     runtime uses device {}",
                    k.module.ctx.ordinal(),
                    self.ordinal()
                ),
            });
        }
        check_launch_config(
            &k.name,
            grid,
            block,
            dynamic_smem,
            &k.resources,
            self.inner.smem_optin,
        )?;
        self.bind()?;
        if dynamic_smem > DEFAULT_MAX_DYNAMIC_SMEM {
            let mut raised = lock(&k.smem_raised);
            if !*raised {
                // check_launch_config guarantees static <= optin.
                let max_dynamic = self
                    .inner
                    .smem_optin
                    .saturating_sub(k.resources.static_shared_bytes);
                // SAFETY: `cu_function` is valid while `k.module` is alive.
                unsafe {
                    cu_result::function::set_function_attribute(
                        k.cu_function,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        max_dynamic as i32,
                    )
                }
                .with_op(|| {
                    format!(
                        "raising the dynamic shared memory limit of kernel `{}` to {max_dynamic} \
                         bytes",
                        k.name
                    )
                })?;
                *raised = true;
            }
        }
        // The driver reads the parameter buffer during the call (it copies it), so a pointer to
        // the borrowed `params` is enough.
        let mut args = [params as *const P as *mut c_void];
        // SAFETY: `cu_function` is valid while `k.module` is alive; the caller guarantees that
        // `P` matches the kernel's single parameter and that the pointers inside are valid; the
        // configuration was checked against the kernel's and the device's limits above.
        unsafe {
            cu_result::launch_kernel(
                k.cu_function,
                grid,
                block,
                dynamic_smem,
                self.inner.stream.cu_stream(),
                &mut args,
            )
        }
        .with_op(|| {
            format!(
                "launching kernel `{}` (grid {grid:?}, block {block:?}, {dynamic_smem} bytes of \
                 dynamic shared memory)",
                k.name
            )
        })
    }

    /// Allocates `len` zeroed elements on the runtime's stream (stream-ordered).
    ///
    /// Errors: [`Error::InvalidOption`] for `len == 0`, [`Error::TooLarge`] if the byte size
    /// overflows, [`Error::Cuda`] when out of memory.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        let bytes = alloc_bytes::<T>(len)?;
        self.inner.stream.alloc_zeros(len).with_op(|| {
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
        unsafe { self.inner.stream.alloc(len) }
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
        let stream = &self.inner.stream;
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

/// Loads a NUL-terminated PTX image with an error log; on failure returns the driver error and
/// the (possibly empty) JIT log.
fn load_ptx(
    image: &CString,
) -> std::result::Result<sys::CUmodule, (cudarc::driver::DriverError, String)> {
    const LOG_BYTES: usize = 16 * 1024;
    let mut log = vec![0u8; LOG_BYTES];
    let mut options = [
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    // The size option's value is passed in the pointer slot itself (documented by the driver).
    let mut values = [log.as_mut_ptr().cast::<c_void>(), LOG_BYTES as *mut c_void];
    let mut module: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `image` is NUL-terminated PTX text alive for the call; `options` and `values` have
    // the same length (2); the error log buffer is `LOG_BYTES` long as the size option says; the
    // driver writes one CUmodule into `module`.
    let rc = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    match rc.result() {
        Ok(()) => Ok(module),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            Err((e, text))
        }
    }
}

/// Queries the resource attributes of a kernel.
fn function_attributes(f: sys::CUfunction, name: &str) -> Result<KernelResources> {
    use sys::CUfunction_attribute as A;
    let get = |a: sys::CUfunction_attribute| -> Result<u32> {
        // SAFETY: `f` is a valid function handle of a loaded module (caller's invariant).
        unsafe { cu_result::function::get_function_attribute(f, a) }
            .map(non_negative)
            .with_op(|| format!("querying attribute {a:?} of kernel `{name}`"))
    };
    Ok(KernelResources {
        num_regs: get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        local_bytes: get(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        static_shared_bytes: get(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
        max_threads: get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
    })
}

/// Pure checks of a launch configuration against the kernel's and the device's limits.
fn check_launch_config(
    name: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    dynamic_smem: u32,
    res: &KernelResources,
    smem_optin: u32,
) -> Result<()> {
    let fail = |reason: String| {
        Err(Error::KernelResources {
            name: name.to_owned(),
            reason,
        })
    };
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return fail(format!("grid {grid:?} has a zero dimension"));
    }
    if grid.0 > i32::MAX as u32 || grid.1 > 65535 || grid.2 > 65535 {
        return fail(format!(
            "grid {grid:?} exceeds the limits (2^31-1, 65535, 65535)"
        ));
    }
    if block.0 == 0 || block.1 == 0 || block.2 == 0 {
        return fail(format!("block {block:?} has a zero dimension"));
    }
    let threads = u64::from(block.0) * u64::from(block.1) * u64::from(block.2);
    if threads > u64::from(res.max_threads) || block.2 > 64 {
        return fail(format!(
            "block {block:?} has {threads} threads, the kernel allows at most {} (and z <= 64)",
            res.max_threads
        ));
    }
    let total_smem = u64::from(res.static_shared_bytes) + u64::from(dynamic_smem);
    if total_smem > u64::from(smem_optin.max(DEFAULT_MAX_DYNAMIC_SMEM)) {
        return fail(format!(
            "needs {dynamic_smem} bytes of dynamic + {} bytes of static shared memory = \
             {total_smem} bytes per block, the device allows at most {smem_optin}",
            res.static_shared_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RES: KernelResources = KernelResources {
        num_regs: 128,
        local_bytes: 0,
        static_shared_bytes: 1024,
        max_threads: 256,
    };

    #[test]
    fn launch_config_accepts_valid() {
        check_launch_config("k", (100, 8, 2), (128, 1, 1), 100 * 1024, &RES, 227 * 1024).unwrap();
    }

    #[test]
    fn launch_config_rejects_bad_dims() {
        for (grid, block) in [
            ((0, 1, 1), (128, 1, 1)),
            ((1, 65536, 1), (128, 1, 1)),
            ((1, 1, 1), (0, 1, 1)),
            ((1, 1, 1), (512, 1, 1)),
            ((1, 1, 1), (1, 1, 65)),
        ] {
            let e = check_launch_config("k", grid, block, 0, &RES, 227 * 1024).unwrap_err();
            assert!(matches!(e, Error::KernelResources { .. }), "{e}");
        }
    }

    #[test]
    fn launch_config_rejects_too_much_smem() {
        let e = check_launch_config("k", (1, 1, 1), (128, 1, 1), 227 * 1024, &RES, 227 * 1024)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("kernel `k`") && msg.contains("232448"),
            "{msg}"
        );
    }

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
}
