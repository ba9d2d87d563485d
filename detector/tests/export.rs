//! The exporter against loopback receivers: each protocol's documented body format, a receiver
//! killed mid-stream, a receiver down for ten seconds under 100,000 records, an exporter killed
//! with a full queue, and the drop policy.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use detector::{
    event::{Body, Connect, Pod},
    export::{
        Exporter,
        config::{
            BatchConfig, Destination, ElasticSink, ExportConfig, Framing, HecSink, OtlpSink,
            QueueConfig, RetryConfig, SecretSource, SinkConfig, SyslogFormat, SyslogSink,
            SyslogTransport, TlsConfig, WebhookSink,
        },
        queue::{Fsync, WhenFull},
        record::{Finding, Record, RecordKind, Severity},
        schema::Schema,
    },
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use serde_json::{Value, json};
use support::{HttpReceiver, Responder, event, ok, padded_verdict, verdict, wait_for};
use tokio::io::AsyncReadExt as _;

fn sink(name: &str, schema: Schema, to: Destination) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        schema,
        min_severity: Severity::Info,
        kinds: Vec::new(),
        queue: QueueConfig {
            fsync: Fsync::Never,
            ..QueueConfig::default()
        },
        retry: RetryConfig {
            initial_backoff_ms: 50,
            max_backoff_ms: 500,
            timeout_ms: 5000,
        },
        batch: BatchConfig::default(),
        to,
    }
}

fn webhook(url: String) -> Destination {
    Destination::Webhook(WebhookSink {
        url,
        headers: BTreeMap::new(),
        secret_headers: BTreeMap::new(),
        gzip: false,
        framing: Some(Framing::Ndjson),
        tls: TlsConfig::default(),
    })
}

fn config(sinks: Vec<SinkConfig>) -> ExportConfig {
    ExportConfig {
        hostname: Some("node-1".into()),
        drain_timeout_ms: 2000,
        channel_capacity: 200_000,
        state_dir: std::path::PathBuf::new(),
        sinks,
    }
}

fn secret_file(dir: &Path, value: &str) -> SecretSource {
    let path = dir.join("secret");
    std::fs::write(&path, format!("{value}\n")).unwrap();
    SecretSource {
        file: Some(path),
        env: None,
    }
}

#[tokio::test]
async fn webhook_sends_filtered_gzipped_ndjson_with_headers() {
    let state = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(ok()).await;
    let mut sink = sink(
        "hook",
        Schema::Ocsf,
        webhook(format!("{}/ingest", receiver.url())),
    );
    sink.kinds = vec![RecordKind::Exec, RecordKind::Verdict];
    sink.min_severity = Severity::Info;
    if let Destination::Webhook(w) = &mut sink.to {
        w.gzip = true;
        w.headers.insert("X-Team".into(), "sec".into());
        w.secret_headers.insert(
            "Authorization".into(),
            secret_file(state.path(), "Bearer s3cret"),
        );
    }
    let exporter = Exporter::start(&config(vec![sink]), state.path()).unwrap();
    for i in 0..10 {
        exporter.send(event(i));
    }
    exporter.send(verdict(1));
    exporter.send(detector::export::record::Record::Action(
        detector::export::record::Finding {
            time: time::OffsetDateTime::UNIX_EPOCH,
            severity: Severity::High,
            name: "isolate_pod".into(),
            summary: "filtered out by kind".into(),
            data: json!({}),
        },
    ));
    wait_for(Duration::from_secs(10), "11 records", || {
        receiver.accepted_lines().len() >= 11
    })
    .await;
    exporter.shutdown().await;
    let requests = receiver.requests();
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/ingest");
    assert_eq!(first.headers["content-encoding"], "gzip");
    assert_eq!(first.headers["content-type"], "application/x-ndjson");
    assert_eq!(first.headers["x-team"], "sec");
    assert_eq!(first.headers["authorization"], "Bearer s3cret");
    let lines = receiver.accepted_lines();
    assert_eq!(lines.len(), 11, "the action is filtered out");
    let classes: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["class_uid"].as_u64().unwrap())
        .collect();
    assert_eq!(classes, BTreeSet::from([1007, 2004]));
}

