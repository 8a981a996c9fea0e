//! The library's error type.
//!
//! Every misuse the library can detect has its own variant, and every message names the offending
//! values, so that a failed call can be diagnosed from the message alone. CUDA driver failures are
//! wrapped in [`Error::Cuda`] together with a description of the operation that failed; there is
//! deliberately no `From<DriverError>` conversion, so that every call site has to say what it was
//! doing (see [`CudaResultExt`]).

use super::dtype::DType;
use cudarc::driver::DriverError;
use std::fmt::Write as _;

/// Everything that can go wrong in this library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CUDA driver call failed.
    #[error("CUDA error while {op}: {}", describe_driver_error(source))]
    Cuda {
        /// What the library was doing when the call failed.
        op: String,
        /// The driver's error code.
        source: DriverError,
    },

    /// The CUDA driver library (`libcuda`) could not be loaded, or reports no usable device.
    #[error("the CUDA driver is not available: {reason}")]
    DriverUnavailable {
        /// Why the driver could not be used.
        reason: String,
    },

    /// A tensor has a different element type than the one the operation needs.
    #[error("tensor `{tensor}` has dtype {got}, expected {expected}")]
    DTypeMismatch {
        /// The tensor's name (e.g. `"q"`).
        tensor: &'static str,
        /// The element type the operation needs.
        expected: DType,
        /// The element type the tensor has.
        got: DType,
    },

    /// A tensor's element type is not supported by the operation at all.
    #[error(
        "tensor `{tensor}` has unsupported dtype {dtype}; supported: {}",
        list(supported)
    )]
    UnsupportedDType {
        /// The tensor's name.
        tensor: &'static str,
        /// The element type the tensor has.
        dtype: DType,
        /// The element types the operation supports.
        supported: &'static [DType],
    },

    /// The head dimension is not one the library accepts (for a call: 0, above 256 or not a
    /// multiple of 8; `supported` is then every multiple of 8 from 8 to 256).
    #[error("unsupported head_dim {head_dim}; supported: {}", dims(supported))]
    UnsupportedHeadDim {
        /// The head dimension of the inputs.
        head_dim: usize,
        /// The head dimensions the kernels support.
        supported: &'static [usize],
    },

    /// The P·V precision asked for has no kernel on this device or with these options.
    #[error("P·V precision {precision} is not available here: {reason}")]
    PvPrecisionUnavailable {
        /// The precision asked for.
        precision: &'static str,
        /// Why, and what is needed.
        reason: String,
    },

    /// Tensor shapes do not agree with each other.
    #[error("shape mismatch: {what}")]
    ShapeMismatch {
        /// Which shapes disagree, with their values.
        what: String,
    },

    /// A tensor has strides the kernels cannot handle.
    #[error("tensor `{tensor}` has invalid strides: {reason}")]
    InvalidStride {
        /// The tensor's name.
        tensor: &'static str,
        /// Which stride is wrong, its value, and why it is rejected.
        reason: String,
    },

    /// A tensor's base pointer is not aligned as the kernels need.
    #[error("tensor `{tensor}` is misaligned: {reason}")]
    Misaligned {
        /// The tensor's name.
        tensor: &'static str,
        /// The pointer and the alignment it lacks.
        reason: String,
    },

    /// The number of query heads is not a multiple of the number of key/value heads.
    #[error(
        "q_heads ({q_heads}) is not a multiple of kv_heads ({kv_heads}); \
         grouped-query attention needs q_heads % kv_heads == 0"
    )]
    HeadsNotDivisible {
        /// Number of query heads.
        q_heads: usize,
        /// Number of key/value heads.
        kv_heads: usize,
    },

    /// A tensor has a zero-sized dimension.
    #[error("tensor `{tensor}` is empty: shape {shape:?} (every dimension must be >= 1)")]
    EmptyTensor {
        /// The tensor's name.
        tensor: &'static str,
        /// Its logical shape `[batch, heads, seq, head_dim]`.
        shape: [usize; 4],
    },

    /// A size or offset does not fit in the integer types the kernels or the host use.
    #[error("tensor `{tensor}` is too large: {reason}")]
    TooLarge {
        /// The tensor's name.
        tensor: &'static str,
        /// Which quantity overflowed, with the values involved.
        reason: String,
    },

    /// A tensor lives on another device than the runtime.
    #[error("tensor `{tensor}` is on device {got}, but the runtime uses device {expected}")]
    WrongDevice {
        /// The tensor's name.
        tensor: &'static str,
        /// The runtime's device ordinal.
        expected: usize,
        /// The tensor's device ordinal.
        got: usize,
    },

    /// A raw pointer does not point to device (or managed) memory.
    #[error("tensor `{tensor}`: pointer {ptr:#x} is not CUDA device or managed memory")]
    NotDeviceMemory {
        /// The tensor's name.
        tensor: &'static str,
        /// The offending pointer.
        ptr: u64,
    },

    /// A view extends past the end of the memory it was made from.
    #[error("tensor `{tensor}` is out of bounds: {reason}")]
    OutOfBounds {
        /// The tensor's name.
        tensor: &'static str,
        /// The view's extent and the size of the memory.
        reason: String,
    },

    /// A packed (variable-length) tensor is not a view with batch = 1: packed tensors are
    /// `[total, heads, head_dim]`, given as the logical shape `[1, heads, total, head_dim]`.
    #[error(
        "tensor `{tensor}` is not packed: shape {shape:?} has batch {}; a packed tensor \
         `[total, heads, head_dim]` is the view `[1, heads, total, head_dim]`",
        shape[0]
    )]
    NotPacked {
        /// The tensor's name.
        tensor: &'static str,
        /// Its logical shape `[batch, heads, seq, head_dim]`.
        shape: [usize; 4],
    },

    /// `cu_seqlens` describes no sequence, or more than the library supports.
    #[error(
        "`{tensor}` has {len} entries, i.e. {batch} sequences; it needs batch + 1 entries with \
         1 <= batch <= {max}"
    )]
    SeqlensBatch {
        /// Which prefix sums (`"cu_seqlens_q"` or `"cu_seqlens_k"`).
        tensor: &'static str,
        /// Number of entries.
        len: usize,
        /// Number of sequences they describe (`len - 1`, 0 when empty).
        batch: usize,
        /// Largest batch supported.
        max: usize,
    },

    /// `cu_seqlens_q` and `cu_seqlens_k` describe different numbers of sequences.
    #[error("cu_seqlens_q describes {q_batch} sequences but cu_seqlens_k {k_batch}")]
    SeqlensBatchMismatch {
        /// Sequences in `cu_seqlens_q`.
        q_batch: usize,
        /// Sequences in `cu_seqlens_k`.
        k_batch: usize,
    },

    /// The first prefix sum is not 0.
    #[error("`{tensor}`[0] is {first}; prefix sums start at 0")]
    SeqlensFirst {
        /// Which prefix sums.
        tensor: &'static str,
        /// The first entry.
        first: i32,
    },

    /// The prefix sums decrease somewhere (a negative sequence length).
    #[error(
        "`{tensor}` is not monotone: entry {index} is {next} after {prev} \
         (sequence {} would have length {})",
        index - 1,
        i64::from(*next) - i64::from(*prev)
    )]
    SeqlensNotMonotone {
        /// Which prefix sums.
        tensor: &'static str,
        /// Index of the entry smaller than the one before it (>= 1).
        index: usize,
        /// The entry before.
        prev: i32,
        /// The smaller entry.
        next: i32,
    },

    /// The last prefix sum is not the packed tensor's number of rows.
    #[error("`{tensor}` ends at {last} but the packed tensor `{packed}` holds {total} rows")]
    SeqlensTotal {
        /// Which prefix sums.
        tensor: &'static str,
        /// The packed tensor they index (`"q"` or `"k"`).
        packed: &'static str,
        /// The last entry.
        last: i32,
        /// Rows of the packed tensor.
        total: usize,
    },

    /// A sequence is longer than the maximum length the caller gave.
    #[error("sequence {index} of `{tensor}` has length {len}, above the max_seqlen given ({max})")]
    SeqlenAboveMax {
        /// Which prefix sums.
        tensor: &'static str,
        /// The sequence's index.
        index: usize,
        /// Its length.
        len: usize,
        /// The maximum the caller gave.
        max: usize,
    },

    /// Context parallelism (`ring`): another rank of the ring failed — it returns the reason
    /// itself — so this rank stopped at the same point instead of waiting for it.
    #[error("ring rank {rank}: rank(s) {failed:?} failed {phase}; every rank stopped there")]
    RingPeerFailed {
        /// This rank.
        rank: usize,
        /// The ranks that failed, ascending.
        failed: Vec<usize>,
        /// Where (`"validating their inputs"`, `"computing their shard"`).
        phase: &'static str,
    },

    /// Context parallelism: the ranks of one ring were given different problems (shapes, dtype,
    /// options, sharding); every rank reports the same disagreement.
    #[error("ring rank {rank}: the ranks disagree about {what}")]
    RingMismatch {
        /// This rank.
        rank: usize,
        /// The first field that differs, with rank 0's value and the other rank's.
        what: String,
    },

    /// Context parallelism: communication between the ranks failed (NCCL, or a transport
    /// misused).
    #[error("ring transport failed while {op}: {reason}")]
    Transport {
        /// What the transport was doing.
        op: String,
        /// The transport's error.
        reason: String,
    },

    /// An option has an invalid value.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// The GPU is older than the kernels need (compute capability 8.0, Ampere, or newer).
    #[error(
        "unsupported device `{name}` with compute capability {major}.{minor}: \
         SageAttention needs compute capability 8.0 (sm_80) or newer"
    )]
    UnsupportedDevice {
        /// The device's name.
        name: String,
        /// Compute capability, major part.
        major: i32,
        /// Compute capability, minor part.
        minor: i32,
    },

    /// A PTX module cannot be used: it is missing from the build, or the device cannot run it.
    #[error("the {module} kernel module is unavailable: {reason}")]
    ModuleUnavailable {
        /// Which module (`"portable"` or `"hopper"`).
        module: &'static str,
        /// Why it cannot be loaded.
        reason: String,
    },

    /// A kernel is not present in its PTX module.
    #[error("kernel `{name}` not found in the {module} kernel module")]
    KernelNotFound {
        /// Which module (`"portable"` or `"hopper"`).
        module: &'static str,
        /// The kernel's symbol name.
        name: String,
    },

    /// A kernel cannot be launched with the requested resources or configuration.
    #[error("kernel `{name}` cannot be launched: {reason}")]
    KernelResources {
        /// The kernel's symbol name.
        name: String,
        /// Which resource or launch dimension is out of range, with the values involved.
        reason: String,
    },
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Converts cudarc results into [`Result`], naming the operation that failed.
///
/// ```ignore
/// stream.synchronize().op("synchronizing the stream")?;
/// ```
pub trait CudaResultExt<T> {
    /// Wraps a driver error as [`Error::Cuda`] with `op` describing what was being done.
    fn op(self, op: &str) -> Result<T>;

