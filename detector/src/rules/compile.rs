//! From parsed rule files to a [`RuleSet`]: lists expanded, macros inlined, globs and networks
//! compiled, and every problem collected with the file and the dotted path where it is.

use std::{collections::BTreeMap, sync::Arc};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use super::{
    Problem, Rule, RuleMeta, RuleSet,
    matcher::{
        ALL_KINDS, Condition, KIND_NAMES, PathMatcher, StrSet, file_op_bit, role_bit,
        syscall_op_bit,
    },
    spec::{ConditionSpec, PathSpec, RuleFile, Strings},
};
use crate::event::{FileOperation, Role, SyscallOperation};

/// The ATT&CK Enterprise tactics a rule may name.
const TACTICS: [&str; 14] = [
    "Reconnaissance",
    "Resource Development",
    "Initial Access",
    "Execution",
    "Persistence",
    "Privilege Escalation",
    "Defense Evasion",
    "Credential Access",
    "Discovery",
    "Lateral Movement",
    "Collection",
    "Command and Control",
    "Exfiltration",
    "Impact",
];

/// Deepest macro nesting; deeper means a cycle.
const MAX_MACRO_DEPTH: usize = 16;

/// Compiles parsed files (name, contents) into one rule set, or returns every problem.
pub fn compile(files: &[(String, RuleFile)]) -> Result<RuleSet, Vec<Problem>> {
    let mut compiler = Compiler::default();
    for (name, file) in files {
        compiler.collect_definitions(name, file);
    }
    let mut rules = Vec::new();
    let mut ids = BTreeMap::new();
    for (name, file) in files {
        for (i, spec) in file.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if let Some(first) = ids.insert(spec.id.clone(), name.clone()) {
                compiler.problem(
                    name,
                    &at,
                    format!("duplicate rule id {:?} (also in {first})", spec.id),
                );
            }
            if let Some(rule) = compiler.rule(name, &at, spec) {
                rules.push(rule);
            }
        }
    }
    if compiler.problems.is_empty() {
        Ok(RuleSet::new(rules))
    } else {
        Err(compiler.problems)
    }
}

#[derive(Default)]
struct Compiler {
    lists: BTreeMap<String, Vec<String>>,
    macros: BTreeMap<String, (String, ConditionSpec)>,
    problems: Vec<Problem>,
}

impl Compiler {
    fn problem(&mut self, file: &str, at: &str, message: String) {
        self.problems.push(Problem {
            file: file.to_owned(),
            at: at.to_owned(),
            message,
        });
    }

    fn collect_definitions(&mut self, file: &str, spec: &RuleFile) {
        for (name, items) in &spec.lists {
            if items.iter().any(|i| i.starts_with('@')) {
                self.problem(
                    file,
                    &format!("lists.{name}"),
                    "lists cannot name other lists".into(),
                );
            }
            if self.lists.insert(name.clone(), items.clone()).is_some() {
                self.problem(file, &format!("lists.{name}"), "list defined twice".into());
            }
        }
        for (name, cond) in &spec.macros {
            if self
                .macros
                .insert(name.clone(), (file.to_owned(), cond.clone()))
                .is_some()
            {
                self.problem(
                    file,
                    &format!("macros.{name}"),
                    "macro defined twice".into(),
                );
            }
        }
    }