#[tokio::test]
async fn splunk_hec_body_and_token() {
    let state = tempfile::tempdir().unwrap();
    let receiver =
        HttpReceiver::start(Arc::new(|_| (200, r#"{"text":"Success","code":0}"#.into()))).await;
    let to = Destination::SplunkHec(HecSink {
        url: format!("{}/", receiver.url()),
        token: secret_file(state.path(), "11111111-2222-3333-4444-555555555555"),
        index: Some("security".into()),
        sourcetype: None,
        gzip: false,
        tls: TlsConfig::default(),
    });
    let exporter =
        Exporter::start(&config(vec![sink("hec", Schema::Ecs, to)]), state.path()).unwrap();
    for i in 0..5 {
        exporter.send(event(i));
    }
    wait_for(Duration::from_secs(10), "5 events", || {
        receiver.accepted_lines().len() >= 5
    })
    .await;
    exporter.shutdown().await;
    let request = &receiver.requests()[0];
    assert_eq!(request.path, "/services/collector/event");
    assert_eq!(
        request.headers["authorization"],
        "Splunk 11111111-2222-3333-4444-555555555555"
    );
    // HEC takes concatenated event objects; one per line here.
    for (i, line) in receiver.accepted_lines().iter().enumerate() {
        assert!(line["time"].is_f64(), "{line}");
        assert_eq!(line["host"], "node-1");
        assert_eq!(line["source"], "detector");
        assert_eq!(line["sourcetype"], "detector:ecs");
        assert_eq!(line["index"], "security");
        assert_eq!(line["event"]["event"]["category"][0], "process");
        assert_eq!(line["event"]["process"]["args"][2], format!("echo {i}"));
    }
}

/// Whether `text` is a GUID as HEC takes for a channel: 8-4-4-4-12 hexadecimal digits.
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A HEC endpoint whose token has indexer acknowledgement on: without a
/// `X-Splunk-Request-Channel` it answers 400 `{"text":"Data channel is missing","code":10}`,
/// with one that is not a GUID 400 `{"text":"Invalid data channel","code":11}`, else 200 with
/// the request's `ackId` on that channel. The first `refuse_first` requests are refused as
/// channel-less whatever they carry (a proxy dropping the header).
fn hec_with_acknowledgement(refuse_first: usize) -> Responder {
    let acks = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let seen = Arc::new(Mutex::new(0usize));
    Arc::new(move |request| {
        let mut seen = seen.lock().unwrap();
        *seen += 1;
        let missing = (
            400,
            r#"{"text":"Data channel is missing","code":10}"#.to_owned(),
        );
        if *seen <= refuse_first {
            return missing;
        }
        match request.headers.get("x-splunk-request-channel") {
            None => missing,
            Some(channel) if !is_guid(channel) => (
                400,
                r#"{"text":"Invalid data channel","code":11}"#.to_owned(),
            ),
            Some(channel) => {
                let mut acks = acks.lock().unwrap();
                let ack = acks.entry(channel.clone()).or_default();
                let answer = json!({"text": "Success", "code": 0, "ackId": *ack});
                *ack += 1;
                (200, answer.to_string())
            }
        }
    })
}

#[tokio::test]
async fn splunk_hec_with_indexer_acknowledgement_gets_everything() {
    const TOTAL: u64 = 30;
    let state = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(hec_with_acknowledgement(0)).await;
    let flaky = HttpReceiver::start(hec_with_acknowledgement(2)).await;
    let hec = |name: &str, url: String| {
        let mut sink = sink(
            name,
            Schema::Ocsf,
            Destination::SplunkHec(HecSink {
                url,
                token: secret_file(state.path(), "11111111-2222-3333-4444-555555555555"),
                index: None,
                sourcetype: None,
                gzip: false,
                tls: TlsConfig::default(),
            }),
        );
        sink.batch.max_records = 7;
        sink
    };
    let config = config(vec![
        hec("hec", receiver.url()),
        hec("hec-flaky", flaky.url()),
    ]);
    let exporter = Exporter::start(&config, state.path()).unwrap();
    for i in 0..TOTAL {
        exporter.send(event(i));
    }
    wait_for(Duration::from_secs(20), "every record delivered", || {
        exporter
            .stats()
            .iter()
            .all(|s| s.delivered + s.rejected >= TOTAL)
    })
    .await;
    let stats = exporter.stats();
    exporter.shutdown().await;
    for (stats, receiver) in stats.iter().zip([&receiver, &flaky]) {
        assert_eq!((stats.delivered, stats.rejected), (TOTAL, 0), "{stats:?}");
        let ids: BTreeSet<u64> = receiver
            .accepted_lines()
            .iter()
            .map(|l| l["event"]["unmapped"]["ktime_ns"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, (0..TOTAL).collect(), "{}", stats.name);
        // One channel per sink, on every request.
        let channels: BTreeSet<String> = receiver
            .requests()
            .iter()
            .map(|r| r.headers["x-splunk-request-channel"].clone())
            .collect();
        assert_eq!(channels.len(), 1, "{channels:?}");
        assert!(is_guid(channels.first().unwrap()));
    }
    assert!(stats[1].retries >= 2, "{:?}", stats[1]);
}

#[tokio::test]
async fn elasticsearch_bulk_items_are_checked() {
    let state = tempfile::tempdir().unwrap();
    // Creates each _id once (409 after), refuses verdict documents for good (400) and answers
    // 429 to the second item of the first request.
    let created = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let calls = Arc::new(Mutex::new(0usize));
    let responder: Responder = {
        let created = Arc::clone(&created);
        Arc::new(move |request| {
            let mut call = calls.lock().unwrap();
            *call += 1;
            let text = String::from_utf8_lossy(&request.body).into_owned();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let mut items = Vec::new();
            let mut errors = false;
            for (n, pair) in lines.chunks(2).enumerate() {
                let id = pair[0]["create"]["_id"].as_str().unwrap().to_owned();
                let status = if pair[1]["event"]["kind"] == "alert" {
                    400
                } else if *call == 1 && n == 1 {
                    429
                } else if created.lock().unwrap().insert(id.clone()) {
                    201
                } else {
                    409
                };
                errors |= status >= 300;
                items.push(json!({"create": {"_index": "detector", "_id": id, "status": status}}));
            }
            (
                200,
                json!({"took": 1, "errors": errors, "items": items}).to_string(),
            )
        })
    };
    let receiver = HttpReceiver::start(responder).await;
    let to = Destination::Elasticsearch(ElasticSink {
        url: receiver.url(),
        index: "detector".into(),
        api_key: Some(secret_file(state.path(), "a2V5OnNlY3JldA==")),
        username: None,
        password: None,
        gzip: true,
        tls: TlsConfig::default(),
    });
    let exporter =
        Exporter::start(&config(vec![sink("es", Schema::Ecs, to)]), state.path()).unwrap();
    for i in 0..20 {
        exporter.send(event(i));
    }
    exporter.send(verdict(0));
    // The receiver records a document before the exporter has read the answer: wait for the
    // exporter's own account, not the receiver's.
    wait_for(Duration::from_secs(10), "20 documents delivered", || {
        let stats = &exporter.stats()[0];
        stats.delivered + stats.rejected >= 21
    })
    .await;
    assert_eq!(created.lock().unwrap().len(), 20);
    let stats = exporter.stats().remove(0);
    exporter.shutdown().await;
    assert_eq!(stats.rejected, 1, "{stats:?}");
    assert_eq!(stats.delivered, 20, "{stats:?}");
    assert!(stats.retries >= 1, "{stats:?}");
    let request = &receiver.requests()[0];
    assert_eq!(request.path, "/_bulk");
    assert_eq!(request.headers["content-type"], "application/x-ndjson");
    assert_eq!(request.headers["authorization"], "ApiKey a2V5OnNlY3JldA==");
    assert!(
        request.body.ends_with(b"\n"),
        "bulk bodies end with a newline"
    );
}

/// How Elasticsearch's dynamic mapping types a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapped {
    Object,
    Long,
    Double,
    Boolean,
    Keyword,
}

/// Indexes `value` at `path` into `mapping` as Elasticsearch's dynamic mapping does: a dot in a
/// field name is a level of objects, a field mapped as an object takes only objects and one
/// mapped as a value only values (a string must parse as a number for a numeric field, as a
/// boolean for a boolean one), arrays hold values of their field's type. The refusal is the
/// `document_parsing_exception` reason.
fn index_field(
    mapping: &mut BTreeMap<String, Mapped>,
    path: &str,
    value: &Value,
) -> Result<(), String> {
    let scalar = match value {
        Value::Null => return Ok(()),
        Value::Array(items) => {
            return items
                .iter()
                .try_for_each(|item| index_field(mapping, path, item));
        }
        Value::Object(map) => {
            if !path.is_empty() {
                match mapping.get(path) {
                    None => {
                        mapping.insert(path.to_owned(), Mapped::Object);
                    }
                    Some(Mapped::Object) => {}
                    Some(other) => {
                        return Err(format!(
                            "Could not dynamically add mapping for field [{path}]: existing \
                             mapping for [{path}] must be of type object but found [{other:?}]"
                        ));
                    }
                }
            }
            for (key, value) in map {
                if key.split('.').any(|part| part.trim().is_empty()) {
                    return Err(format!("field name [{key}] has an empty part"));
                }
                // `a.b` is the object `a` holding `b`.
                let mut at = path.to_owned();
                let parts: Vec<&str> = key.split('.').collect();
                for (i, part) in parts.iter().enumerate() {
                    if !at.is_empty() {
                        at.push('.');
                    }
                    at.push_str(part);
                    if i + 1 < parts.len() {
                        index_field(mapping, &at, &Value::Object(serde_json::Map::new()))?;
                    }
                }
                index_field(mapping, &at, value)?;
            }
            return Ok(());
        }
        Value::Bool(_) => Mapped::Boolean,
        Value::Number(n) if n.is_f64() => Mapped::Double,
        Value::Number(_) => Mapped::Long,
        Value::String(_) => Mapped::Keyword,
    };
    let Some(&existing) = mapping.get(path) else {
        mapping.insert(path.to_owned(), scalar);
        return Ok(());
    };
    let fits = match (existing, value) {
        (Mapped::Object, _) => false,
        (Mapped::Keyword, _) | (Mapped::Long | Mapped::Double, Value::Number(_)) => true,
        (Mapped::Long, Value::String(s)) => s.parse::<i64>().is_ok(),
        (Mapped::Double, Value::String(s)) => s.parse::<f64>().is_ok(),
        (Mapped::Boolean, Value::Bool(_)) => true,
        (Mapped::Boolean, Value::String(s)) => matches!(s.as_str(), "true" | "false" | ""),
        _ => false,
    };
    if fits {
        Ok(())
    } else if existing == Mapped::Object {
        Err(format!(
            "object mapping for [{path}] tried to parse field [{path}] as object, but found a \
             concrete value"
        ))
    } else {
        Err(format!(
            "failed to parse field [{path}] of type [{existing:?}]: {value}"
        ))
    }
}

/// A loopback Elasticsearch `_bulk` endpoint with one index under dynamic mapping: each
/// `create` is indexed ([`index_field`]) or refused with 400 `document_parsing_exception`, and
/// the mapping grows with each document taken.
fn elasticsearch_dynamic_mapping(mapping: Arc<Mutex<BTreeMap<String, Mapped>>>) -> Responder {
    Arc::new(move |request| {
        let text = String::from_utf8_lossy(&request.body).into_owned();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut items = Vec::new();
        let mut errors = false;
        let mut mapping = mapping.lock().unwrap();
        for pair in lines.chunks(2) {
            let id = pair[0]["create"]["_id"].clone();
            let mut grown = mapping.clone();
            let item = match index_field(&mut grown, "", &pair[1]) {
                Ok(()) => {
                    *mapping = grown;
                    json!({"create": {"_id": id, "status": 201}})
                }
                Err(reason) => {
                    errors = true;
                    json!({"create": {"_id": id, "status": 400, "error": {
                        "type": "document_parsing_exception", "reason": reason}}})
                }
            };
            items.push(item);
        }
        (
            200,
            json!({"took": 1, "errors": errors, "items": items}).to_string(),
        )
    })
}

/// An exec in a pod labelled with `labels`.
fn in_pod(id: u64, labels: &[(&str, &str)]) -> Record {
    let Record::Event(mut event) = event(id) else {
        unreachable!("an event")
    };
    event.pod = Some(Pod {
        uid: "4f1c8a2e-7b3d-4e9a-9c51-2d6e8f0a1b3c".into(),
        namespace: Some("shop".into()),
        name: Some("web-7d9f".into()),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        owner: None,
        node: Some("node-1".into()),
        qos: None,
        resolved: true,
    });
    Record::Event(event)
}

#[tokio::test]
async fn ecs_documents_survive_elasticsearch_dynamic_mapping() {
    let state = tempfile::tempdir().unwrap();
    let mapping = Arc::new(Mutex::new(BTreeMap::new()));
    let receiver = HttpReceiver::start(elasticsearch_dynamic_mapping(Arc::clone(&mapping))).await;
    let to = Destination::Elasticsearch(ElasticSink {
        url: receiver.url(),
        index: "detector".into(),
        api_key: None,
        username: None,
        password: None,
        gzip: false,
        tls: TlsConfig::default(),
    });
    let exporter =
        Exporter::start(&config(vec![sink("es", Schema::Ecs, to)]), state.path()).unwrap();
    let recommended = [
        ("app", "web"),
        ("app.kubernetes.io/name", "web"),
        ("app.kubernetes.io/part-of", "shop"),
    ];
    let records = vec![
        in_pod(1, &[("app", "web")]),
        in_pod(2, &recommended),
        in_pod(3, &[("app.kubernetes.io/name", "api"), ("tier", "backend")]),
        Record::Action(Finding {
            time: time::OffsetDateTime::UNIX_EPOCH,
            severity: Severity::Medium,
            name: "remove_from_service".into(),
            summary: "removed labels".into(),
            data: json!({"outcome": {"status": "done", "undo": {"labels": {
                "app": "web", "app.kubernetes.io/name": "web"}}}}),
        }),
        verdict(4),
        event(5),
    ];
    let total = records.len() as u64;
    for record in records {
        exporter.send(record);
    }
    wait_for(Duration::from_secs(10), "every document answered", || {
        let stats = &exporter.stats()[0];
        stats.delivered + stats.rejected >= total
    })
    .await;
    let stats = exporter.stats().remove(0);
    exporter.shutdown().await;
    assert_eq!((stats.delivered, stats.rejected), (total, 0), "{stats:?}");
    let mapping = mapping.lock().unwrap();
    assert_eq!(mapping["labels.app"], Mapped::Keyword);
    assert_eq!(mapping["labels.app_kubernetes_io/name"], Mapped::Keyword);
    assert_eq!(mapping["labels.tier"], Mapped::Keyword);
    // The receiver refuses what Elasticsearch refuses: the labels as they were.
    let mut fresh = BTreeMap::new();
    let labels = json!({"labels": {"app": "web", "app.kubernetes.io/name": "web"}});
    let refused = index_field(&mut fresh, "", &labels).unwrap_err();
    assert!(refused.contains("[labels.app]"), "{refused}");
}

#[tokio::test]
async fn otlp_logs_follow_the_json_encoding() {
    let state = tempfile::tempdir().unwrap();
    let receiver = HttpReceiver::start(ok()).await;
    let to = Destination::Otlp(OtlpSink {
        url: receiver.url(),
        headers: BTreeMap::new(),
        secret_headers: BTreeMap::new(),
        gzip: false,
        tls: TlsConfig::default(),
    });
    let exporter =
        Exporter::start(&config(vec![sink("otlp", Schema::Ocsf, to)]), state.path()).unwrap();
    exporter.send(event(7));
    exporter.send(verdict(8));
    wait_for(Duration::from_secs(10), "a request", || {
        !receiver.requests().is_empty()
    })
    .await;
    exporter.shutdown().await;
    let request = &receiver.requests()[0];
    assert_eq!(request.path, "/v1/logs");
    assert_eq!(request.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    let resource_logs = &body["resourceLogs"][0];
    let attributes = resource_logs["resource"]["attributes"].as_array().unwrap();
    assert!(
        attributes.contains(&json!({"key": "service.name", "value": {"stringValue": "detector"}}))
    );
    let records = resource_logs["scopeLogs"][0]["logRecords"]
        .as_array()
        .unwrap();
    assert_eq!(records.len(), 2);
    let first = &records[0];
    assert_eq!(first["timeUnixNano"], "1700000000000000007");
    assert!(
        first["observedTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .is_ok()
    );
    assert_eq!(first["severityNumber"], 9);
    assert_eq!(first["severityText"], "INFO");
    assert_eq!(records[1]["severityNumber"], 17);
    let fields = first["body"]["kvlistValue"]["values"].as_array().unwrap();
    assert!(fields.contains(&json!({"key": "class_uid", "value": {"intValue": "1007"}})));
    assert_eq!(
        first["attributes"][1],
        json!({"key": "detector.kind", "value": {"stringValue": "exec"}})
    );

    // OpenTelemetry's own definitions read the body, and write back every field as we wrote it:
    // a field the protobufs lack, a wrong type or a wrong name would not survive.
    let reference: ExportLogsServiceRequest = serde_json::from_slice(&request.body)
        .unwrap_or_else(|err| panic!("not an OTLP/JSON ExportLogsServiceRequest: {err}"));
    let logs = &reference.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].time_unix_nano, 1_700_000_000_000_000_007);
    assert_eq!(logs[0].severity_number, 9);
    assert_eq!(logs[1].severity_number, 17);
    let rewritten = serde_json::to_value(&reference).unwrap();
    assert_within(&body, &rewritten, "");
}

/// Every field of `ours` is in `theirs` with the same value (theirs may add fields at their
/// default values, which OTLP/JSON lets a writer leave out).
fn assert_within(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Object(ours), Value::Object(theirs)) => {
            for (key, value) in ours {
                let Some(other) = theirs.get(key) else {
                    panic!("{at}.{key} is not in OpenTelemetry's message: {theirs:?}");
                };
                assert_within(value, other, &format!("{at}.{key}"));
            }
            for (key, value) in theirs {
                if !ours.contains_key(key) {
                    let default = matches!(value, Value::Null | Value::Bool(false))
                        || value.as_u64() == Some(0)
                        || value.as_str().is_some_and(|s| s.is_empty() || s == "0")
                        || value.as_array().is_some_and(Vec::is_empty);
                    assert!(default, "{at}.{key}: {value} left out but not a default");
                }
            }
        }
        (Value::Array(ours), Value::Array(theirs)) => {
            assert_eq!(ours.len(), theirs.len(), "{at}");
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                assert_within(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(ours, theirs, "{at}"),
    }
}

/// What Falcosidekick's `/` handler makes of a request body (`mainHandler` and
/// `newFalcoPayload` in its handlers.go, `FalcoPayload` and its `Check` in types.go): Go's
/// `json.NewDecoder(body).Decode(&payload)` reads the FIRST JSON value of the body and nothing
/// after it, into a struct whose fields have Go types (a value of another type is an error;
/// unknown keys are ignored); the payload must then have a known priority, a rule, a time and
/// output fields, else the answer is 400. `k8s.ns.name` and `k8s.pod.name` are asserted to be
/// strings (`j.(string)`, which panics on anything else).
fn falcosidekick_decode(body: &[u8]) -> Result<Value, String> {
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
        .ok_or("empty body")?
        .map_err(|e| e.to_string())?;
    let Value::Object(payload) = &first else {
        // `null` decodes to an empty payload, which `Check` refuses; the rest cannot decode.
        return Err(format!("cannot decode {first} into FalcoPayload"));
    };
    let string = |key: &str| match payload.get(key) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(format!("{key}: cannot unmarshal {other} into a Go string")),
    };
    for key in ["uuid", "output", "rule", "source", "hostname"] {
        string(key)?;
    }
    let priority = match payload.get("priority") {
        Some(Value::String(p)) => p.to_lowercase(),
        None | Some(Value::Null) => String::new(),
        Some(other) => return Err(format!("priority: {other} is not a string")),
    };
    let known = [
        "emergency",
        "alert",
        "critical",
        "error",
        "warning",
        "notice",
        "informational",
        "debug",
    ];
    match payload.get("time") {
        None | Some(Value::Null) => return Err("Check: zero time".into()),
        Some(Value::String(t)) => {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("time {t:?}: {e}"))?;
        }
        Some(other) => return Err(format!("time: {other} is not an RFC 3339 string")),
    }
    let fields = match payload.get("output_fields") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(fields)) => fields.clone(),
        Some(other) => return Err(format!("output_fields: {other} is not an object")),
    };
    match payload.get("tags") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tags)) if tags.iter().all(Value::is_string) => {}
        Some(other) => return Err(format!("tags: {other} is not a list of strings")),
    }
    if !known.contains(&priority.as_str()) || string("rule")?.is_empty() || fields.is_empty() {
        return Err("Check: no priority, rule or output_fields".into());
    }
    for key in ["k8s.ns.name", "k8s.pod.name"] {
        if let Some(value) = fields.get(key).filter(|v| !v.is_null()) {
            assert!(value.is_string(), "Falcosidekick panics on {key} = {value}");
        }
    }
    Ok(first)
}

