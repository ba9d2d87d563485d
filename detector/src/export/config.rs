//! The `export:` section of the configuration: the sinks, each with its schema, filters, disk
//! queue, retry and batch settings, and destination.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    queue::{Fsync, QueueOptions, WhenFull},
    record::{RecordKind, Severity},
    schema::Schema,
};
use crate::config::Problem;

/// Where records go besides the event output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Host name put in every record; the machine's when unset.
    pub hostname: Option<String>,
    /// How long shutdown keeps delivering before leaving the rest queued on disk.
    pub drain_timeout_ms: u64,
    /// Records waiting in memory per sink before the disk queue takes them.
    pub channel_capacity: usize,
    /// The sinks; none by default.
    pub sinks: Vec<SinkConfig>,
    /// Where the sinks' disk queues live.
    pub state_dir: PathBuf,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            // The rest stays queued on disk for the next start: the daemon stops within a
            // few seconds (containment's grace runs alongside).
            drain_timeout_ms: 2000,
            // About a second of a busy node's events.
            channel_capacity: 16_384,
            sinks: Vec::new(),
            state_dir: PathBuf::from("/var/lib/detector/export"),
        }
    }
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; also the directory of its queue under the state directory.
    pub name: String,
    /// Output schema.
    #[serde(default)]
    pub schema: Schema,
    /// Records below this severity are not sent here.
    #[serde(default)]
    pub min_severity: Severity,
    /// Only these kinds are sent here; all when empty.
    #[serde(default)]
    pub kinds: Vec<RecordKind>,
    /// The disk queue.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The destination and its protocol, e.g. `{webhook: {url: ...}}` or `stdout`.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub to: Destination,
}

/// Disk queue settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Bound on queued bytes.
    pub max_bytes: u64,
    /// Segment file size.
    pub segment_bytes: u64,
    /// When queued data is forced to disk: `always`, `never` or `{interval_ms: N}`.
    #[serde(with = "serde_yaml_ng::with::singleton_map")]
    pub fsync: Fsync,
    /// `drop_oldest` (events only; verdicts, actions and evidence are kept) or `block`.
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            segment_bytes: 8 << 20,
            fsync: Fsync::default(),
            when_full: WhenFull::default(),
        }
    }
}

impl QueueConfig {
    /// The queue's options.
    pub fn options(&self) -> QueueOptions {
        QueueOptions {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            when_full: self.when_full,
        }
    }
}

/// Retry settings: exponential backoff with jitter, retried until delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First wait after a failure.
    pub initial_backoff_ms: u64,
    /// Longest wait.
    pub max_backoff_ms: u64,
    /// Time limit of one request or connection attempt.
    pub timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

/// How records are grouped into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Records per request at most.
    pub max_records: usize,
    /// Payload bytes per request, about.
    pub max_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 500,
            max_bytes: 1 << 20,
        }
    }
}

/// A secret read at start-up from a file (`{file: /path}`) or an environment variable
/// (`{env: NAME}`); never written in the configuration itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretSource {
    /// A file holding the secret (trailing newline ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// An environment variable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// A secret value; its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretSource {
    /// Reads the secret.
    pub fn resolve(&self) -> Result<Secret, String> {
        match (&self.file, &self.env) {
            (Some(path), None) => std::fs::read_to_string(path)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|err| format!("cannot read secret file {}: {err}", path.display())),
            (None, Some(name)) => std::env::var(name)
                .map(Secret)
                .map_err(|_| format!("environment variable {name} is not set")),
            _ => Err("a secret needs exactly one of `file` and `env`".into()),
        }
    }

    fn check(&self) -> Option<String> {
        (self.file.is_some() == self.env.is_some())
            .then(|| "needs exactly one of `file` and `env`".to_owned())
    }
}

/// TLS settings of a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the server's certificate, when not the address's host.
    pub server_name: Option<String>,
}

