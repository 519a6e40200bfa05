//! `logpipe-load-test`: see the library's documentation and `./load-test.sh --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = logpipe_load_test::args::Args::parse();
    match logpipe_load_test::run(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // Thresholds not met: the report says which.
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("load test failed: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
