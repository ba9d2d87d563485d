//! Elastic Common Schema 8 mapping: `@timestamp`, `event.*` (kind, category, type, action,
//! severity, id), `process.*`, `file.*`, `destination.*`, `network.*`, `container.*`,
//! `orchestrator.*`, `host.*`, `rule.*`; the native record under `detector` for the rest.

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use super::{Context, basename, command_line, event_extras, put};
use crate::{
    event::{Body, Event, FileOperation},
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
    let (kind, category, kind_type, action) = match record {
        Record::Event(event) => event_fields(event, &mut doc),
        Record::Verdict(f) | Record::Action(f) | Record::Evidence(f) => {
            put(&mut doc, "message", f.summary.as_str());
            put(
                &mut doc,
                "rule",
                json!({"name": f.name, "description": f.summary}),
            );
            put(&mut doc, "detector", json!({ record_tag(record): f.data }));
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

fn event_fields(
    event: &Event,
    doc: &mut Map<String, Value>,
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
            put(
                doc,
                "labels",
                serde_json::to_value(&pod.labels).unwrap_or_default(),
            );
        }
    }
    let mut extras = event_extras(event);
    let result = match &event.body {
        Body::Exec(exec) => {
            put(&mut process, "executable", exec.filename.as_str());
            put(&mut process, "args", json!(exec.argv));
            put(&mut process, "args_count", exec.argv.len());
            put(&mut process, "command_line", command_line(&exec.argv));
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
            let (kind_type, action) = match file.op {
                FileOperation::Open if file.write => ("change", "open"),
                FileOperation::Open => ("access", "open"),
                FileOperation::Unlink => ("deletion", "unlink"),
                FileOperation::Chmod => ("change", "chmod"),
                FileOperation::Rename => ("change", "rename"),
            };
            ("event", "file", kind_type, action.to_owned())
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
    doc.insert("detector".into(), extras);
    result
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
}
