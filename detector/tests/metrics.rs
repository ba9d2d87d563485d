//! The metrics server over real loopback HTTP: `/metrics` in the OpenMetrics text format,
//! `/healthz`, and `/readyz` following the readiness state.

use std::{net::SocketAddr, time::Duration};

mod support;

use detector::{
    event::{Body, Event, Loss, ProcessFields},
    export::{
        Exporter,
        config::{
            BatchConfig, Destination, ExportConfig, Framing, QueueConfig, RetryConfig, SinkConfig,
            TlsConfig, WebhookSink,
        },
        queue::Fsync,
        record::Severity as RecordSeverity,
        schema::Schema,
    },
    metrics::{
        self, Metrics, MetricsConfig, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, Readiness,
    },
    rules::Severity,
    score::record::Decision,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A response: status code, headers (names lowercased) and body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET with `Connection: close`, read to the end.
async fn get(addr: SocketAddr, path: &str) -> Response {
    get_accepting(addr, path, None).await
}

/// [`get`] with an `Accept` header.
async fn get_accepting(addr: SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answers within 10 s");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

async fn start(metrics: Metrics, readiness: Readiness) -> metrics::Server {
    let config = MetricsConfig {
        enabled: true,
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    metrics::serve(&config, metrics, readiness)
        .await
        .unwrap()
        .expect("enabled")
}

fn loss(source: &str, kind: &str, count: u64) -> Event {
    Event {
        time: time::OffsetDateTime::UNIX_EPOCH,
        ktime_ns: 1,
        process: ProcessFields::default(),
        cgroup_id: None,
        container: None,
        pod: None,
        ancestry: Vec::new(),
        lineage: None,
        body: Body::Loss(Loss {
            source: source.into(),
            lost_kind: kind.into(),
            count,
            total: count,
            reason: None,
        }),
    }
}

#[tokio::test]
async fn healthz_answers_while_the_process_runs() {
    let server = start(Metrics::new(), Readiness::new()).await;
    let response = get(server.local_addr(), "/healthz").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "ok\n");
    assert_eq!(get(server.local_addr(), "/nothing").await.status, 404);
    server.abort();
}

#[tokio::test]
async fn readyz_follows_attachment_and_pod_cache_sync() {
    let readiness = Readiness::new();
    let server = start(Metrics::new(), readiness.clone()).await;
    let addr = server.local_addr();

    let response = get(addr, "/readyz").await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.contains("kernel programs not attached"),
        "{}",
        response.body
    );

    readiness.set_attached(true);
    assert_eq!(get(addr, "/readyz").await.status, 200);

    readiness.set_cluster_mode(true);
    let response = get(addr, "/readyz").await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.contains("pod cache not synced"),
        "{}",
        response.body
    );

    readiness.set_pod_cache_synced(true);
    let response = get(addr, "/readyz").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "ready\n");

    readiness.set_attached(false);
    assert_eq!(get(addr, "/readyz").await.status, 503);
    server.abort();
}

