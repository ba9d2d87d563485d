//! Compiled conditions and how they match an event: no allocation, cheapest checks first.

use std::net::IpAddr;

use detector_common::linux::{O_TRUNC, SET_ID_BITS};
use globset::{Candidate, GlobSet};
use ipnet::IpNet;

use crate::event::{Body, Event, FileActivity, FileOperation, Role, SyscallOperation};

/// Number of event kinds; rules are indexed by kind.
pub const KINDS: usize = 7;

/// The `kind` strings in index order.
pub const KIND_NAMES: [&str; KINDS] = [
    "exec", "exit", "file", "connect", "egress", "loss", "syscall",
];

/// Bit mask of every kind.
pub const ALL_KINDS: u8 = (1 << KINDS) - 1;

/// The index of an event's kind in [`KIND_NAMES`].
pub fn kind_index(body: &Body) -> usize {
    match body {
        Body::Exec(_) => 0,
        Body::Exit(_) => 1,
        Body::File(_) => 2,
        Body::Connect(_) => 3,
        Body::Egress(_) => 4,
        Body::Loss(_) => 5,
        Body::Syscall(_) => 6,
    }
}

/// What a condition is matched against: the event and the facts the engine derived from its
/// state.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The event.
    pub event: &'a Event,
    /// The event is an exec of a file written in the same pod or container.
    pub drift: bool,
}

/// A set of strings compared whole; linear, since rule lists are short.
#[derive(Debug, Clone, Default)]
pub struct StrSet(pub Vec<Box<str>>);

impl StrSet {
    fn contains(&self, value: &str) -> bool {
        self.0.iter().any(|item| &**item == value)
    }
}

/// A compiled [`super::spec::PathSpec`].
#[derive(Debug, Clone, Default)]
pub struct PathMatcher {
    /// Whole strings.
    pub exact: StrSet,
    /// Leading parts ending at a `/` boundary.
    pub prefix: Vec<Box<str>>,
    /// Final components.
    pub basename: StrSet,
    /// Globs with a `/`, matched against the whole string.
    pub full_globs: Option<GlobSet>,
    /// Globs without a `/`, matched against the final component.
    pub base_globs: Option<GlobSet>,
}

impl PathMatcher {
    /// True when one of the ways matches.
    pub fn matches(&self, value: &str) -> bool {
        let base = value.rsplit('/').next().unwrap_or(value);
        self.exact.contains(value)
            || self.basename.contains(base)
            || self.prefix.iter().any(|p| has_prefix(value, p))
            || self.base_globs.as_ref().is_some_and(|g| g.is_match(base))
            || self
                .full_globs
                .as_ref()
                .is_some_and(|g| g.is_match_candidate(&Candidate::new(value)))
    }
}

/// `value` starts with `prefix` at a path component boundary.
fn has_prefix(value: &str, prefix: &str) -> bool {
    value
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'))
}