/// A loopback Falcosidekick: answers 400 "Please send a valid request body" to what it cannot
/// decode and 200 to the rest, keeping the payloads it forwards.
async fn falcosidekick() -> (HttpReceiver, Arc<Mutex<Vec<Value>>>) {
    let forwarded = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&forwarded);
    let responder: Responder = Arc::new(move |request| {
        if request.method != "POST" {
            return (400, "Please send with post http method\n".into());
        }
        match falcosidekick_decode(&request.body) {
            Ok(payload) => {
                kept.lock().unwrap().push(payload);
                (200, String::new())
            }
            Err(_) => (400, "Please send a valid request body\n".into()),
        }
    });
    (HttpReceiver::start(responder).await, forwarded)
}

#[tokio::test]
async fn falcosidekick_gets_every_record_out_of_the_box() {
    const TOTAL: u64 = 60;
    let state = tempfile::tempdir().unwrap();
    let (receiver, forwarded) = falcosidekick().await;
    let (batched_receiver, batched_forwarded) = falcosidekick().await;
    // As a Falcosidekick user writes it: the falco schema, a webhook, nothing else.
    let sidekick = |name: &str, url: String, framing: Option<Framing>| {
        let mut sink = sink(name, Schema::Falco, webhook(url));
        if let Destination::Webhook(w) = &mut sink.to {
            w.framing = framing;
        }
        sink
    };
    let config = config(vec![
        sidekick("sidekick", receiver.url(), None),
        // What the default was: NDJSON, which `config check` now refuses for falco.
        sidekick("batched", batched_receiver.url(), Some(Framing::Ndjson)),
    ]);
    let problems = config.validate();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].at, "export.sinks[1].to.webhook.framing");
    let exporter = Exporter::start(&config, state.path()).unwrap();
    for i in 0..TOTAL {
        if i % 10 == 0 {
            exporter.send(verdict(i));
        } else {
            exporter.send(event(i));
        }
    }
    wait_for(Duration::from_secs(20), "every record delivered", || {
        exporter
            .stats()
            .iter()
            .all(|s| s.delivered + s.rejected >= TOTAL)
    })
    .await;
    let stats = exporter.stats();
    exporter.shutdown().await;
    let uids = |forwarded: &Mutex<Vec<Value>>| -> BTreeSet<String> {
        forwarded
            .lock()
            .unwrap()
            .iter()
            .map(|p| {
                p["output_fields"]["detector.uid"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        (stats[0].delivered, stats[0].rejected),
        (TOTAL, 0),
        "{stats:?}"
    );
    assert_eq!(
        uids(&forwarded).len() as u64,
        TOTAL,
        "every record reached Falcosidekick"
    );
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r.status == 200));
    assert!(
        requests
            .iter()
            .all(|r| r.headers["content-type"] == "application/json")
    );
    // The receiver is faithful: the NDJSON sink counted everything delivered while
    // Falcosidekick forwarded one record per request.
    let batched = uids(&batched_forwarded).len();
    assert_eq!(stats[1].delivered, TOTAL, "{stats:?}");
    assert_eq!(batched, batched_receiver.requests().len());
    assert!((batched as u64) < TOTAL, "{batched} of {TOTAL}");
}

