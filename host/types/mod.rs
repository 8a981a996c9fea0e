//! The bottom layer: value types every other module uses and that use nothing above them. Element
//! types and layouts ([`dtype`]), the options of a call ([`options`]) and the error type
//! ([`error`]), and the checked sequences of a packed batch ([`varlen`]).

pub mod dtype;
pub mod error;
pub mod options;
pub mod varlen;
