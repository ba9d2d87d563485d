//! The YAML schema of rule files, exactly as written; [`super::compile`] turns it into matchers.
//!
//! Every struct rejects unknown keys, so a typo'd field is an error with its line and column
//! rather than a condition silently left out.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, SeqAccess, Visitor},
};

/// One rule file: named lists, named macros and rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleFile {
    /// Named lists of strings, referenced from conditions as `@name`.
    pub lists: BTreeMap<String, Vec<String>>,
    /// Named conditions, referenced from conditions with `use: [name]`.
    pub macros: BTreeMap<String, ConditionSpec>,
    /// The rules.
    pub rules: Vec<RuleSpec>,
}

/// How bad a rule's match is, for people; the score uses the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Suspicious.
    Medium,
    /// Likely malicious.
    High,
    /// Malicious.
    Critical,
}

/// Which events a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only events with a `container` or a `pod`: activity of workloads.
    #[default]
    Container,
    /// Only events of the node itself.
    Host,
    /// Every event.
    Any,
}

/// The MITRE ATT&CK classification of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitre {
    /// Tactic name, e.g. `Execution`.
    pub tactic: String,
    /// Technique id, e.g. `T1059.004`.
    pub technique: String,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id, e.g. `shell-spawned-by-server`.
    pub id: String,
    /// What the rule detects, for the person reading a verdict.
    pub description: String,
    /// ATT&CK classification.
    pub mitre: Mitre,
    /// Severity.
    pub severity: Severity,
    /// What a match adds to the pod's score.
    pub weight: f64,
    /// A match contains the pod whatever its score.
    #[serde(default)]
    pub contain_immediately: bool,
    /// Which events the rule looks at.
    #[serde(default)]
    pub scope: Scope,
    /// A disabled rule is checked but never matches.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The condition.
    pub when: ConditionSpec,
    /// Matches of the condition that are not reported.
    #[serde(default)]
    pub exceptions: Vec<ExceptionSpec>,
}

fn enabled() -> bool {
    true
}

/// A named exception of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionSpec {
    /// Why the exception exists.
    pub name: String,
    /// Events matching this are not reported.
    pub when: ConditionSpec,
}

