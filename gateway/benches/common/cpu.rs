//! CPU time from the kernel's scheduler statistics, in nanoseconds: what a phase cost the
//! servers, as opposed to how fast the (shared, noisy) machine let it run. Time a thread spends
//! waiting for a core another VM took is not counted, so CPU per event holds still on a day when
//! throughput moves by a third.

/// The first field of a `schedstat` file: nanoseconds this thread has run on a CPU.
fn schedstat_ns(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of every live thread of this process.
pub(crate) fn process_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .map(|t| schedstat_ns(&t.path().join("schedstat")))
                .sum()
        })
        .unwrap_or(0)
}

/// CPU time of the calling thread.
pub(crate) fn thread_ns() -> u64 {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// CPU the process spent while `f` ran, less what the calling thread spent (the load client):
/// what the servers (gateway, its producer's threads, Redis client) cost.
pub(crate) async fn servers_ns<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let (p0, t0) = (process_ns(), thread_ns());
    let out = f.await;
    let (p1, t1) = (process_ns(), thread_ns());
    (out, (p1 - p0).saturating_sub(t1 - t0))
}