/// Where a sink sends, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines in a file, rotated by size.
    File(FileSink),
    /// Syslog (RFC 5424).
    Syslog(SyslogSink),
    /// An HTTP endpoint (a webhook, Falcosidekick, a log shipper).
    Webhook(WebhookSink),
    /// Splunk's HTTP Event Collector.
    SplunkHec(HecSink),
    /// Elasticsearch or OpenSearch, through the bulk API.
    Elasticsearch(ElasticSink),
    /// An OpenTelemetry collector, OTLP logs over HTTP (JSON encoding).
    Otlp(OtlpSink),
}

impl Destination {
    /// The type name, for logs and benchmark labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Syslog(s) => match s.transport {
                SyslogTransport::Udp => "syslog-udp",
                SyslogTransport::Tcp => "syslog-tcp",
                SyslogTransport::Tls => "syslog-tls",
            },
            Self::Webhook(_) => "webhook",
            Self::SplunkHec(_) => "splunk-hec",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Otlp(_) => "otlp",
        }
    }
}

/// JSON lines in a rotated file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    /// The file.
    pub path: PathBuf,
    /// Rotate past this size.
    #[serde(default = "default_file_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` newest).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_file_bytes() -> u64 {
    100 << 20
}

fn default_keep() -> u32 {
    5
}

/// Syslog transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426); no delivery guarantee.
    Udp,
    /// Octet-counted frames over TCP (RFC 6587).
    #[default]
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

/// Syslog message body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    /// The record in the sink's schema, as JSON.
    #[default]
    Json,
    /// ArcSight Common Event Format.
    Cef,
}

/// Syslog destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSink {
    /// `host:port`.
    pub address: String,
    /// Transport.
    #[serde(default)]
    pub transport: SyslogTransport,
    /// Message body.
    #[serde(default)]
    pub format: SyslogFormat,
    /// Facility number (16 = local0).
    #[serde(default = "default_facility")]
    pub facility: u8,
    /// TLS settings (transport `tls`).
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_facility() -> u8 {
    16
}

/// How a webhook request body holds the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One JSON document per line.
    Ndjson,
    /// A JSON array.
    JsonArray,
    /// One request per record (what Falcosidekick's `/` endpoint takes: it decodes the first
    /// JSON object of a body and ignores the rest).
    Single,
}

/// HTTP webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSink {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra headers whose values are secrets.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, SecretSource>,
    /// Compress request bodies.
    #[serde(default)]
    pub gzip: bool,
    /// Body layout; when unset, `single` with the `falco` schema (Falcosidekick reads one record
    /// per request) and `ndjson` with the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framing: Option<Framing>,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
}

impl WebhookSink {
    /// The body layout used for records in `schema`: the configured one, else one record per
    /// request for `falco` and NDJSON for the others.
    pub fn framing_for(&self, schema: Schema) -> Framing {
        self.framing.unwrap_or(if schema == Schema::Falco {
            Framing::Single
        } else {
            Framing::Ndjson
        })
    }
}

/// Splunk HTTP Event Collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecSink {
    /// Base URL, e.g. `https://splunk:8088` (`/services/collector/event` is appended).
    pub url: String,
    /// The HEC token.
    pub token: SecretSource,
    /// Target index; the token's default when unset.
    #[serde(default)]
    pub index: Option<String>,
    /// `sourcetype`; `detector:<schema>` when unset.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// Compress request bodies.
    #[serde(default)]
    pub gzip: bool,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// Elasticsearch or OpenSearch bulk API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticSink {
    /// Base URL of the cluster.
    pub url: String,
    /// Index (or data stream) written to.
    #[serde(default = "default_index")]
    pub index: String,
    /// API key (`Authorization: ApiKey ...`).
    #[serde(default)]
    pub api_key: Option<SecretSource>,
    /// Basic authentication user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic authentication password.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Compress request bodies.
    #[serde(default)]
    pub gzip: bool,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_index() -> String {
    "detector".into()
}

/// OTLP logs over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSink {
    /// Base URL of the collector, e.g. `http://collector:4318` (`/v1/logs` is appended).
    pub url: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra headers whose values are secrets.
    #[serde(default)]
    pub secret_headers: BTreeMap<String, SecretSource>,
    /// Compress request bodies.
    #[serde(default)]
    pub gzip: bool,
    /// TLS settings.
    #[serde(default)]
    pub tls: TlsConfig,
}

