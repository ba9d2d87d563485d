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

/// A JSON value as an OTLP `AnyValue`. Built by hand: `json!` would serialize each nested
/// value again at every level.
pub fn any_value(value: &Value) -> Value {
    match value {
        Value::Null => Value::Object(Map::new()),
        Value::Bool(b) => single("boolValue", Value::Bool(*b)),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            single("intValue", Value::String(n.to_string()))
        }
        Value::Number(n) => single("doubleValue", n.as_f64().map_or(Value::Null, Value::from)),
        Value::String(s) => single("stringValue", Value::String(s.clone())),
        Value::Array(items) => single(
            "arrayValue",
            single(
                "values",
                Value::Array(items.iter().map(any_value).collect()),
            ),
        ),
        Value::Object(map) => single(
            "kvlistValue",
            single("values", Value::Array(key_values(map))),
        ),
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut map = Map::with_capacity(1);
    map.insert(key.to_owned(), value);
    Value::Object(map)
}

fn key_values(map: &Map<String, Value>) -> Vec<Value> {
    map.iter()
        .map(|(k, v)| {
            let mut pair = Map::with_capacity(2);
            pair.insert("key".into(), Value::String(k.clone()));
            pair.insert("value".into(), any_value(v));
            Value::Object(pair)
        })
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
                let mut log = Map::with_capacity(7);
                log.insert(
                    "timeUnixNano".into(),
                    Value::String(record.time().unix_timestamp_nanos().to_string()),
                );
                log.insert(
                    "observedTimeUnixNano".into(),
                    Value::String(observed.clone()),
                );
                log.insert("severityNumber".into(), Value::from(number));
                log.insert("severityText".into(), Value::from(text));
                log.insert("body".into(), any_value(&item.doc));
                log.insert(
                    "attributes".into(),
                    Value::Array(vec![
                        string_attribute("detector.uid", &item.envelope.uid),
                        string_attribute("detector.kind", kind.as_str().unwrap_or_default()),
                    ]),
                );
                Value::Object(log)
            })
            .collect();
        let mut scope_logs = Map::with_capacity(2);
        scope_logs.insert("scope".into(), self.scope.clone());
        scope_logs.insert("logRecords".into(), Value::Array(records));
        let mut resource_logs = Map::with_capacity(2);
        resource_logs.insert("resource".into(), self.resource.clone());
        resource_logs.insert(
            "scopeLogs".into(),
            Value::Array(vec![Value::Object(scope_logs)]),
        );
        single(
            "resourceLogs",
            Value::Array(vec![Value::Object(resource_logs)]),
        )
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
