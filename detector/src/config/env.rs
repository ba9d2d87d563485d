//! Environment overrides, applied after the file and before validation.
//!
//! Any key of the configuration can be set with `DETECTOR_<SECTION>__<KEY>`: the path's parts,
//! upper-cased, joined with a double underscore, e.g. `DETECTOR_SENSORS__WATCH=containers`,
//! `DETECTOR_METRICS__LISTEN=0.0.0.0:9100`,
//! `DETECTOR_EVIDENCE__LIMITS__EXPORT_BYTES=1048576`. The value is read as YAML (`true`, `42`,
//! `[/a, /b]`), and as a plain string when that does not fit the key. A few short names are kept for the common cases ([`ALIASES`]).
//!
//! Like unknown keys in the file, an unknown `DETECTOR_` variable is an error, named in it.
//! `DETECTOR_CONFIG` (the file) and `DETECTOR_LOG` (the log filter) are not keys, and the
//! variables Kubernetes makes for a Service named `detector` (`DETECTOR_SERVICE_*`,
//! `DETECTOR_PORT*`) are ignored.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use super::{Config, ConfigError, Problem};

/// Every variable read here starts with this.
pub const PREFIX: &str = "DETECTOR_";
/// Separates the parts of a key's path in a variable name.
pub const SEPARATOR: &str = "__";
/// The configuration file (read by the command line, not here).
pub const CONFIG_VAR: &str = "DETECTOR_CONFIG";
/// The log filter (`tracing` directives such as `info,detector::daemon=debug`).
pub const LOG_VAR: &str = "DETECTOR_LOG";
/// Short names for the keys set most often, and the key each sets.
pub const ALIASES: &[(&str, &str)] = &[
    ("DETECTOR_NODE_NAME", "attribution.node_name"),
    ("DETECTOR_OUTPUT", "output.path"),
    ("DETECTOR_WATCH", "sensors.watch"),
    ("DETECTOR_METRICS_LISTEN", "metrics.listen"),
];

/// One variable setting one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The variable's name.
    pub variable: String,
    /// The key's path, e.g. `["sensors", "watch"]`.
    pub path: Vec<String>,
    /// The variable's value.
    pub value: String,
}

impl Override {
    /// The key's dotted path, e.g. `sensors.watch`.
    pub fn key(&self) -> String {
        self.path.join(".")
    }
}

