//! The command line: which scenario, where the stack is, how hard to push, and the thresholds that
//! set the exit code.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One fixed rate for `--duration-secs` (the short form the test command runs).
    Steady,
    /// Step the rate up by `--step-rate` every `--step-secs` until the stored rate stops following
    /// it, then hold the highest rate that kept up for `--hold-secs`.
    Ramp,
    /// `--rate` for 30 s, `--burst-factor` times it for 30 s, `--rate` again for 30 s; then the time
    /// until the backlog is stored.
    Burst,
    /// `--rate` for `--duration-secs` (default 600), watching each process's RSS and CPU.
    Soak,
    /// HTTP clients posting batches through the gateway at a fixed request rate (open loop,
    /// latency timed from when each request was due); every 100th request carries a FATAL, so the
    /// report gives the FATAL-to-alert latency too.
    Ingest,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "logpipe-load-test",
    version,
    about = "Whole-pipeline load test with loss by event id, ceilings and a report"
)]
pub struct Args {
    #[arg(value_enum, default_value = "ramp")]
    pub scenario: Scenario,

    // Where the stack is.
    #[arg(
        long,
        env = "LOGPIPE_LOADTEST_GATEWAY",
        default_value = "http://127.0.0.1:8090"
    )]
    pub gateway: String,
    #[arg(
        long,
        env = "LOGPIPE_LOADTEST_COLLECTOR",
        default_value = "http://127.0.0.1:8082"
    )]
    pub collector: String,
    #[arg(
        long,
        env = "LOGPIPE_LOADTEST_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    #[arg(
        long,
        env = "LOGPIPE_LOADTEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/logpipe"
    )]
    pub database_url: String,
    /// The stack's run directory: `pids/*.pid` there name the processes whose CPU and RSS are sampled.
    #[arg(long, env = "LOGPIPE_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Admin key for start/stop when the gateway has keys (never printed).
    #[arg(long, env = "LOGPIPE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Ingest key for the `ingest` scenario when the gateway has keys (never printed).
    #[arg(long, env = "LOGPIPE_INGEST_KEY", hide_env_values = true)]
    pub ingest_key: Option<String>,
    #[arg(long, default_value = "logs.raw")]
    pub topic: String,
    /// The collector's consumer group (its offsets in PostgreSQL mark where the run starts).
    #[arg(long, default_value = "logpipe-collector")]
    pub group: String,

    // How hard to push.
    /// Events per second: the steady, soak and burst base rate; the ramp's first step.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long)]
    pub duration_secs: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub step_rate: u64,
    #[arg(long, default_value_t = 20)]
    pub step_secs: u64,
    #[arg(long, default_value_t = 200_000)]
    pub max_rate: u64,
    #[arg(long, default_value_t = 60)]
    pub hold_secs: u64,
    #[arg(long, default_value_t = 10)]
    pub burst_factor: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: u64,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u64,
    #[arg(long, default_value = "steady")]
    pub profile: String,
    /// How long to wait, after the load stops, for the pipeline to store what Kafka holds.
    #[arg(long, default_value_t = 180)]
    pub drain_timeout_secs: u64,

    // The ingest scenario.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    #[arg(long, default_value_t = 200)]
    pub requests_per_second: u64,
    #[arg(long, default_value_t = 100)]
    pub events_per_request: usize,

    // Ceilings.
    /// Records each bare-client ceiling moves (at most what the run produced).
    #[arg(long, default_value_t = 300_000)]
    pub ceiling_events: usize,
    #[arg(long)]
    pub no_ceilings: bool,
    /// Seconds of the bare stages run at the rate the pipeline held (`paced`); 0 skips them.
    #[arg(long, default_value_t = 10)]
    pub paced_ceiling_secs: u64,

    // Thresholds (the exit code is 1 when one is not met).
    /// Most events acknowledged and never stored.
    #[arg(long, default_value_t = 0)]
    pub max_loss: u64,
    /// Least stored events per second over the measured segment (the ramp's hold, else the run).
    #[arg(long)]
    pub min_rate: Option<f64>,
    /// Highest end-to-end p99 latency, milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Highest RSS growth of any process after the first minute, percent (soak: default 10).
    #[arg(long)]
    pub max_rss_growth_pct: Option<f64>,

    /// Where the report goes (default `load-test-reports/<date-time>/`).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
}

impl Args {
    pub fn base_rate(&self) -> u64 {
        self.rate.unwrap_or(match self.scenario {
            Scenario::Ramp => 20_000,
            Scenario::Burst => 5_000,
            _ => 20_000,
        })
    }

    pub fn duration_secs(&self) -> u64 {
        self.duration_secs.unwrap_or(match self.scenario {
            Scenario::Soak => 600,
            _ => 30,
        })
    }
}
