//! The receivers: each turns a batch of rendered records into its protocol's bytes and
//! reports whether the receiver took them.
//!
//! A sink never retries by itself: it answers [`SinkError::is_permanent`] and the delivery task
//! decides (retry with backoff, or count as rejected and move on).

pub mod elastic;
pub mod file;
pub(crate) mod hec;
pub(crate) mod http;
pub mod otlp;
pub(crate) mod syslog;

use std::time::Duration;

use serde_json::Value;

use super::{
    config::{Destination, SinkConfig},
    record::Envelope,
    schema::Context,
};

/// Failure to deliver a batch, or to set a sink up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver could not be reached or the connection broke; retried.
    #[error("{what}: {source}")]
    Transport {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The receiver answered with a status worth retrying (overload, server error).
    #[error("receiver answered {status}: {body}")]
    Retryable {
        /// HTTP status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// The receiver refused records for good; they are counted as rejected, not retried.
    #[error("receiver refused {count} records: {message}")]
    Rejected {
        /// How many records.
        count: usize,
        /// Why.
        message: String,
    },
    /// The sink's configuration cannot be used (a secret, a CA file, an address).
    #[error("sink setup: {0}")]
    Setup(String),
}

impl SinkError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { .. } | Self::Setup(_))
    }

    pub(crate) fn transport(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Transport {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// A record and its rendering in the sink's schema.
#[derive(Debug, Clone)]
pub struct Item {
    /// The record.
    pub envelope: Envelope,
    /// The record in the sink's schema.
    pub doc: Value,
}

/// A configured sink.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Standard output.
    Stdout(file::Stdout),
    /// Rotated file.
    File(file::RotatingFile),
    /// Syslog.
    Syslog(syslog::Syslog),
    /// Webhook.
    Webhook(http::Webhook),
    /// Splunk HEC.
    Hec(hec::Hec),
    /// Elasticsearch bulk.
    Elastic(elastic::Elastic),
    /// OTLP logs.
    Otlp(otlp::Otlp),
}

impl Sink {
    /// Builds the sink from its configuration (reads secrets and CA files).
    pub fn new(config: &SinkConfig, ctx: &Context) -> Result<Self, SinkError> {
        let timeout = Duration::from_millis(config.retry.timeout_ms);
        Ok(match &config.to {
            Destination::Stdout => Self::Stdout(file::Stdout),
            Destination::File(f) => Self::File(file::RotatingFile::new(f)),
            Destination::Syslog(s) => Self::Syslog(syslog::Syslog::new(s, ctx, timeout)?),
            Destination::Webhook(w) => {
                Self::Webhook(http::Webhook::new(w, config.schema, timeout)?)
            }
            Destination::SplunkHec(h) => Self::Hec(hec::Hec::new(h, config.schema, ctx, timeout)?),
            Destination::Elasticsearch(e) => Self::Elastic(elastic::Elastic::new(e, timeout)?),
            Destination::Otlp(o) => Self::Otlp(otlp::Otlp::new(o, ctx, timeout)?),
        })
    }

    /// Ends the sink's connections cleanly.
    pub async fn close(&mut self) {
        if let Self::Syslog(s) = self {
            s.close().await;
        }
    }

    /// Sends one batch; `Ok` means the receiver has every record of it (or refused some for
    /// good, returned as their count).
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<usize, SinkError> {
        match self {
            Self::Stdout(s) => s.deliver(batch).await.map(|()| 0),
            Self::File(s) => s.deliver(batch).await.map(|()| 0),
            Self::Syslog(s) => s.deliver(batch).await.map(|()| 0),
            Self::Webhook(s) => s.deliver(batch).await,
            Self::Hec(s) => s.deliver(batch).await.map(|()| 0),
            Self::Elastic(s) => s.deliver(batch).await,
            Self::Otlp(s) => s.deliver(batch).await,
        }
    }
}
