//! `--varlen`: `sageattn_varlen_into` on packed batches against `sageattn_into` on the batched
//! tensors of the same sequences, on the GPU. The cases, the JSON and the table are in
//! [`varlen_report`](super::varlen_report).
//!
//! * **mix**: `--varlen-seqs` sequences (queries = keys) with seeded lengths from
//!   `--varlen-min-len..=--varlen-max-len`; the batched call pads each to the longest (what a
//!   caller without varlen does);
//! * **equal**: `--batch` sequences of each `--seq-lens` length; the batched call reads the very
//!   same memory (a packed `[B·N, H, d]` is the NHD `[B, N, H, d]`).
//!
//! TOPS count the useful operations of the packed batch for both paths, so their ratio is the
//! ratio of the times. Inputs are N(0,1) from one pool; each path rotates over enough input sets
//! to exceed twice the L2.

use cudarc::driver::DevicePtr;
use sageattention::error::CudaResultExt;
use sageattention::reference::{attention_varlen_f64, compare, RefOptions};
use sageattention::{
    sageattn_into, sageattn_varlen, sageattn_varlen_into, Error as SageError, Layout, Tensor,
    TensorView,
};
use std::time::Instant;

use super::error::{is_fatal, one_line};
use super::inputs::{make_pool, normal_values};
use super::plan::{gib, MEMORY_SLACK};
use super::report::PathJson;
use super::stats::rotation_sets;
use super::sweep::{causal_name, check_verdict, contiguous_host, to_path, Bench};
use super::timing::time_launches;
use super::varlen_report::{
    prefix_sums, speedup, varlen_flops, VarlenCase, VarlenCaseJson, VarlenCheckJson, VarlenReport,
};

/// 16-bit elements of Q, K and V of `tokens` rows.
fn set_elems(tokens: usize, heads: usize, kv_heads: usize, head_dim: usize) -> usize {
    tokens * (heads + 2 * kv_heads) * head_dim
}

/// Views of Q, K, V stored one after the other at `base` (16-bit elements), each `[batch, heads,
/// seq, head_dim]` in NHD memory. For a packed batch, `batch` is 1 and `seq` the total.
fn qkv_views(
    base: u64,
    dtype: sageattention::DType,
    (batch, seq): (usize, usize),
    (heads, kv_heads, head_dim): (usize, usize, usize),
    ordinal: usize,
) -> (
    TensorView<'static>,
    TensorView<'static>,
    TensorView<'static>,
) {
    let q_shape = [batch, heads, seq, head_dim];
    let kv_shape = [batch, kv_heads, seq, head_dim];
    let k_at = base + 2 * (batch * heads * seq * head_dim) as u64;
    let v_at = k_at + 2 * (batch * kv_heads * seq * head_dim) as u64;
    let (qs, kvs) = (
        Layout::Nhd.contiguous_strides(q_shape),
        Layout::Nhd.contiguous_strides(kv_shape),
    );
    // SAFETY: the caller places the views inside the pool, which holds initialized 16-bit
    // elements, outlives every view (it is dropped after the run) and is never written after its
    // upload; all work is ordered on the runtime's stream (a varlen call's worker streams are
    // joined back into it before the call returns).
    unsafe {
        (
            TensorView::from_raw(base, dtype, q_shape, qs, ordinal),
            TensorView::from_raw(k_at, dtype, kv_shape, kvs, ordinal),
            TensorView::from_raw(v_at, dtype, kv_shape, kvs, ordinal),
        )
    }
}

/// Sets of each path: (varlen sets, batched sets) and the pool elements they need.
fn sets_of(bench: &Bench, case: &VarlenCase) -> (usize, usize, usize) {
    let a = bench.args;
    let (h, hk, d) = (a.heads, a.kv_heads(), case.head_dim);
    let (b, n) = case.batched();
    let packed = set_elems(case.tokens(), h, hk, d);
    let batched = set_elems(b * n, h, hk, d);
    let l2 = bench.device.l2_bytes;
    let sets = |elems: usize| {
        a.sets
            .unwrap_or_else(|| rotation_sets(2 * elems as u64, l2, a.max_sets))
    };
    let (sv, sb) = (sets(packed), sets(batched));
    (sv, sb, (sv * packed).max(sb * batched))
}

