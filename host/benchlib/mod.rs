//! The CPU-side parts of `bench` (statistics, JSON, the table, the SVG chart, the peers file), kept
//! apart from the GPU code so that they are unit-tested without a GPU (`cargo test --bin bench`).

pub mod peers;
pub mod report;
pub mod stats;
pub mod svg;