/// A CEF line's seven header fields and its extension's pairs, in order.
type Cef = (Vec<String>, Vec<(String, String)>);

/// A CEF line read as the CEF standard ("Implementing ArcSight CEF", rev. 25) defines it: after
/// `CEF:`, seven header fields separated by `|`, in which only `\|` and `\\` are escapes; then
/// the extension, `key=value` pairs separated by spaces, a key being letters and digits and a
/// value running to the space before the next key, in which `\=`, `\\`, `\n` and `\r` are
/// the only escapes.
fn parse_cef(line: &str) -> Result<Cef, String> {
    let rest = line.strip_prefix("CEF:").ok_or("no CEF: prefix")?;
    let mut header = Vec::new();
    let mut field = String::new();
    let mut chars = rest.char_indices();
    let mut extension_at = None;
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('|' | '\\'))) => field.push(e),
                other => return Err(format!("bad header escape {other:?} in {line:?}")),
            },
            '|' => {
                header.push(std::mem::take(&mut field));
                if header.len() == 7 {
                    extension_at = Some(at + 1);
                    break;
                }
            }
            '\r' | '\n' => return Err(format!("line break in the header of {line:?}")),
            c => field.push(c),
        }
    }
    let extension: Vec<char> = rest[extension_at.ok_or("fewer than 7 header fields")?..]
        .chars()
        .collect();
    // Unescaped `=` signs, each ending a key.
    let mut equals = Vec::new();
    let mut i = 0;
    while i < extension.len() {
        match extension[i] {
            '\\' => i += 1,
            '=' => equals.push(i),
            '\r' | '\n' => return Err(format!("raw line break in {line:?}")),
            _ => {}
        }
        i += 1;
    }
    let key_start = |eq: usize| {
        extension[..eq]
            .iter()
            .rposition(|c| *c == ' ')
            .map_or(0, |space| space + 1)
    };
    let mut pairs = Vec::new();
    for (n, &eq) in equals.iter().enumerate() {
        let key: String = extension[key_start(eq)..eq].iter().collect();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("bad key {key:?} in {line:?}"));
        }
        if n == 0 && key_start(eq) != 0 {
            return Err(format!("text before the first key in {line:?}"));
        }
        let end = equals
            .get(n + 1)
            .map_or(extension.len(), |&next| key_start(next).saturating_sub(1));
        let mut value = String::new();
        let mut raw = extension[eq + 1..end].iter();
        while let Some(&c) = raw.next() {
            if c == '\\' {
                match raw.next() {
                    Some('\\') => value.push('\\'),
                    Some('=') => value.push('='),
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    other => return Err(format!("bad extension escape {other:?} in {line:?}")),
                }
            } else {
                value.push(c);
            }
        }
        pairs.push((key, value));
    }
    Ok((header, pairs))
}