#[tokio::test]
async fn metrics_are_served_in_the_openmetrics_text_format() {
    let metrics = Metrics::new();
    let server = start(metrics.clone(), Readiness::new()).await;

    metrics.record_events(&[loss("ring_buffer", "file", 7), loss("decode", "exec", 2)]);
    metrics.record_alert(Severity::High);
    metrics.record_alert(Severity::High);
    metrics.record_verdict(Decision::Contain);
    metrics.record_containment_action("label", "ok");
    metrics.record_containment_action("cordon", "dry_run");
    metrics.observe_containment_kernel_block(Duration::from_micros(300));
    metrics.observe_containment_api(Duration::from_millis(250));
    metrics.observe_analysis_batch(Duration::from_micros(40));
    metrics.set_queue_depth("batches", 3);
    metrics.set_pods_tracked(12);
    metrics.set_programs_attached(&["sys_exit", "sched_process_exec"]);
    metrics.set_quarantine_pinned(true);

    // Prometheus's own Accept header: OpenMetrics first.
    let response = get_accepting(server.local_addr(), "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(OPENMETRICS_CONTENT_TYPE)
    );
    let text = &response.body;
    for expected in [
        "# TYPE detector_events counter\n",
        "detector_events_total{kind=\"loss\"} 2\n",
        "detector_kernel_lost_events_total{kind=\"file\"} 7\n",
        "detector_decode_losses_total{kind=\"exec\"} 2\n",
        "detector_alerts_total{severity=\"high\"} 2\n",
        "detector_verdicts_total{decision=\"contain\"} 1\n",
        "detector_containment_actions_total{step=\"label\",outcome=\"ok\"} 1\n",
        "detector_containment_actions_total{step=\"cordon\",outcome=\"dry_run\"} 1\n",
        "# TYPE detector_containment_kernel_block_seconds histogram\n",
        "detector_containment_kernel_block_seconds_count 1\n",
        "detector_containment_api_seconds_count 1\n",
        "detector_analysis_batch_seconds_count 1\n",
        "detector_queue_depth{queue=\"batches\"} 3\n",
        "detector_pods_tracked 12\n",
        "detector_program_attached{program=\"sys_exit\"} 1\n",
        "detector_suppressed_writes_total 0\n",
        "detector_quarantine_dropped_packets_total 0\n",
        "detector_quarantine_denied_connects_total 0\n",
        "detector_quarantine_pinned 1\n",
        // Series that exist before anything happened, so that alerts have them to watch.
        "detector_kernel_lost_events_total{kind=\"exec\"} 0\n",
        "detector_decode_losses_total{kind=\"connect\"} 0\n",
        "detector_queue_depth{queue=\"containment\"} 0\n",
        "detector_containment_refused_total{reason=\"warm_up\"} 0\n",
        "detector_containment_dropped_total 0\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // 300 µs falls in the 0.0004 s bucket (and every larger one), not in the 0.0002 s one.
    assert!(
        text.contains("detector_containment_kernel_block_seconds_bucket{le=\"0.0002\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("detector_containment_kernel_block_seconds_bucket{le=\"0.0004\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("detector_containment_kernel_block_seconds_bucket{le=\"+Inf\"} 1\n"),
        "{text}"
    );
    // OpenMetrics: every family has HELP and TYPE, and the exposition ends with EOF.
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    server.abort();
}

#[tokio::test]
async fn a_disabled_server_is_not_started_and_a_taken_port_is_an_error() {
    let disabled = MetricsConfig {
        enabled: false,
        ..MetricsConfig::default()
    };
    assert!(
        metrics::serve(&disabled, Metrics::new(), Readiness::new())
            .await
            .unwrap()
            .is_none()
    );
    let first = start(Metrics::new(), Readiness::new()).await;
    let taken = MetricsConfig {
        enabled: true,
        listen: first.local_addr(),
    };
    let err = metrics::serve(&taken, Metrics::new(), Readiness::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&first.local_addr().to_string()),
        "{err}"
    );
    first.abort();
}

/// The `Accept` header Prometheus sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Parses an exposition with Prometheus's own Python client: `om` with its OpenMetrics
/// parser, else with its text format 0.0.4 parser. Prints each sample as
/// `[name, {labels}, value]`, sorted.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
parse = om if sys.argv[1] == "om" else text
samples = []
types = {}
for family in parse(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
samples.sort(key=lambda s: (s[0], sorted(s[1].items())))
json.dump({"types": types, "samples": samples}, sys.stdout)
"#;

/// What Prometheus's parser for `format` reads in `text` (`cargo xtask test` installs the
/// `prometheus-client` package in the virtualenv whose `python3` comes first on the tests'
/// PATH; without it this fails, naming the package).
fn parse_with_prometheus(format: &str, text: &str) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args(["-c", PARSE, format])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "Prometheus's {format} parser (the prometheus-client package from PyPI; `cargo xtask \
         test` installs it) refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn both_formats_parse_with_prometheus_own_parsers_and_say_the_same() {
    let metrics = Metrics::new();
    let server = start(metrics.clone(), Readiness::new()).await;
    metrics.record_events(&[loss("ring_buffer", "file", 7)]);
    metrics.record_alert(Severity::High);
    metrics.record_verdict(Decision::Contain);
    metrics.record_containment_action("label_pod", "done");
    metrics.observe_containment_kernel_block(Duration::from_micros(300));
    metrics.record_containment_refused("warm_up");
    metrics.set_programs_attached(&["sys_exit"]);
    metrics.set_program_variant("typed");

    let addr = server.local_addr();
    let openmetrics = get_accepting(addr, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        openmetrics.header("content-type"),
        Some(OPENMETRICS_CONTENT_TYPE)
    );
    // A scraper that asks for the older format, and one that asks for nothing, get it.
    for accept in [Some("text/plain;version=0.0.4"), None] {
        let text = get_accepting(addr, "/metrics", accept).await;
        assert_eq!(
            text.header("content-type"),
            Some(PROMETHEUS_CONTENT_TYPE),
            "{accept:?}"
        );
        assert!(!text.body.contains("# EOF"), "{}", text.body);
        assert!(
            text.body.contains("# TYPE detector_events_total counter\n"),
            "{}",
            text.body
        );
    }
    let text = get_accepting(addr, "/metrics", Some("text/plain;version=0.0.4")).await;

    let from_om = parse_with_prometheus("om", &openmetrics.body);
    let from_text = parse_with_prometheus("text", &text.body);
    // Both parsers read every sample, with the same names, labels and values.
    assert_eq!(from_om["samples"], from_text["samples"]);
    assert_eq!(from_om["types"], from_text["types"]);
    let samples = from_text["samples"].as_array().unwrap();
    let has = |name: &str, labels: serde_json::Value, value: f64| {
        samples
            .iter()
            .any(|s| s[0] == name && s[1] == labels && s[2].as_f64() == Some(value))
    };
    assert!(has(
        "detector_kernel_lost_events_total",
        serde_json::json!({"kind": "file"}),
        7.0
    ));
    assert!(has(
        "detector_containment_refused_total",
        serde_json::json!({"reason": "warm_up"}),
        1.0
    ));
    assert!(has(
        "detector_containment_kernel_block_seconds_bucket",
        serde_json::json!({"le": "0.0004"}),
        1.0
    ));
    assert_eq!(from_text["types"]["detector_events"], "counter");
    assert_eq!(
        from_text["types"]["detector_containment_kernel_block_seconds"],
        "histogram"
    );
    server.abort();
}

/// A webhook sink to `url` with fast retries.
fn sink(name: &str, url: String) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        schema: Schema::Native,
        min_severity: RecordSeverity::Info,
        kinds: Vec::new(),
        queue: QueueConfig {
            fsync: Fsync::Never,
            ..QueueConfig::default()
        },
        retry: RetryConfig {
            initial_backoff_ms: 20,
            max_backoff_ms: 100,
            timeout_ms: 5000,
        },
        batch: BatchConfig::default(),
        to: Destination::Webhook(WebhookSink {
            url,
            headers: Default::default(),
            secret_headers: Default::default(),
            gzip: false,
            framing: Some(Framing::Ndjson),
            tls: TlsConfig::default(),
        }),
    }
}

