//! Detection rules: YAML files with lists, macros, rules and exceptions, compiled into a
//! [`RuleSet`] that finds the rules an event matches without allocating.
//!
//! A rules directory replaces the embedded defaults (`deploy/rules/default.yaml`) as a whole;
//! its `*.yaml` and `*.yml` files are read in name order and share one namespace of lists,
//! macros and rule ids.

mod compile;
pub mod matcher;
pub mod spec;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

pub use self::{matcher::Facts, spec::Severity};
use self::{
    matcher::{Condition, KINDS, kind_index},
    spec::{RuleFile, Scope},
};

/// The default rules, used when no rules directory is given.
pub const DEFAULT_RULES: &str = include_str!("../../../deploy/rules/default.yaml");

/// Name the default rules go by in messages.
pub const DEFAULT_RULES_NAME: &str = "<default rules>";

/// Failure to load rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The rules directory could not be listed.
    #[error("cannot list rules directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A rule file could not be read.
    #[error("cannot read rule file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no rule file.
    #[error("no *.yaml or *.yml file in {0}")]
    Empty(PathBuf),
    /// Files do not parse or do not make sense; every problem of every file.
    #[error("invalid rules:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// One problem in the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// Where in it: a dotted path such as `rules[2].when.exe`, or empty when the message
    /// carries a line and column.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.at, self.message)
        }
    }
}

/// What a verdict says about a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMeta {
    /// Unique id.
    pub id: String,
    /// What it detects.
    pub description: String,
    /// ATT&CK tactic.
    pub tactic: String,
    /// ATT&CK technique id.
    pub technique: String,
    /// Severity.
    pub severity: Severity,
    /// What a match adds to the score.
    pub weight: f64,
    /// A match contains the pod at once.
    pub contain_immediately: bool,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    meta: Arc<RuleMeta>,
    scope: Scope,
    enabled: bool,
    /// The condition names the `runtime` lineage: the runtime's own events may match.
    admits_runtime: bool,
    condition: Condition,
    exceptions: Vec<(Box<str>, Condition)>,
}

impl Rule {
    /// The rule's description, shared with the records that cite it.
    pub fn meta(&self) -> &Arc<RuleMeta> {
        &self.meta
    }

    /// True when the rule matches and no exception does.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let event = facts.event;
        let in_workload = event.container.is_some() || event.pod.is_some();
        let in_scope = match self.scope {
            Scope::Container => in_workload,
            Scope::Host => !in_workload,
            Scope::Any => true,
        };
        // The runtime setting a container up is not the workload: only a rule that asks for
        // it sees it.
        let runtime = event
            .lineage
            .is_some_and(|l| l.role == crate::event::Role::Runtime);
        self.enabled
            && in_scope
            && (!runtime || self.admits_runtime)
            && self.condition.matches(facts)
            && !self.exceptions.iter().any(|(_, c)| c.matches(facts))
    }
}

/// Compiled rules, indexed by the event kinds they can match.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    by_kind: [Vec<usize>; KINDS],
}

impl RuleSet {
    fn new(rules: Vec<Rule>) -> Self {
        let mut by_kind: [Vec<usize>; KINDS] = Default::default();
        for (i, rule) in rules.iter().enumerate() {
            let kinds = rule.condition.possible_kinds();
            for (k, list) in by_kind.iter_mut().enumerate() {
                if rule.enabled && kinds & (1 << k) != 0 {
                    list.push(i);
                }
            }
        }
        Self { rules, by_kind }
    }

    /// The embedded default rules.
    pub fn defaults() -> Result<Self, RulesError> {
        Self::from_sources(&[(DEFAULT_RULES_NAME.to_owned(), DEFAULT_RULES.to_owned())])
    }

    /// The rules of a directory, or the defaults when there is none.
    pub fn load(dir: Option<&Path>) -> Result<Self, RulesError> {
        match dir {
            Some(dir) => Self::from_sources(&read_dir(dir)?),
            None => Self::defaults(),
        }
    }

    /// Parses and compiles rule files given as (name, contents), reporting every problem.
    pub fn from_sources(sources: &[(String, String)]) -> Result<Self, RulesError> {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for (name, text) in sources {
            match serde_yaml_ng::from_str::<RuleFile>(text) {
                Ok(file) => files.push((name.clone(), file)),
                Err(err) => problems.push(Problem {
                    file: name.clone(),
                    at: String::new(),
                    message: err.to_string(),
                }),
            }
        }
        match compile::compile(&files) {
            Ok(set) if problems.is_empty() => Ok(set),
            Ok(_) => Err(RulesError::Invalid { problems }),
            Err(more) => {
                problems.extend(more);
                Err(RulesError::Invalid { problems })
            }
        }
    }

    /// All rules, enabled or not.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules this event matches, in file order.
    pub fn matching<'a>(&'a self, facts: &'a Facts<'a>) -> impl Iterator<Item = &'a Rule> + 'a {
        self.by_kind[kind_index(&facts.event.body)]
            .iter()
            .map(|&i| &self.rules[i])
            .filter(move |rule| rule.matches(facts))
    }
}

/// Reads the rule files of a directory, in name order.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, RulesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RulesError::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| RulesError::ReadDir {
                path: dir.to_owned(),
                source,
            })?
            .path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(RulesError::Empty(dir.to_owned()));
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path.display().to_string(), text)),
            Err(source) => Err(RulesError::Read { path, source }),
        })
        .collect()
}

/// `detector rules check [DIR]`: loads the rules and describes them, or returns every problem.
pub fn check(dir: Option<&Path>) -> Result<String, RulesError> {
    let set = RuleSet::load(dir)?;
    let enabled = set.rules.iter().filter(|r| r.enabled).count();
    let name = dir.map_or_else(
        || DEFAULT_RULES_NAME.to_owned(),
        |d| d.display().to_string(),
    );
    Ok(format!(
        "{name}: ok, {} rules ({enabled} enabled)",
        set.rules.len()
    ))
}

#[cfg(test)]
mod tests;
