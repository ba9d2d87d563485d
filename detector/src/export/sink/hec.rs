//! Splunk HTTP Event Collector: `POST <url>/services/collector/event` with
//! `Authorization: Splunk <token>` and a body of concatenated event objects
//! (`{"time": <epoch seconds>, "host", "source", "sourcetype", "index", "event": {...}}`).

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::{Item, SinkError, http};
use crate::export::{
    config::HecSink,
    schema::{Context, Schema},
};

/// A HEC endpoint.
#[derive(Debug)]
pub struct Hec {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    gzip: bool,
    host: String,
    index: Option<String>,
    sourcetype: String,
}

impl Hec {
    /// A HEC sink for the configuration; reads the token.
    pub fn new(
        config: &HecSink,
        schema: Schema,
        ctx: &Context,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let token = config.token.resolve().map_err(SinkError::Setup)?;
        let mut value = HeaderValue::from_str(&format!("Splunk {}", token.expose()))
            .map_err(|_| SinkError::Setup("the HEC token is not a header value".into()))?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        let schema_name = serde_json::to_value(schema)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(Self {
            client: http::client(&config.tls, timeout)?,
            url: format!(
                "{}/services/collector/event",
                config.url.trim_end_matches('/')
            ),
            headers,
            gzip: config.gzip,
            host: ctx.host.clone(),
            index: config.index.clone(),
            sourcetype: config
                .sourcetype
                .clone()
                .unwrap_or_else(|| format!("detector:{schema_name}")),
        })
    }

    /// The HEC event object of one record.
    pub fn event(&self, item: &Item) -> Value {
        let nanos = item.envelope.record.time().unix_timestamp_nanos();
        let mut event = Map::new();
        // Seconds with millisecond precision, as HEC documents `time`.
        let millis = i64::try_from(nanos.div_euclid(1_000_000)).unwrap_or(i64::MAX);
        #[expect(
            clippy::cast_precision_loss,
            reason = "epoch milliseconds fit an f64 mantissa until the year 287,000"
        )]
        let seconds = millis as f64 / 1000.0;
        event.insert("time".into(), json!(seconds));
        event.insert("host".into(), self.host.clone().into());
        event.insert("source".into(), "detector".into());
        event.insert("sourcetype".into(), self.sourcetype.clone().into());
        if let Some(index) = &self.index {
            event.insert("index".into(), index.clone().into());
        }
        event.insert("event".into(), item.doc.clone());
        Value::Object(event)
    }

    /// Sends the batch as one request.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<(), SinkError> {
        let mut body = Vec::new();
        for item in batch {
            let _ = serde_json::to_writer(&mut body, &self.event(item));
            body.push(b'\n');
        }
        http::post(
            &self.client,
            &self.url,
            &self.headers,
            "application/json",
            body,
            self.gzip,
            batch.len(),
        )
        .await
        .map(drop)
    }
}