    /// Like [`CudaResultExt::op`], but builds the description only on failure.
    fn with_op<F: FnOnce() -> String>(self, op: F) -> Result<T>;
}

impl<T> CudaResultExt<T> for std::result::Result<T, DriverError> {
    fn op(self, op: &str) -> Result<T> {
        self.map_err(|source| Error::Cuda {
            op: op.to_owned(),
            source,
        })
    }

    fn with_op<F: FnOnce() -> String>(self, op: F) -> Result<T> {
        self.map_err(|source| Error::Cuda { op: op(), source })
    }
}

/// Whether the CUDA driver library can be loaded. cudarc loads `libcuda` at run time and panics
/// when it is missing, so every path that may be the first driver call checks this first (it lives
/// here, at the bottom, because formatting a driver error is such a path).
#[cfg(feature = "driver-loading")]
pub(crate) fn driver_library_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: `is_culib_present` only tries to dlopen the library by its usual names.
    *PRESENT.get_or_init(|| unsafe { cudarc::driver::sys::is_culib_present() })
}

/// Without `driver-loading` the application's cudarc dependency chose how libcuda is reached
/// (linked at build time, as candle's is): the process could not have started without it.
#[cfg(not(feature = "driver-loading"))]
pub(crate) fn driver_library_present() -> bool {
    true
}

/// `CUDA_ERROR_NAME (description)`. The name comes from the `CUresult` variant and needs no driver
/// call; the description is asked of the driver only when the driver library is loadable, so that
/// formatting an error can never panic.
fn describe_driver_error(err: &DriverError) -> String {
    let mut s = format!("{:?}", err.0);
    if driver_library_present() {
        if let Ok(text) = err.error_string() {
            let _ = write!(s, " ({})", text.to_string_lossy());
        }
    }
    s
}

/// Formats a slice as `a, b, c`.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{item}");
    }
    s
}

/// Formats head dims as [`list`] does, or a run of four or more equally spaced values `s, 2s, …,
/// n·s` as `every multiple of s from s to n·s`.
fn dims(items: &[usize]) -> String {
    if let [first, second, .., last] = *items {
        let step = second.wrapping_sub(first);
        let spaced = items.windows(2).all(|w| w[1].wrapping_sub(w[0]) == step);
        if items.len() >= 4 && step > 0 && first == step && spaced {
            return format!("every multiple of {step} from {first} to {last}");
        }
    }
    list(items)
}
