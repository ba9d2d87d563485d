//! The daemon's configuration: one serde tree, defaults that work with no file, unknown keys
//! rejected, and [`Config::validate`] reporting every problem with its location.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub mod env;

/// Failure to load a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (unknown keys included).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The values parse but do not make sense.
    #[error("{path}: invalid configuration:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// `DETECTOR_` environment variables that are unknown or do not fit the schema.
    #[error("invalid environment overrides:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Environment {
        /// Every problem found, each located at its variable.
        problems: Vec<Problem>,
    },
}

/// One problem in a configuration, with the dotted path of the offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `sensors.read_sensitive_paths[2]`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kernel sensors.
    pub sensors: SensorsConfig,
    /// Where events go.
    pub output: OutputConfig,
    /// Pod, container and process attribution.
    pub attribution: crate::attribution::AttributionConfig,
    /// Where the rules come from.
    pub rules: RulesConfig,
    /// How rule matches become per-pod scores and decisions.
    pub score: crate::score::ScoreConfig,
    /// Evidence capture.
    pub evidence: crate::evidence::EvidenceConfig,
    /// Containment: the incident playbook.
    pub contain: crate::contain::ContainConfig,
    /// SIEM export.
    pub export: crate::export::config::ExportConfig,
    /// The metrics and health server.
    pub metrics: crate::metrics::MetricsConfig,
}

/// Where the rules come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    /// A directory of `*.yaml` rule files replacing the embedded defaults.
    pub dir: Option<PathBuf>,
}

/// Which cgroups are reported on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Watch {
    /// Every process on the node except the daemon (the standalone default).
    #[default]
    All,
    /// Only processes in container cgroups (kubepods, docker, containerd, crio, libpod).
    Containers,
}

/// Which build of the kernel programs to load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProgramVariant {
    /// `typed` where the kernel offers `bpf_rdonly_cast` (Linux 6.2 and later), else
    /// `probe-read`.
    #[default]
    Auto,
    /// Plain loads through BTF-typed pointers: the cheaper build, Linux 6.2 and later.
    Typed,
    /// A `bpf_probe_read_kernel` call per kernel-memory load: Linux 5.10 and later.
    ProbeRead,
}

impl ProgramVariant {
    /// The name in the configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Typed => "typed",
            Self::ProbeRead => "probe-read",
        }
    }
}

/// Kernel sensor settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorsConfig {
    /// Which cgroups are watched.
    pub watch: Watch,
    /// Ring buffer size in bytes: a power of two, at least one page; 0 sizes it to the node
    /// ([`SensorsConfig::ring_bytes`]). The daemon maps it twice (its resident memory counts
    /// it twice).
    pub ring_buffer_bytes: u32,
    /// Most bytes of decoded events waiting for analysis (their strings and lists counted);
    /// when analysis falls behind, records wait in the ring buffer, and past it the kernel
    /// counts them lost (`loss` events, `kernel_lost_events_total`).
    pub queue_bytes: u64,
    /// Repeated write-opens of one file by one cgroup within this window are counted in the
    /// kernel instead of reported; 0 reports every one.
    pub write_dedup_window_ms: u64,
    /// How often egress counters and loss counters are sampled, in milliseconds.
    pub sample_interval_ms: u64,
    /// Writes at or below these paths are flagged sensitive.
    pub sensitive_write_paths: Vec<String>,
    /// Any open (read-only too) at or below these paths is reported. An entry may be a
    /// pattern whose components are names or `*` (any one name): up to three components cover
    /// what lies below them too (`/home/*/.ssh`); in a deeper one, the components after the
    /// third are `*` but the last, which names the file itself (`/proc/*/task/*/environ`). A
    /// pattern's names are at most eight bytes.
    pub read_sensitive_paths: Vec<String>,
    /// Logs: unlinking, truncating or renaming a file at or below these paths is reported
    /// (clearing tracks), and so is any file whose name ends in `_history` (shell and REPL
    /// histories), wherever it is.
    pub log_paths: Vec<String>,
    /// Never reported; an entry ending in `*` is a plain string prefix, others name a path and
    /// everything below it.
    pub excluded_paths: Vec<String>,
    /// cgroup2 mount point; found in /proc/self/mountinfo when unset.
    pub cgroup2_path: Option<PathBuf>,
    /// Kernel BTF.
    pub btf_path: PathBuf,
    /// Which build of the kernel programs to load (`auto` picks by what the kernel offers).
    pub program_variant: ProgramVariant,
    /// Refuse to start when any kernel program fails to load or attach. By default the daemon
    /// runs with the programs that did, names the others with the kernel's reason in its log,
    /// `/metrics` and `/readyz`, and goes on.
    pub require_all_programs: bool,
    /// Where the network quarantine (its maps and the programs that enforce it) is pinned on a
    /// bpf filesystem, so that a contained pod stays cut off while no daemon runs (killed,
    /// OOM-killed, upgraded) and the next start adopts it. A bpf filesystem is mounted on the
    /// parent when it has none and is empty. `null`: not pinned, the quarantine ends with the
    /// daemon.
    pub pin_dir: Option<PathBuf>,
}

