//! `logpipe-storage-bench`: see the library and `./storage-bench.sh`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = logpipe_storage_bench::StorageArgs::parse();
    match logpipe_storage_bench::run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // Wrong answers (a failed query, rows that do not add up): the report lists them.
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("storage benchmark failed: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
