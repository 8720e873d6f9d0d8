//! Independent jobs (the seeds of an evaluation or an experiment) on worker threads, results
//! in job order.
//!
//! Invariant: with more than one worker, each worker runs its jobs inside a one-thread rayon
//! pool, so the kernels of side-by-side jobs never oversubscribe the cores; with one worker the
//! job keeps the global pool and every core.

use std::sync::Mutex;

/// Run `jobs` on `threads` workers (0: one per core), results in job order.
pub fn parallel<T: Send, E: Send, J: Sync>(
    jobs: &[J],
    threads: usize,
    f: impl Fn(&J) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<Option<Result<T, E>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    };
    let workers = threads.min(jobs.len().max(1));
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                // Each run's kernels parallelise over rayon; with several runs side by side
                // they get a one-thread pool each (several full pools oversubscribe the cores:
                // measured 3x slower training on 2 cores), while work outside the runs
                // (pretraining) keeps the global pool and every core.
                let own = (workers > 1)
                    .then(|| rayon::ThreadPoolBuilder::new().num_threads(1).build().ok())
                    .flatten();
                let run = |i: usize| match &own {
                    Some(pool) => pool.install(|| f(&jobs[i])),
                    None => f(&jobs[i]),
                };
                loop {
                    let i = {
                        let mut n = next.lock().expect("job counter");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= jobs.len() {
                        break;
                    }
                    let r = run(i);
                    out.lock().expect("job results")[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .expect("job results")
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_with_errors_in_place() {
        let jobs: Vec<u32> = (0..20).collect();
        let r: Vec<Result<u32, String>> = (0..=3)
            .map(|t| parallel(&jobs, t, |&j| Ok::<u32, String>(j * j)).map(|v| v.iter().sum()))
            .collect();
        assert!(r.iter().all(|s| s == &Ok((0..20).map(|j| j * j).sum())));
        let e = parallel(&jobs, 2, |&j| {
            if j == 7 {
                Err(format!("job {j}"))
            } else {
                Ok(j)
            }
        });
        assert_eq!(e, Err("job 7".to_string()));
    }
}
