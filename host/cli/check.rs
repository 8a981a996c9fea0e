//! `--check`: the float64 CPU reference, the plain-fp16 baseline, the metrics table and the
//! `--max-rel-l1` verdict.

use std::fmt::Write as _;

use half::f16;
use sageattention::reference::{
    attention_f64, attention_varlen_f64, compare, HostTensor, Metrics, RefOptions, RefOutput,
};

use super::error::CliError;
use super::input::LoadedInputs;

/// The metrics `--check` prints.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckReport {
    /// Our output against the float64 reference.
    pub ours: Metrics,
    /// Plain fp16 attention (see [`fp16_attention`]) against the float64 reference.
    pub fp16: Metrics,
    /// Our LSE against the reference LSE, when `--lse` was given.
    pub lse: Option<Metrics>,
}

/// `x` rounded to f16 (round to nearest even), as f32.
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// A copy of `t` with every element rounded to f16.
fn rounded_f16(t: &HostTensor) -> HostTensor {
    HostTensor {
        data: t.data.iter().map(|&x| round_f16(x)).collect(),
        shape: t.shape,
        strides: t.strides,
    }
}

/// Exact float64 attention of `q`, `k`, `v` (the inputs' tensors, or copies of them): the batched
/// reference, or the varlen one (each sequence on its own) for a packed input.
fn exact(
    inputs: &LoadedInputs,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    opts: &RefOptions,
) -> RefOutput {
    match &inputs.varlen {
        None => attention_f64(q, k, v, opts),
        Some(s) => attention_varlen_f64(q, k, v, (&s.cu_seqlens_q, &s.cu_seqlens_k), opts),
    }
}

/// "Plain fp16 attention", the baseline `--check` compares SageAttention with: the exact float64
/// attention of Q, K and V **rounded to f16**, with the output **rounded to f16**. It is what an
/// ideal fp16 kernel (f16 inputs and output, exact arithmetic in between, as FlashAttention with
/// f32 accumulation nearly achieves) would return; the difference between its error and ours is
/// what INT8 quantization of Q·Kᵀ and the f16 P·V cost.
pub fn fp16_attention(inputs: &LoadedInputs, opts: &RefOptions) -> Vec<f32> {
    let q = rounded_f16(&inputs.q);
    let k = rounded_f16(&inputs.k);
    let v = rounded_f16(&inputs.v);
    exact(inputs, &q, &k, &v, opts)
        .o
        .iter()
        .map(|&x| round_f16(x as f32))
        .collect()
}

/// Approximate floating-point operations of [`run_check`]: two attentions, each `4 · d` per
/// visible (query, key) pair (Q·K and P·V, summed over the sequences of a packed input), about
/// half of the pairs with a causal mask.
pub fn reference_gflop(inputs: &LoadedInputs, causal: bool) -> f64 {
    let p = &inputs.problem;
    let per_head = match &inputs.varlen {
        None => p.batch as f64 * p.qo_len as f64 * p.kv_len as f64,
        Some(s) => s
            .batch
            .sequences()
            .iter()
            .map(|seq| seq.q.len() as f64 * seq.k.len() as f64)
            .sum(),
    };
    let pairs = p.q_heads as f64 * per_head;
    let visible = if causal { pairs / 2.0 } else { pairs };
    2.0 * 4.0 * p.head_dim as f64 * visible / 1e9
}

/// Computes the float64 reference of the inputs (exactly as read from the file) and compares our
/// output `o` (logical contiguous order) and `lse` with it, next to [`fp16_attention`].
pub fn run_check(
    inputs: &LoadedInputs,
    opts: &RefOptions,
    o: &[f32],
    lse: Option<&[f32]>,
) -> CheckReport {
    let exact = exact(inputs, &inputs.q, &inputs.k, &inputs.v, opts);
    let fp16 = fp16_attention(inputs, opts);
    CheckReport {
        ours: compare(o, &exact.o),
        fp16: compare(&fp16, &exact.o),
        lse: lse.map(|l| compare(l, &exact.lse)),
    }
}

/// One row of the table.
fn row(out: &mut String, label: &str, m: &Metrics) {
    let _ = writeln!(
        out,
        "  {label:<34} {:>12.8} {:>12.4e} {:>12.4e} {:>12.4e}",
        m.cos_sim, m.rel_l1, m.rmse, m.max_abs
    );
}

/// The report as printed: a table of cosine similarity, relative L1, RMSE and max abs error, and
/// one summary line per non-finite mismatch.
pub fn format_report(r: &CheckReport, pv_label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "accuracy against exact attention (float64 on the CPU, on the input values as read):"
    );
    let _ = writeln!(
        s,
        "  {:<34} {:>12} {:>12} {:>12} {:>12}",
        "", "cos sim", "rel L1", "RMSE", "max abs"
    );
    row(
        &mut s,
        &format!("sageattn o (int8 QK, {pv_label} PV)"),
        &r.ours,
    );
    row(&mut s, "fp16 attention o (baseline)", &r.fp16);
    if let Some(lse) = &r.lse {
        row(&mut s, "sageattn lse", lse);
    }
    let mut nonfinite = |what: &str, m: &Metrics| {
        if m.n_nan_mismatch > 0 {
            let _ = writeln!(
                s,
                "  warning: {} values of {what} are non-finite where the reference is finite \
                 (or the other way round); they are left out of the metrics above",
                m.n_nan_mismatch
            );
        }
    };
    nonfinite("sageattn o", &r.ours);
    if let Some(lse) = &r.lse {
        nonfinite("sageattn lse", lse);
    }
    let _ = write!(
        s,
        "rel L1: sageattn {:.4e}, fp16 attention {:.4e}",
        r.ours.rel_l1, r.fp16.rel_l1
    );
    s
}