    fn rule(&mut self, file: &str, at: &str, spec: &super::spec::RuleSpec) -> Option<Rule> {
        let before = self.problems.len();
        if spec.id.is_empty()
            || !spec
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.problem(
                file,
                &format!("{at}.id"),
                format!("{:?}: use letters, digits, `-` and `_`", spec.id),
            );
        }
        if !TACTICS.contains(&spec.mitre.tactic.as_str()) {
            self.problem(
                file,
                &format!("{at}.mitre.tactic"),
                format!(
                    "{:?} is not an ATT&CK tactic ({})",
                    spec.mitre.tactic,
                    TACTICS.join(", ")
                ),
            );
        }
        if !is_technique(&spec.mitre.technique) {
            self.problem(
                file,
                &format!("{at}.mitre.technique"),
                format!(
                    "{:?} is not a technique id like T1059 or T1059.004",
                    spec.mitre.technique
                ),
            );
        }
        if !(spec.weight.is_finite() && spec.weight >= 0.0) {
            self.problem(
                file,
                &format!("{at}.weight"),
                format!("{} is not a finite number >= 0", spec.weight),
            );
        }
        let condition = self.condition(file, &format!("{at}.when"), &spec.when, 0);
        if condition.possible_kinds() == 0 {
            self.problem(
                file,
                &format!("{at}.when"),
                "no event kind can match this condition".into(),
            );
        }
        let exceptions: Vec<_> = spec
            .exceptions
            .iter()
            .enumerate()
            .map(|(i, ex)| {
                let cond = self.condition(file, &format!("{at}.exceptions[{i}].when"), &ex.when, 0);
                (Box::<str>::from(ex.name.as_str()), cond)
            })
            .collect();
        (self.problems.len() == before).then(|| Rule {
            meta: Arc::new(RuleMeta {
                id: spec.id.clone(),
                description: spec.description.clone(),
                tactic: spec.mitre.tactic.clone(),
                technique: spec.mitre.technique.clone(),
                severity: spec.severity,
                weight: spec.weight,
                contain_immediately: spec.contain_immediately,
            }),
            scope: spec.scope,
            enabled: spec.enabled,
            admits_runtime: condition.names_runtime(),
            condition,
            exceptions,
        })
    }

    fn condition(&mut self, file: &str, at: &str, spec: &ConditionSpec, depth: usize) -> Condition {
        let mut cond = Condition {
            kinds: self.kinds(file, &format!("{at}.kind"), &spec.kind),
            comm: self.set(file, &format!("{at}.comm"), &spec.comm),
            exe: self.path(file, &format!("{at}.exe"), spec.exe.as_ref()),
            argv_contains: self
                .expand(file, &format!("{at}.argv_contains"), &spec.argv_contains)
                .into_iter()
                .map(Into::into)
                .collect(),
            parent: self.path(file, &format!("{at}.parent"), spec.parent.as_ref()),
            ancestor: self.path(file, &format!("{at}.ancestor"), spec.ancestor.as_ref()),
            path: self.path(file, &format!("{at}.path"), spec.path.as_ref()),
            file_ops: self.file_ops(file, &format!("{at}.file_op"), &spec.file_op),
            write: spec.write,
            sensitive: spec.sensitive,
            read_sensitive: spec.read_sensitive,
            log_path: spec.log_path,
            unresolved: spec.unresolved,
            io_uring: spec.io_uring,
            fileless: spec.fileless,
            deleted: spec.deleted,
            set_id: spec.set_id,
            truncate: spec.truncate,
            stdio_socket: spec.stdio_socket,
            syscall_ops: self.syscall_ops(file, &format!("{at}.syscall_op"), &spec.syscall_op),
            syscall_tags: self.set(file, &format!("{at}.syscall_tags"), &spec.syscall_tags),
            daddr: self.networks(file, &format!("{at}.daddr"), &spec.daddr),
            dport: spec.dport.clone(),
            namespace: self.set(file, &format!("{at}.namespace"), &spec.namespace),
            labels: Vec::new(),
            owner_kind: self.set(file, &format!("{at}.owner_kind"), &spec.owner_kind),
            image: self.path(file, &format!("{at}.image"), spec.image.as_ref()),
            drift: spec.drift,
            lineage: self.roles(file, &format!("{at}.lineage"), &spec.lineage),
            tty: spec.tty,
            leader: spec.leader,
            all: Vec::new(),
            any: Vec::new(),
        };
        for (key, values) in &spec.labels {
            let values = self.expand(file, &format!("{at}.labels.{key}"), values);
            // `*` among the values accepts any value: the set is left empty.
            let values = if values.iter().any(|v| v == "*") {
                Vec::new()
            } else {
                values.into_iter().map(Into::into).collect()
            };
            cond.labels.push((key.as_str().into(), StrSet(values)));
        }
        for (i, sub) in spec.any.iter().enumerate() {
            cond.any
                .push(self.condition(file, &format!("{at}.any[{i}]"), sub, depth));
        }
        for (i, name) in spec.uses.0.iter().enumerate() {
            let here = format!("{at}.use[{i}]");
            if depth >= MAX_MACRO_DEPTH {
                self.problem(
                    file,
                    &here,
                    format!("macro {name:?} nests too deep (a cycle?)"),
                );
            } else if let Some((macro_file, body)) = self.macros.get(name).cloned() {
                cond.all.push(self.condition(
                    &macro_file,
                    &format!("macros.{name}"),
                    &body,
                    depth + 1,
                ));
            } else {
                self.problem(file, &here, format!("unknown macro {name:?}"));
            }
        }
        cond
    }

    fn expand(&mut self, file: &str, at: &str, items: &Strings) -> Vec<String> {
        let mut out = Vec::with_capacity(items.0.len());
        for item in &items.0 {
            match item.strip_prefix('@') {
                Some(name) => match self.lists.get(name) {
                    Some(list) => out.extend(list.iter().cloned()),
                    None => self.problem(file, at, format!("unknown list {name:?}")),
                },
                None => out.push(item.clone()),
            }
        }
        out
    }

    fn set(&mut self, file: &str, at: &str, items: &Strings) -> Option<StrSet> {
        (!items.is_empty()).then(|| {
            StrSet(
                self.expand(file, at, items)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            )
        })
    }

    fn kinds(&mut self, file: &str, at: &str, items: &Strings) -> u8 {
        if items.is_empty() {
            return ALL_KINDS;
        }
        let mut mask = 0;
        for kind in self.expand(file, at, items) {
            match KIND_NAMES.iter().position(|k| *k == kind) {
                Some(i) => mask |= 1 << i,
                None => self.problem(
                    file,
                    at,
                    format!("unknown kind {kind:?} (one of {})", KIND_NAMES.join(", ")),
                ),
            }
        }
        mask
    }

    fn roles(&mut self, file: &str, at: &str, items: &Strings) -> u8 {
        let mut mask = 0;
        for name in self.expand(file, at, items) {
            match Role::ALL.iter().find(|r| r.as_str() == name) {
                Some(&role) => mask |= role_bit(role),
                None => self.problem(
                    file,
                    at,
                    format!(
                        "unknown lineage {name:?} (one of {})",
                        Role::ALL.map(Role::as_str).join(", ")
                    ),
                ),
            }
        }
        mask
    }

    fn file_ops(&mut self, file: &str, at: &str, items: &Strings) -> u8 {
        let mut mask = 0;
        for name in self.expand(file, at, items) {
            match FileOperation::ALL.iter().find(|o| o.as_str() == name) {
                Some(&op) => mask |= file_op_bit(op),
                None => self.problem(
                    file,
                    at,
                    format!(
                        "unknown file operation {name:?} (one of {})",
                        FileOperation::ALL.map(FileOperation::as_str).join(", ")
                    ),
                ),
            }
        }
        mask
    }

    fn syscall_ops(&mut self, file: &str, at: &str, items: &Strings) -> u16 {
        let mut mask = 0;
        for name in self.expand(file, at, items) {
            match SyscallOperation::ALL.iter().find(|o| o.as_str() == name) {
                Some(&op) => mask |= syscall_op_bit(op),
                None => self.problem(
                    file,
                    at,
                    format!(
                        "unknown syscall operation {name:?} (one of {})",
                        SyscallOperation::ALL
                            .map(SyscallOperation::as_str)
                            .join(", ")
                    ),
                ),
            }
        }
        mask
    }

    fn networks(&mut self, file: &str, at: &str, items: &Strings) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in self.expand(file, at, items) {
            let parsed = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => self.problem(file, at, format!("{item:?} is not a CIDR or an address")),
            }
        }
        nets
    }

    fn path(&mut self, file: &str, at: &str, spec: Option<&PathSpec>) -> Option<PathMatcher> {
        let spec = spec?;
        let mut matcher = PathMatcher {
            exact: StrSet(
                self.expand(file, &format!("{at}.exact"), &spec.exact)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            prefix: self
                .expand(file, &format!("{at}.prefix"), &spec.prefix)
                .into_iter()
                .map(Into::into)
                .collect(),
            basename: StrSet(
                self.expand(file, &format!("{at}.basename"), &spec.basename)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            ..PathMatcher::default()
        };
        let globs = self.expand(file, &format!("{at}.glob"), &spec.glob);
        let (full, base): (Vec<_>, Vec<_>) = globs.iter().partition(|g| g.contains('/'));
        matcher.full_globs = self.glob_set(file, &format!("{at}.glob"), &full);
        matcher.base_globs = self.glob_set(file, &format!("{at}.glob"), &base);
        let empty = matcher.exact.0.is_empty()
            && matcher.prefix.is_empty()
            && matcher.basename.0.is_empty()
            && globs.is_empty();
        if empty {
            self.problem(
                file,
                at,
                "give at least one of exact, prefix, basename or glob".into(),
            );
        }
        Some(matcher)
    }

    fn glob_set(&mut self, file: &str, at: &str, patterns: &[&String]) -> Option<GlobSet> {
        if patterns.is_empty() {
            return None;
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            match GlobBuilder::new(pattern).literal_separator(true).build() {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err(err) => self.problem(file, at, format!("bad glob: {err}")),
            }
        }
        match builder.build() {
            Ok(set) => Some(set),
            Err(err) => {
                self.problem(file, at, format!("bad globs: {err}"));
                None
            }
        }
    }
}

/// `T1234` or `T1234.567`.
fn is_technique(id: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some(rest) = id.strip_prefix('T') else {
        return false;
    };
    match rest.split_once('.') {
        Some((main, sub)) => digits(main, 4) && digits(sub, 3),
        None => digits(rest, 4),
    }
}
