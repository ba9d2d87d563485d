//! Elastic Common Schema 8 mapping: `@timestamp`, `event.*` (kind, category, type, action,
//! outcome, severity, id), `process.*`, `file.*`, `destination.*`, `network.*`,
//! `container.*`, `orchestrator.*`, `host.*`, `rule.*`; the native record under `detector`
//! for the rest (the whole exec, file or syscall part of an event among it).
//!
//! Syscall events: ptrace, unshare, setns, setuid and a socket on standard I/O are `process`
//! changes (ptrace an access), sockets `network` info, mounts and pivot_root `host` changes,
//! module and BPF program loads `driver` starts, memfd_create and mknod `file` creations,
//! io_uring_setup `process` info; `event.action` is the operation, `event.outcome` whether
//! the call succeeded.
//!
//! No field name holds a dot: Elasticsearch reads a dot in a name as a level of objects, so a pod
//! labelled `app` and `app.kubernetes.io/name` would make `labels.app` both a keyword and an
//! object, and the document would be refused. ECS keeps `labels` a flat map of keywords; as
//! Beats do (`labels.dedot`), dots in label keys become `_` (`app_kubernetes_io/name`), and so
//! do dots in any key under `detector` (the pod's labels again, the labels a containment step
//! removed).

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use super::{Context, basename, command_line, event_extras, put};
use crate::{
    event::{Body, Event, FileOperation, SyscallOperation},
    export::record::{Envelope, Record},
};

/// The ECS version the mapping follows.
pub const VERSION: &str = "8.11.0";

/// The record as one ECS document.
pub fn map(envelope: &Envelope, ctx: &Context) -> Value {
    let record = &envelope.record;
    let mut doc = Map::new();
    let timestamp = record.time().format(&Rfc3339).unwrap_or_default();
    put(&mut doc, "@timestamp", timestamp);
    put(&mut doc, "ecs", json!({"version": VERSION}));
    put(
        &mut doc,
        "host",
        json!({"hostname": ctx.host, "name": ctx.host}),
    );
    put(
        &mut doc,
        "observer",
        json!({"product": "detector", "vendor": "detector", "type": "host", "version": ctx.version}),
    );
    let mut outcome = None;
    let (kind, category, kind_type, action) = match record {
        Record::Event(event) => event_fields(event, &mut doc, &mut outcome),
        Record::Verdict(f) | Record::Action(f) | Record::Evidence(f) => {
            put(&mut doc, "message", f.summary.as_str());
            put(
                &mut doc,
                "rule",
                json!({"name": f.name, "description": f.summary}),
            );
            put(
                &mut doc,
                "detector",
                dedot(json!({ record_tag(record): f.data })),
            );
            let kind = if matches!(record, Record::Verdict(_)) {
                "alert"
            } else {
                "event"
            };
            (kind, "intrusion_detection", "info", f.name.clone())
        }
    };
    let mut ev = Map::new();
    put(&mut ev, "id", envelope.uid.as_str());
    put(&mut ev, "kind", kind);
    put(&mut ev, "category", json!([category]));
    put(&mut ev, "type", json!([kind_type]));
    put(&mut ev, "action", action);
    put(&mut ev, "severity", record.severity().ocsf_id());
    put(&mut ev, "outcome", outcome);
    put(&mut ev, "module", "detector");
    put(
        &mut ev,
        "dataset",
        format!("detector.{}", record_tag(record)),
    );
    doc.insert("event".into(), Value::Object(ev));
    Value::Object(doc)
}

fn record_tag(record: &Record) -> &'static str {
    match record {
        Record::Event(_) => "event",
        Record::Verdict(_) => "verdict",
        Record::Action(_) => "action",
        Record::Evidence(_) => "evidence",
    }
}

