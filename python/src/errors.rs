//! Every failure of a call, as the Python exception it becomes.
//!
//! The library's [`Error`] variants map onto three Python types: a wrong element type is a
//! `TypeError`; a wrong shape, stride, alignment, device or option value is a `ValueError`; a
//! driver, device or kernel failure is a `RuntimeError`. The message is the library's own text.
//! Bad `cu_seqlens` (and a packed tensor that is not packed) are `ValueError`s.

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;
use sageattention::Error;

/// A failed call: the Python exception type and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Becomes `TypeError`.
    Type(String),
    /// Becomes `ValueError`.
    Value(String),
    /// Becomes `RuntimeError`.
    Runtime(String),
}

impl Failure {
    /// A driver error, worded by the library (which never calls a missing driver to format it).
    pub(crate) fn cuda(op: impl Into<String>, source: cudarc::driver::DriverError) -> Self {
        Error::Cuda {
            op: op.into(),
            source,
        }
        .into()
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::DTypeMismatch { .. } | Error::UnsupportedDType { .. } => Failure::Type(text),
            Error::UnsupportedHeadDim { .. }
            | Error::ShapeMismatch { .. }
            | Error::InvalidStride { .. }
            | Error::Misaligned { .. }
            | Error::HeadsNotDivisible { .. }
            | Error::EmptyTensor { .. }
            | Error::TooLarge { .. }
            | Error::WrongDevice { .. }
            | Error::NotDeviceMemory { .. }
            | Error::OutOfBounds { .. }
            | Error::InvalidOption(_)
            | Error::PvPrecisionUnavailable { .. }
            // Packed (variable-length) inputs: a view that is not packed, bad prefix sums.
            | Error::NotPacked { .. }
            | Error::SeqlensBatch { .. }
            | Error::SeqlensBatchMismatch { .. }
            | Error::SeqlensFirst { .. }
            | Error::SeqlensNotMonotone { .. }
            | Error::SeqlensTotal { .. }
            | Error::SeqlenAboveMax { .. } => Failure::Value(text),
            // Driver, device, module and kernel failures, and whatever the library adds later.
            _ => Failure::Runtime(text),
        }
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Type(m) => PyTypeError::new_err(m),
            Failure::Value(m) => PyValueError::new_err(m),
            Failure::Runtime(m) => PyRuntimeError::new_err(m),
        }
    }
}

/// Runs `f`, turning a panic into a `RuntimeError` instead of PyO3's `PanicException` (a
/// `BaseException` that `except Exception` does not catch). No input is known to panic; this is
/// the last line of defence.
pub(crate) fn no_panic<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Failure::Runtime(format!(
                "internal error in sageattention (a bug; please report it): {what}"
            )))
        }
    }
}
