//! OCSF 1.3 mapping.
//!
//! | record | class | activity |
//! | --- | --- | --- |
//! | exec, exit | Process Activity (1007) | Launch (1), Terminate (2) |
//! | file | File System Activity (1001) | Open (14), Delete (4), Set Security (7), Rename (5) |
//! | connect, egress | Network Activity (4001) | Open (1), Traffic (6) |
//! | loss | Base Event (0) | Other (99) |
//! | verdict | Detection Finding (2004) | Create (1) |
//! | evidence | Detection Finding (2004) | Update (2), the manifest in `evidences` |
//! | action | Remediation Activity (7001) | Isolate (1), Evict (2), Other (99) |
//!
//! What has no OCSF attribute (pod metadata, cgroup id, kernel time, file flags) goes to
//! `unmapped`, so a record is never poorer in OCSF than in the native form.

use serde_json::{Map, Value, json};

use super::{Context, basename, command_line, epoch_ms, event_extras, put};
use crate::{
    event::{Body, Event, FileOperation},
    export::record::{Envelope, Finding, Record},
};

/// The OCSF schema version the mapping follows.
pub const VERSION: &str = "1.3.0";

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const PROCESS_ACTIVITY: Class = Class {
    uid: 1007,
    name: "Process Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const FILE_ACTIVITY: Class = Class {
    uid: 1001,
    name: "File System Activity",
    category_uid: 1,
    category_name: "System Activity",
};
const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};
const REMEDIATION_ACTIVITY: Class = Class {
    uid: 7001,
    name: "Remediation Activity",
    category_uid: 7,
    category_name: "Remediation",
};

/// The record as one OCSF event.
pub fn map(envelope: &Envelope, ctx: &Context) -> Value {
    let record = &envelope.record;
    let (class, activity_id, activity_name, mut fields) = match record {
        Record::Event(event) => event_fields(event, ctx),
        Record::Verdict(finding) => (
            &DETECTION_FINDING,
            1,
            "Create",
            finding_fields(finding, &envelope.uid, false),
        ),
        Record::Evidence(finding) => (
            &DETECTION_FINDING,
            2,
            "Update",
            finding_fields(finding, &envelope.uid, true),
        ),
        Record::Action(finding) => {
            let (id, name) = remediation_activity(&finding.name);
            (
                &REMEDIATION_ACTIVITY,
                id,
                name,
                action_fields(finding, &envelope.uid),
            )
        }
    };
    let severity = record.severity();
    let mut metadata = Map::new();
    metadata.insert("version".into(), VERSION.into());
    metadata.insert("uid".into(), envelope.uid.clone().into());
    metadata.insert(
        "product".into(),
        json!({"name": "detector", "vendor_name": "detector", "version": ctx.version}),
    );
    if fields.contains_key("container") {
        metadata.insert("profiles".into(), json!(["container"]));
    }
    put(&mut fields, "activity_id", activity_id);
    put(&mut fields, "activity_name", activity_name);
    put(&mut fields, "category_uid", class.category_uid);
    put(&mut fields, "category_name", class.category_name);
    put(&mut fields, "class_uid", class.uid);
    put(&mut fields, "class_name", class.name);
    put(
        &mut fields,
        "type_uid",
        u64::from(class.uid) * 100 + u64::from(activity_id),
    );
    put(
        &mut fields,
        "type_name",
        format!("{}: {activity_name}", class.name),
    );
    put(&mut fields, "severity_id", severity.ocsf_id());
    put(&mut fields, "severity", severity.caption());
    put(&mut fields, "time", epoch_ms(record.time()));
    put(&mut fields, "metadata", Value::Object(metadata));
    fields.entry("device").or_insert_with(|| device(&ctx.host));
    Value::Object(fields)
}

fn device(host: &str) -> Value {
    json!({"hostname": host, "name": host, "type_id": 1, "type": "Server"})
}

type Fields = Map<String, Value>;

