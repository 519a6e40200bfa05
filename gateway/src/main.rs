use clap::Parser;
use logpipe_gateway::{config::Cli, Application};

// Every request allocates and frees small buffers on two threads; mimalloc does that with far
// less contention than glibc's malloc (measured in benches/http.rs, which uses it too).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config()?;
    let _tracing = logpipe_common::telemetry::init_tracing_for("logpipe-gateway", &config.tracing);
    tracing::info!(config = %config.summary(), "starting gateway");
    let app = Application::build(config).await?;
    app.run_until_stopped(logpipe_common::shutdown::shutdown_token())
        .await?;
    Ok(())
}
