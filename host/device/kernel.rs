//! Kernels of the embedded PTX modules: which module ([`ModuleKind`]), a loaded module, a kernel
//! with its resources, and the checks and driver calls of one launch. The [`Runtime`] caches them
//! and is the only way to get one.
//!
//! [`Runtime`]: super::runtime::Runtime

use super::kernels::{PTX_ADA_FP8, PTX_HOPPER, PTX_PORTABLE};
use crate::types::error::{CudaResultExt, Error, Result};
use cudarc::driver::{result as cu_result, sys, CudaContext, CudaStream, DeviceRepr};
use std::ffi::{c_void, CString};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Dynamic shared memory a kernel may use without opting in (48 KiB).
pub const DEFAULT_MAX_DYNAMIC_SMEM: u32 = 48 * 1024;
/// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT` for every kernel past that default: the
/// most shared memory the unified L1 can give (`CU_SHAREDMEM_CARVEOUT_MAX_SHARED`).
const MAX_SHARED_CARVEOUT_PERCENT: i32 = 100;

/// A non-negative driver-reported quantity as u32.
pub(super) fn non_negative(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// Locks a mutex, ignoring poisoning: every critical section of the runtime and its kernels leaves
/// its data consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which embedded PTX module a kernel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// Built for `sm_80`; runs on compute capability 8.0 and newer.
    Portable,
    /// Built for `sm_90a`; runs on compute capability 9.0 only.
    Hopper,
    /// Built for `sm_89` (the FP8 P·V); runs on compute capability 8.9 and newer.
    AdaFp8,
}

