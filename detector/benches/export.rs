//! Export benchmark: records per second through each sink type to a loopback receiver (send to
//! delivered, the disk queue, rendering to OCSF and the protocol included), and the disk
//! queue's write throughput.
//!
//! `cargo bench -p detector --bench export` measures; run without `--bench` (as `cargo test
//! --benches` does) it is a quick smoke run with few records.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use detector::export::{
    Exporter,
    config::{
        BatchConfig, Destination, ElasticSink, ExportConfig, FileSink, Framing, HecSink, OtlpSink,
        QueueConfig, RetryConfig, SecretSource, SinkConfig, SyslogFormat, SyslogSink,
        SyslogTransport, TlsConfig, WebhookSink,
    },
    queue::{DiskQueue, Fsync, QueueOptions, WhenFull},
    record::{Envelope, Severity},
    schema::Schema,
};
use support::{HttpReceiver, event, ok};
use tokio::io::AsyncReadExt as _;

fn sink(to: Destination) -> SinkConfig {
    SinkConfig {
        name: "bench".into(),
        schema: Schema::Ocsf,
        min_severity: Severity::Info,
        kinds: Vec::new(),
        queue: QueueConfig {
            fsync: Fsync::IntervalMs(1000),
            ..QueueConfig::default()
        },
        retry: RetryConfig::default(),
        batch: BatchConfig {
            max_records: 1000,
            max_bytes: 2 << 20,
        },
        to,
    }
}

/// Records per second from the first send until the sink reports every record delivered.
async fn through(label: &str, to: Destination, records: u64) -> f64 {
    let state = tempfile::tempdir().unwrap();
    let config = ExportConfig {
        hostname: Some("bench".into()),
        drain_timeout_ms: 1000,
        channel_capacity: 1 << 20,
        state_dir: std::path::PathBuf::new(),
        sinks: vec![sink(to)],
    };
    let exporter = Exporter::start(&config, state.path()).unwrap();
    let start = Instant::now();
    for i in 0..records {
        exporter.send_wait(event(i)).await;
    }
    while exporter.stats()[0].delivered < records {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    exporter.shutdown().await;
    let rate = records as f64 / seconds;
    println!("{label:<14} {records:>8} records  {seconds:>7.2} s  {rate:>10.0} records/s");
    rate
}

/// A TCP listener that reads and discards everything (syslog over TCP).
async fn tcp_sink() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 1 << 16];
                while stream.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

fn queue_throughput(records: usize, fsync: Fsync) {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..records as u64)
        .map(|i| {
            serde_json::to_vec(&Envelope {
                uid: format!("bench-{i}"),
                record: event(i),
            })
            .unwrap()
        })
        .collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let mut queue = DiskQueue::open(
        dir.path(),
        QueueOptions {
            max_bytes: 4 << 30,
            segment_bytes: 64 << 20,
            fsync,
            when_full: WhenFull::DropOldest,
        },
    )
    .unwrap();
    let start = Instant::now();
    for chunk in payloads.chunks(1024) {
        let batch: Vec<(bool, &[u8])> = chunk.iter().map(|p| (false, p.as_slice())).collect();
        queue.push(&batch).unwrap();
    }
    queue.sync().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "queue write (fsync {fsync:?}): {records} records of {} bytes: {:.0} records/s, {:.0} MB/s",
        bytes / records,
        records as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let records: u64 = if full { 50_000 } else { 500 };
    queue_throughput(if full { 200_000 } else { 1000 }, Fsync::Never);
    queue_throughput(if full { 200_000 } else { 1000 }, Fsync::IntervalMs(1000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "bench-token").unwrap();
        let secret = || SecretSource {
            file: Some(token.clone()),
            env: None,
        };
        let receiver = HttpReceiver::start(Arc::new(|_| (200, r#"{"errors":false}"#.into()))).await;
        let plain = HttpReceiver::start(ok()).await;
        let tcp = tcp_sink().await;
        let sinks = vec![
            (
                "file",
                Destination::File(FileSink {
                    path: dir.path().join("out.json"),
                    max_bytes: 1 << 30,
                    keep: 1,
                }),
            ),
            (
                "syslog-tcp",
                Destination::Syslog(SyslogSink {
                    address: tcp.to_string(),
                    transport: SyslogTransport::Tcp,
                    format: SyslogFormat::Json,
                    facility: 16,
                    tls: TlsConfig::default(),
                }),
            ),
            (
                "webhook",
                Destination::Webhook(WebhookSink {
                    url: plain.url(),
                    headers: BTreeMap::new(),
                    secret_headers: BTreeMap::new(),
                    gzip: false,
                    framing: Some(Framing::Ndjson),
                    tls: TlsConfig::default(),
                }),
            ),
            (
                "webhook-gzip",
                Destination::Webhook(WebhookSink {
                    url: plain.url(),
                    headers: BTreeMap::new(),
                    secret_headers: BTreeMap::new(),
                    gzip: true,
                    framing: Some(Framing::Ndjson),
                    tls: TlsConfig::default(),
                }),
            ),
            (
                "splunk-hec",
                Destination::SplunkHec(HecSink {
                    url: plain.url(),
                    token: secret(),
                    index: None,
                    sourcetype: None,
                    gzip: false,
                    tls: TlsConfig::default(),
                }),
            ),
            (
                "elasticsearch",
                Destination::Elasticsearch(ElasticSink {
                    url: receiver.url(),
                    index: "detector".into(),
                    api_key: None,
                    username: None,
                    password: None,
                    gzip: false,
                    tls: TlsConfig::default(),
                }),
            ),
            (
                "otlp",
                Destination::Otlp(OtlpSink {
                    url: plain.url(),
                    headers: BTreeMap::new(),
                    secret_headers: BTreeMap::new(),
                    gzip: false,
                    tls: TlsConfig::default(),
                }),
            ),
        ];
        for (label, to) in sinks {
            through(label, to, records).await;
        }
    });
}