/// A compiled condition.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    /// Kinds the event may have (bit per [`KIND_NAMES`] index).
    pub kinds: u8,
    /// Command names.
    pub comm: Option<StrSet>,
    /// Exec filename.
    pub exe: Option<PathMatcher>,
    /// Substrings of some argument.
    pub argv_contains: Vec<Box<str>>,
    /// Nearest parent executable.
    pub parent: Option<PathMatcher>,
    /// Any ancestor executable.
    pub ancestor: Option<PathMatcher>,
    /// File path (or the second path of a rename, link or symlink).
    pub path: Option<PathMatcher>,
    /// File operations (bit per [`file_op_bit`]); 0: any.
    pub file_ops: u8,
    /// Write intent.
    pub write: Option<bool>,
    /// Sensitive-write flag.
    pub sensitive: Option<bool>,
    /// Read-sensitive flag.
    pub read_sensitive: Option<bool>,
    /// The path is a log or a shell history.
    pub log_path: Option<bool>,
    /// The kernel could not resolve the path.
    pub unresolved: Option<bool>,
    /// Submitted through io_uring.
    pub io_uring: Option<bool>,
    /// An exec of a memfd.
    pub fileless: Option<bool>,
    /// An exec of an unlinked file.
    pub deleted: Option<bool>,
    /// A chmod setting the setuid or setgid bit.
    pub set_id: Option<bool>,
    /// A file event that truncates.
    pub truncate: Option<bool>,
    /// An exec with a socket on standard input or output.
    pub stdio_socket: Option<bool>,
    /// Syscall operations (bit per [`syscall_op_bit`]); 0: any.
    pub syscall_ops: u16,
    /// Syscall tags, one of which the event must have.
    pub syscall_tags: Option<StrSet>,
    /// Destination networks.
    pub daddr: Vec<IpNet>,
    /// Destination ports.
    pub dport: Vec<u16>,
    /// Pod namespaces.
    pub namespace: Option<StrSet>,
    /// Pod labels and their allowed values (empty set: any value).
    pub labels: Vec<(Box<str>, StrSet)>,
    /// Owner kinds.
    pub owner_kind: Option<StrSet>,
    /// Container image.
    pub image: Option<PathMatcher>,
    /// Drift.
    pub drift: Option<bool>,
    /// Lineage roles (bit per [`role_bit`]); 0: any, lineage or not.
    pub lineage: u8,
    /// Controlling terminal.
    pub tty: Option<bool>,
    /// Started by the runtime itself.
    pub leader: Option<bool>,
    /// Macros, all of which must hold.
    pub all: Vec<Condition>,
    /// Alternatives, one of which must hold (when not empty).
    pub any: Vec<Condition>,
}

/// Bit of a file operation in [`Condition::file_ops`]: its place in [`FileOperation::ALL`].
pub fn file_op_bit(op: FileOperation) -> u8 {
    const _: () = assert!(FileOperation::ALL.len() <= u8::BITS as usize);
    1 << op as u8
}

/// Bit of a syscall operation in [`Condition::syscall_ops`]: its place in
/// [`SyscallOperation::ALL`].
pub fn syscall_op_bit(op: SyscallOperation) -> u16 {
    const _: () = assert!(SyscallOperation::ALL.len() <= u16::BITS as usize);
    1 << op as u16
}

/// Bit of a lineage role in [`Condition::lineage`].
pub fn role_bit(role: Role) -> u8 {
    match role {
        Role::Runtime => 1,
        Role::Entrypoint => 2,
        Role::ExecSession => 4,
        Role::Probe => 8,
    }
}

impl Condition {
    /// The condition, or a macro it uses, names the `runtime` lineage (a rule about the
    /// runtime's own activity).
    pub fn names_runtime(&self) -> bool {
        self.lineage & role_bit(Role::Runtime) != 0
            || self.all.iter().any(Condition::names_runtime)
            || self.any.iter().any(Condition::names_runtime)
    }

    /// The kinds an event must have for this condition to possibly hold.
    pub fn possible_kinds(&self) -> u8 {
        let mut kinds = self.kinds;
        for cond in &self.all {
            kinds &= cond.possible_kinds();
        }
        if !self.any.is_empty() {
            kinds &= self.any.iter().fold(0, |acc, c| acc | c.possible_kinds());
        }
        kinds
    }