impl SensorsConfig {
    /// The ring buffer's size: `ring_buffer_bytes`, or when 0, 1 MiB per possible CPU rounded
    /// up to a power of two, between 4 and 16 MiB (events come from every CPU at once).
    pub fn ring_bytes(&self) -> u32 {
        if self.ring_buffer_bytes != 0 {
            return self.ring_buffer_bytes;
        }
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1) as u32;
        (cpus << 20).next_power_of_two().clamp(4 << 20, 16 << 20)
    }
}

impl Default for SensorsConfig {
    fn default() -> Self {
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        Self {
            watch: Watch::All,
            // Sized to the node: 1 MiB per CPU, 4 to 16 MiB (16 MiB holds about 45,000 file
            // records, seconds of a flood on a busy node).
            ring_buffer_bytes: 0,
            // About 10,000 decoded events, held in bytes: with the ring, a flood of 400,000
            // write-opens arrives whole (`cargo xtask bench`).
            queue_bytes: 4 << 20,
            // A workload writing its log reports that file once a second, not once a write.
            write_dedup_window_ms: 1000,
            sample_interval_ms: 1000,
            sensitive_write_paths: strings(&[
                "/proc",
                "/dev",
                "/etc",
                "/bin",
                "/sbin",
                "/usr/bin",
                "/usr/sbin",
                "/lib",
                "/usr/lib",
            ]),
            read_sensitive_paths: strings(&[
                "/var/run/secrets",
                "/run/secrets",
                "/root/.ssh",
                "/home/*/.ssh",
                "/etc/shadow",
                "/etc/gshadow",
                "/etc/sudoers",
                "/etc/kubernetes",
                "/var/lib/kubelet",
                // Another process's environment, where secrets are passed.
                "/proc/*/environ",
                "/proc/*/task/*/environ",
                // Cloud and cluster credentials.
                "/root/.aws",
                "/home/*/.aws",
                "/root/.config/gcloud",
                "/root/.azure",
                "/home/*/.azure",
                "/root/.kube",
                "/home/*/.kube",
            ]),
            log_paths: strings(&["/var/log"]),
            // Harmless device nodes every program opens for writing.
            excluded_paths: strings(&[
                "/dev/null",
                "/dev/zero",
                "/dev/tty*",
                "/dev/pts/*",
                "/dev/std*",
                "/dev/fd/*",
                "/dev/urandom",
                "/dev/random",
            ]),
            cgroup2_path: None,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            program_variant: ProgramVariant::Auto,
            require_all_programs: false,
            pin_dir: Some(PathBuf::from("/sys/fs/bpf/detector")),
        }
    }
}

