//! The GPU run: the startup self-check against float64 attention, then the sweep over shapes and
//! causal settings, timing the kernel and full paths of each on inputs from one random pool.

use cudarc::driver::{CudaEvent, DevicePtr};
use sageattention::error::CudaResultExt;
use sageattention::reference::{attention_f64, compare, HostTensor, Metrics, RefOptions};
use sageattention::{
    sageattn, sageattn_into, DType, Error as SageError, Prepared, PvPrecision, Runtime, Tensor,
    TensorView,
};
use std::time::{Duration, Instant};

use super::args::{Args, InputsArg};
use super::error::{is_fatal, one_line};
use super::inputs::{fill_input_sets, make_pool, normal_values};
use super::plan::{gib, plan, pool_size, Plan};
use super::report::{peak_bandwidth_gbs, CaseJson, DeviceJson, PathJson, Report, SelfCheckJson};
use super::stats::{attention_flops, overhead_pct, summarize, tops, Shape};
use super::timing::{time_launches, Timed, Timing};

pub struct Bench<'a> {
    pub rt: Runtime,
    pub args: &'a Args,
    pub device: DeviceJson,
    pub started: Instant,
    pub events: Vec<(CudaEvent, CudaEvent)>,
    pub progress_total: usize,
    pub progress_done: usize,
}

pub fn device_json(rt: &Runtime) -> Result<DeviceJson, SageError> {
    let i = rt.device_info()?;
    Ok(DeviceJson {
        ordinal: rt.ordinal(),
        name: i.name,
        compute_capability: format!("{}.{}", i.major, i.minor),
        sm_count: i.sm_count,
        clock_mhz: i.clock_mhz,
        memory_clock_mhz: i.memory_clock_mhz,
        memory_bus_width: i.memory_bus_width,
        peak_bandwidth_gbs: peak_bandwidth_gbs(i.memory_clock_mhz, i.memory_bus_width),
        total_memory_bytes: i.total_memory_bytes,
        l2_bytes: i.l2_bytes,
    })
}

pub fn causal_name(c: bool) -> &'static str {
    if c {
        "on"
    } else {
        "off"
    }
}

/// A contiguous (HND) host tensor of `data`, for the float64 references of the self-checks.
pub fn contiguous_host(data: Vec<f32>, shape: [usize; 4]) -> HostTensor {
    HostTensor::from_parts(data, shape, HostTensor::contiguous_strides(shape, false))
}

/// A self-check's `(rel_l1, cos_sim, ok)` from its comparison against float64: a non-finite
/// output anywhere fails the check (compare() leaves such positions out).
pub fn check_verdict(m: &Metrics) -> (f64, f64, bool) {
    let (rel_l1, cos_sim) = if m.n_nan_mismatch > 0 {
        (f64::NAN, f64::NAN)
    } else {
        (m.rel_l1, m.cos_sim)
    };
    let ok = rel_l1.is_finite() && cos_sim.is_finite() && rel_l1 <= 0.05 && cos_sim >= 0.995;
    (rel_l1, cos_sim, ok)
}

/// The report of one timed path of `flops` floating-point operations (None without samples).
pub fn to_path(timed: &Timed, flops: f64) -> Option<PathJson> {
    summarize(&timed.samples).map(|stats| PathJson {
        host_enqueue_ms: Some(timed.host_ms),
        tops: tops(flops, stats.median_ms),
        tops_max: tops(flops, stats.min_ms),
        stats,
    })
}