    /// True when the condition holds for these facts.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let event = facts.event;
        self.kinds & (1 << kind_index(&event.body)) != 0
            && self.matches_body(&event.body)
            && self.matches_process(event)
            && self.matches_workload(event)
            && self.drift.is_none_or(|want| want == facts.drift)
            && self.all.iter().all(|c| c.matches(facts))
            && (self.any.is_empty() || self.any.iter().any(|c| c.matches(facts)))
    }

    fn matches_body(&self, body: &Body) -> bool {
        match body {
            Body::Exec(exec) => {
                self.file_unset()
                    && self.connect_unset()
                    && self.syscall_unset()
                    && self.fileless.is_none_or(|f| f == exec.fileless)
                    && self.deleted.is_none_or(|d| d == exec.deleted)
                    && self
                        .stdio_socket
                        .is_none_or(|s| s == (exec.stdin_socket || exec.stdout_socket))
                    && self.exe.as_ref().is_none_or(|m| m.matches(&exec.filename))
                    && (self.argv_contains.is_empty()
                        || exec.argv.iter().skip(1).any(|arg| {
                            self.argv_contains
                                .iter()
                                .any(|needle| arg.contains(&**needle))
                        }))
            }
            Body::File(file) => {
                self.exec_unset()
                    && self.connect_unset()
                    && self.syscall_unset()
                    && (self.file_ops == 0 || self.file_ops & file_op_bit(file.op) != 0)
                    && self.write.is_none_or(|w| w == file.write)
                    && self.sensitive.is_none_or(|s| s == file.sensitive)
                    && self.read_sensitive.is_none_or(|s| s == file.read_sensitive)
                    && self.log_path.is_none_or(|l| l == file.log)
                    && self.unresolved.is_none_or(|u| u == file.unresolved)
                    && self.io_uring.is_none_or(|u| u == file.io_uring)
                    && self.set_id.is_none_or(|s| s == sets_id(file))
                    && self.truncate.is_none_or(|t| t == truncates(file))
                    // A rename, link or symlink matches by either of its paths.
                    && self.path.as_ref().is_none_or(|m| {
                        m.matches(&file.path)
                            || file.target.as_deref().is_some_and(|t| m.matches(t))
                            || file.self_path.as_deref().is_some_and(|p| m.matches(p))
                    })
            }
            Body::Connect(connect) => {
                self.exec_unset()
                    && self.file_unset()
                    && self.syscall_unset()
                    && (self.dport.is_empty() || self.dport.contains(&connect.dport))
                    && (self.daddr.is_empty() || in_networks(&self.daddr, connect.daddr))
            }
            Body::Syscall(call) => {
                self.exec_unset()
                    && self.file_unset()
                    && self.connect_unset()
                    && (self.syscall_ops == 0 || self.syscall_ops & syscall_op_bit(call.op) != 0)
                    && self
                        .syscall_tags
                        .as_ref()
                        .is_none_or(|set| call.tags.iter().any(|t| set.contains(t)))
            }
            Body::Exit(_) | Body::Egress(_) | Body::Loss(_) => {
                self.exec_unset()
                    && self.file_unset()
                    && self.connect_unset()
                    && self.syscall_unset()
            }
        }
    }

    /// No condition about exec events only.
    fn exec_unset(&self) -> bool {
        self.exe.is_none()
            && self.argv_contains.is_empty()
            && self.fileless.is_none()
            && self.deleted.is_none()
            && self.stdio_socket.is_none()
    }

    /// No condition about connect events only.
    fn connect_unset(&self) -> bool {
        self.daddr.is_empty() && self.dport.is_empty()
    }

    /// No condition about file events only.
    fn file_unset(&self) -> bool {
        self.path.is_none()
            && self.file_ops == 0
            && self.write.is_none()
            && self.sensitive.is_none()
            && self.read_sensitive.is_none()
            && self.log_path.is_none()
            && self.unresolved.is_none()
            && self.io_uring.is_none()
            && self.set_id.is_none()
            && self.truncate.is_none()
    }

    /// No condition about syscall events only.
    fn syscall_unset(&self) -> bool {
        self.syscall_ops == 0 && self.syscall_tags.is_none()
    }

    fn matches_process(&self, event: &Event) -> bool {
        let lineage = event.lineage;
        (self.lineage == 0 || lineage.is_some_and(|l| self.lineage & role_bit(l.role) != 0))
            && self
                .tty
                .is_none_or(|want| lineage.is_some_and(|l| l.tty == want))
            && self
                .leader
                .is_none_or(|want| lineage.is_some_and(|l| l.leader == want))
            && self.comm.as_ref().is_none_or(|set| {
                event
                    .process
                    .comm
                    .as_deref()
                    .is_some_and(|c| set.contains(c))
            })
            && self
                .parent
                .as_ref()
                .is_none_or(|m| event.ancestry.first().is_some_and(|a| m.matches(&a.exe)))
            && self
                .ancestor
                .as_ref()
                .is_none_or(|m| event.ancestry.iter().any(|a| m.matches(&a.exe)))
    }

    fn matches_workload(&self, event: &Event) -> bool {
        let pod = event.pod.as_ref();
        self.namespace.as_ref().is_none_or(|set| {
            pod.and_then(|p| p.namespace.as_deref())
                .is_some_and(|ns| set.contains(ns))
        }) && self.owner_kind.as_ref().is_none_or(|set| {
            pod.and_then(|p| p.owner.as_ref())
                .is_some_and(|o| set.contains(&o.kind))
        }) && self.labels.iter().all(|(key, values)| {
            pod.and_then(|p| p.labels.get(&**key))
                .is_some_and(|v| values.0.is_empty() || values.contains(v))
        }) && self.image.as_ref().is_none_or(|m| {
            event
                .container
                .as_ref()
                .and_then(|c| c.image.as_deref())
                .is_some_and(|image| m.matches(image))
        })
    }
}