/// The extension keys of the CEF standard's dictionary that the syslog sink may write.
const CEF_KEYS: &[&str] = &[
    "act",
    "c6a1",
    "c6a1Label",
    "c6a3",
    "c6a3Label",
    "c6a4",
    "c6a4Label",
    "cn1",
    "cn1Label",
    "cnt",
    "cs1",
    "cs1Label",
    "cs2",
    "cs2Label",
    "cs3",
    "cs3Label",
    "cs4",
    "cs4Label",
    "cs6",
    "cs6Label",
    "dpt",
    "dst",
    "dvchost",
    "externalId",
    "filePath",
    "fname",
    "msg",
    "out",
    "outcome",
    "proto",
    "reason",
    "rt",
    "spid",
    "sproc",
    "suid",
];

/// A connect event from the pod's shell to `daddr`.
fn connect(daddr: &str, id: u64) -> Record {
    let Record::Event(mut event) = event(id) else {
        unreachable!("an event")
    };
    let daddr: std::net::IpAddr = daddr.parse().unwrap();
    event.body = Body::Connect(Connect {
        family: if daddr.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
        protocol: "tcp".into(),
        daddr,
        dport: 443,
        blocked: false,
    });
    Record::Event(event)
}

#[tokio::test]
async fn cef_over_syslog_reads_back_with_the_standards_rules() {
    let state = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = Destination::Syslog(SyslogSink {
        address: listener.local_addr().unwrap().to_string(),
        transport: SyslogTransport::Tcp,
        format: SyslogFormat::Cef,
        facility: 16,
        tls: TlsConfig::default(),
    });
    let exporter =
        Exporter::start(&config(vec![sink("cef", Schema::Ocsf, to)]), state.path()).unwrap();
    let nasty_name = "rule|with\\pipe\nand break";
    let nasty_summary = "a=b c\\d\nsecond line|pipe key=value";
    let records = vec![
        connect("10.0.0.9", 1),
        connect("2001:db8::9", 2),
        connect("::ffff:10.0.0.1", 3),
        Record::Verdict(Finding {
            time: time::OffsetDateTime::UNIX_EPOCH,
            severity: Severity::Critical,
            name: nasty_name.into(),
            summary: nasty_summary.into(),
            data: json!({"why": "x=1 \\ y", "list": [1, 2]}),
        }),
        event(5),
    ];
    let total = records.len();
    for record in records {
        exporter.send(record);
    }
    // Octet-counted frames (RFC 6587) on one connection.
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buffer = Vec::new();
    let mut messages = Vec::new();
    while messages.len() < total {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the sink closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(space) = buffer.iter().position(|b| *b == b' ') {
            let length: usize = std::str::from_utf8(&buffer[..space])
                .unwrap()
                .parse()
                .unwrap();
            if buffer.len() < space + 1 + length {
                break;
            }
            let frame: Vec<u8> = buffer.drain(..space + 1 + length).skip(space + 1).collect();
            messages.push(String::from_utf8(frame).unwrap());
        }
    }
    exporter.shutdown().await;
    let lines: Vec<(Vec<String>, BTreeMap<String, String>)> = messages
        .iter()
        .map(|m| {
            let cef = &m[m.find("CEF:").expect("a CEF message")..];
            let (header, pairs) = parse_cef(cef).unwrap();
            let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            let unique: BTreeSet<&str> = keys.iter().copied().collect();
            assert_eq!(unique.len(), keys.len(), "a key twice in {cef}");
            (header, pairs.into_iter().collect())
        })
        .collect();
    for (header, ext) in &lines {
        assert_eq!(header[..3], ["0", "detector", "detector"]);
        let severity: u8 = header[6].parse().unwrap();
        assert!(severity <= 10);
        for key in ext.keys() {
            assert!(CEF_KEYS.contains(&key.as_str()), "{key} is not a CEF key");
        }
        // src and dst are IPv4 addresses, per the standard.
        for key in ["src", "dst"] {
            if let Some(ip) = ext.get(key) {
                assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{key}={ip}");
            }
        }
    }
    let by_uid = |n: usize| &lines[n].1;
    assert_eq!(by_uid(0)["dst"], "10.0.0.9");
    assert_eq!(by_uid(0)["dpt"], "443");
    assert!(!by_uid(0).contains_key("c6a3"));
    let v6 = by_uid(1);
    assert!(!v6.contains_key("dst") && !v6.contains_key("src"), "{v6:?}");
    assert_eq!(v6["c6a3"], "2001:db8::9");
    assert_eq!(v6["c6a3Label"], "Destination IPv6 Address");
    assert_eq!(v6["dpt"], "443");
    assert_eq!(
        by_uid(2)["dst"],
        "10.0.0.1",
        "an IPv4-mapped address is IPv4"
    );
    // Escapes: the header keeps pipes and backslashes (a line break cannot be in it), the
    // extension keeps everything.
    let (header, ext) = &lines[3];
    assert_eq!(header[5], "rule|with\\pipe and break");
    assert_eq!(header[6], "10");
    assert_eq!(ext["msg"], nasty_summary);
    let data: Value = serde_json::from_str(&ext["cs6"]).unwrap();
    assert_eq!(data["why"], "x=1 \\ y");
    assert_eq!(lines[4].1["msg"], "sh -c echo 5");
}

