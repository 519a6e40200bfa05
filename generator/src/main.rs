use clap::Parser;
use logpipe_generator::{config::Cli, Application};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config()?;
    let _tracing =
        logpipe_common::telemetry::init_tracing_for("logpipe-generator", &config.tracing);
    tracing::info!(config = %config.summary(), "starting generator");
    let app = Application::build(config).await?;
    app.run_until_stopped(logpipe_common::shutdown::shutdown_token())
        .await?;
    Ok(())
}