impl Bench<'_> {
    pub fn progress(&self, msg: &str) {
        if !self.args.quiet {
            let t = self.started.elapsed().as_secs();
            eprintln!(
                "[{:>3}/{} {:>2}m{:02}s] {msg}",
                self.progress_done,
                self.progress_total,
                t / 60,
                t % 60
            );
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            warmup: Duration::from_secs_f64(self.args.warmup_ms / 1e3),
            min_iters: self.args.min_iters,
            min_gpu_seconds: self.args.min_seconds,
            max_wall: Duration::from_secs_f64(self.args.max_seconds_per_case),
        }
    }

    fn free_memory(&self) -> Result<u64, SageError> {
        self.rt.bind()?;
        let (free, _) = self
            .rt
            .context()
            .mem_get_info()
            .op("querying free device memory")?;
        Ok(free as u64)
    }

    /// sageattn on a small shape whose length is no multiple of the tiles, against float64.
    fn self_check(&self, head_dim: usize, causal: bool) -> Result<SelfCheckJson, SageError> {
        let args = self.args;
        let group = args.heads / args.kv_heads();
        let (heads, kv_heads) = if group == 1 { (2, 2) } else { (group, 1) };
        let seq = 300;
        let dtype = args.dtype();
        let shape = [1, heads, seq, head_dim];
        let kv_shape = [1, kv_heads, seq, head_dim];
        let n_q = heads * seq * head_dim;
        let n_kv = kv_heads * seq * head_dim;
        let seed = args.seed ^ 0xC0FFEE ^ ((head_dim as u64) << 8) ^ u64::from(causal);
        let q = normal_values(n_q, dtype, seed);
        let k = normal_values(n_kv, dtype, seed ^ 1);
        let v = normal_values(n_kv, dtype, seed ^ 2);
        let layout = args.layout();
        let qt = Tensor::from_host_f32(&self.rt, &q, dtype, shape, layout)?;
        let kt = Tensor::from_host_f32(&self.rt, &k, dtype, kv_shape, layout)?;
        let vt = Tensor::from_host_f32(&self.rt, &v, dtype, kv_shape, layout)?;
        let out = sageattn(
            &self.rt,
            &qt.view(),
            &kt.view(),
            &vt.view(),
            &args.options(causal),
        )?;
        let o = out.o.to_host_f32(&self.rt)?;
        let (q, k, v) = (
            contiguous_host(q, shape),
            contiguous_host(k, kv_shape),
            contiguous_host(v, kv_shape),
        );
        let r = attention_f64(
            &q,
            &k,
            &v,
            &RefOptions {
                causal,
                sm_scale: None,
            },
        );
        let m = compare(&o, &r.o);
        let (rel_l1, cos_sim, ok) = check_verdict(&m);
        Ok(SelfCheckJson {
            head_dim,
            causal,
            shape,
            kv_heads,
            rel_l1,
            cos_sim,
            ok,
        })
    }

    /// Times the kernel and full paths of one shape and causal setting.
    #[allow(clippy::type_complexity)]
    fn run_case(
        &mut self,
        plan: &Plan,
        views: &[(TensorView<'_>, TensorView<'_>, TensorView<'_>)],
        outs: &mut [Tensor],
        causal: bool,
    ) -> Result<CaseJson, SageError> {
        let s = plan.shape;
        let opts = self.args.options(causal);
        let flops = attention_flops(s.batch, s.heads, s.seq, s.seq, s.head_dim, causal);
        let timing = self.timing();
        let sets = plan.sets;
        let label = format!(
            "d={} causal={} N={}",
            s.head_dim,
            causal_name(causal),
            s.seq
        );
        let mut kernel = None;
        if self.args.run_kernel() {
            let prepared = views
                .iter()
                .map(|(q, k, v)| Prepared::new(&self.rt, q, k, v, &opts))
                .collect::<Result<Vec<_>, _>>()?;
            let rt = &self.rt;
            let samples = time_launches(rt, &self.events, &timing, |i| {
                let j = i % sets;
                prepared[j].attend_into(rt, &views[j].2, &mut outs[j].view_mut(), None)
            })?;
            drop(prepared);
            self.rt.synchronize()?;
            kernel = to_path(&samples, flops);
            self.progress_done += 1;
            if let Some(p) = &kernel {
                self.progress(&format!(
                    "{label} kernel: {:.4} ms, {:.1} TOPS ({} launches, {} sets)",
                    p.stats.median_ms, p.tops, p.stats.iters, sets
                ));
            }
        }
        let mut full = None;
        if self.args.run_full() {
            let rt = &self.rt;
            let samples = time_launches(rt, &self.events, &timing, |i| {
                let j = i % sets;
                let (q, k, v) = &views[j];
                sageattn_into(rt, q, k, v, &mut outs[j].view_mut(), None, &opts)
            })?;
            full = to_path(&samples, flops);
            self.progress_done += 1;
            if let Some(p) = &full {
                self.progress(&format!(
                    "{label} full:   {:.4} ms, {:.1} TOPS ({} launches, {} sets)",
                    p.stats.median_ms, p.tops, p.stats.iters, sets
                ));
            }
        }
        let quant_overhead_pct = match (&kernel, &full) {
            (Some(k), Some(f)) => overhead_pct(k.stats.median_ms, f.stats.median_ms),
            _ => None,
        };
        Ok(CaseJson {
            head_dim: s.head_dim,
            causal,
            seq_len: s.seq,
            batch: s.batch,
            heads: s.heads,
            kv_heads: s.kv_heads,
            flops,
            sets,
            kernel,
            full,
            quant_overhead_pct,
            skipped: None,
        })
    }

    /// Runs one shape (all causal settings) on inputs from the pool; pushes its cases.
    fn run_shape(
        &mut self,
        plan: &Plan,
        pool_base: u64,
        report: &mut Report,
    ) -> Result<(), SageError> {
        let s = plan.shape;
        let dtype = self.args.dtype();
        let layout = self.args.layout();
        let (q_shape, kv_shape) = (s.q_shape(), s.kv_shape());
        let (q_strides, kv_strides) = (
            layout.contiguous_strides(q_shape),
            layout.contiguous_strides(kv_shape),
        );
        let ordinal = self.rt.ordinal();
        let views: Vec<_> = (0..plan.sets)
            .map(|i| {
                let base = pool_base + 2 * (i * s.set_elems()) as u64;
                let k_at = base + 2 * s.q_elems() as u64;
                let v_at = k_at + 2 * s.kv_elems() as u64;
                // SAFETY: the pool holds `plan.pool_elems` >= sets · set_elems initialized 16-bit
                // elements and outlives every view (it is dropped after the sweep); all work is
                // issued on the runtime's one stream, and nothing writes the pool after its upload.
                unsafe {
                    (
                        TensorView::from_raw(base, dtype, q_shape, q_strides, ordinal),
                        TensorView::from_raw(k_at, dtype, kv_shape, kv_strides, ordinal),
                        TensorView::from_raw(v_at, dtype, kv_shape, kv_strides, ordinal),
                    )
                }
            })
            .collect();
        let mut outs = (0..plan.sets)
            .map(|_| Tensor::alloc(&self.rt, dtype, q_shape, layout))
            .collect::<Result<Vec<_>, _>>()?;
        for causal in self.args.causal_list() {
            match self.run_case(plan, &views, &mut outs, causal) {
                Ok(c) => report.cases.push(c),
                Err(e) if !is_fatal(&e) => {
                    self.rt.synchronize()?;
                    let reason = one_line(&e.to_string());
                    self.progress(&format!(
                        "d={} causal={} N={}: skipped: {reason}",
                        s.head_dim,
                        causal_name(causal),
                        s.seq
                    ));
                    report.cases.push(skipped_case(plan, causal, reason));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

pub fn skipped_case(plan: &Plan, causal: bool, reason: String) -> CaseJson {
    let s = plan.shape;
    CaseJson {
        head_dim: s.head_dim,
        causal,
        seq_len: s.seq,
        batch: s.batch,
        heads: s.heads,
        kv_heads: s.kv_heads,
        flops: attention_flops(s.batch, s.heads, s.seq, s.seq, s.head_dim, causal),
        sets: plan.sets,
        kernel: None,
        full: None,
        quant_overhead_pct: None,
        skipped: Some(reason),
    }
}

/// The sweep; fills `report` as it goes (so that a fatal error still leaves what was measured).
pub fn sweep(bench: &mut Bench, report: &mut Report) -> Result<(), SageError> {
    let args = bench.args;
    let dtype = args.dtype();
    let bf16 = dtype == DType::BF16;
    // Both 8-bit P·V precisions prepare a one-byte Vᵀ.
    let pv8 = matches!(args.pv_precision(), PvPrecision::Int8 | PvPrecision::Fp8);
    let causal = args.causal_list();

    if !args.no_check {
        for &d in &args.head_dims {
            for &c in &causal {
                match bench.self_check(d, c) {
                    Ok(r) => {
                        println!(
                            "self-check d={d} causal={} {:?} kv_heads {}: rel L1 {:.2e}, cos {:.6} vs float64: {}",
                            causal_name(c),
                            r.shape,
                            r.kv_heads,
                            r.rel_l1,
                            r.cos_sim,
                            if r.ok { "ok" } else { "WRONG (timings below are of a kernel that fails the check)" }
                        );
                        report.self_check.push(r);
                    }
                    Err(e) if !is_fatal(&e) => {
                        println!(
                            "self-check d={d} causal={}: error: {}",
                            causal_name(c),
                            one_line(&e.to_string())
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    let l2 = bench.device.l2_bytes;
    let plans: Vec<Plan> = args
        .head_dims
        .iter()
        .flat_map(|&d| {
            args.seq_lens.iter().map(move |&n| Shape {
                batch: args.batch,
                heads: args.heads,
                kv_heads: args.kv_heads(),
                seq: n,
                head_dim: d,
            })
        })
        .map(|s| plan(s, l2, args.sets, args.max_sets, bf16, pv8))
        .collect();
    let free = bench.free_memory()?;
    let budget = free / 100 * 92;
    let pool_elems = pool_size(&plans, budget);
    bench.progress_total = plans.len()
        * causal.len()
        * (usize::from(args.run_kernel()) + usize::from(args.run_full()));
    let mut pool = if pool_elems > 0 && args.inputs.per_shape() {
        // Filled for each shape before it runs (`fill_input_sets`).
        Some(bench.rt.alloc_zeros::<u16>(pool_elems)?)
    } else if pool_elems > 0 {
        let t0 = Instant::now();
        let pool = make_pool(&bench.rt, pool_elems, dtype, args.seed)?;
        bench.progress(&format!(
            "inputs: {:.2} GiB of N(0,1) {} generated and uploaded in {:.1} s",
            gib(2 * pool_elems as u64),
            dtype,
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

    for p in &plans {
        let need = 2 * p.pool_elems as u64 + p.other_bytes;
        let free_now = bench.free_memory()?;
        let fits = p.pool_elems <= pool_elems && p.other_bytes <= free_now / 100 * 95;
        if !fits {
            let reason = format!(
                "does not fit in GPU memory (needs about {:.1} GiB with {} input set(s); {:.1} GiB free of {:.1})",
                gib(need),
                p.sets,
                gib(free),
                gib(bench.device.total_memory_bytes)
            );
            for &c in &causal {
                bench.progress_done +=
                    usize::from(args.run_kernel()) + usize::from(args.run_full());
                bench.progress(&format!(
                    "d={} causal={} N={}: skipped: {reason}",
                    p.shape.head_dim,
                    causal_name(c),
                    p.shape.seq
                ));
                report.cases.push(skipped_case(p, c, reason.clone()));
            }
            continue;
        }
        if let (true, Some(pool)) = (args.inputs.per_shape(), pool.as_mut()) {
            let t0 = Instant::now();
            fill_input_sets(
                &bench.rt,
                pool,
                &p.shape,
                p.sets,
                args.layout(),
                dtype,
                args.seed,
                args.inputs.positional(),
                args.inputs == InputsArg::LargeV,
            )?;
            bench.progress(&format!(
                "inputs: {} set(s) of {:?} for d={} N={} in {:.1} s",
                p.sets,
                args.inputs,
                p.shape.head_dim,
                p.shape.seq,
                t0.elapsed().as_secs_f64()
            ));
        }
        let before = report.cases.len();
        if let Err(e) = bench.run_shape(p, pool_base, report) {
            if is_fatal(&e) {
                return Err(e);
            }
            bench.rt.synchronize()?;
            let reason = one_line(&e.to_string());
            let done: Vec<bool> = report.cases[before..].iter().map(|c| c.causal).collect();
            for &c in causal.iter().filter(|c| !done.contains(c)) {
                report.cases.push(skipped_case(p, c, reason.clone()));
            }
        }
    }
    drop(pool);
    Ok(())
}