/// Fills `doc` from an event; returns `event.kind`, `event.category`, `event.type` and
/// `event.action`, and sets `outcome` when the event says whether it succeeded.
fn event_fields(
    event: &Event,
    doc: &mut Map<String, Value>,
    outcome: &mut Option<&'static str>,
) -> (&'static str, &'static str, &'static str, String) {
    let mut process = Map::new();
    let p = &event.process;
    put(&mut process, "pid", p.pid);
    put(&mut process, "name", p.comm.clone());
    if let Some(tid) = p.tid {
        put(&mut process, "thread", json!({"id": tid}));
    }
    let mut parent = Map::new();
    put(&mut parent, "pid", p.ppid);
    if let Some(first) = event.ancestry.first() {
        put(&mut parent, "executable", first.exe.as_str());
    }
    if !parent.is_empty() {
        process.insert("parent".into(), Value::Object(parent));
    }
    if let Some(uid) = p.uid {
        put(doc, "user", json!({"id": uid.to_string()}));
    }
    if let Some(gid) = p.gid {
        put(doc, "group", json!({"id": gid.to_string()}));
    }
    if let Some(c) = &event.container {
        let mut container = Map::new();
        put(&mut container, "id", c.id.as_str());
        put(&mut container, "runtime", c.runtime.as_str());
        put(&mut container, "name", c.name.clone());
        if let Some(image) = &c.image {
            put(&mut container, "image", json!({"name": image}));
        }
        doc.insert("container".into(), Value::Object(container));
    }
    if let Some(pod) = &event.pod {
        let mut orchestrator = Map::new();
        put(&mut orchestrator, "type", "kubernetes");
        put(&mut orchestrator, "namespace", pod.namespace.clone());
        let mut resource = Map::new();
        put(&mut resource, "type", "pod");
        put(&mut resource, "id", pod.uid.as_str());
        put(&mut resource, "name", pod.name.clone());
        orchestrator.insert("resource".into(), Value::Object(resource));
        doc.insert("orchestrator".into(), Value::Object(orchestrator));
        if !pod.labels.is_empty() {
            let labels: Map<String, Value> = pod
                .labels
                .iter()
                .map(|(key, value)| (key.replace('.', "_"), value.clone().into()))
                .collect();
            doc.insert("labels".into(), Value::Object(labels));
        }
    }
    let mut extras = event_extras(event);
    let result = match &event.body {
        Body::Exec(exec) => {
            put(&mut process, "executable", exec.filename.as_str());
            put(&mut process, "args", json!(exec.argv));
            put(&mut process, "args_count", exec.argv.len());
            put(&mut process, "command_line", command_line(&exec.argv));
            if let Value::Object(x) = &mut extras {
                x.insert(
                    "exec".into(),
                    serde_json::to_value(exec).unwrap_or_default(),
                );
            }
            ("event", "process", "start", "exec".to_owned())
        }
        Body::Exit(exit) => {
            put(
                &mut process,
                "exit_code",
                exit.exit_status.unwrap_or(exit.exit_code),
            );
            if let Value::Object(x) = &mut extras {
                put(x, "signal", exit.signal);
            }
            ("event", "process", "end", "exit".to_owned())
        }
        Body::File(file) => {
            let mut f = Map::new();
            put(&mut f, "path", file.path.as_str());
            put(&mut f, "name", basename(&file.path));
            if let Some((dir, _)) = file.path.rsplit_once('/') {
                put(&mut f, "directory", if dir.is_empty() { "/" } else { dir });
            }
            if let Some(target) = &file.target {
                put(&mut f, "target_path", target.as_str());
            }
            doc.insert("file".into(), Value::Object(f));
            if let Value::Object(x) = &mut extras {
                x.insert(
                    "file".into(),
                    serde_json::to_value(file).unwrap_or_default(),
                );
            }
            let kind_type = match file.op {
                FileOperation::Open if file.write => "change",
                FileOperation::Open => "access",
                FileOperation::Unlink => "deletion",
                FileOperation::Chmod | FileOperation::Rename | FileOperation::Truncate => "change",
                FileOperation::Link | FileOperation::Symlink => "creation",
            };
            ("event", "file", kind_type, file.op.as_str().to_owned())
        }
        Body::Syscall(call) => {
            if let Some(path) = &call.path {
                let mut f = Map::new();
                put(&mut f, "path", path.as_str());
                put(&mut f, "name", basename(path));
                if matches!(
                    call.op,
                    SyscallOperation::Mount
                        | SyscallOperation::Umount
                        | SyscallOperation::PivotRoot
                ) {
                    put(&mut f, "type", "dir");
                }
                doc.insert("file".into(), Value::Object(f));
            } else if let Some(name) = &call.name {
                put(doc, "file", json!({"name": format!("memfd:{name}")}));
            }
            if call.op == SyscallOperation::Socket {
                let family = match call.family {
                    Some(2) => Some("ipv4"),
                    Some(10) => Some("ipv6"),
                    _ => None,
                };
                if let Some(family) = family {
                    put(doc, "network", json!({"type": family}));
                }
            }
            if let Value::Object(x) = &mut extras {
                x.insert(
                    "syscall".into(),
                    serde_json::to_value(call).unwrap_or_default(),
                );
            }
            let (category, kind_type) = match call.op {
                SyscallOperation::Ptrace => ("process", "access"),
                SyscallOperation::Unshare
                | SyscallOperation::Setns
                | SyscallOperation::Setuid
                | SyscallOperation::DupSocket => ("process", "change"),
                SyscallOperation::IoUringSetup => ("process", "info"),
                SyscallOperation::Socket => ("network", "info"),
                SyscallOperation::Mount
                | SyscallOperation::Umount
                | SyscallOperation::PivotRoot => ("host", "change"),
                SyscallOperation::ModuleLoad | SyscallOperation::BpfProgLoad => ("driver", "start"),
                SyscallOperation::MemfdCreate | SyscallOperation::Mknod => ("file", "creation"),
            };
            *outcome = Some(if call.result < 0 {
                "failure"
            } else {
                "success"
            });
            ("event", category, kind_type, call.op.as_str().to_owned())
        }
        Body::Connect(connect) => {
            put(
                doc,
                "destination",
                json!({"ip": connect.daddr.to_string(), "port": connect.dport}),
            );
            put(
                doc,
                "network",
                json!({"transport": connect.protocol, "type": connect.family, "direction": "egress"}),
            );
            ("event", "network", "connection", "connect".to_owned())
        }
        Body::Egress(egress) => {
            put(
                doc,
                "source",
                json!({"bytes": egress.bytes, "packets": egress.packets}),
            );
            put(
                doc,
                "network",
                json!({"direction": "egress", "bytes": egress.bytes, "packets": egress.packets}),
            );
            if let Value::Object(x) = &mut extras {
                put(x, "interval_ms", egress.interval_ms);
                put(x, "total_bytes", egress.total_bytes);
            }
            ("metric", "network", "info", "egress".to_owned())
        }
        Body::Loss(loss) => {
            put(
                doc,
                "message",
                format!(
                    "{} {} records lost ({})",
                    loss.count, loss.lost_kind, loss.source
                ),
            );
            if let Value::Object(x) = &mut extras {
                x.insert(
                    "loss".into(),
                    serde_json::to_value(loss).unwrap_or_default(),
                );
            }
            ("pipeline_error", "host", "info", "loss".to_owned())
        }
    };
    if !process.is_empty() {
        doc.insert("process".into(), Value::Object(process));
    }
    doc.insert("detector".into(), dedot(extras));
    result
}