impl ModuleKind {
    /// `"portable"`, `"hopper"` or `"ada-fp8"`.
    pub const fn name(self) -> &'static str {
        match self {
            ModuleKind::Portable => "portable",
            ModuleKind::Hopper => "hopper",
            ModuleKind::AdaFp8 => "ada-fp8",
        }
    }

    fn ptx(self) -> &'static str {
        match self {
            ModuleKind::Portable => PTX_PORTABLE,
            ModuleKind::Hopper => PTX_HOPPER,
            ModuleKind::AdaFp8 => PTX_ADA_FP8,
        }
    }

    pub(super) const fn index(self) -> usize {
        match self {
            ModuleKind::Portable => 0,
            ModuleKind::Hopper => 1,
            ModuleKind::AdaFp8 => 2,
        }
    }

    /// The module's PTX as a C string, once the checks that need no driver call pass: the device
    /// can run it (the Hopper module needs compute capability 9.0 exactly, the FP8 module 8.9 or
    /// newer; the portable module's sm_80 check is the runtime's) and the build embeds it.
    pub(super) fn image(self, (major, minor): (i32, i32)) -> Result<CString> {
        let unavailable = |reason: String| Error::ModuleUnavailable {
            module: self.name(),
            reason,
        };
        if self == ModuleKind::Hopper && (major, minor) != (9, 0) {
            return Err(unavailable(format!(
                "it is built for sm_90a and needs compute capability 9.0, the device has \
                 {major}.{minor}"
            )));
        }
        if self == ModuleKind::AdaFp8 && (major, minor) < (8, 9) {
            return Err(unavailable(format!(
                "it is built for sm_89 (mma.sync e4m3) and needs compute capability 8.9 or newer, \
                 the device has {major}.{minor}"
            )));
        }
        let ptx = self.ptx();
        if ptx.trim().is_empty() {
            return Err(unavailable(
                "the library was built without PTX (SAGE_SKIP_PTX=1 or no PTX toolchain)".into(),
            ));
        }
        CString::new(ptx).map_err(|_| unavailable("the embedded PTX contains a NUL byte".into()))
    }
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
pub(super) struct Module {
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

impl Module {
    /// Loads `image` (the PTX of `kind`, from [`ModuleKind::image`]) into the context `ctx`,
    /// which must be current; the driver JIT-compiles it for the device of compute capability
    /// `cc`. A failed load reports the JIT log.
    pub(super) fn load(
        ctx: &Arc<CudaContext>,
        kind: ModuleKind,
        image: &CString,
        (major, minor): (i32, i32),
    ) -> Result<Self> {
        let cu_module = load_ptx(image).map_err(|(source, log)| Error::Cuda {
            op: format!(
                "loading the {} PTX module ({} bytes) for compute capability {major}.{minor}{}",
                kind.name(),
                image.as_bytes().len(),
                if log.is_empty() {
                    String::new()
                } else {
                    format!("; JIT log: {log}")
                }
            ),
            source,
        })?;
        Ok(Module {
            cu_module,
            ctx: ctx.clone(),
        })
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

/// A kernel of one of the embedded modules, obtained from
/// [`Runtime::function`](super::runtime::Runtime::function). Cheap to clone.
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

    /// The symbol of kernel `name` as a C string ([`Error::KernelNotFound`] if it cannot be one).
    pub(super) fn symbol(kind: ModuleKind, name: &str) -> Result<CString> {
        CString::new(name).map_err(|_| not_found(kind, name))
    }

    /// Looks up `symbol` (of kernel `name`) in a loaded module, with the module's context current,
    /// and reads its resources.
    pub(super) fn load(
        module: Arc<Module>,
        kind: ModuleKind,
        name: &str,
        symbol: CString,
    ) -> Result<Self> {
        // SAFETY: `module.cu_module` is a loaded module kept alive by `module`.
        let cu_function = match unsafe { cu_result::module::get_function(module.cu_module, symbol) }
        {
            Ok(f) => f,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_FOUND => {
                return Err(not_found(kind, name))
            }
            Err(source) => {
                return Err(Error::Cuda {
                    op: format!("looking up kernel `{name}` in the {} module", kind.name()),
                    source,
                })
            }
        };
        let resources = function_attributes(cu_function, name)?;
        Ok(Kernel {
            inner: Arc::new(KernelInner {
                cu_function,
                module,
                kind,
                name: name.to_owned(),
                resources,
                smem_raised: Mutex::new(false),
            }),
        })
    }

    /// Checks a launch in context `ctx` against the kernel's and the device's limits (the device
    /// allows `smem_optin` bytes of shared memory per block).
    pub(super) fn check_launch(
        &self,
        ctx: &CudaContext,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_smem: u32,
        smem_optin: u32,
    ) -> Result<()> {
        let k = &*self.inner;
        if *k.module.ctx != *ctx {
            return Err(Error::KernelResources {
                name: k.name.clone(),
                reason: format!(
                    "the kernel was loaded by a runtime of another context (device {}), this \
                     runtime uses device {}",
                    k.module.ctx.ordinal(),
                    ctx.ordinal()
                ),
            });
        }
        check_launch_config(&k.name, grid, block, dynamic_smem, &k.resources, smem_optin)
    }

    /// Raises the kernel's dynamic shared memory limit to the device maximum (`smem_optin` less
    /// its static shared memory) the first time a launch needs more than 48 KiB. The kernel's
    /// context must be current.
    pub(super) fn raise_smem_limit(&self, dynamic_smem: u32, smem_optin: u32) -> Result<()> {
        let k = &*self.inner;
        if dynamic_smem > DEFAULT_MAX_DYNAMIC_SMEM {
            let mut raised = lock(&k.smem_raised);
            if !*raised {
                // check_launch_config guarantees static <= optin.
                let max_dynamic = smem_optin.saturating_sub(k.resources.static_shared_bytes);
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
                // The whole unified L1 as shared memory: a hint, without which the driver may
                // size the carveout for one CTA of a kernel meant to run several per SM (the
                // one-warpgroup 8-bit sm_90a kernels, three or four per SM).
                // SAFETY: as above.
                unsafe {
                    cu_result::function::set_function_attribute(
                        k.cu_function,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                        MAX_SHARED_CARVEOUT_PERCENT,
                    )
                }
                .with_op(|| format!("setting the shared memory carveout of kernel `{}`", k.name))?;
                *raised = true;
            }
        }
        Ok(())
    }

    /// Launches the kernel on `stream` with one by-value parameter struct.
    ///
    /// # Safety
    ///
    /// As [`Runtime::launch`](super::runtime::Runtime::launch), whose checks
    /// ([`Kernel::check_launch`], [`Kernel::raise_smem_limit`]) must have passed, with the
    /// kernel's context current.
    pub(super) unsafe fn launch_on<P: DeviceRepr>(
        &self,
        stream: &CudaStream,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_smem: u32,
        params: &P,
    ) -> Result<()> {
        let k = &*self.inner;
        // The driver reads the parameter buffer during the call (it copies it), so a pointer to
        // the borrowed `params` is enough.
        let mut args = [params as *const P as *mut c_void];
        // SAFETY: `cu_function` is valid while `k.module` is alive; the caller guarantees that
        // `P` matches the kernel's single parameter and that the pointers inside are valid; the
        // configuration was checked against the kernel's and the device's limits.
        unsafe {
            cu_result::launch_kernel(
                k.cu_function,
                grid,
                block,
                dynamic_smem,
                stream.cu_stream(),
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

/// [`Error::KernelNotFound`] for kernel `name` of module `kind`.
fn not_found(kind: ModuleKind, name: &str) -> Error {
    Error::KernelNotFound {
        module: kind.name(),
        name: name.to_owned(),
    }
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
}
