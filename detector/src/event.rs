//! Typed, owned events: what the rest of the daemon works with, and their JSON form.
//!
//! Every event serializes as one flat JSON object with the same leading keys (`kind`, `ts`,
//! `ktime_ns`, `pid`, `tid`, `ppid`, `uid`, `gid`, `cgroup_id`, `comm`), `null` where a key does
//! not apply (egress and loss records are not about one process), followed by the kind's fields.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// One event. Its JSON form reads back into the same value (replays depend on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time derived from the kernel timestamp.
    #[serde(
        rename = "ts",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub time: OffsetDateTime,
    /// Kernel `CLOCK_BOOTTIME` nanoseconds; orders events exactly.
    pub ktime_ns: u64,
    /// The process, absent for node-level records.
    #[serde(flatten)]
    pub process: ProcessFields,
    /// cgroup2 id of the task (or of the counted cgroup).
    pub cgroup_id: Option<u64>,
    /// The container the task runs in, when its cgroup is a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The pod the container belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Executables of the parent chain, nearest parent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// Where the process stands in its container's life (who started it, whether it has a
    /// terminal); absent outside containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// A container, from its cgroup path and, when known, the runtime or the pod spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    pub runtime: String,
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A pod, from its cgroup path (uid, QoS class) and the API (the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Top of the owner chain (a ReplicaSet's Deployment, a StatefulSet, a Job...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// QoS class from the cgroup path: `guaranteed`, `burstable` or `besteffort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// False when the pod was not found in the API within the hold time.
    pub resolved: bool,
}

/// A controller owning a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// One process of the parent chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Executable path (or command name when the exec was not seen).
    pub exe: String,
}

/// Who started a process in a container, as the process table followed it from the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The role of the process.
    pub role: Role,
    /// The process has a controlling terminal (an interactive session, `docker exec -t`,
    /// `kubectl exec -it`), as of its last exec.
    pub tty: bool,
    /// The process is the one the runtime started (the entrypoint's or the exec session's own
    /// command, through its later execs), not one of its descendants.
    pub leader: bool,
}

/// Who started a process in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The container runtime setting the container up (runc or crun init stages before their
    /// exec, conmon, a process the node moved into the cgroup): not workload activity.
    Runtime,
    /// The container's main process (the entrypoint's first exec) and its descendants.
    Entrypoint,
    /// A session started in the running container through the runtime (`docker exec`,
    /// `kubectl exec`, a CRI exec) and its descendants.
    ExecSession,
    /// An exec session recognised as a probe: the same command started through the runtime
    /// again and again (health checks, exec probes).
    Probe,
}

impl Role {
    /// The name used in JSON and in rule conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Entrypoint => "entrypoint",
            Self::ExecSession => "exec_session",
            Self::Probe => "probe",
        }
    }

    /// Every role, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Runtime,
        Self::Entrypoint,
        Self::ExecSession,
        Self::Probe,
    ];
}

/// Process identity from the event header; every field `None` for node-level records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFields {
    /// Process id (thread-group id).
    pub pid: Option<u32>,
    /// Thread id.
    pub tid: Option<u32>,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Real gid.
    pub gid: Option<u32>,
    /// Process id in the process's own pid namespace (what it calls itself; 1 for a
    /// container's main process), when the kernel could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Command name.
    pub comm: Option<String>,
}

/// The kind-specific part of an event; `kind` is its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    /// A successful exec.
    Exec(Exec),
    /// A process exit.
    Exit(Exit),
    /// File activity.
    File(FileActivity),
    /// An outbound connect.
    Connect(Connect),
    /// Egress volume of one cgroup over one sampling interval.
    Egress(Egress),
    /// Records that did not reach user space, or could not be decoded.
    Loss(Loss),
}

impl Body {
    /// The `kind` string of the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Exit(_) => "exit",
            Self::File(_) => "file",
            Self::Connect(_) => "connect",
            Self::Egress(_) => "egress",
            Self::Loss(_) => "loss",
        }
    }
}

/// A successful exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Path given to exec.
    pub filename: String,
    /// Arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// The arguments were longer than the kernel copies; `argv` holds the start.
    pub argv_truncated: bool,
    /// The filename was longer than the kernel copies.
    pub filename_truncated: bool,
    /// The process has a controlling terminal.
    #[serde(default)]
    pub tty: bool,
    /// cgroup2 id of the parent at the exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_cgroup_id: Option<u64>,
}

/// A process exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Raw `exit_code` as the kernel keeps it.
    pub exit_code: u32,
    /// Exit status when the process exited normally.
    pub exit_status: Option<u32>,
    /// Terminating signal when it was killed.
    pub signal: Option<u32>,
}

/// What was done to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOperation {
    /// An open.
    Open,
    /// An unlink.
    Unlink,
    /// A chmod.
    Chmod,
    /// A rename.
    Rename,
}