/// `value` with `.` replaced by `_` in every object key, at every depth.
fn dedot(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key.replace('.', "_"), dedot(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(dedot).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::schema::fixtures;

    #[test]
    fn exec_and_verdict_fields() {
        let ctx = Context::new("node-1");
        let all = fixtures::all();
        let exec = map(&all[0], &ctx);
        assert_eq!(exec["@timestamp"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(exec["event"]["category"][0], "process");
        assert_eq!(exec["event"]["type"][0], "start");
        assert_eq!(exec["event"]["id"], "test-0");
        assert_eq!(exec["process"]["executable"], "/bin/sh");
        assert_eq!(exec["process"]["args_count"], 3);
        assert_eq!(exec["container"]["image"]["name"], "nginx:1.27");
        assert_eq!(exec["orchestrator"]["namespace"], "shop");
        assert_eq!(exec["labels"]["app"], "web");
        let connect = map(&all[4], &ctx);
        assert_eq!(connect["destination"]["port"], 443);
        let verdict = map(&all[7], &ctx);
        assert_eq!(verdict["event"]["kind"], "alert");
        assert_eq!(verdict["rule"]["name"], "shell_in_container");
        assert_eq!(verdict["event"]["severity"], 4);
        assert_eq!(verdict["detector"]["verdict"]["score"], 80);
    }

    #[test]
    fn syscalls_have_their_category_outcome_and_native_form() {
        let ctx = Context::new("node-1");
        let docs: Vec<Value> = fixtures::all().iter().map(|e| map(e, &ctx)).collect();
        let syscall = |op: &str| {
            docs.iter()
                .find(|d| d["detector"]["syscall"]["op"] == op)
                .unwrap_or_else(|| panic!("no {op} fixture"))
        };
        for (op, category, kind_type) in [
            ("ptrace", "process", "access"),
            ("setuid", "process", "change"),
            ("socket", "network", "info"),
            ("mount", "host", "change"),
            ("module_load", "driver", "start"),
            ("bpf_prog_load", "driver", "start"),
            ("memfd_create", "file", "creation"),
            ("io_uring_setup", "process", "info"),
        ] {
            let doc = syscall(op);
            assert_eq!(doc["event"]["category"][0], category, "{op}");
            assert_eq!(doc["event"]["type"][0], kind_type, "{op}");
            assert_eq!(doc["event"]["action"], op);
            assert_eq!(doc["process"]["pid"], 100);
        }
        assert_eq!(syscall("setuid")["event"]["outcome"], "success");
        assert_eq!(
            syscall("setuid")["detector"]["syscall"]["tags"][1],
            "from_non_root"
        );
        assert_eq!(syscall("pivot_root")["event"]["outcome"], "failure");
        assert_eq!(syscall("mount")["file"]["path"], "/host");
        assert_eq!(syscall("mount")["file"]["type"], "dir");
        assert_eq!(syscall("memfd_create")["file"]["name"], "memfd:x");
        assert_eq!(syscall("socket")["detector"]["syscall"]["family"], 17);
        // Events without an outcome have none.
        assert!(docs[0]["event"].get("outcome").is_none());
        // The exec's and the file's own flags are kept.
        let fileless = docs
            .iter()
            .find(|d| d["detector"]["exec"]["fileless"] == true)
            .expect("a fileless exec");
        assert_eq!(fileless["detector"]["exec"]["stdin_socket"], true);
        let link = docs
            .iter()
            .find(|d| d["event"]["action"] == "link")
            .expect("a link");
        assert_eq!(link["event"]["type"][0], "creation");
        assert_eq!(link["file"]["target_path"], "/tmp/s");
        assert_eq!(link["detector"]["file"]["unresolved"], true);
    }

    /// The ECS 8.11 fields the mapping writes, with their ECS types, as ECS defines them
    /// (`generated/csv/fields.csv` of the 8.11.0 release).
    const ECS_FIELDS: &[(&str, &str)] = &[
        ("@timestamp", "date"),
        ("container.id", "keyword"),
        ("container.image.name", "keyword"),
        ("container.name", "keyword"),
        ("container.runtime", "keyword"),
        ("destination.ip", "ip"),
        ("destination.port", "long"),
        ("ecs.version", "keyword"),
        ("event.action", "keyword"),
        ("event.category", "keyword"),
        ("event.dataset", "keyword"),
        ("event.id", "keyword"),
        ("event.kind", "keyword"),
        ("event.module", "keyword"),
        ("event.outcome", "keyword"),
        ("event.severity", "long"),
        ("event.type", "keyword"),
        ("file.directory", "keyword"),
        ("file.name", "keyword"),
        ("file.path", "keyword"),
        ("file.target_path", "keyword"),
        ("file.type", "keyword"),
        ("group.id", "keyword"),
        ("host.hostname", "keyword"),
        ("host.name", "keyword"),
        ("labels", "object"),
        ("message", "match_only_text"),
        ("network.bytes", "long"),
        ("network.direction", "keyword"),
        ("network.packets", "long"),
        ("network.transport", "keyword"),
        ("network.type", "keyword"),
        ("observer.product", "keyword"),
        ("observer.type", "keyword"),
        ("observer.vendor", "keyword"),
        ("observer.version", "keyword"),
        ("orchestrator.namespace", "keyword"),
        ("orchestrator.resource.id", "keyword"),
        ("orchestrator.resource.name", "keyword"),
        ("orchestrator.resource.type", "keyword"),
        ("orchestrator.type", "keyword"),
        ("process.args", "keyword"),
        ("process.args_count", "long"),
        ("process.command_line", "wildcard"),
        ("process.executable", "keyword"),
        ("process.exit_code", "long"),
        ("process.name", "keyword"),
        ("process.parent.executable", "keyword"),
        ("process.parent.pid", "long"),
        ("process.pid", "long"),
        ("process.thread.id", "long"),
        ("rule.description", "keyword"),
        ("rule.name", "keyword"),
        ("source.bytes", "long"),
        ("source.packets", "long"),
        ("user.id", "keyword"),
    ];

    /// ECS 8.11's allowed `event.kind` values.
    const KINDS: &[&str] = &[
        "alert",
        "asset",
        "enrichment",
        "event",
        "metric",
        "state",
        "pipeline_error",
        "signal",
    ];

    /// ECS 8.11's `event.category` values used here, with the `event.type` values ECS expects
    /// with each.
    const CATEGORIES: &[(&str, &[&str])] = &[
        ("driver", &["change", "end", "info", "start"]),
        (
            "file",
            &["access", "change", "creation", "deletion", "info"],
        ),
        ("host", &["access", "change", "end", "info", "start"]),
        ("intrusion_detection", &["allowed", "denied", "info"]),
        (
            "network",
            &[
                "access",
                "allowed",
                "connection",
                "denied",
                "end",
                "info",
                "protocol",
                "start",
            ],
        ),
        ("process", &["access", "change", "end", "info", "start"]),
    ];

    /// Every leaf of `value` by its dotted path; a list is one leaf, as ECS fields are.
    fn leaves<'a>(path: String, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    assert!(
                        !key.contains('.'),
                        "a dot in the key {key:?} under {path:?}"
                    );
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(path, value, out);
                }
            }
            Value::Array(items) => {
                for item in items.iter().filter(|i| i.is_object()) {
                    leaves(path.clone(), item, &mut Vec::new());
                }
                out.push((path, value));
            }
            other => out.push((path, other)),
        }
    }

    fn has_type(value: &Value, ecs_type: &str) -> bool {
        let one = |v: &Value| match ecs_type {
            "keyword" | "wildcard" | "match_only_text" => v.is_string(),
            "long" => v.is_i64() || v.is_u64(),
            "ip" => v
                .as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
            "date" => v
                .as_str()
                .is_some_and(|s| time::OffsetDateTime::parse(s, &Rfc3339).is_ok()),
            _ => false,
        };
        match value {
            Value::Array(items) => items.iter().all(one),
            other => one(other),
        }
    }

    #[test]
    fn documents_hold_ecs_fields_of_their_types_and_no_dotted_key() {
        let ctx = Context::new("node-1");
        let envelopes: Vec<Envelope> = fixtures::all()
            .into_iter()
            .chain(fixtures::rich())
            .collect();
        let fields: std::collections::BTreeMap<&str, &str> = ECS_FIELDS.iter().copied().collect();
        for envelope in &envelopes {
            let doc = map(envelope, &ctx);
            let mut all = Vec::new();
            leaves(String::new(), &doc, &mut all);
            for (path, value) in &all {
                if path.starts_with("detector.") {
                    continue;
                }
                if let Some(label) = path.strip_prefix("labels.") {
                    assert!(!label.contains('.'));
                    assert!(
                        value.is_string(),
                        "labels.{label} = {value}: labels are keywords"
                    );
                    continue;
                }
                let ecs_type = fields
                    .get(path.as_str())
                    .unwrap_or_else(|| panic!("{path} is not an ECS field (in {doc})"));
                assert!(
                    has_type(value, ecs_type),
                    "{path} = {value} is not a {ecs_type}"
                );
            }
            let event = &doc["event"];
            assert_eq!(doc["ecs"]["version"], VERSION);
            assert!(KINDS.contains(&event["kind"].as_str().unwrap()), "{doc}");
            let types: Vec<&str> = event["type"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            for category in event["category"].as_array().unwrap() {
                let category = category.as_str().unwrap();
                let (_, expected) = CATEGORIES
                    .iter()
                    .find(|(c, _)| *c == category)
                    .unwrap_or_else(|| panic!("{category} is not an ECS category"));
                for kind_type in &types {
                    assert!(expected.contains(kind_type), "{category} with {kind_type}");
                }
            }
            if let Some(outcome) = event.get("outcome") {
                assert!(["failure", "success", "unknown"].contains(&outcome.as_str().unwrap()));
            }
        }
        // The pod labelled with dots: flat keys, the dots as `_`, beside `app`.
        let labelled = map(&fixtures::rich()[0], &ctx);
        let labels = labelled["labels"].as_object().unwrap();
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "app",
                "app_kubernetes_io/name",
                "app_kubernetes_io/part-of",
                "pod-template-hash"
            ]
        );
        assert!(labels.values().all(Value::is_string));
        let step = map(&fixtures::rich()[3], &ctx);
        assert_eq!(
            step["detector"]["action"]["outcome"]["undo"]["labels"]["app_kubernetes_io/name"],
            "web",
            "{step}"
        );
    }
}
