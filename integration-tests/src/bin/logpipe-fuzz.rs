//! `logpipe-fuzz`: the whole-path fuzzer's long form (`./fuzz.sh` runs it with a private broker).
//!
//!   logpipe-fuzz [--cases N] [--seed S]
//!
//! Starts a collector and a gateway in this process on the broker `LOGPIPE_TEST_BROKERS` and the
//! database `LOGPIPE_TEST_DATABASE_URL` (own topics, schema and keys), sends N generated events
//! (default 100,000), checks every promise (see `logpipe_integration_tests::fuzz`), prints the
//! seed and the report, and exits 1 on any failure.

use logpipe_integration_tests as it;
use logpipe_integration_tests::fuzz;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut cases = 100_000usize;
    let mut seed = fuzz::seed_from_env();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match (a.as_str(), value.as_deref().map(str::parse::<u64>)) {
            ("--cases", Some(Ok(n))) => cases = n as usize,
            ("--seed", Some(Ok(s))) => seed = s,
            _ => {
                eprintln!("usage: logpipe-fuzz [--cases N] [--seed S]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    println!("logpipe-fuzz: seed {seed} (--seed {seed} replays it), {cases} events");
    let name = it::unique("fuzzlong");
    let stack = fuzz::start_stack(&name).await;
    let started = std::time::Instant::now();
    let report = fuzz::run(&stack.target, &fuzz::Options::new(seed, cases)).await;
    println!(
        "logpipe-fuzz: {} ({:.0} s; schema {name})",
        report.summary(),
        started.elapsed().as_secs_f64()
    );
    for f in &report.failures {
        println!("logpipe-fuzz: FAILED {f}");
    }
    stack.gateway.stop().await;
    stack.collector.stop().await;
    if report.failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