/// Where events, alerts and verdicts are written, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// A file to append to, or `-` for standard output.
    pub path: PathBuf,
    /// JSON lines, lines for people, or whichever fits where the output goes.
    pub format: OutputFormat,
    /// In the `pretty` format, print every event too (one compact line each); JSON lines
    /// always carry them.
    pub events: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("-"),
            // A person trying the daemon on a terminal reads alerts; files and pipes get JSON.
            format: OutputFormat::Auto,
            events: false,
        }
    }
}

/// How the output is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object a line: every event, alert and verdict.
    Json,
    /// One line for people per alert, verdict, containment step and evidence bundle (events
    /// only with `events`), coloured on a terminal unless `NO_COLOR` is set.
    Pretty,
    /// `pretty` when the path is `-` and standard output is a terminal, else `json`.
    #[default]
    Auto,
}

/// Longest path prefix the kernel can match (its LPM key holds 64 bytes, one kept for the NUL).
pub const MAX_PREFIX_BYTES: usize = detector_common::PATH_CLASS_KEY_BYTES - 2;

impl Config {
    /// Reads and validates a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` only names it in errors. The same reading as
    /// with the environment ([`Config::parse_with_env`]) with no variables.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, path, std::iter::empty())
    }

    /// Every problem in the configuration; empty when it is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |at: String, message: String| problems.push(Problem { at, message });
        let s = &self.sensors;
        if s.ring_buffer_bytes != 0
            && (!s.ring_buffer_bytes.is_power_of_two() || s.ring_buffer_bytes < 4096)
        {
            problem(
                "sensors.ring_buffer_bytes".into(),
                format!(
                    "{} is not 0 (sized to the node) nor a power of two of at least 4096",
                    s.ring_buffer_bytes
                ),
            );
        }
        if s.queue_bytes < 1 << 20 {
            problem(
                "sensors.queue_bytes".into(),
                format!("{} is below 1 MiB (1048576)", s.queue_bytes),
            );
        }
        if s.sample_interval_ms == 0 {
            problem(
                "sensors.sample_interval_ms".into(),
                "must be greater than 0".into(),
            );
        }
        for (field, list) in [
            ("sensitive_write_paths", &s.sensitive_write_paths),
            ("read_sensitive_paths", &s.read_sensitive_paths),
            ("log_paths", &s.log_paths),
            ("excluded_paths", &s.excluded_paths),
        ] {
            for (i, entry) in list.iter().enumerate() {
                let checked = if field == "read_sensitive_paths" && is_pattern(entry) {
                    check_pattern(entry)
                } else {
                    check_path_entry(entry)
                };
                if let Err(message) = checked {
                    problem(format!("sensors.{field}[{i}]"), message);
                }
            }
        }
        problems.extend(self.attribution.validate());
        problems.extend(self.score.validate().into_iter().map(|p| Problem {
            at: format!("score.{}", p.at),
            message: p.message,
        }));
        problems.extend(self.evidence.validate("evidence"));
        problems.extend(self.contain.validate("contain"));
        problems.extend(self.export.validate());
        problems.extend(self.metrics.validate("metrics"));
        problems
    }
}

/// Whether a path entry is a pattern: a component other than the last is `*` (a trailing
/// `*` makes a plain string prefix: `/dev/pts/*`).
pub fn is_pattern(entry: &str) -> bool {
    entry
        .trim_end_matches('/')
        .split('/')
        .rev()
        .skip(1)
        .any(|component| component == "*")
}

/// Components of a pattern at most (the kernel compares the top ones and the file's own name).
const PATTERN_MAX_COMPONENTS: usize = 8;