/// File activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileActivity {
    /// The operation.
    pub op: FileOperation,
    /// The path: resolved in the kernel from the opened file when `resolved`, joined to its
    /// directory when `joined`, as passed to the syscall otherwise.
    pub path: String,
    /// `open` flags (`O_*`), or the mode for chmod.
    pub flags: u32,
    /// The open asked for write, create or truncate.
    pub write: bool,
    /// The path is under a sensitive-write prefix.
    pub sensitive: bool,
    /// The path is under a read-sensitive prefix.
    pub read_sensitive: bool,
    /// The path is relative to `dirfd` (-100: the working directory).
    pub relative: bool,
    /// Directory fd of a relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirfd: Option<i32>,
    /// The path was longer than the kernel copies.
    pub path_truncated: bool,
    /// New path of a rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Identical write-opens suppressed in the kernel since the previous reported one.
    pub suppressed: u32,
    /// What the syscall returned: a descriptor (opens) or 0, `-errno` on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    /// `path` is the kernel's resolution of the opened file (symlinks, `..`, relative paths and
    /// mounts followed), as the process sees it from its root.
    #[serde(default)]
    pub resolved: bool,
    /// The opened file (or, when `joined`, the directory) lies outside the process's root
    /// (another mount namespace, or above a chroot); `path` is absolute in the file's own
    /// mount namespace.
    #[serde(default)]
    pub outside_root: bool,
    /// A relative path of an unlink, chmod, rename or failed open (`path`, or the rename's
    /// `target`) was joined in the kernel to the directory it is relative to, resolved as an opened file's
    /// path is: `<directory>/<argument>`, with the argument as passed (`.`, `..` and
    /// symlinks in it not followed).
    #[serde(default)]
    pub joined: bool,
    /// `path` as the kernel reported it, when it held `.` or `..` components that user space
    /// resolved by its text (`path` is then the normalized path, and the class is of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_path: Option<String>,
    /// A rename's `target` as the kernel reported it, as `original_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_target: Option<String>,
    /// `path` with the process's own `/proc` entry written as `/proc/self`, whatever number
    /// the kernel resolved (`/proc/<pid>/...` in the node's or the container's pid
    /// namespace, or one of its threads' `/proc/<tid>/...`); rules match it as well as `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_path: Option<String>,
}

/// An outbound connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `tcp`, `udp` or the protocol number.
    pub protocol: String,
    /// Destination address.
    pub daddr: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// The connect was refused because the cgroup is quarantined.
    #[serde(default)]
    pub blocked: bool,
}

/// Egress volume of one cgroup over one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Bytes sent in the interval (IP layer).
    pub bytes: u64,
    /// Packets sent in the interval.
    pub packets: u64,
    /// Length of the interval in milliseconds.
    pub interval_ms: u64,
    /// Bytes sent since the daemon started counting this cgroup.
    pub total_bytes: u64,
}

/// Records that were lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Where they were lost: `ring_buffer` (the kernel could not reserve space) or `decode`
    /// (user space could not decode a record).
    pub source: String,
    /// Kind of the lost records.
    pub lost_kind: String,
    /// Records lost since the previous loss record of this source and kind.
    pub count: u64,
    /// Records lost since start.
    pub total: u64,
    /// Why, for decode failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Serializes a time as RFC 3339 (`ts` fields of every record).
pub(crate) fn rfc3339<S: Serializer>(
    time: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = time.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// Reads an RFC 3339 time.
pub(crate) fn from_rfc3339<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OffsetDateTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_common_keys_and_the_kind_fields() {
        let event = Event {
            time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
            ktime_ns: 42,
            process: ProcessFields {
                pid: Some(10),
                tid: Some(11),
                ppid: Some(1),
                uid: Some(0),
                gid: Some(0),
                ns_pid: None,
                comm: Some("sh".into()),
            },
            cgroup_id: Some(7),
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Exec(Exec {
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                argv_truncated: false,
                filename_truncated: false,
                tty: false,
                parent_cgroup_id: None,
            }),
        };
        let value: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], "exec");
        assert_eq!(value["ts"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(value["pid"], 10);
        assert_eq!(value["ppid"], 1);
        assert_eq!(value["cgroup_id"], 7);
        assert_eq!(value["comm"], "sh");
        assert_eq!(value["argv"][1], "-c");
        assert_eq!(value["filename"], "/bin/sh");
        assert!(value.get("pod").is_none());
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn node_level_records_carry_null_process_keys() {
        let event = Event {
            time: OffsetDateTime::UNIX_EPOCH,
            ktime_ns: 0,
            process: ProcessFields::default(),
            cgroup_id: Some(9),
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Egress(Egress {
                bytes: 100,
                packets: 2,
                interval_ms: 1000,
                total_bytes: 100,
            }),
        };
        let value: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], "egress");
        assert!(value["pid"].is_null() && value.get("pid").is_some());
        assert_eq!(value["bytes"], 100);
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }
}
