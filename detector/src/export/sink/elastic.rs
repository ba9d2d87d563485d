//! Elasticsearch and OpenSearch: `POST <url>/_bulk` with NDJSON `create` actions.
//!
//! Each document's `_id` is the record's uid, so a batch sent twice (at-least-once) creates
//! each document once: the second `create` answers 409, counted as delivered. The answer is
//! checked item by item: 429 and 5xx items make the batch retried; other refusals (a mapping
//! conflict) are counted as rejected and logged.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::{Item, SinkError, http};
use crate::export::config::ElasticSink;

/// A bulk API endpoint.
#[derive(Debug)]
pub struct Elastic {
    client: reqwest::Client,
    url: String,
    index: String,
    headers: HeaderMap,
    gzip: bool,
}

impl Elastic {
    /// An Elasticsearch sink for the configuration; reads the credentials.
    pub fn new(config: &ElasticSink, timeout: Duration) -> Result<Self, SinkError> {
        let mut headers = HeaderMap::new();
        let authorization = if let Some(key) = &config.api_key {
            Some(format!(
                "ApiKey {}",
                key.resolve().map_err(SinkError::Setup)?.expose()
            ))
        } else if let (Some(user), Some(password)) = (&config.username, &config.password) {
            use base64::Engine as _;
            let password = password.resolve().map_err(SinkError::Setup)?;
            let pair = format!("{user}:{}", password.expose());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        } else {
            None
        };
        if let Some(authorization) = authorization {
            let mut value = HeaderValue::from_str(&authorization)
                .map_err(|_| SinkError::Setup("the credentials are not a header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(Self {
            client: http::client(&config.tls, timeout)?,
            url: format!("{}/_bulk", config.url.trim_end_matches('/')),
            index: config.index.clone(),
            headers,
            gzip: config.gzip,
        })
    }

    /// The NDJSON body of a batch.
    pub fn body(&self, batch: &[Item]) -> Vec<u8> {
        let mut body = Vec::with_capacity(batch.len() * 600);
        for item in batch {
            let action = json!({"create": {"_index": self.index, "_id": item.envelope.uid}});
            let _ = serde_json::to_writer(&mut body, &action);
            body.push(b'\n');
            let _ = serde_json::to_writer(&mut body, &item.doc);
            body.push(b'\n');
        }
        body
    }

    /// Sends the batch; returns how many records were refused for good.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<usize, SinkError> {
        let answer = http::post(
            &self.client,
            &self.url,
            &self.headers,
            "application/x-ndjson",
            self.body(batch),
            self.gzip,
            batch.len(),
        )
        .await?;
        let answer: Value = serde_json::from_slice(&answer)
            .map_err(|e| SinkError::transport("bulk answer is not JSON", e))?;
        check_items(&answer, batch.len())
    }
}

/// Reads a bulk answer: `Ok(rejected)` when nothing is worth a retry.
pub fn check_items(answer: &Value, sent: usize) -> Result<usize, SinkError> {
    if answer.get("errors").and_then(Value::as_bool) != Some(true) {
        return Ok(0);
    }
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if items.len() != sent {
        return Err(SinkError::Retryable {
            status: 200,
            body: format!("bulk answer has {} items for {sent} documents", items.len()),
        });
    }
    let mut retry = 0;
    let mut rejected = 0;
    let mut first_reason = None;
    for item in items {
        let Some(result) = item.as_object().and_then(|o| o.values().next()) else {
            continue;
        };
        let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
        match status {
            200..=299 | 409 => {}
            429 | 500..=599 => retry += 1,
            _ => {
                rejected += 1;
                if first_reason.is_none() {
                    first_reason = result.get("error").map(Value::to_string);
                }
            }
        }
    }
    if retry > 0 {
        return Err(SinkError::Retryable {
            status: 429,
            body: format!("{retry} of {sent} bulk items are to be retried"),
        });
    }
    if rejected > 0 {
        tracing::warn!(
            "bulk refused {rejected} documents: {}",
            first_reason.unwrap_or_default()
        );
    }
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_item_errors() {
        let ok = json!({"errors": false, "items": []});
        assert_eq!(check_items(&ok, 3).unwrap(), 0);
        let duplicate_and_created = json!({"errors": true, "items": [
            {"create": {"status": 201}}, {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}]});
        assert_eq!(check_items(&duplicate_and_created, 2).unwrap(), 0);
        let mapping = json!({"errors": true, "items": [
            {"create": {"status": 201}}, {"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}}]});
        assert_eq!(check_items(&mapping, 2).unwrap(), 1);
        let overloaded = json!({"errors": true, "items": [
            {"create": {"status": 429}}, {"create": {"status": 400}}]});
        assert!(!check_items(&overloaded, 2).unwrap_err().is_permanent());
    }
}