/// A read-sensitive pattern, as the kernel's prefilter decides it: absolute, names of at most
/// eight bytes or `*`, the last a name; past the top [`detector_common::TOP_COMPONENTS`], only
/// `*` but the last.
fn check_pattern(entry: &str) -> Result<(), String> {
    let Some(rest) = entry.strip_prefix('/') else {
        return Err(format!("{entry:?} is not an absolute path"));
    };
    let components: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if components.len() > PATTERN_MAX_COMPONENTS {
        return Err(format!(
            "{entry:?} has {} components; a pattern has at most {PATTERN_MAX_COMPONENTS}",
            components.len()
        ));
    }
    if components.last() == Some(&"*") {
        return Err(format!(
            "{entry:?} ends in a `*` component; name what is sensitive below it"
        ));
    }
    let top = detector_common::TOP_COMPONENTS;
    if components.len() > top + 1
        && components[top..components.len() - 1]
            .iter()
            .any(|c| *c != "*")
    {
        return Err(format!(
            "{entry:?}: past the first {top} components a pattern names only the file itself (the others are `*`)"
        ));
    }
    for component in &components {
        if component.is_empty() || *component == "." || *component == ".." {
            return Err(format!("{entry:?} has an empty, `.` or `..` component"));
        }
        if *component != "*" && (component.contains('*') || component.len() > 8) {
            return Err(format!(
                "{entry:?}: {component:?} must be `*` or a name of at most 8 bytes without `*` in a pattern"
            ));
        }
    }
    Ok(())
}

fn check_path_entry(entry: &str) -> Result<(), String> {
    let bare = entry.strip_suffix('*').unwrap_or(entry);
    if !bare.starts_with('/') {
        return Err(format!("{entry:?} is not an absolute path"));
    }
    if bare.contains('*') {
        return Err(format!("{entry:?}: `*` is only allowed at the end"));
    }
    if bare.contains('\0') {
        return Err(format!("{entry:?} contains a NUL byte"));
    }
    if bare.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "{entry:?} is {} bytes; the kernel matches at most {MAX_PREFIX_BYTES}",
            bare.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_sensitive_patterns_are_checked_where_they_are() {
        let mut config = Config::default();
        config.sensors.read_sensitive_paths = [
            "/home/*/.ssh",
            "/a/*/b/c/d",
            "/home/*/.configuration",
            "/home/*",
            "/h*/*/x",
        ]
        .map(str::to_owned)
        .to_vec();
        config.sensors.log_paths = vec!["/var/*/log".to_owned()];
        let at: Vec<String> = config.validate().into_iter().map(|p| p.at).collect();
        assert_eq!(
            at,
            [
                "sensors.read_sensitive_paths[1]",
                "sensors.read_sensitive_paths[2]",
                "sensors.read_sensitive_paths[4]",
                "sensors.log_paths[0]",
            ]
        );
        assert!(is_pattern("/proc/*/environ"));
        assert!(!is_pattern("/dev/pts/*"));
    }

    #[test]
    fn defaults_are_valid_and_empty_file_gives_defaults() {
        assert!(Config::default().validate().is_empty());
        let parsed = Config::parse("{}", Path::new("x.yaml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_an_error_with_its_location() {
        let err = Config::parse("sensors:\n  wacth: all\n", Path::new("c.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("c.yaml"), "{text}");
        assert!(text.contains("wacth"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = "sensors:\n  ring_buffer_bytes: 1000\n  sample_interval_ms: 0\n  read_sensitive_paths: [relative, /ok, '/a*b']\n";
        let Err(ConfigError::Invalid { problems, .. }) = Config::parse(yaml, Path::new("c.yaml"))
        else {
            panic!("expected invalid");
        };
        let at: Vec<_> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "sensors.ring_buffer_bytes",
                "sensors.sample_interval_ms",
                "sensors.read_sensitive_paths[0]",
                "sensors.read_sensitive_paths[2]",
            ]
        );
    }

    #[test]
    fn the_shipped_node_configuration_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/config.yaml"
        ));
        let config = Config::load(path).unwrap();
        assert_eq!(config.sensors.watch, Watch::Containers);
    }

    #[test]
    fn too_long_prefix_is_rejected() {
        let mut config = Config::default();
        config
            .sensors
            .excluded_paths
            .push(format!("/{}", "a".repeat(MAX_PREFIX_BYTES)));
        assert_eq!(config.validate().len(), 1);
    }
}
