//! The HTTP client the HTTP sinks share (rustls, optional extra CA, gzip bodies, status
//! classification), and the webhook sink.

use std::{collections::BTreeMap, io::Write as _, time::Duration};

use flate2::{Compression, write::GzEncoder};
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{Item, SinkError};
use crate::export::{
    config::{Framing, SecretSource, TlsConfig, WebhookSink},
    schema::Schema,
};

/// A client trusting the public roots and the configured CA file.
pub fn client(tls: &TlsConfig, timeout: Duration) -> Result<reqwest::Client, SinkError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .use_rustls_tls()
        .user_agent(concat!("detector/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| SinkError::Setup(format!("cannot read {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SinkError::Setup(format!("{}: {e}", path.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| SinkError::Setup(format!("cannot build the HTTP client: {e}")))
}

/// Headers from the plain and the secret maps; secret values are marked sensitive.
pub fn headers(
    plain: &BTreeMap<String, String>,
    secret: &BTreeMap<String, SecretSource>,
) -> Result<HeaderMap, SinkError> {
    let mut map = HeaderMap::new();
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes())
            .map_err(|e| SinkError::Setup(format!("header name {n:?}: {e}")))
    };
    for (n, v) in plain {
        let value =
            HeaderValue::from_str(v).map_err(|e| SinkError::Setup(format!("header {n}: {e}")))?;
        map.insert(name(n)?, value);
    }
    for (n, source) in secret {
        let secret = source.resolve().map_err(SinkError::Setup)?;
        let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
            SinkError::Setup(format!("header {n}: the secret is not a header value"))
        })?;
        value.set_sensitive(true);
        map.insert(name(n)?, value);
    }
    Ok(map)
}

/// Gzips a body.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// POSTs a body and classifies the answer ([`classify`]).
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    content_type: &str,
    body: Vec<u8>,
    compress: bool,
    count: usize,
) -> Result<Vec<u8>, SinkError> {
    let (status, answer) = exchange(client, url, headers, content_type, body, compress).await?;
    classify(status, answer, count)
}

/// POSTs a body; the answer's status and body, whatever the status (a transport failure is an
/// error).
pub async fn exchange(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    content_type: &str,
    body: Vec<u8>,
    compress: bool,
) -> Result<(u16, Vec<u8>), SinkError> {
    let mut request = client
        .post(url)
        .headers(headers.clone())
        .header(CONTENT_TYPE, content_type);
    request = if compress {
        request.header(CONTENT_ENCODING, "gzip").body(gzip(&body))
    } else {
        request.body(body)
    };
    let response = request
        .send()
        .await
        .map_err(|e| SinkError::transport(format!("POST {url}"), e))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| SinkError::transport(format!("POST {url}: reading the answer"), e))?;
    Ok((status.as_u16(), body.to_vec()))
}

/// An answer classified: 2xx is `Ok` with the response body, statuses [`is_retryable`] are
/// retried, anything else refuses the `count` records for good.
pub fn classify(code: u16, body: Vec<u8>, count: usize) -> Result<Vec<u8>, SinkError> {
    if (200..300).contains(&code) {
        return Ok(body);
    }
    let text: String = String::from_utf8_lossy(&body).chars().take(512).collect();
    if is_retryable(code) {
        Err(SinkError::Retryable {
            status: code,
            body: text,
        })
    } else {
        Err(SinkError::Rejected {
            count,
            message: format!("{code}: {text}"),
        })
    }
}

/// Whether an error status is worth a retry. Besides overload and server errors (408, 429,
/// 5xx), authentication and routing failures (401, 403, 404) are retried: they are fixed on the
/// receiver's side, and dropping records meanwhile would lose them. What remains (400, 413,
/// 422...) is a refusal of the records themselves.
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 408 | 429 | 500..=599)
}

/// A generic HTTP endpoint.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    gzip: bool,
    framing: Framing,
}

impl Webhook {
    /// A webhook sink for the configuration, sending records in `schema` (which decides the
    /// framing when the configuration does not).
    pub fn new(config: &WebhookSink, schema: Schema, timeout: Duration) -> Result<Self, SinkError> {
        Ok(Self {
            client: client(&config.tls, timeout)?,
            url: config.url.clone(),
            headers: headers(&config.headers, &config.secret_headers)?,
            gzip: config.gzip,
            framing: config.framing_for(schema),
        })
    }

    /// Sends the batch in one request (or one per record with `single`); returns how many
    /// records were refused for good.
    pub async fn deliver(&mut self, batch: &[Item]) -> Result<usize, SinkError> {
        match self.framing {
            Framing::Ndjson => {
                let mut body = Vec::new();
                for item in batch {
                    let _ = serde_json::to_writer(&mut body, &item.doc);
                    body.push(b'\n');
                }
                self.send("application/x-ndjson", body, batch.len())
                    .await
                    .map(|()| 0)
            }
            Framing::JsonArray => {
                let docs: Vec<&serde_json::Value> = batch.iter().map(|i| &i.doc).collect();
                let body = serde_json::to_vec(&docs).unwrap_or_default();
                self.send("application/json", body, batch.len())
                    .await
                    .map(|()| 0)
            }
            Framing::Single => {
                let mut refused = 0;
                for item in batch {
                    let body = serde_json::to_vec(&item.doc).unwrap_or_default();
                    match self.send("application/json", body, 1).await {
                        Ok(()) => {}
                        // One refused record does not hold back the others; it is counted.
                        Err(SinkError::Rejected { message, .. }) => {
                            tracing::warn!("webhook {} refused a record: {message}", self.url);
                            refused += 1;
                        }
                        Err(err) => return Err(err),
                    }
                }
                Ok(refused)
            }
        }
    }

    async fn send(&self, content_type: &str, body: Vec<u8>, count: usize) -> Result<(), SinkError> {
        post(
            &self.client,
            &self.url,
            &self.headers,
            content_type,
            body,
            self.gzip,
            count,
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        for status in [401, 403, 404, 408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(status), "{status}");
        }
        for status in [400, 413, 415, 422] {
            assert!(!is_retryable(status), "{status}");
        }
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gzip(b"hello")[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello");
    }
}