/// `--max-rel-l1`: fails when our relative L1 error exceeds `max` (or is NaN), or when some output
/// is non-finite where the reference is finite.
pub fn enforce_max_rel_l1(r: &CheckReport, max: f64) -> Result<(), CliError> {
    let m = &r.ours;
    if m.n_nan_mismatch > 0 {
        return Err(CliError::CheckFailed(format!(
            "{} output values are non-finite where the float64 reference is finite \
             (--max-rel-l1 {max})",
            m.n_nan_mismatch
        )));
    }
    if m.rel_l1.is_nan() || m.rel_l1 > max {
        return Err(CliError::CheckFailed(format!(
            "rel L1 {:.4e} exceeds --max-rel-l1 {max} (fp16 attention: {:.4e})",
            m.rel_l1, r.fp16.rel_l1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::input::{check_varlen, FileDType, MaxSeqlens, Problem};
    use sageattention::Layout;

    fn inputs() -> LoadedInputs {
        let shape = [1, 2, 5, 64];
        let f = |b: usize, h: usize, s: usize, d: usize| {
            ((b + 3 * h + 7 * s + 11 * d) % 13) as f32 / 7.0 - 0.9
        };
        LoadedInputs {
            q: HostTensor::from_fn(shape, false, f),
            k: HostTensor::from_fn(shape, false, |b, h, s, d| f(b, h, s + 1, d)),
            v: HostTensor::from_fn(shape, false, |b, h, s, d| f(b, h, s, d + 2)),
            dtype: FileDType::F16,
            layout: Layout::Hnd,
            varlen: None,
            problem: Problem {
                batch: 1,
                q_heads: 2,
                kv_heads: 2,
                qo_len: 5,
                kv_len: 5,
                head_dim: 64,
            },
        }
    }

    #[test]
    fn exact_output_has_zero_error_and_fp16_baseline_is_close() {
        let inp = inputs();
        let opts = RefOptions::default();
        let exact = attention_f64(&inp.q, &inp.k, &inp.v, &opts);
        let o: Vec<f32> = exact.o.iter().map(|&x| x as f32).collect();
        let lse: Vec<f32> = exact.lse.iter().map(|&x| x as f32).collect();
        let r = run_check(&inp, &opts, &o, Some(&lse));
        assert!(r.ours.rel_l1 < 1e-6, "{:?}", r.ours);
        assert!(r.fp16.rel_l1 > 0.0 && r.fp16.rel_l1 < 2e-3, "{:?}", r.fp16);
        assert!(r.lse.expect("lse").max_abs < 1e-5);
        let text = format_report(&r, "f16");
        assert!(text.contains("rel L1"), "{text}");
        assert!(text.contains("fp16 attention"), "{text}");
        assert!(enforce_max_rel_l1(&r, 0.0135).is_ok());
    }

    #[test]
    fn threshold_and_nan_fail() {
        let inp = inputs();
        let opts = RefOptions::default();
        let exact = attention_f64(&inp.q, &inp.k, &inp.v, &opts);
        let mut o: Vec<f32> = exact.o.iter().map(|&x| x as f32 * 1.05).collect();
        let r = run_check(&inp, &opts, &o, None);
        let e = enforce_max_rel_l1(&r, 0.0135).expect_err("5% off");
        assert_eq!(e.exit_status(), 3);
        assert!(
            e.message().contains("exceeds --max-rel-l1"),
            "{}",
            e.message()
        );
        o[3] = f32::NAN;
        let r = run_check(&inp, &opts, &o, None);
        assert!(enforce_max_rel_l1(&r, 1.0).is_err());
    }

    #[test]
    fn packed_check_uses_the_varlen_reference() {
        // The inputs above as one packed batch of two sequences: rows 0..2 and 2..5 of Q and K.
        let mut inp = inputs();
        inp.varlen = Some(
            check_varlen(vec![0, 2, 5], vec![0, 3, 5], (5, 5), MaxSeqlens::default())
                .expect("valid"),
        );
        let opts = RefOptions {
            causal: true,
            sm_scale: None,
        };
        let cu: (&[i32], &[i32]) = (&[0, 2, 5], &[0, 3, 5]);
        let varlen = attention_varlen_f64(&inp.q, &inp.k, &inp.v, cu, &opts);
        let o: Vec<f32> = varlen.o.iter().map(|&x| x as f32).collect();
        let r = run_check(&inp, &opts, &o, None);
        assert!(r.ours.rel_l1 < 1e-6, "{:?}", r.ours);
        // The batched reference is another answer.
        let batched = attention_f64(&inp.q, &inp.k, &inp.v, &opts);
        let o: Vec<f32> = batched.o.iter().map(|&x| x as f32).collect();
        assert!(run_check(&inp, &opts, &o, None).ours.rel_l1 > 1e-3);
        // 2 heads × (2·3 + 3·2) pairs × 4·64 flops × 2 attentions, halved for causal.
        let want = 2.0 * 4.0 * 64.0 * (2.0 * 12.0) / 2.0 / 1e9;
        assert!((reference_gflop(&inp, true) - want).abs() < 1e-15);
    }
}