/// A condition: every field given must hold (fields left out hold for every event).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConditionSpec {
    /// Macros that must hold too.
    #[serde(rename = "use")]
    pub uses: Strings,
    /// At least one of these conditions must hold.
    pub any: Vec<ConditionSpec>,
    /// Event kinds: `exec`, `exit`, `file`, `connect`, `egress`, `loss`, `syscall`.
    pub kind: Strings,
    /// Command name of the process.
    pub comm: Strings,
    /// The executable of an exec event (its `filename`).
    pub exe: Option<PathSpec>,
    /// Some argument after `argv[0]` contains one of these strings.
    pub argv_contains: Strings,
    /// The nearest parent's executable (`ancestry[0]`).
    pub parent: Option<PathSpec>,
    /// Any ancestor's executable.
    pub ancestor: Option<PathSpec>,
    /// The path of a file event; for a rename, link or symlink, either of its two paths (the
    /// old and the new name; the existing file and the new name; what the symlink points to
    /// and the link). Not the paths of syscall events.
    pub path: Option<PathSpec>,
    /// File operations: `open`, `unlink`, `chmod`, `rename`, `truncate`, `link`, `symlink`.
    pub file_op: Strings,
    /// The open asked for write, create or truncate.
    pub write: Option<bool>,
    /// The path is under a sensitive-write prefix of the sensors.
    pub sensitive: Option<bool>,
    /// The path is under a read-sensitive prefix of the sensors.
    pub read_sensitive: Option<bool>,
    /// The path of a file event is a log or a shell history (the sensors' log class, and any
    /// name ending in `_history`).
    pub log_path: Option<bool>,
    /// The kernel could not resolve the path of a file event within its bounds: the path is
    /// the argument as passed and the classes are conservative.
    pub unresolved: Option<bool>,
    /// The file operation was submitted through an io_uring ring, not made by a system call.
    pub io_uring: Option<bool>,
    /// An exec of a memfd: fileless execution, nothing on any filesystem.
    pub fileless: Option<bool>,
    /// An exec of a file unlinked before (or while) it ran.
    pub deleted: Option<bool>,
    /// A chmod setting the setuid or setgid bit.
    pub set_id: Option<bool>,
    /// A file event that truncates: an open with `O_TRUNC`, or `truncate(2)`.
    pub truncate: Option<bool>,
    /// An exec whose standard input or output is an IPv4 or IPv6 socket (a reverse shell).
    pub stdio_socket: Option<bool>,
    /// Operations of syscall events: `ptrace`, `socket`, `mount`, `umount`, `unshare`,
    /// `setns`, `pivot_root`, `memfd_create`, `module_load`, `bpf_prog_load`, `setuid`,
    /// `dup_socket`, `io_uring_setup`, `mknod`.
    pub syscall_op: Strings,
    /// A syscall event has one of these tags (compared whole): the names of its arguments,
    /// such as `attach`, `seize`, `traceme` (ptrace); `packet`, `inet`, `inet6`, `raw`,
    /// `packet_type` (socket); `bind`, `remount`, `move`, `rec`, `rdonly`, `nosuid`, `nodev`,
    /// `noexec`, `private`, `shared`, `slave`, `unbindable` and `fstype:<type>` (mount);
    /// `force`, `detach`, `expire` (umount); `newns`, `newuser`, `newpid`, `newnet`,
    /// `newuts`, `newipc`, `newcgroup`, `newtime` (unshare, setns) and `any` (setns of any
    /// type); `to_root` and `from_non_root` (setuid); `stdin`, `stdout`, `stderr`
    /// (dup_socket); `init_module`, `finit_module` (module_load); the program type, e.g.
    /// `kprobe`, `xdp`, `lsm` (bpf_prog_load); `cloexec`, `allow_sealing`, `hugetlb`,
    /// `noexec_seal`, `exec` (memfd_create); `block`, `char` (mknod); and `refused` for any
    /// call that failed.
    pub syscall_tags: Strings,
    /// Destination networks of a connect (CIDR or address).
    pub daddr: Strings,
    /// Destination ports of a connect.
    pub dport: Vec<u16>,
    /// Pod namespaces.
    pub namespace: Strings,
    /// Pod labels: every key must be present with one of the listed values (`*` for any).
    pub labels: BTreeMap<String, Strings>,
    /// Kinds of the pod's top owner, e.g. `Deployment`.
    pub owner_kind: Strings,
    /// Container image reference.
    pub image: Option<PathSpec>,
    /// An exec of a file written in the same pod or container after it started.
    pub drift: Option<bool>,
    /// Roles of the process in its container: `runtime`, `entrypoint`, `exec_session`,
    /// `probe`. Events of the runtime's own set-up match only rules that name `runtime` here.
    pub lineage: Strings,
    /// The process has a controlling terminal.
    pub tty: Option<bool>,
    /// The process is the one the runtime started (an entrypoint's or exec session's own
    /// command), not one of its descendants.
    pub leader: Option<bool>,
}

/// Ways to match a path-like string; at least one listed way must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSpec {
    /// The whole string.
    pub exact: Strings,
    /// A leading part of the string; `/usr/bin` matches `/usr/bin/x` but not `/usr/binx`.
    pub prefix: Strings,
    /// The part after the last `/`.
    pub basename: Strings,
    /// Glob patterns (`*` does not cross `/`, `**` does).
    pub glob: Strings,
}

/// A list of strings written either as one string or as a sequence; `@name` items name lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Strings(pub Vec<String>);

impl Strings {
    /// True when nothing was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringsVisitor;
        impl<'de> Visitor<'de> for StringsVisitor {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a sequence of strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Strings, E> {
                Ok(Strings(vec![value.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strings, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Strings(items))
            }
        }
        deserializer.deserialize_any(StringsVisitor)
    }
}