fn event_fields(event: &Event, ctx: &Context) -> (&'static Class, u32, &'static str, Fields) {
    let mut fields = Map::new();
    let mut unmapped = event_extras(event);
    let process = process(event);
    if let Some(container) = container(event) {
        fields.insert("container".into(), container);
    }
    let (class, activity_id, activity_name) = match &event.body {
        Body::Exec(exec) => {
            let mut process = process.unwrap_or_default();
            let mut file = Map::new();
            put(&mut file, "path", exec.filename.as_str());
            put(&mut file, "name", basename(&exec.filename));
            put(&mut file, "type_id", 1);
            put(&mut file, "type", "Regular File");
            process.insert("file".into(), Value::Object(file));
            process.insert("cmd_line".into(), command_line(&exec.argv).into());
            if let Value::Object(u) = &mut unmapped {
                put(u, "argv_truncated", exec.argv_truncated);
                put(u, "filename_truncated", exec.filename_truncated);
            }
            fields.insert("actor".into(), json!({"process": parent(event)}));
            fields.insert("process".into(), Value::Object(process));
            (&PROCESS_ACTIVITY, 1, "Launch")
        }
        Body::Exit(exit) => {
            let process = process.unwrap_or_default();
            put(
                &mut fields,
                "exit_code",
                exit.exit_status.unwrap_or(exit.exit_code),
            );
            if let Value::Object(u) = &mut unmapped {
                put(u, "raw_exit_code", exit.exit_code);
                put(u, "signal", exit.signal);
            }
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.clone())}),
            );
            fields.insert("process".into(), Value::Object(process));
            (&PROCESS_ACTIVITY, 2, "Terminate")
        }
        Body::File(file) => {
            let (id, name) = match file.op {
                FileOperation::Open => (14, "Open"),
                FileOperation::Unlink => (4, "Delete"),
                FileOperation::Chmod => (7, "Set Security"),
                FileOperation::Rename => (5, "Rename"),
            };
            fields.insert("file".into(), file_object(&file.path));
            if let Some(target) = &file.target {
                fields.insert("file_result".into(), file_object(target));
            }
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.unwrap_or_default())}),
            );
            if let Value::Object(u) = &mut unmapped {
                put(u, "flags", file.flags);
                put(u, "write", file.write);
                put(u, "sensitive", file.sensitive);
                put(u, "read_sensitive", file.read_sensitive);
                put(u, "relative", file.relative);
                put(u, "dirfd", file.dirfd);
                put(u, "path_truncated", file.path_truncated);
                put(u, "suppressed", file.suppressed);
            }
            (&FILE_ACTIVITY, id, name)
        }
        Body::Connect(connect) => {
            let (number, version) = (
                match connect.protocol.as_str() {
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    other => other.parse::<u8>().ok(),
                },
                if connect.family == "ipv6" { 6 } else { 4 },
            );
            let mut info = Map::new();
            put(&mut info, "direction_id", 2);
            put(&mut info, "direction", "Outbound");
            put(&mut info, "protocol_name", connect.protocol.as_str());
            put(&mut info, "protocol_num", number);
            put(&mut info, "protocol_ver_id", version);
            fields.insert("connection_info".into(), Value::Object(info));
            fields.insert(
                "dst_endpoint".into(),
                json!({"ip": connect.daddr.to_string(), "port": connect.dport}),
            );
            fields.insert("src_endpoint".into(), json!({"hostname": ctx.host}));
            fields.insert(
                "actor".into(),
                json!({"process": Value::Object(process.unwrap_or_default())}),
            );
            (&NETWORK_ACTIVITY, 1, "Open")
        }
        Body::Egress(egress) => {
            fields.insert("src_endpoint".into(), json!({"hostname": ctx.host}));
            fields.insert(
                "traffic".into(),
                json!({"bytes_out": egress.bytes, "packets_out": egress.packets}),
            );
            put(&mut fields, "duration", egress.interval_ms);
            if let Value::Object(u) = &mut unmapped {
                put(u, "total_bytes", egress.total_bytes);
            }
            (&NETWORK_ACTIVITY, 6, "Traffic")
        }
        Body::Loss(loss) => {
            put(
                &mut fields,
                "message",
                format!(
                    "{} {} records lost ({}), {} since start",
                    loss.count, loss.lost_kind, loss.source, loss.total
                ),
            );
            put(&mut fields, "count", loss.count);
            if let Value::Object(u) = &mut unmapped {
                put(u, "source", loss.source.as_str());
                put(u, "lost_kind", loss.lost_kind.as_str());
                put(u, "total", loss.total);
                put(u, "reason", loss.reason.clone());
            }
            (&BASE_EVENT, 99, "Other")
        }
    };
    fields.insert("unmapped".into(), unmapped);
    (class, activity_id, activity_name, fields)
}

