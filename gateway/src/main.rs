use clap::Parser;
use logpipe_gateway::{config::Cli, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logpipe_common::telemetry::init_tracing();
    let config = Cli::parse().into_config()?;
    tracing::info!(config = %config.summary(), "starting gateway");
    let app = Application::build(config).await?;
    app.run_until_stopped(logpipe_common::shutdown::shutdown_token())
        .await?;
    Ok(())
}