/// The `DETECTOR_` variables of this process; values that are not UTF-8 are converted lossily
/// (and then fail to parse where that matters).
pub fn process_vars() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.starts_with(PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The overrides among `vars`, sorted by variable name, or every problem with them (each
/// located at the variable's name). Variables without the prefix are skipped.
pub fn overrides(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<Override>, Vec<Problem>> {
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    vars.sort();
    let mut problems = Vec::new();
    let mut found: Vec<Override> = Vec::new();
    for (variable, value) in vars {
        let problem = |message: String| Problem {
            at: variable.clone(),
            message,
        };
        if variable == CONFIG_VAR || is_service_link(&variable) {
            continue;
        }
        if variable == LOG_VAR {
            if let Err(err) = tracing_subscriber::EnvFilter::try_new(&value) {
                problems.push(problem(format!("not a log filter: {err}")));
            }
            continue;
        }
        let path = if let Some((_, key)) = ALIASES.iter().find(|(name, _)| *name == variable) {
            key.split('.').map(str::to_owned).collect()
        } else if let Some(rest) = variable
            .strip_prefix(PREFIX)
            .filter(|rest| rest.contains(SEPARATOR))
        {
            let path: Vec<String> = rest.split(SEPARATOR).map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                problems.push(problem(format!(
                    "empty part in the key; parts are separated by one `{SEPARATOR}`"
                )));
                continue;
            }
            path
        } else {
            problems.push(problem(format!(
                "unknown variable; keys are set with {PREFIX}<SECTION>{SEPARATOR}<KEY> (e.g. \
                 DETECTOR_SENSORS__WATCH), short names are {}",
                ALIASES
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        };
        if let Some(other) = found.iter().find(|o| o.path == path) {
            problems.push(problem(format!(
                "sets {} as {} does; set only one",
                other.key(),
                other.variable
            )));
            continue;
        }
        found.push(Override {
            variable,
            path,
            value,
        });
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

/// Variables the kubelet makes for a Service named `detector` (enable_service_links).
fn is_service_link(variable: &str) -> bool {
    variable
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with("SERVICE_") || rest.starts_with("PORT"))
}

impl Config {
    /// Reads a YAML file (the defaults without one), applies the `DETECTOR_` overrides among
    /// `vars` (see [the module](self)) and validates the result. Errors name the file with line
    /// and column, or the variable; validation problems caused by a variable name it too.
    pub fn load_with_env(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (text, name) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
                path.to_owned(),
            ),
            None => ("{}".to_owned(), PathBuf::from("(defaults)")),
        };
        Self::parse_with_env(&text, &name, vars)
    }

    /// Like [`Config::load_with_env`] over YAML text; `path` only names it in errors.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        };
        // The file alone first, so that its own mistakes are reported with line and column.
        let _: Config = serde_yaml_ng::from_str(text).map_err(parse_error)?;
        let mut tree: Value = serde_yaml_ng::from_str(text).map_err(parse_error)?;
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        // Then strictly typed, so that the file's own problems are not blamed on a variable.
        let file = from_tree(tree.clone(), path)?;
        let overrides =
            overrides(vars).map_err(|problems| ConfigError::Environment { problems })?;
        let mut problems = Vec::new();
        for o in &overrides {
            match apply(&tree, o) {
                Ok(applied) => tree = applied,
                Err(message) => problems.push(Problem {
                    at: o.variable.clone(),
                    message: format!("{}: {message}", o.key()),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Environment { problems });
        }
        let config = if overrides.is_empty() {
            file
        } else {
            from_tree(tree, path)?
        };
        let mut problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        for problem in &mut problems {
            let by = overrides.iter().find(|o| {
                let key = o.key();
                problem.at == key
                    || problem.at.starts_with(&format!("{key}."))
                    || problem.at.starts_with(&format!("{key}["))
            });
            if let Some(o) = by {
                problem
                    .message
                    .push_str(&format!(" (set by {})", o.variable));
            }
        }
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

/// The configuration in the tree, strictly typed: a key with no value (`key:`, `~`, `null`) or
/// a number where a string goes is an error naming the key, not a file named `null` (read
/// straight from the text, YAML gives any scalar to a string).
fn from_tree(tree: Value, path: &Path) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|err| {
        let at = err.path().to_string();
        let inner = err.into_inner().to_string();
        let message = if inner.starts_with("invalid type: unit value") {
            format!("has no value ({inner}); give one, or leave the key out for the default")
        } else {
            inner
        };
        ConfigError::Invalid {
            path: path.to_owned(),
            problems: vec![Problem { at, message }],
        }
    })
}

/// The tree with the override applied, if the result still fits the schema: the value as YAML
/// first, then as a plain string (so that `-` or `a: b` can be given as they are).
fn apply(tree: &Value, o: &Override) -> Result<Value, String> {
    let mut candidates = Vec::with_capacity(2);
    if let Ok(value) = serde_yaml_ng::from_str::<Value>(&o.value) {
        candidates.push(value);
    }
    let plain = Value::String(o.value.clone());
    if !candidates.contains(&plain) {
        candidates.push(plain);
    }
    let mut first_error = None;
    for value in candidates {
        let mut next = tree.clone();
        set(&mut next, &o.path, value);
        match serde_yaml_ng::from_value::<Config>(next.clone()) {
            Ok(_) => return Ok(next),
            Err(err) => {
                first_error.get_or_insert(err.to_string());
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Sets the key at `path`, making the sections on the way.
fn set(tree: &mut Value, path: &[String], value: Value) {
    let Some((last, sections)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for section in sections {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping above")
        };
        node = map
            .entry(Value::String(section.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(map) = node {
        map.insert(Value::String(last.clone()), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Watch;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_apply_after_the_file() {
        let yaml =
            "sensors:\n  watch: all\n  sample_interval_ms: 500\noutput:\n  path: /var/log/x\n";
        let config = Config::parse_with_env(
            yaml,
            Path::new("c.yaml"),
            vars(&[
                ("DETECTOR_SENSORS__WATCH", "containers"),
                ("DETECTOR_OUTPUT", "-"),
                ("DETECTOR_NODE_NAME", "node-1"),
                ("DETECTOR_METRICS__ENABLED", "false"),
                ("DETECTOR_METRICS__LISTEN", "127.0.0.1:9100"),
                ("DETECTOR_SENSORS__READ_SENSITIVE_PATHS", "[/a, /b]"),
                ("DETECTOR_EVIDENCE__LIMITS__EXPORT_BYTES", "1048576"),
                ("DETECTOR_CONFIG", "/etc/detector/config.yaml"),
                ("DETECTOR_LOG", "info,detector=debug"),
                ("DETECTOR_SERVICE_HOST", "10.0.0.1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.sensors.watch, Watch::Containers);
        // Keys the environment does not set keep the file's values.
        assert_eq!(config.sensors.sample_interval_ms, 500);
        assert_eq!(config.output.path, PathBuf::from("-"));
        assert_eq!(config.attribution.node_name.as_deref(), Some("node-1"));
        assert!(!config.metrics.enabled);
        assert_eq!(config.metrics.listen.port(), 9100);
        assert_eq!(config.sensors.read_sensitive_paths, ["/a", "/b"]);
        assert_eq!(config.evidence.limits.export_bytes, 1 << 20);
    }

    #[test]
    fn no_file_and_no_variables_give_the_defaults() {
        let config = Config::load_with_env(None, Vec::new()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn errors_name_the_variable() {
        let err = Config::parse_with_env(
            "{}",
            Path::new("c.yaml"),
            vars(&[
                ("DETECTOR_SENSORS__WACTH", "all"),
                ("DETECTOR_WATCH", "sometimes"),
                ("DETECTOR_WATCHES", "all"),
                ("DETECTOR_SENSORS____WATCH", "all"),
                ("DETECTOR_LOG", "detector=loud"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Environment { problems } = &err else {
            panic!("expected an environment error, got {err}");
        };
        let at: Vec<_> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "DETECTOR_LOG",
                "DETECTOR_SENSORS____WATCH",
                "DETECTOR_WATCHES",
            ]
        );
        // Names pass; values are checked once the names are right.
        let err = Config::parse_with_env(
            "{}",
            Path::new("c.yaml"),
            vars(&[
                ("DETECTOR_SENSORS__WACTH", "all"),
                ("DETECTOR_WATCH", "sometimes"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DETECTOR_SENSORS__WACTH: sensors.wacth"),
            "{text}"
        );
        assert!(text.contains("DETECTOR_WATCH: sensors.watch"), "{text}");
        assert!(text.contains("sometimes"), "{text}");
    }

    #[test]
    fn two_variables_for_one_key_are_an_error() {
        let Err(problems) = overrides(vars(&[
            ("DETECTOR_WATCH", "all"),
            ("DETECTOR_SENSORS__WATCH", "containers"),
        ])) else {
            panic!("expected a conflict");
        };
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("set only one"), "{problems:?}");
    }

    #[test]
    fn validation_problems_name_the_variable_that_caused_them() {
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse_with_env(
            "{}",
            Path::new("c.yaml"),
            vars(&[("DETECTOR_SENSORS__SAMPLE_INTERVAL_MS", "0")]),
        ) else {
            panic!("expected invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].at, "sensors.sample_interval_ms");
        assert!(
            problems[0]
                .message
                .ends_with("(set by DETECTOR_SENSORS__SAMPLE_INTERVAL_MS)"),
            "{problems:?}"
        );
    }

    #[test]
    fn file_mistakes_keep_their_line() {
        let err =
            Config::parse_with_env("sensors:\n  wacth: all\n", Path::new("c.yaml"), Vec::new())
                .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn a_key_with_no_value_is_an_error_naming_it_read_alone_or_with_variables() {
        for text in [
            "output:\n  path:\n",
            "output:\n  path: ~\n",
            "output:\n  path: null\n",
        ] {
            for err in [
                Config::parse(text, Path::new("c.yaml")).unwrap_err(),
                Config::parse_with_env(
                    text,
                    Path::new("c.yaml"),
                    vars(&[("DETECTOR_WATCH", "all")]),
                )
                .unwrap_err(),
            ] {
                let ConfigError::Invalid { problems, .. } = &err else {
                    panic!("{text:?}: {err}");
                };
                assert_eq!(problems[0].at, "output.path", "{text:?}: {err}");
                assert!(problems[0].message.contains("has no value"), "{err}");
            }
        }
        let err = Config::parse(
            "contain:\n  quarantine_label:\n    key: q\n    value: true\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("contain.quarantine_label.value: invalid type: boolean"),
            "{err}"
        );
        // An optional key given as null is the key left out.
        let config = Config::parse("rules:\n  dir: ~\n", Path::new("c.yaml")).unwrap();
        assert_eq!(config.rules.dir, None);
    }
}
