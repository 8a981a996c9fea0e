//! What ends the program ([`BenchError`]), and which library errors end the sweep.

use cudarc::driver::sys;
use sageattention::Error as SageError;
use std::fmt;

/// What ends the program with a non-zero status.
#[derive(Debug)]
pub enum BenchError {
    /// A library error (typed; printed as its message).
    Lib(SageError),
    /// Bad command line (exit status 2).
    Usage(String),
    /// Files and formats.
    Io(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Lib(e) => f.write_str(&one_line(&e.to_string())),
            BenchError::Usage(s) | BenchError::Io(s) => f.write_str(&one_line(s)),
        }
    }
}

impl From<SageError> for BenchError {
    fn from(e: SageError) -> Self {
        BenchError::Lib(e)
    }
}

/// Folds a multi-line message (a JIT log, say) into one line.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// True for errors after which the GPU context cannot be trusted (or nothing can run): the run
/// stops. Validation errors and running out of memory only skip the case.
pub fn is_fatal(e: &SageError) -> bool {
    match e {
        SageError::Cuda { source, .. } => source.0 != sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY,
        SageError::DriverUnavailable { .. }
        | SageError::UnsupportedDevice { .. }
        | SageError::ModuleUnavailable { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_errors() {
        assert_eq!(one_line("a\n  b\n\nc "), "a | b | c");
        let e = SageError::HeadsNotDivisible {
            q_heads: 32,
            kv_heads: 5,
        };
        assert!(!is_fatal(&e));
        let oom = SageError::Cuda {
            op: "x".into(),
            source: cudarc::driver::DriverError(sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY),
        };
        assert!(!is_fatal(&oom));
        let ill = SageError::Cuda {
            op: "x".into(),
            source: cudarc::driver::DriverError(sys::cudaError_enum::CUDA_ERROR_ILLEGAL_ADDRESS),
        };
        assert!(is_fatal(&ill));
        assert!(!BenchError::Lib(ill).to_string().contains('\n'));
    }
}