fn process(event: &Event) -> Option<Map<String, Value>> {
    let p = &event.process;
    p.pid?;
    let mut process = Map::new();
    put(&mut process, "pid", p.pid);
    put(&mut process, "tid", p.tid);
    put(&mut process, "name", p.comm.clone());
    if let Some(uid) = p.uid {
        let mut user = Map::new();
        put(&mut user, "uid", uid.to_string());
        if let Some(gid) = p.gid {
            user.insert("groups".into(), json!([{"uid": gid.to_string()}]));
        }
        process.insert("user".into(), Value::Object(user));
    }
    let parent = parent(event);
    if !parent.as_object().is_some_and(Map::is_empty) {
        process.insert("parent_process".into(), parent);
    }
    if !event.ancestry.is_empty() {
        process.insert(
            "lineage".into(),
            event.ancestry.iter().map(|a| a.exe.clone()).collect(),
        );
    }
    Some(process)
}

fn parent(event: &Event) -> Value {
    let mut parent = Map::new();
    put(&mut parent, "pid", event.process.ppid);
    if let Some(first) = event.ancestry.first() {
        parent.insert("file".into(), file_object(&first.exe));
    }
    Value::Object(parent)
}

fn file_object(path: &str) -> Value {
    // The sensors see the path, not the inode: the type is unknown.
    json!({"path": path, "name": basename(path), "type_id": 0, "type": "Unknown"})
}

fn container(event: &Event) -> Option<Value> {
    let c = event.container.as_ref()?;
    let mut container = Map::new();
    put(&mut container, "uid", c.id.as_str());
    put(&mut container, "runtime", c.runtime.as_str());
    put(&mut container, "name", c.name.clone());
    if let Some(image) = &c.image {
        container.insert("image".into(), json!({"name": image, "uid": image}));
    }
    if let Some(pod) = &event.pod {
        put(&mut container, "orchestrator", "kubernetes");
        put(&mut container, "pod_uuid", pod.uid.as_str());
    }
    Some(Value::Object(container))
}

fn finding_fields(finding: &Finding, uid: &str, evidence: bool) -> Fields {
    let mut fields = Map::new();
    fields.insert(
        "finding_info".into(),
        json!({"uid": uid, "title": finding.name, "desc": finding.summary,
               "created_time": epoch_ms(finding.time)}),
    );
    put(&mut fields, "message", finding.summary.as_str());
    put(&mut fields, "is_alert", !evidence);
    put(&mut fields, "status_id", 1);
    put(&mut fields, "status", "New");
    if evidence {
        fields.insert("evidences".into(), json!([{"data": finding.data}]));
    } else {
        fields.insert("unmapped".into(), finding.data.clone());
    }
    fields
}

fn remediation_activity(name: &str) -> (u32, &'static str) {
    if name.contains("isolate") {
        (1, "Isolate")
    } else if name.contains("evict") || name.contains("kill") || name.contains("delete") {
        (2, "Evict")
    } else {
        (99, "Other")
    }
}

