use clap::Parser;
use logpipe_collector::{config::Cli, Application};

// Every record is parsed into small strings and maps that die with its batch: glibc's malloc and
// free were about a fifth of the collector's CPU in the drain bench's profile; mimalloc costs less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let migrate_only = cli.migrate_only;
    let config = cli.into_config()?;
    let _tracing =
        logpipe_common::telemetry::init_tracing_for("logpipe-collector", &config.tracing);
    if migrate_only {
        logpipe_collector::db::Db::connect(&config.database).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    tracing::info!(config = %config.summary(), "starting collector");
    let app = Application::build(config).await?;
    app.run_until_stopped(logpipe_common::shutdown::shutdown_token())
        .await?;
    Ok(())
}