impl Bench<'_> {
    /// `sageattn_varlen` on a small packed batch (an empty sequence, one without keys, lengths
    /// that are no multiple of the tiles) against the float64 varlen reference.
    fn varlen_self_check(
        &self,
        head_dim: usize,
        causal: bool,
    ) -> Result<VarlenCheckJson, SageError> {
        let args = self.args;
        let group = args.heads / args.kv_heads();
        let (heads, kv_heads) = if group == 1 { (2, 2) } else { (group, 1) };
        let lens = vec![(0, 0), (1, 1), (100, 300), (17, 0), (300, 300), (129, 77)];
        let cu_q = prefix_sums(&lens.iter().map(|l| l.0).collect::<Vec<_>>()).unwrap_or_default();
        let cu_k = prefix_sums(&lens.iter().map(|l| l.1).collect::<Vec<_>>()).unwrap_or_default();
        let (total_q, total_k) = (
            lens.iter().map(|l| l.0).sum(),
            lens.iter().map(|l| l.1).sum(),
        );
        let dtype = args.dtype();
        let seed = args.seed ^ 0x7A41 ^ ((head_dim as u64) << 8) ^ u64::from(causal);
        let q_shape = [1, heads, total_q, head_dim];
        let kv_shape = [1, kv_heads, total_k, head_dim];
        let q = normal_values(heads * total_q * head_dim, dtype, seed);
        let k = normal_values(kv_heads * total_k * head_dim, dtype, seed ^ 1);
        let v = normal_values(kv_heads * total_k * head_dim, dtype, seed ^ 2);
        let up =
            |data: &[f32], shape| Tensor::from_host_f32(&self.rt, data, dtype, shape, Layout::Nhd);
        let (qt, kt, vt) = (up(&q, q_shape)?, up(&k, kv_shape)?, up(&v, kv_shape)?);
        let longest = |f: fn(&(usize, usize)) -> usize| lens.iter().map(f).max().unwrap_or(0);
        let out = sageattn_varlen(
            &self.rt,
            &qt.view(),
            &kt.view(),
            &vt.view(),
            &cu_q,
            &cu_k,
            longest(|l| l.0),
            longest(|l| l.1),
            &args.options(causal),
        )?;
        let o = out.o.to_host_f32(&self.rt)?;
        let r = attention_varlen_f64(
            &contiguous_host(q, q_shape),
            &contiguous_host(k, kv_shape),
            &contiguous_host(v, kv_shape),
            (&cu_q, &cu_k),
            &RefOptions {
                causal,
                sm_scale: None,
            },
        );
        let m = compare(&o, &r.o);
        let (rel_l1, cos_sim, ok) = check_verdict(&m);
        Ok(VarlenCheckJson {
            head_dim,
            causal,
            lens,
            rel_l1,
            cos_sim,
            ok,
        })
    }

    /// Times both paths of one case on inputs from the pool at `pool_base`.
    fn run_varlen_case(
        &mut self,
        case: &VarlenCase,
        pool_base: u64,
        (varlen_sets, batched_sets): (usize, usize),
    ) -> Result<(Option<PathJson>, Option<PathJson>), SageError> {
        let a = self.args;
        let (h, hk, d) = (a.heads, a.kv_heads(), case.head_dim);
        let dtype = a.dtype();
        let ordinal = self.rt.ordinal();
        let opts = sageattention::Options {
            layout: Layout::Nhd,
            ..a.options(case.causal)
        };
        let flops = varlen_flops(&case.lens, h, d, case.causal);
        let cu = prefix_sums(&case.lens).ok_or_else(|| SageError::TooLarge {
            tensor: "q",
            reason: format!("{} tokens do not fit in int32 cu_seqlens", case.tokens()),
        })?;
        let longest = case.batched().1;
        let timing = self.timing();
        let label = format!("d={d} causal={} {}", causal_name(case.causal), case.label());

        // The packed batch.
        let tokens = case.tokens();
        let step = 2 * set_elems(tokens, h, hk, d) as u64;
        let packed: Vec<_> = (0..varlen_sets)
            .map(|i| {
                qkv_views(
                    pool_base + i as u64 * step,
                    dtype,
                    (1, tokens),
                    (h, hk, d),
                    ordinal,
                )
            })
            .collect();
        let mut outs = (0..varlen_sets)
            .map(|_| Tensor::alloc(&self.rt, dtype, [1, h, tokens, d], Layout::Nhd))
            .collect::<Result<Vec<_>, _>>()?;
        let rt = &self.rt;
        let timed = time_launches(rt, &self.events, &timing, |i| {
            let j = i % varlen_sets;
            let (q, k, v) = &packed[j];
            sageattn_varlen_into(
                rt,
                q,
                k,
                v,
                &cu,
                &cu,
                longest,
                longest,
                &mut outs[j].view_mut(),
                None,
                &opts,
            )
        })?;
        drop(outs);
        let varlen = to_path(&timed, flops);
        self.progress_done += 1;
        if let Some(p) = &varlen {
            self.progress(&format!(
                "{label} varlen:  {:.4} ms, {:.1} TOPS ({} launches, {varlen_sets} sets)",
                p.stats.median_ms, p.tops, p.stats.iters
            ));
        }

        // The batched call: padded to the longest (mix) or the same memory (equal lengths).
        let (b, n) = case.batched();
        let step = 2 * set_elems(b * n, h, hk, d) as u64;
        let batched: Vec<_> = (0..batched_sets)
            .map(|i| {
                qkv_views(
                    pool_base + i as u64 * step,
                    dtype,
                    (b, n),
                    (h, hk, d),
                    ordinal,
                )
            })
            .collect();
        let mut outs = (0..batched_sets)
            .map(|_| Tensor::alloc(&self.rt, dtype, [b, h, n, d], Layout::Nhd))
            .collect::<Result<Vec<_>, _>>()?;
        let rt = &self.rt;
        let timed = time_launches(rt, &self.events, &timing, |i| {
            let j = i % batched_sets;
            let (q, k, v) = &batched[j];
            sageattn_into(rt, q, k, v, &mut outs[j].view_mut(), None, &opts)
        })?;
        drop(outs);
        let batched = to_path(&timed, flops);
        self.progress_done += 1;
        if let Some(p) = &batched {
            self.progress(&format!(
                "{label} batched [{b}, {n}]: {:.4} ms, {:.1} TOPS of the packed work ({} launches, \
                 {batched_sets} sets)",
                p.stats.median_ms, p.tops, p.stats.iters
            ));
        }
        Ok((varlen, batched))
    }
}