impl ExportConfig {
    /// Every problem of the section, located under `export`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: String, message: String| problems.push(Problem { at, message });
        if self.channel_capacity == 0 {
            problem(
                "export.channel_capacity".into(),
                "must be greater than 0".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let at = format!("export.sinks[{i}]");
            if sink.name.is_empty()
                || !sink
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problem(
                    format!("{at}.name"),
                    format!("{:?}: use letters, digits, '-' and '_'", sink.name),
                );
            }
            if !names.insert(sink.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    format!("{:?} is used twice", sink.name),
                );
            }
            let q = &sink.queue;
            if q.segment_bytes == 0 || q.segment_bytes > q.max_bytes {
                problem(
                    format!("{at}.queue.segment_bytes"),
                    format!(
                        "{} must be between 1 and max_bytes ({})",
                        q.segment_bytes, q.max_bytes
                    ),
                );
            }
            if sink.batch.max_records == 0 {
                problem(
                    format!("{at}.batch.max_records"),
                    "must be greater than 0".into(),
                );
            }
            let r = &sink.retry;
            if r.initial_backoff_ms == 0 || r.initial_backoff_ms > r.max_backoff_ms {
                problem(
                    format!("{at}.retry.initial_backoff_ms"),
                    "must be between 1 and max_backoff_ms".into(),
                );
            }
            if r.timeout_ms == 0 {
                problem(
                    format!("{at}.retry.timeout_ms"),
                    "must be greater than 0".into(),
                );
            }
            let url = |problem: &mut dyn FnMut(String, String), field: &str, url: &str| {
                match reqwest::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    Ok(u) => problem(
                        format!("{at}.to.{field}"),
                        format!("{url:?}: scheme {} is not http or https", u.scheme()),
                    ),
                    Err(err) => problem(format!("{at}.to.{field}"), format!("{url:?}: {err}")),
                }
            };
            match &sink.to {
                Destination::Stdout => {}
                Destination::File(f) => {
                    if f.keep == 0 {
                        problem(format!("{at}.to.file.keep"), "must be at least 1".into());
                    }
                    if f.max_bytes == 0 {
                        problem(
                            format!("{at}.to.file.max_bytes"),
                            "must be greater than 0".into(),
                        );
                    }
                }
                Destination::Syslog(s) => {
                    if s.address
                        .rsplit_once(':')
                        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                    {
                        problem(
                            format!("{at}.to.syslog.address"),
                            format!("{:?} is not host:port", s.address),
                        );
                    }
                    if s.facility > 23 {
                        problem(
                            format!("{at}.to.syslog.facility"),
                            format!("{} is not a syslog facility (0-23)", s.facility),
                        );
                    }
                }
                Destination::Webhook(w) => {
                    url(&mut problem, "webhook.url", &w.url);
                    if sink.schema == Schema::Falco
                        && let Some(framing @ (Framing::Ndjson | Framing::JsonArray)) = w.framing
                    {
                        let framing = serde_json::to_value(framing).unwrap_or_default();
                        problem(
                            format!("{at}.to.webhook.framing"),
                            format!(
                                "sink {:?} sends schema falco framed as {framing}: Falcosidekick \
                                 (and Falco's other consumers) read only the first JSON object \
                                 of a request and answer 200, so every other record of a batch \
                                 would be lost; use `framing: single` or leave `framing` out",
                                sink.name
                            ),
                        );
                    }
                    for (name, secret) in &w.secret_headers {
                        if let Some(message) = secret.check() {
                            problem(format!("{at}.to.webhook.secret_headers.{name}"), message);
                        }
                    }
                }
                Destination::SplunkHec(h) => {
                    url(&mut problem, "splunk_hec.url", &h.url);
                    if let Some(message) = h.token.check() {
                        problem(format!("{at}.to.splunk_hec.token"), message);
                    }
                }
                Destination::Elasticsearch(e) => {
                    url(&mut problem, "elasticsearch.url", &e.url);
                    if e.username.is_some() != e.password.is_some() {
                        problem(
                            format!("{at}.to.elasticsearch"),
                            "username and password go together".into(),
                        );
                    }
                }
                Destination::Otlp(o) => url(&mut problem, "otlp.url", &o.url),
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_section_parses_and_validates() {
        let yaml = r#"
sinks:
  - name: splunk
    schema: ocsf
    min_severity: low
    kinds: [exec, verdict]
    queue: { max_bytes: 1000000, segment_bytes: 100000, fsync: { interval_ms: 200 }, when_full: block }
    to:
      splunk_hec: { url: "https://splunk:8088", token: { env: HEC_TOKEN } }
  - name: local
    schema: falco
    to: stdout
  - name: rsyslog
    to:
      syslog: { address: "127.0.0.1:6514", transport: tls, format: cef, tls: { ca_file: /ca.pem } }
"#;
        let config: ExportConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert_eq!(config.sinks[0].queue.fsync, Fsync::IntervalMs(200));
        assert_eq!(config.sinks[1].to, Destination::Stdout);
    }

    #[test]
    fn problems_are_located() {
        let yaml = r#"
sinks:
  - name: "a b"
    to: { webhook: { url: "ftp://x" } }
  - name: x
    queue: { segment_bytes: 0 }
    to: { syslog: { address: "nohost" } }
"#;
        let config: ExportConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let at: Vec<String> = config.validate().into_iter().map(|p| p.at).collect();
        assert_eq!(
            at,
            [
                "export.sinks[0].name",
                "export.sinks[0].to.webhook.url",
                "export.sinks[1].queue.segment_bytes",
                "export.sinks[1].to.syslog.address",
            ]
        );
        let err =
            serde_yaml_ng::from_str::<ExportConfig>("sinks: [{name: a, to: stdout, tpyo: 1}]")
                .unwrap_err();
        assert!(err.to_string().contains("tpyo"), "{err}");
    }

    #[test]
    fn falco_over_a_webhook_is_one_record_per_request() {
        let yaml = r#"
sinks:
  - name: sidekick
    schema: falco
    to: { webhook: { url: "http://falcosidekick:2801/" } }
  - name: shipper
    to: { webhook: { url: "http://shipper/" } }
  - name: sidekick-batched
    schema: falco
    to: { webhook: { url: "http://falcosidekick:2801/", framing: ndjson } }
  - name: sidekick-array
    schema: falco
    to: { webhook: { url: "http://falcosidekick:2801/", framing: json_array } }
  - name: sidekick-single
    schema: falco
    to: { webhook: { url: "http://falcosidekick:2801/", framing: single } }
"#;
        let config: ExportConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let framing = |i: usize| match &config.sinks[i].to {
            Destination::Webhook(w) => w.framing_for(config.sinks[i].schema),
            other => panic!("{other:?}"),
        };
        assert_eq!(framing(0), Framing::Single, "falco works out of the box");
        assert_eq!(framing(1), Framing::Ndjson);
        assert_eq!(framing(4), Framing::Single);
        let problems = config.validate();
        let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "export.sinks[2].to.webhook.framing",
                "export.sinks[3].to.webhook.framing"
            ]
        );
        let message = &problems[0].message;
        for part in [
            "\"sidekick-batched\"",
            "\"ndjson\"",
            "first JSON object",
            "single",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        assert!(
            problems[1].message.contains("\"json_array\""),
            "{}",
            problems[1]
        );
        // An unset framing is not written back.
        let text = serde_yaml_ng::to_string(&config.sinks[0]).unwrap();
        assert!(!text.contains("framing"), "{text}");
    }

    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```yaml\nexport:").unwrap() + "```yaml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let config =
            crate::config::Config::parse(&readme[start..end], std::path::Path::new("README.md"))
                .unwrap();
        assert_eq!(config.export.sinks.len(), 3);
    }

    #[test]
    fn secrets_never_show() {
        let secret = Secret("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