#[tokio::test]
async fn each_sinks_deliveries_retries_rejections_and_drops_reach_metrics() {
    // One receiver refuses twice (503) then takes everything; the other refuses for good (400).
    let refusals = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flaky = {
        let refusals = refusals.clone();
        support::HttpReceiver::start(std::sync::Arc::new(move |_: &support::Request| {
            if refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                (503, "busy".into())
            } else {
                (200, "{}".into())
            }
        }))
        .await
    };
    let refusing = support::HttpReceiver::start(std::sync::Arc::new(|_: &support::Request| {
        (400, "no".into())
    }))
    .await;
    let state = tempfile::tempdir().unwrap();
    let config = ExportConfig {
        hostname: Some("node-1".into()),
        drain_timeout_ms: 2000,
        // Room for 10 events: the rest of a burst is dropped at the channel, and counted.
        channel_capacity: 10,
        state_dir: std::path::PathBuf::new(),
        sinks: vec![sink("flaky", flaky.url()), sink("refusing", refusing.url())],
    };
    let exporter = Exporter::start(&config, state.path()).unwrap();
    for i in 0..5 {
        exporter.send(support::event(i));
    }
    support::wait_for(Duration::from_secs(20), "both sinks settled", || {
        let stats = exporter.stats();
        stats[0].delivered == 5 && stats[1].rejected == 5
    })
    .await;
    for i in 0..1000 {
        exporter.send(support::event(100 + i));
    }
    let stats = exporter.stats();
    let dropped: Vec<u64> = stats
        .iter()
        .map(|s| s.dropped_channel + s.dropped_queue)
        .collect();
    assert!(dropped.iter().all(|&d| d > 0), "{stats:?}");

    // What the daemon samples on each analysis tick, read back from /metrics.
    let metrics = Metrics::new();
    metrics.observe_export(&stats);
    let server = start(metrics.clone(), Readiness::new()).await;
    let text = get(server.local_addr(), "/metrics").await.body;
    let flaky_stats = &stats[0];
    for expected in [
        format!(
            "detector_export_records_total{{sink=\"flaky\",outcome=\"delivered\"}} {}\n",
            flaky_stats.delivered
        ),
        format!(
            "detector_export_records_total{{sink=\"flaky\",outcome=\"retried\"}} {}\n",
            flaky_stats.retries
        ),
        format!(
            "detector_export_records_total{{sink=\"flaky\",outcome=\"dropped\"}} {}\n",
            dropped[0]
        ),
        format!(
            "detector_export_records_total{{sink=\"refusing\",outcome=\"rejected\"}} {}\n",
            stats[1].rejected
        ),
        format!(
            "detector_export_records_total{{sink=\"refusing\",outcome=\"dropped\"}} {}\n",
            dropped[1]
        ),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    assert!(flaky_stats.retries >= 2, "{flaky_stats:?}");
    // A second sample adds only what grew since the first.
    metrics.observe_export(&stats);
    let again = get(server.local_addr(), "/metrics").await.body;
    assert!(again.contains(&format!(
        "detector_export_records_total{{sink=\"refusing\",outcome=\"rejected\"}} {}\n",
        stats[1].rejected
    )));
    exporter.shutdown().await;
    server.abort();
}