/// The `--varlen` run: self-check, then every case; fills `report` as it goes.
pub fn varlen_run(
    bench: &mut Bench,
    cases: &[VarlenCase],
    report: &mut VarlenReport,
) -> Result<(), SageError> {
    let args = bench.args;
    if !args.no_check {
        for &d in &args.head_dims {
            for c in args.causal_list() {
                match bench.varlen_self_check(d, c) {
                    Ok(r) => {
                        println!(
                            "self-check varlen d={d} causal={} lens {:?}: rel L1 {:.2e}, cos {:.6} \
                             vs float64: {}",
                            causal_name(c),
                            r.lens,
                            r.rel_l1,
                            r.cos_sim,
                            if r.ok {
                                "ok"
                            } else {
                                "WRONG (timings below are of a call that fails the check)"
                            }
                        );
                        report.self_check.push(r);
                    }
                    Err(e) if !is_fatal(&e) => println!(
                        "self-check varlen d={d} causal={}: error: {}",
                        causal_name(c),
                        one_line(&e.to_string())
                    ),
                    Err(e) => return Err(e),
                }
            }
        }
    }

    let plans: Vec<(usize, usize, usize)> = cases.iter().map(|c| sets_of(bench, c)).collect();
    bench.progress_total = 2 * cases.len();
    let free = {
        bench.rt.bind()?;
        let (free, _) = bench
            .rt
            .context()
            .mem_get_info()
            .op("querying free device memory")?;
        free as u64
    };
    // Outputs of one path's sets, the library's scratch, slack: about twice the case's inputs
    // besides the pool, a generous bound.
    let need = |elems: usize| 2 * 2 * elems as u64 + MEMORY_SLACK;
    let pool_elems = plans
        .iter()
        .map(|p| p.2)
        .filter(|&e| 2 * e as u64 + need(e) <= free / 100 * 92)
        .max()
        .unwrap_or(0);
    let pool = if pool_elems > 0 {
        let t0 = Instant::now();
        let pool = make_pool(&bench.rt, pool_elems, args.dtype(), args.seed)?;
        bench.progress(&format!(
            "inputs: {:.2} GiB of N(0,1) {} generated and uploaded in {:.1} s",
            gib(2 * pool_elems as u64),
            args.dtype(),
            t0.elapsed().as_secs_f64()
        ));
        Some(pool)
    } else {
        None
    };
    let pool_base = pool.as_ref().map_or(0, |p| {
        let (ptr, guard) = p.device_ptr(bench.rt.stream());
        drop(guard);
        ptr
    });

    for (case, &(sv, sb, elems)) in cases.iter().zip(&plans) {
        let (h, d) = (args.heads, case.head_dim);
        let (b, n) = case.batched();
        let mut json = VarlenCaseJson {
            kind: case.kind.clone(),
            head_dim: d,
            causal: case.causal,
            lens: case.lens.clone(),
            tokens: case.tokens(),
            flops: varlen_flops(&case.lens, h, d, case.causal),
            batched_shape: [b, h, n, d],
            sets: sv,
            varlen: None,
            batched: None,
            speedup: None,
            skipped: None,
        };
        let skip = |why: String, bench: &mut Bench, json: &mut VarlenCaseJson| {
            bench.progress_done += 2;
            bench.progress(&format!(
                "d={d} causal={} {}: skipped: {why}",
                causal_name(case.causal),
                case.label()
            ));
            json.skipped = Some(why);
        };
        if elems > pool_elems {
            let why = format!(
                "does not fit in GPU memory (needs about {:.1} GiB of inputs; {:.1} GiB free)",
                gib(2 * elems as u64),
                gib(free)
            );
            skip(why, bench, &mut json);
            report.cases.push(json);
            continue;
        }
        match bench.run_varlen_case(case, pool_base, (sv, sb)) {
            Ok((v, bt)) => {
                json.speedup = speedup(v.as_ref(), bt.as_ref());
                json.varlen = v;
                json.batched = bt;
            }
            Err(e) if !is_fatal(&e) => {
                bench.rt.synchronize()?;
                skip(one_line(&e.to_string()), bench, &mut json);
            }
            Err(e) => {
                report.cases.push(json);
                return Err(e);
            }
        }
        report.cases.push(json);
    }
    bench.rt.synchronize()?;
    drop(pool);
    Ok(())
}