fn action_fields(finding: &Finding, uid: &str) -> Fields {
    let mut fields = Map::new();
    put(&mut fields, "command_uid", uid);
    put(&mut fields, "message", finding.summary.as_str());
    let (status_id, status) = match finding.data.get("status").and_then(Value::as_str) {
        Some("success" | "succeeded" | "done") => (1, "Success"),
        Some("failure" | "failed" | "error") => (2, "Failure"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    };
    put(&mut fields, "status_id", status_id);
    put(&mut fields, "status", status);
    fields.insert("countermeasures".into(), json!([{"name": finding.name}]));
    fields.insert("unmapped".into(), finding.data.clone());
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::schema::fixtures;

    #[test]
    fn classes_and_type_uids() {
        let ctx = Context::new("node-1");
        let got: Vec<(u64, u64)> = fixtures::all()
            .iter()
            .map(|e| {
                let v = map(e, &ctx);
                (
                    v["class_uid"].as_u64().unwrap(),
                    v["type_uid"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1007, 100_701),
                (1007, 100_702),
                (1001, 100_114),
                (1001, 100_105),
                (4001, 400_101),
                (4001, 400_106),
                (0, 99),
                (2004, 200_401),
                (7001, 700_101),
                (2004, 200_402),
            ]
        );
    }

    #[test]
    fn exec_carries_process_container_and_time() {
        let ctx = Context::new("node-1");
        let v = map(&fixtures::all()[0], &ctx);
        assert_eq!(v["time"], 1_700_000_000_123_i64);
        assert_eq!(v["process"]["pid"], 100);
        assert_eq!(v["process"]["cmd_line"], "sh -c id");
        assert_eq!(v["process"]["file"]["path"], "/bin/sh");
        assert_eq!(v["process"]["user"]["uid"], "0");
        assert_eq!(v["actor"]["process"]["pid"], 1);
        assert_eq!(v["container"]["uid"], "c0ffee");
        assert_eq!(v["metadata"]["profiles"][0], "container");
        assert_eq!(v["metadata"]["uid"], "test-0");
        assert_eq!(v["device"]["hostname"], "node-1");
        assert_eq!(v["unmapped"]["pod"]["namespace"], "shop");
        assert_eq!(v["severity_id"], 1);
    }

    #[test]
    fn connect_has_endpoints_and_rename_a_result() {
        let ctx = Context::new("n");
        let all = fixtures::all();
        let rename = map(&all[3], &ctx);
        assert_eq!(rename["file_result"]["path"], "/etc/b");
        assert_eq!(rename["unmapped"]["suppressed"], 2);
        let connect = map(&all[4], &ctx);
        assert_eq!(connect["dst_endpoint"]["ip"], "10.0.0.9");
        assert_eq!(connect["dst_endpoint"]["port"], 443);
        assert_eq!(connect["connection_info"]["protocol_num"], 6);
    }

    /// The vendored schema of a class, with the shared objects as `$defs`.
    fn class_schema(name: &str) -> Value {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/ocsf"));
        let read = |file: &str| -> Value {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let mut schema = read(&format!("{name}.json"));
        schema["$defs"] = read("objects.json")["$defs"].clone();
        schema
    }

    fn class_file(class_uid: u64) -> &'static str {
        match class_uid {
            0 => "base_event",
            1001 => "file_activity",
            1007 => "process_activity",
            2004 => "detection_finding",
            4001 => "network_activity",
            7001 => "remediation_activity",
            other => panic!("no schema for class {other}"),
        }
    }

    #[test]
    fn every_record_kind_validates_against_the_ocsf_schema() {
        let ctx = Context::new("node-1");
        for envelope in fixtures::all() {
            let doc = map(&envelope, &ctx);
            let class = class_file(doc["class_uid"].as_u64().unwrap());
            let validator = jsonschema::validator_for(&class_schema(class)).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{class}: {errors:#?}\n{doc:#}");
        }
    }

    #[test]
    fn the_schema_catches_a_broken_mapping() {
        let ctx = Context::new("node-1");
        let mut doc = map(&fixtures::all()[0], &ctx);
        let validator = jsonschema::validator_for(&class_schema("process_activity")).unwrap();
        assert!(validator.is_valid(&doc));
        doc["process"]["pid"] = "100".into();
        assert!(!validator.is_valid(&doc));
        doc["process"]["pid"] = 100.into();
        doc["procss"] = json!({});
        assert!(!validator.is_valid(&doc));
        doc.as_object_mut().unwrap().remove("procss");
        doc.as_object_mut().unwrap().remove("actor");
        assert!(!validator.is_valid(&doc));
    }
}
