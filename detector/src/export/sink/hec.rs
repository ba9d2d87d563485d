//! Splunk HTTP Event Collector: `POST <url>/services/collector/event` with
//! `Authorization: Splunk <token>` and a body of concatenated event objects
//! (`{"time": <epoch seconds>, "host", "source", "sourcetype", "index", "event": {...}}`).
//!
//! Every request carries `X-Splunk-Request-Channel`, a random GUID drawn once per sink: a token
//! with indexer acknowledgement turned on refuses requests without one (400, HEC code 10 "Data
//! channel is missing"), and the others ignore it. A 400 with HEC code 10 or 11 ("Invalid data
//! channel") says nothing against the records, so it is retried, not counted as refused.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::{Item, SinkError, http};
use crate::export::{
    config::HecSink,
    schema::{Context, Schema},
};

/// The header naming the client's channel.
pub const CHANNEL_HEADER: &str = "x-splunk-request-channel";

/// HEC codes of a 400 that refuse the request's channel, not its records: 10 (data channel is
/// missing) and 11 (invalid data channel).
const CHANNEL_CODES: [u64; 2] = [10, 11];

/// A random (version 4) UUID in its text form, as HEC wants a channel.
pub fn new_channel() -> Result<String, SinkError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| SinkError::Setup(format!("no random source for the HEC channel: {e}")))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// The HEC `code` of an answer body, when it has one.
fn hec_code(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("code")?
        .as_u64()
}

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
        let channel = new_channel()?;
        headers.insert(
            HeaderName::from_static(CHANNEL_HEADER),
            HeaderValue::from_str(&channel)
                .map_err(|_| SinkError::Setup("the HEC channel is not a header value".into()))?,
        );
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
        let (status, answer) = http::exchange(
            &self.client,
            &self.url,
            &self.headers,
            "application/json",
            body,
            self.gzip,
        )
        .await?;
        classify(status, answer, batch.len()).map(drop)
    }
}

/// A HEC answer classified: as any HTTP answer, except a 400 refusing the channel, retried.
fn classify(status: u16, answer: Vec<u8>, count: usize) -> Result<Vec<u8>, SinkError> {
    if status == 400 && hec_code(&answer).is_some_and(|code| CHANNEL_CODES.contains(&code)) {
        return Err(SinkError::Retryable {
            status,
            body: String::from_utf8_lossy(&answer).chars().take(512).collect(),
        });
    }
    http::classify(status, answer, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_version_4_uuids() {
        let a = new_channel().unwrap();
        let b = new_channel().unwrap();
        assert_ne!(a, b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{a}"
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        assert!(groups[2].starts_with('4'), "{a}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{a}"
        );
    }

    #[test]
    fn a_refused_channel_is_retried_and_refused_records_are_not() {
        let missing = br#"{"text":"Data channel is missing","code":10}"#.to_vec();
        let invalid = br#"{"text":"Invalid data channel","code":11}"#.to_vec();
        let format =
            br#"{"text":"Invalid data format","code":6,"invalid-event-number":0}"#.to_vec();
        assert!(!classify(400, missing, 3).unwrap_err().is_permanent());
        assert!(!classify(400, invalid, 3).unwrap_err().is_permanent());
        assert!(classify(400, format, 3).unwrap_err().is_permanent());
        assert!(
            classify(400, b"not json".to_vec(), 3)
                .unwrap_err()
                .is_permanent()
        );
        let ok = br#"{"text":"Success","code":0,"ackId":7}"#.to_vec();
        assert!(classify(200, ok, 3).is_ok());
    }
}
