//! OTLP logs over HTTP with the JSON encoding of the OTLP specification: `POST <url>/v1/logs`,
//! `Content-Type: application/json`, an `ExportLogsServiceRequest` whose log record bodies are
//! the rendered records as `AnyValue` trees. 64-bit integers are strings, as the protobuf JSON
//! mapping requires; a `partialSuccess` answer counts its rejected records.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::{Item, SinkError, http};
use crate::export::{config::OtlpSink, record::Severity, schema::Context};

/// An OTLP/HTTP logs endpoint.
#[derive(Debug)]
pub struct Otlp {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    gzip: bool,
    resource: Value,
    scope: Value,
}

/// OTLP `SeverityNumber` and `severityText` of a severity.
pub fn severity(severity: Severity) -> (u8, &'static str) {
    match severity {
        Severity::Info => (9, "INFO"),
        Severity::Low => (10, "INFO2"),
        Severity::Medium => (13, "WARN"),
        Severity::High => (17, "ERROR"),
        Severity::Critical => (21, "FATAL"),
    }
}

/// A JSON value as an OTLP `AnyValue`.
pub fn any_value(value: &Value) -> Value {
    match value {
        Value::Null => json!({}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        Value::Array(items) => {
            json!({"arrayValue": {"values": items.iter().map(any_value).collect::<Vec<_>>()}})
        }
        Value::Object(map) => json!({"kvlistValue": {"values": key_values(map)}}),
    }
}

fn key_values(map: &Map<String, Value>) -> Vec<Value> {
    map.iter()
        .map(|(k, v)| json!({"key": k, "value": any_value(v)}))
        .collect()
}

fn string_attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

impl Otlp {
    /// An OTLP sink for the configuration.
    pub fn new(config: &OtlpSink, ctx: &Context, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: http::client(&config.tls, timeout)?,
            url: format!("{}/v1/logs", config.url.trim_end_matches('/')),
            headers: http::headers(&config.headers, &config.secret_headers)?,
            gzip: config.gzip,
            resource: json!({"attributes": [
                string_attribute("service.name", "detector"),
                string_attribute("service.version", &ctx.version),
                string_attribute("host.name", &ctx.host),
            ]}),
            scope: json!({"name": "detector.export", "version": ctx.version}),
        })
    }

    /// The `ExportLogsServiceRequest` of a batch.
    pub fn request(&self, batch: &[Item], observed: OffsetDateTime) -> Value {
        let observed = observed.unix_timestamp_nanos().to_string();
        let records: Vec<Value> = batch
            .iter()
            .map(|item| {
                let record = &item.envelope.record;
                let (number, text) = severity(record.severity());
                let kind = serde_json::to_value(record.kind()).unwrap_or_default();
                json!({
                    "timeUnixNano": record.time().unix_timestamp_nanos().to_string(),
                    "observedTimeUnixNano": observed,
                    "severityNumber": number,
                    "severityText": text,
                    "body": any_value(&item.doc),
                    "attributes": [
                        string_attribute("detector.uid", &item.envelope.uid),
                        string_attribute("detector.kind", kind.as_str().unwrap_or_default()),
                    ],
                })
            })
            .collect();
        json!({"resourceLogs": [{
            "resource": self.resource,
            "scopeLogs": [{"scope": self.scope, "logRecords": records}],
        }]})
    }

    /// Sends the batch; returns the count the collector says it rejected.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<usize, SinkError> {
        let body =
            serde_json::to_vec(&self.request(batch, OffsetDateTime::now_utc())).unwrap_or_default();
        let answer = http::post(
            &self.client,
            &self.url,
            &self.headers,
            "application/json",
            body,
            self.gzip,
            batch.len(),
        )
        .await?;
        let answer: Value = serde_json::from_slice(&answer).unwrap_or_default();
        let rejected = answer
            .pointer("/partialSuccess/rejectedLogRecords")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(0);
        if rejected > 0 {
            let message = answer
                .pointer("/partialSuccess/errorMessage")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            tracing::warn!("OTLP collector rejected {rejected} log records: {message}");
        }
        Ok(usize::try_from(rejected).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_value_follows_the_json_mapping() {
        let v = any_value(&json!({"a": 1, "b": [true, "x", 1.5], "c": null}));
        assert_eq!(v["kvlistValue"]["values"][0]["key"], "a");
        assert_eq!(v["kvlistValue"]["values"][0]["value"]["intValue"], "1");
        let b = &v["kvlistValue"]["values"][1]["value"]["arrayValue"]["values"];
        assert_eq!(b[0]["boolValue"], true);
        assert_eq!(b[1]["stringValue"], "x");
        assert_eq!(b[2]["doubleValue"], 1.5);
    }
}
