//! Timing one path of one case: warm-up, then launches between CUDA event pairs, queued in batches
//! until the stopping rules hold.

use cudarc::driver::CudaEvent;
use sageattention::error::CudaResultExt;
use sageattention::{Error as SageError, Runtime};
use std::time::{Duration, Instant};

/// Fewest timed launches, even when the cap stops the timing early.
pub const MIN_SAMPLES: usize = 3;
/// Most launches queued between two synchronizations (and event pairs kept).
pub const MAX_BATCH: usize = 256;
/// GPU time aimed at per batch.
pub const BATCH_SECONDS: f64 = 0.1;

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub min_iters: usize,
    pub min_gpu_seconds: f64,
    pub max_wall: Duration,
}

/// How many launches to queue next: about [`BATCH_SECONDS`] of work, no more than the stopping
/// rules still need, no more than fit before the cap, at least 1, at most [`MAX_BATCH`].
pub fn next_batch(t: &Timing, est_s: f64, done: usize, gpu_s: f64, wall: Duration) -> usize {
    let est = est_s.max(1e-6);
    let target = (BATCH_SECONDS / est).ceil() as usize;
    let need_iters = t.min_iters.saturating_sub(done);
    let need_time = ((t.min_gpu_seconds - gpu_s) / est).ceil().max(0.0) as usize;
    let need = need_iters
        .max(need_time)
        .max(MIN_SAMPLES.saturating_sub(done))
        .max(1);
    let left = t.max_wall.saturating_sub(wall).as_secs_f64();
    let fit = (left / est).ceil() as usize;
    target
        .min(need)
        .min(fit.max(MIN_SAMPLES.saturating_sub(done)))
        .clamp(1, MAX_BATCH)
}

/// Whether to stop timing after `done` launches of `gpu_s` seconds in `wall` time.
pub fn should_stop(t: &Timing, done: usize, gpu_s: f64, wall: Duration) -> bool {
    (done >= t.min_iters && gpu_s >= t.min_gpu_seconds)
        || (wall >= t.max_wall && done >= MIN_SAMPLES)
}

/// Launch times of one path.
pub struct Timed {
    /// GPU time of every timed launch (event pair), ms.
    pub samples: Vec<f64>,
    /// Least host time to queue one call on an idle stream during the warm-up, ms: when it
    /// approaches the GPU time, the GPU waits for the host (launch-bound).
    pub host_ms: f64,
}

/// Warms up, then times launches with an event pair around each.
/// `launch(i)` queues launch number `i` (the caller rotates input sets with it).
pub fn time_launches(
    rt: &Runtime,
    events: &[(CudaEvent, CudaEvent)],
    t: &Timing,
    mut launch: impl FnMut(usize) -> Result<(), SageError>,
) -> Result<Timed, SageError> {
    let stream = rt.stream();
    let warm_start = Instant::now();
    let mut i = 0;
    let mut last;
    let mut host = 0.0;
    loop {
        let t0 = Instant::now();
        launch(i)?;
        let queued = t0.elapsed();
        rt.synchronize()?;
        last = t0.elapsed();
        // The first call may include one-time work (module load): later calls replace it.
        let queued_ms = queued.as_secs_f64() * 1e3;
        host = if i <= 1 {
            queued_ms
        } else {
            host.min(queued_ms)
        };
        i += 1;
        if warm_start.elapsed() >= t.warmup {
            break;
        }
    }
    let est = last.as_secs_f64();
    let mut samples = Vec::new();
    let mut gpu_s = 0.0;
    let start = Instant::now();
    loop {
        let batch = next_batch(t, est, samples.len(), gpu_s, start.elapsed()).min(events.len());
        for (ev_start, ev_end) in &events[..batch] {
            ev_start.record(stream).op("recording a CUDA event")?;
            launch(i)?;
            ev_end.record(stream).op("recording a CUDA event")?;
            i += 1;
        }
        rt.synchronize()?;
        for (ev_start, ev_end) in &events[..batch] {
            let ms = f64::from(
                ev_start
                    .elapsed_ms(ev_end)
                    .op("reading a CUDA event time")?,
            );
            samples.push(ms);
            gpu_s += ms * 1e-3;
        }
        if should_stop(t, samples.len(), gpu_s, start.elapsed()) {
            return Ok(Timed {
                samples,
                host_ms: host,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_stopping() {
        let t = Timing {
            warmup: Duration::ZERO,
            min_iters: 10,
            min_gpu_seconds: 0.3,
            max_wall: Duration::from_secs(10),
        };
        // 100 µs launches: 0.3 s needs 3000, a batch is ~0.1 s = 1000 -> capped at MAX_BATCH
        assert_eq!(next_batch(&t, 1e-4, 0, 0.0, Duration::ZERO), MAX_BATCH);
        // 1 s launches: one at a time
        assert_eq!(next_batch(&t, 1.0, 0, 0.0, Duration::ZERO), 1);
        // 20 ms launches, 9 done with 0.29 s: 1 more is enough for both rules
        assert_eq!(next_batch(&t, 0.02, 9, 0.29, Duration::from_secs(1)), 1);
        assert!(!should_stop(&t, 9, 5.0, Duration::from_secs(1)));
        assert!(!should_stop(&t, 100, 0.2, Duration::from_secs(1)));
        assert!(should_stop(&t, 10, 0.3, Duration::from_secs(1)));
        // the cap wins over min_iters, but never before MIN_SAMPLES
        assert!(!should_stop(&t, 2, 20.0, Duration::from_secs(11)));
        assert!(should_stop(&t, 3, 30.0, Duration::from_secs(11)));
        // near the cap, long launches: still enough for MIN_SAMPLES
        assert_eq!(next_batch(&t, 5.0, 0, 0.0, Duration::from_secs(9)), 1);
    }
}
