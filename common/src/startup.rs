//! Why a service did not start, or stopped serving: one error type for the three services.
//! What only one service can fail at (its database, its producer, its filter rules) arrives as
//! [`StartupError::Service`], through a `From` impl in that service's `startup.rs`, so `?` works.

use crate::config::ConfigError;
use crate::kafka::TopicError;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error("cannot create the Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A part of one service: `what` names it ("the database", "filter rules").
    #[error("{what}: {source}")]
    Service {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StartupError {
    pub fn service(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StartupError {
        StartupError::Service {
            what,
            source: source.into(),
        }
    }
}

/// Bind the service's listener, naming the address in the error.
pub async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener, StartupError> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}
