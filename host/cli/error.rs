//! The tool's error type: a one-line message and the exit status it maps to.

use std::fmt;
use std::process::ExitCode;

use sageattention::Error as LibError;

/// Exit status of a usage or input error.
pub const EXIT_USAGE: u8 = 2;
/// Exit status of a GPU or runtime error.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit status when `--max-rel-l1` is exceeded.
pub const EXIT_CHECK_FAILED: u8 = 3;

/// What went wrong, classified by exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Bad arguments or bad input data (exit 2).
    Usage(String),
    /// The GPU, the driver, or the file system failed (exit 1).
    Runtime(String),
    /// The output is less accurate than `--max-rel-l1` allows (exit 3).
    CheckFailed(String),
}

impl CliError {
    /// The process exit status.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Runtime(_) => EXIT_RUNTIME,
            CliError::CheckFailed(_) => EXIT_CHECK_FAILED,
        }
    }

    /// The exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }

    /// The message, on one line.
    pub fn message(&self) -> String {
        let (CliError::Usage(m) | CliError::Runtime(m) | CliError::CheckFailed(m)) = self;
        one_line(m)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message())
    }
}

/// Library errors: those about the inputs or options are usage errors (exit 2), the rest (driver,
/// device, modules, launches, memory) are runtime errors (exit 1).
impl From<LibError> for CliError {
    fn from(e: LibError) -> Self {
        let msg = e.to_string();
        match e {
            LibError::DTypeMismatch { .. }
            | LibError::UnsupportedDType { .. }
            | LibError::UnsupportedHeadDim { .. }
            | LibError::ShapeMismatch { .. }
            | LibError::HeadsNotDivisible { .. }
            | LibError::EmptyTensor { .. }
            | LibError::TooLarge { .. }
            | LibError::InvalidOption(_)
            | LibError::NotPacked { .. }
            | LibError::SeqlensBatch { .. }
            | LibError::SeqlensBatchMismatch { .. }
            | LibError::SeqlensFirst { .. }
            | LibError::SeqlensNotMonotone { .. }
            | LibError::SeqlensTotal { .. }
            | LibError::SeqlenAboveMax { .. } => CliError::Usage(msg),
            _ => CliError::Runtime(msg),
        }
    }
}

/// Collapses whitespace runs that contain a line break into one space, so every message is one
/// line (driver JIT logs, for instance, span several).
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, line) in s
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let e = CliError::Runtime("a\n  b\r\n\nc  ".into());
        assert_eq!(e.to_string(), "error: a b c");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(CliError::Usage(String::new()).exit_status(), 2);
        assert_eq!(CliError::Runtime(String::new()).exit_status(), 1);
        assert_eq!(CliError::CheckFailed(String::new()).exit_status(), 3);
    }

    #[test]
    fn library_errors_are_classified() {
        let usage: CliError = LibError::HeadsNotDivisible {
            q_heads: 3,
            kv_heads: 2,
        }
        .into();
        assert_eq!(usage.exit_status(), EXIT_USAGE);
        let runtime: CliError = LibError::DriverUnavailable { reason: "x".into() }.into();
        assert_eq!(runtime.exit_status(), EXIT_RUNTIME);
    }
}