/// The test's record ids (`ktime_ns`) in the native documents received, with duplicates.
fn ids(receiver: &HttpReceiver) -> (BTreeSet<u64>, usize) {
    let lines = receiver.accepted_lines();
    let all = lines.len();
    let ids: BTreeSet<u64> = lines
        .iter()
        .map(|l| l["data"]["ktime_ns"].as_u64().unwrap())
        .collect();
    let duplicates = all - ids.len();
    (ids, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_ten_seconds_mid_stream_loses_nothing() {
    const TOTAL: u64 = 100_000;
    let state = tempfile::tempdir().unwrap();
    let mut receiver = HttpReceiver::start(ok()).await;
    let mut sink = sink("hook", Schema::Native, webhook(receiver.url()));
    sink.batch.max_records = 2000;
    let exporter = Exporter::start(&config(vec![sink]), state.path()).unwrap();
    for i in 0..TOTAL / 2 {
        exporter.send_wait(event(i)).await;
    }
    // Killed mid-stream: once part of the first half arrived, with requests in flight.
    wait_for(Duration::from_secs(60), "the first records", || {
        receiver.accepted_lines().len() > 5000
    })
    .await;
    receiver.stop();
    let down = tokio::time::Instant::now();
    for i in TOTAL / 2..TOTAL {
        exporter.send_wait(event(i)).await;
    }
    tokio::time::sleep_until(down + Duration::from_secs(10)).await;
    receiver.restart().await;
    wait_for(Duration::from_secs(120), "every record", || {
        ids(&receiver).0.len() as u64 == TOTAL
    })
    .await;
    let stats = exporter.stats().remove(0);
    exporter.shutdown().await;
    let (received, duplicates) = ids(&receiver);
    assert_eq!(received, (0..TOTAL).collect::<BTreeSet<_>>());
    assert_eq!(
        stats.dropped_channel + stats.dropped_queue + stats.rejected,
        0,
        "{stats:?}"
    );
    assert!(stats.retries > 0, "the receiver was down: {stats:?}");
    println!(
        "{TOTAL} records, receiver down 10 s: 0 lost, {duplicates} duplicates, {} retries",
        stats.retries
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_events_never_verdicts_and_counts_every_drop() {
    let state = tempfile::tempdir().unwrap();
    let mut receiver = HttpReceiver::reserve(ok()).await;
    let mut sink = sink("hook", Schema::Native, webhook(receiver.url()));
    sink.queue.max_bytes = 200_000;
    sink.queue.segment_bytes = 20_000;
    sink.queue.when_full = WhenFull::DropOldest;
    let exporter = Exporter::start(&config(vec![sink]), state.path()).unwrap();
    for i in 0..3000 {
        exporter.send(event(i));
        if i % 60 == 0 {
            exporter.send(verdict(i));
        }
    }
    wait_for(Duration::from_secs(10), "everything queued", || {
        exporter.stats()[0].queued + exporter.stats()[0].dropped_channel >= 3050
    })
    .await;
    receiver.restart().await;
    let stats = loop {
        let stats = exporter.stats().remove(0);
        if stats.queued_bytes == 0 {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    exporter.shutdown().await;
    let lines = receiver.accepted_lines();
    let verdicts: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["record"] == "verdict")
        .map(|l| l["data"]["data"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(verdicts, (0..3000).step_by(60).collect::<BTreeSet<_>>());
    let events: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["record"] == "event")
        .map(|l| l["data"]["ktime_ns"].as_u64().unwrap())
        .collect();
    assert!(stats.dropped_queue > 0, "{stats:?}");
    assert_eq!(
        events.len() as u64 + stats.dropped_queue + stats.dropped_channel,
        3000,
        "every event is delivered or counted as dropped: {stats:?}"
    );
    assert!(events.contains(&2999), "the newest events are kept");
}

/// Set to a state directory, this binary's `child_exporter_fills_its_queue` plays the exporter
/// that gets killed.
const CHILD_ENV: &str = "DETECTOR_EXPORT_CHILD_STATE";

fn child_config(url: String) -> ExportConfig {
    let mut sink = sink("hook", Schema::Native, webhook(url));
    sink.queue.max_bytes = 1 << 20;
    sink.queue.segment_bytes = 64 << 10;
    sink.queue.when_full = WhenFull::Block;
    config(vec![sink])
}

#[tokio::test]
async fn child_exporter_fills_its_queue() {
    let (Some(state), Ok(url)) = (
        std::env::var_os(CHILD_ENV),
        std::env::var("DETECTOR_EXPORT_CHILD_URL"),
    ) else {
        println!(
            "runs only as the child of exporter_killed_with_a_full_queue_delivers_the_backlog"
        );
        return;
    };
    let exporter = Exporter::start(&child_config(url), Path::new(&state)).unwrap();
    for i in 0..10_000 {
        exporter.send(event(i));
    }
    // The queue is full when the writer stops taking records.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let queued = exporter.stats()[0].queued;
        if queued == last {
            println!("QUEUED {queued}");
            break;
        }
        last = queued;
    }
    // Until killed; the parent gives up long before.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_killed_with_a_full_queue_delivers_the_backlog() {
    let state = tempfile::tempdir().unwrap();
    let mut receiver = HttpReceiver::reserve(ok()).await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_exporter_fills_its_queue",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, state.path())
        .env("DETECTOR_EXPORT_CHILD_URL", receiver.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let queued = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints the test's name on the same line.
            .find_map(|l| {
                l.split_once("QUEUED ")
                    .map(|(_, n)| n.trim().parse::<u64>().unwrap())
            })
    })
    .await
    .unwrap()
    .expect("the child reports its queue");
    assert!(queued > 1000, "the queue holds a backlog: {queued}");
    // SIGKILL: no shutdown, no flush.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    receiver.restart().await;
    let exporter = Exporter::start(&child_config(receiver.url()), state.path()).unwrap();
    wait_for(Duration::from_secs(60), "the backlog", || {
        ids(&receiver).0.len() as u64 >= queued
    })
    .await;
    exporter.shutdown().await;
    let (received, duplicates) = ids(&receiver);
    assert_eq!(received, (0..queued).collect::<BTreeSet<_>>());
    println!("backlog of {queued} records delivered after SIGKILL, {duplicates} duplicates");
}

/// A tmpfs of `size` at a fresh directory, unmounted on drop: a disk that fills.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self { dir }
    }
}

impl SmallDisk {
    /// Takes the room left with a file of its own, written a page at a time until the disk
    /// refuses it.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let page = [0u8; 4096];
        loop {
            match file.write(&page) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(err) => panic!("filling the small disk: {err}"),
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_counted_events_and_no_verdict() {
    if !tests::privileged("a_full_disk_drops_counted_events_and_no_verdict") {
        return;
    }
    // The queue's own bound is far above the disk's: the disk fills first.
    let disk = SmallDisk::mount("2m");
    let mut receiver = HttpReceiver::reserve(ok()).await;
    let mut sink = sink("hook", Schema::Native, webhook(receiver.url()));
    sink.queue.max_bytes = 64 << 20;
    sink.queue.segment_bytes = 128 << 10;
    let exporter = Exporter::start(&config(vec![sink]), disk.dir.path()).unwrap();
    let mut next = 0;
    while exporter.stats()[0].dropped_disk == 0 {
        for _ in 0..500 {
            exporter.send(event(next));
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(next < 200_000, "the 2 MiB disk never filled");
    }
    // The disk refused a batch, and cut the part it took off again: that room (up to a
    // segment) is taken by a file of our own, so the disk is full to its last page. The
    // verdicts made now (each bigger than the tail of a page) wait.
    disk.fill();
    exporter.send(padded_verdict(1, 16 << 10));
    exporter.send(padded_verdict(2, 16 << 10));
    wait_for(
        Duration::from_secs(10),
        "the verdicts wait for the disk",
        || exporter.stats()[0].waiting == 2,
    )
    .await;
    // The receiver comes back: delivered events free the disk, and the verdicts follow.
    receiver.restart().await;
    wait_for(Duration::from_secs(60), "both verdicts delivered", || {
        receiver
            .accepted_lines()
            .iter()
            .filter(|l| l["record"] == "verdict")
            .count()
            >= 2
    })
    .await;
    let stats = exporter.stats().remove(0);
    exporter.shutdown().await;
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert_eq!(stats.waiting, 0, "{stats:?}");
    assert!(stats.dropped_disk > 0, "{stats:?}");
    let lines = receiver.accepted_lines();
    let verdicts: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["record"] == "verdict")
        .map(|l| l["data"]["data"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(verdicts, BTreeSet::from([1, 2]));
    // Every event is delivered or counted as dropped (a record may be sent twice, never lost
    // uncounted).
    let events: BTreeSet<u64> = lines
        .iter()
        .filter(|l| l["record"] == "event")
        .map(|l| l["data"]["ktime_ns"].as_u64().unwrap())
        .collect();
    assert!(
        events.len() as u64 + stats.dropped_disk + stats.dropped_channel >= next,
        "{} delivered + {stats:?} < {next} sent",
        events.len()
    );
}
