//! The launch layer: what happens between the API call and the GPU, in call order. [`validate`]
//! checks everything before any launch and returns the call's `Problem`; [`dispatch`] picks the
//! kernel; [`enqueue`] lays out the [`scratch`] memory and queues the preparation and attention
//! launches (the Hopper kernel's through [`hopper`], its TMA descriptors from [`tma`]). [`selftest`] runs the device crate's
//! single-tile primitive kernels for the GPU tests. [`varlen`] checks packed (variable-length) inputs,
//! groups their sequences into batched problems and holds the LSE copy and row fill the varlen
//! call needs.
//!
//! Each step imports only the steps before it and the layers below (`device`, `types`).

pub(crate) mod dispatch;
pub(crate) mod enqueue;
pub mod hopper;
pub(crate) mod scratch;
pub mod selftest;
pub(crate) mod tma;
pub(crate) mod validate;
pub(crate) mod varlen;
