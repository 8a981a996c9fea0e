//! The GPU side: running `sageattn` on loaded inputs, and `info`.

use sageattention::attention::{
    attention_kernel_names, fp8_attention_kernel_names, selected_kernel, FP8_MIN_CC,
};
use sageattention::device_config::{names, KERNEL_HEAD_DIMS, SUPPORTED_HEAD_DIMS_TEXT};
use sageattention::error::CudaResultExt;
use sageattention::hopper::{hopper_attention_kernel_names, hopper_available};
use sageattention::runtime::ModuleKind;
use sageattention::{sageattn, sageattn_varlen, Options, Runtime, Tensor};

use super::error::CliError;
use super::input::LoadedInputs;

/// What the GPU returned, on the host, in logical contiguous order.
#[derive(Debug, Clone)]
pub struct GpuOutput {
    /// `[batch][q_heads][qo_len][head_dim]`, values of the GPU's output dtype.
    pub o: Vec<f32>,
    /// `[batch][q_heads][qo_len]`, when requested.
    pub lse: Option<Vec<f32>>,
    /// The device's name.
    pub device: String,
    /// The attention kernel that ran (the library's choice for this device, these options and
    /// lengths).
    pub kernel: &'static str,
}

/// Uploads the inputs (in the file's layout, converted to the GPU dtype), runs attention with the
/// output in the same layout (`sageattn`, or `sageattn_varlen` on a packed input, whose output is
/// packed too), and downloads `o` and `lse`.
pub fn run_on_gpu(
    inputs: &LoadedInputs,
    opts: &Options,
    device: usize,
) -> Result<GpuOutput, CliError> {
    let rt = Runtime::new(device)?;
    let name = rt
        .device_info()
        .map(|i| i.name)
        .unwrap_or_else(|_| format!("device {device}"));
    let dtype = inputs.dtype.gpu_dtype();
    let layout = inputs.layout;
    // A packed input names the entry of its longest sequences (shorter causal ones may run the
    // narrow variant).
    let (qo_len, kv_len) = inputs
        .varlen
        .as_ref()
        .map_or((inputs.problem.qo_len, inputs.problem.kv_len), |s| {
            (s.max_seqlen_q, s.max_seqlen_k)
        });
    let kernel = selected_kernel(&rt, inputs.problem.head_dim, opts)
        .map_or("none", |k| k.entry(qo_len, kv_len).0);
    let upload = |t: &sageattention::reference::HostTensor| {
        Tensor::from_host_f32(&rt, &t.data, dtype, t.shape, layout)
    };
    let q = upload(&inputs.q)?;
    let k = upload(&inputs.k)?;
    let v = upload(&inputs.v)?;
    let opts = Options { layout, ..*opts };
    let out = match &inputs.varlen {
        None => sageattn(&rt, &q.view(), &k.view(), &v.view(), &opts)?,
        Some(s) => sageattn_varlen(
            &rt,
            &q.view(),
            &k.view(),
            &v.view(),
            s.cu_seqlens_q.as_slice(),
            s.cu_seqlens_k.as_slice(),
            s.max_seqlen_q,
            s.max_seqlen_k,
            &opts,
        )?,
    };
    rt.synchronize()?;
    let o = out.o.to_host_f32(&rt)?;
    let lse = match &out.lse {
        Some(l) => Some(
            rt.stream()
                .clone_dtoh(l)
                .op("copying the LSE to the host")?,
        ),
        None => None,
    };
    Ok(GpuOutput {
        o,
        lse,
        device: name,
        kernel,
    })
}

/// `sageattn info`: prints the version and the compiled variants, then the device, the modules and
/// each variant's resources; the first GPU error ends it.
pub fn info(device: usize) -> Result<(), CliError> {
    println!("sageattention {}", env!("CARGO_PKG_VERSION"));
    let dims: Vec<String> = KERNEL_HEAD_DIMS.iter().map(|d| d.to_string()).collect();
    println!(
        "head_dims: {SUPPORTED_HEAD_DIMS_TEXT} (compiled: {}; others zero-padded to the next)",
        dims.join(", ")
    );
    let variants = attention_kernel_names();
    println!(
        "attention variants ({}): {}",
        variants.len(),
        variants.join(", ")
    );

    let rt = Runtime::new(device)?;
    let di = rt.device_info()?;
    println!("device {device}: {}", di.name);
    println!("compute capability: {}.{}", di.major, di.minor);
    println!("SMs: {}", di.sm_count);
    println!(
        "memory: {:.1} GiB, L2 {:.1} MiB, shared memory per block (opt-in) {} KiB",
        di.total_memory_bytes as f64 / (1u64 << 30) as f64,
        di.l2_bytes as f64 / (1u64 << 20) as f64,
        di.max_shared_per_block_optin / 1024
    );
    rt.require_sm80()?;
    println!(
        "attention kernels: portable module (sm_80 PTX, JIT-compiled by the driver for sm_{}{})",
        di.major, di.minor
    );
    print_resources(&rt, ModuleKind::Portable, &variants)?;
    if (di.major, di.minor) >= FP8_MIN_CC {
        println!("FP8 module (sm_89 PTX, --pv-precision fp8): JIT-compiled for this device");
        print_resources(&rt, ModuleKind::AdaFp8, &fp8_attention_kernel_names())?;
    } else {
        println!(
            "FP8 module (sm_89 PTX): not used (needs compute capability 8.9 or newer, this device \
             has {}.{})",
            di.major, di.minor
        );
    }
    if hopper_available(&rt) {
        rt.function(ModuleKind::Hopper, names::HOPPER_SMOKE)?;
        println!(
            "hopper module (sm_90a PTX): loaded; every head_dim runs its wgmma kernels by \
             default (--backend portable selects the kernels above)"
        );
        print_resources(&rt, ModuleKind::Hopper, &hopper_attention_kernel_names())?;
    } else {
        println!(
            "hopper module (sm_90a PTX): not used (needs compute capability 9.0, this device has \
             {}.{})",
            di.major, di.minor
        );
    }
    Ok(())
}

/// One line per kernel of `module`: registers, local memory (spills) and static shared memory.
fn print_resources(rt: &Runtime, module: ModuleKind, kernels: &[&str]) -> Result<(), CliError> {
    for name in kernels {
        let r = rt.function_resources(module, name)?;
        println!(
            "  {name}: {} registers/thread, {} B local memory, {} B static shared memory",
            r.num_regs, r.local_bytes, r.static_shared_bytes
        );
    }
    Ok(())
}
