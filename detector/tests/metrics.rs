//! The metrics server over real loopback HTTP: `/metrics` in the OpenMetrics text format,
//! `/healthz`, and `/readyz` following the readiness state.

use std::{net::SocketAddr, time::Duration};

use detector::{
    event::{Body, Event, Loss, ProcessFields},
    metrics::{self, Metrics, MetricsConfig, OPENMETRICS_CONTENT_TYPE, Readiness},
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
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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

    let response = get(server.local_addr(), "/metrics").await;
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