fn in_networks(networks: &[IpNet], addr: IpAddr) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|net| net.contains(&addr))
}

/// A chmod that sets the setuid or setgid bit.
fn sets_id(file: &FileActivity) -> bool {
    file.op == FileOperation::Chmod && file.flags & SET_ID_BITS != 0
}

/// An open with `O_TRUNC`, or a `truncate(2)`.
fn truncates(file: &FileActivity) -> bool {
    file.op == FileOperation::Truncate
        || (file.op == FileOperation::Open && file.write && file.flags & O_TRUNC != 0)
}

#[cfg(test)]
mod tests {
    use globset::{GlobBuilder, GlobSetBuilder};

    use super::*;

    fn globs(patterns: &[&str]) -> Option<GlobSet> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            builder.add(GlobBuilder::new(p).literal_separator(true).build().unwrap());
        }
        Some(builder.build().unwrap())
    }

    #[test]
    fn prefix_stops_at_component_boundaries() {
        assert!(has_prefix("/usr/bin/x", "/usr/bin"));
        assert!(has_prefix("/usr/bin", "/usr/bin"));
        assert!(has_prefix("/usr/bin/x", "/usr/bin/"));
        assert!(!has_prefix("/usr/binx", "/usr/bin"));
    }

    #[test]
    fn path_matcher_ways() {
        let m = PathMatcher {
            exact: StrSet(vec!["/bin/sh".into()]),
            basename: StrSet(vec!["bash".into()]),
            base_globs: globs(&["*.sh"]),
            full_globs: globs(&["/home/*/.ssh/*"]),
            ..PathMatcher::default()
        };
        assert!(m.matches("/bin/sh"));
        assert!(m.matches("/usr/local/bin/bash"));
        assert!(m.matches("/tmp/x.sh"));
        assert!(m.matches("/home/bob/.ssh/id_rsa"));
        assert!(!m.matches("/home/bob/x/.ssh/id_rsa"));
        assert!(!m.matches("/usr/bin/dash"));
    }

    #[test]
    fn operation_bits_are_their_places_in_the_lists() {
        for (i, op) in FileOperation::ALL.into_iter().enumerate() {
            assert_eq!(file_op_bit(op), 1 << i, "{op:?}");
        }
        for (i, op) in SyscallOperation::ALL.into_iter().enumerate() {
            assert_eq!(syscall_op_bit(op), 1 << i, "{op:?}");
        }
    }

    #[test]
    fn mapped_v6_addresses_match_v4_networks() {
        let nets = vec!["169.254.169.254/32".parse().unwrap()];
        assert!(in_networks(
            &nets,
            "::ffff:169.254.169.254".parse().unwrap()
        ));
        assert!(!in_networks(&nets, "10.0.0.1".parse().unwrap()));
    }
}
