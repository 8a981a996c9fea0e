//! The PTX modules that `build.rs` compiles from the device crate `kernels-gpu`, embedded in the
//! library. All are empty when the crate was built with `SAGE_SKIP_PTX=1`; loading a kernel then
//! fails with `KernelNotFound`.

/// The portable module: `kernels-gpu` built for `sm_80` (PTX ISA 8.0). It runs on every GPU of
/// compute capability 8.0 and newer (Ampere, Ada, Hopper, ...): the driver compiles it for the GPU
/// it is loaded on.
pub const PTX_PORTABLE: &str = include_str!(concat!(env!("OUT_DIR"), "/sage_sm80.ptx"));

/// The Hopper module: `kernels-gpu` built with `--features hopper` for `sm_90a` (wgmma, TMA,
/// setmaxnreg). It loads only on compute capability 9.0 exactly (H100, H200, GH200).
pub const PTX_HOPPER: &str = include_str!(concat!(env!("OUT_DIR"), "/sage_sm90a.ptx"));

/// The FP8 module: `kernels-gpu` built with `--features ada_fp8` for `sm_89` (PTX ISA 8.7:
/// `mma.sync … e4m3`): the FP8 P·V kernels and the preparation kernel whose 8-bit V job writes
/// e4m3. It loads on compute capability 8.9 and newer (Ada; Hopper through the driver's JIT).
pub const PTX_ADA_FP8: &str = include_str!(concat!(env!("OUT_DIR"), "/sage_sm89.ptx"));
