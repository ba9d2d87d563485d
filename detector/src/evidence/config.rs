//! The `evidence:` section of the configuration, in the style of [`crate::config`]: serde
//! defaults, unknown keys rejected, [`EvidenceConfig::validate`] listing every problem.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::signing;
use crate::config::Problem;

/// How evidence is captured, bounded and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Local directory that receives one bundle directory per incident.
    pub out_dir: PathBuf,
    /// Capture evidence of a pod when the daemon contains it.
    pub on_contain: bool,
    /// Node name written into every manifest; `NODE_NAME` or the hostname when unset.
    pub node_name: Option<String>,
    /// Docker Engine API socket.
    pub docker_socket: PathBuf,
    /// containerd's API socket (its own API, and the CRI API when its CRI plugin is on).
    pub containerd_socket: PathBuf,
    /// CRI-O's CRI API socket.
    pub crio_socket: PathBuf,
    /// Where the host's filesystem is seen from the daemon: `/` on the node itself,
    /// `/proc/1/root` in a pod with the host's PID namespace. The container's overlay layers
    /// (`/var/lib/containerd/...`, `/var/lib/docker/...`) and `/proc` are read below it.
    pub host_root: PathBuf,
    /// Freeze the container (its cgroup's freezer, whatever the runtime) before anything is
    /// read, so that the suspect cannot change what is being captured.
    pub pause: bool,
    /// Thaw the container again when the capture is done (containment decides its fate).
    pub unpause: bool,
    /// Preserve the container as an OCI image (what `docker commit` gives), from its layers.
    pub commit: bool,
    /// Export the container's filesystem as a tar archive (what `docker export` gives).
    pub export: bool,
    /// Environment variables whose name matches this regex have their value redacted.
    pub redact_env: String,
    /// How far back the daemon's recent-event ring reaches, in seconds.
    pub recent_events_secs: u64,
    /// Most events kept per cgroup in the recent-event ring.
    pub recent_events_per_cgroup: usize,
    /// Most bytes the recent-event ring holds in all (its events' strings, labels and lists
    /// counted); past it the cgroup holding the most gives up its oldest events first. Only
    /// kept when evidence is captured (`on_contain`).
    pub recent_events_bytes: u64,
    /// Size and time budgets.
    pub limits: LimitsConfig,
    /// Object storage the bundle is copied to, if any.
    pub s3: Option<S3Config>,
    /// Remove the local bundle once every object of it is confirmed in object storage.
    pub delete_local_after_upload: bool,
    /// Ed25519 private key (PKCS#8 PEM) that signs every bundle's manifest, e.g. a Kubernetes
    /// Secret mounted as a file; bundles are unsigned without it. Read at start-up (so a bad
    /// key stops the daemon) and again for each capture (so a rotated Secret applies).
    pub signing_key: Option<PathBuf>,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            out_dir: PathBuf::from("/var/lib/detector/evidence"),
            on_contain: true,
            node_name: None,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            crio_socket: PathBuf::from("/var/run/crio/crio.sock"),
            host_root: PathBuf::from("/"),
            pause: true,
            unpause: true,
            commit: true,
            export: true,
            redact_env: "(?i)(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|CREDENTIAL|AUTH)".into(),
            // Ten minutes covers the usual lead-up to a detection without holding much memory.
            recent_events_secs: 600,
            // A pod's lead-up to a detection, not its whole busy log: a bundle of 2,000 events
            // reads in a minute. The whole ring (about 8,000 events) stays within 4 MiB however
            // many pods are busy, the busiest giving up its oldest first, so that a quiet pod's
            // lead-up outlasts a noisy neighbour's; its resident cost is about twice that (the
            // allocator's share of many small strings), and at 8 MiB the daemon went past
            // 64 MiB after minutes of mixed activity.
            recent_events_per_cgroup: 2_000,
            recent_events_bytes: 4 << 20,
            limits: LimitsConfig::default(),
            s3: None,
            delete_local_after_upload: false,
            // Unsigned until an operator creates a key: a key cannot have a safe default.
            signing_key: None,
        }
    }
}

/// Size and time budgets. A capture that hits one records the artifact as partial, with the
/// reason, and the whole bundle as incomplete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most bytes of all artifacts of one incident together.
    pub incident_bytes: u64,
    /// Longest a whole capture may take, in milliseconds.
    pub incident_ms: u64,
    /// Most bytes of any one artifact not listed below.
    pub artifact_bytes: u64,
    /// Longest any one artifact may take, in milliseconds.
    pub artifact_ms: u64,
    /// Most bytes of the filesystem export.
    pub export_bytes: u64,
    /// Most bytes of the preserved image (every layer of the container).
    pub image_bytes: u64,
    /// Most bytes of container logs.
    pub logs_bytes: u64,
    /// Executables larger than this are hashed over their first this-many bytes only, and say so.
    pub exe_hash_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            incident_bytes: 4 << 30,
            incident_ms: 300_000,
            artifact_bytes: 64 << 20,
            artifact_ms: 120_000,
            export_bytes: 2 << 30,
            image_bytes: 2 << 30,
            logs_bytes: 16 << 20,
            exe_hash_bytes: 512 << 20,
        }
    }
}

/// An S3-compatible bucket. Credentials come from the standard `AWS_*` environment variables
/// unless given here (prefer the environment: this file is not a secret store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix; the bundle goes under `<prefix>/<incident>/`.
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers; AWS when unset.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Allow plain HTTP (only for a local S3-compatible server).
    pub allow_http: bool,
    /// Access key id, when not in the environment.
    pub access_key_id: Option<String>,
    /// Secret access key, when not in the environment.
    pub secret_access_key: Option<String>,
    /// Attempts per object before the upload is given up.
    pub attempts: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: "evidence".into(),
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            attempts: 5,
        }
    }
}

impl EvidenceConfig {
    /// Every problem in this section; `at` is the section's own key (`evidence`).
    pub fn validate(&self, at: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| {
            problems.push(Problem {
                at: format!("{at}.{key}"),
                message,
            });
        };
        if let Err(err) = regex::Regex::new(&self.redact_env) {
            problem("redact_env", format!("not a valid regex: {err}"));
        }
        if !self.host_root.is_absolute() {
            problem(
                "host_root",
                format!("{} is not an absolute path", self.host_root.display()),
            );
        }
        if self.recent_events_secs == 0 {
            problem("recent_events_secs", "must be greater than 0".into());
        }
        if self.recent_events_per_cgroup == 0 {
            problem("recent_events_per_cgroup", "must be greater than 0".into());
        }
        if self.recent_events_bytes < 1 << 20 {
            problem(
                "recent_events_bytes",
                format!("{} is below 1 MiB (1048576)", self.recent_events_bytes),
            );
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.incident_bytes", l.incident_bytes),
            ("limits.incident_ms", l.incident_ms),
            ("limits.artifact_bytes", l.artifact_bytes),
            ("limits.artifact_ms", l.artifact_ms),
            ("limits.export_bytes", l.export_bytes),
            ("limits.image_bytes", l.image_bytes),
            ("limits.logs_bytes", l.logs_bytes),
            ("limits.exe_hash_bytes", l.exe_hash_bytes),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".into());
            }
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.is_empty() {
                problem("s3.bucket", "must be set".into());
            }
            if let Some(endpoint) = &s3.endpoint {
                let http = endpoint.starts_with("http://");
                if !http && !endpoint.starts_with("https://") {
                    problem("s3.endpoint", format!("{endpoint:?} is not an http(s) URL"));
                } else if http && !s3.allow_http {
                    problem("s3.endpoint", "plain http needs `allow_http: true`".into());
                }
            }
            if s3.attempts == 0 {
                problem("s3.attempts", "must be at least 1".into());
            }
        }
        if let Some(path) = &self.signing_key
            && let Err(err) = signing::load_signing_key(path)
        {
            problem("signing_key", err.to_string());
        }
        if self.delete_local_after_upload && self.s3.is_none() {
            problem(
                "delete_local_after_upload",
                "without `s3` the local bundle is the only copy".into(),
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(EvidenceConfig::default().validate("evidence").is_empty());
    }

    #[test]
    fn every_problem_has_its_key() {
        let config = EvidenceConfig {
            redact_env: "(".into(),
            limits: LimitsConfig {
                logs_bytes: 0,
                ..LimitsConfig::default()
            },
            s3: Some(S3Config {
                endpoint: Some("http://127.0.0.1:9".into()),
                ..S3Config::default()
            }),
            signing_key: Some("/nonexistent/ed25519.pem".into()),
            ..EvidenceConfig::default()
        };
        let problems = config.validate("evidence");
        let at: Vec<_> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "evidence.redact_env",
                "evidence.limits.logs_bytes",
                "evidence.s3.bucket",
                "evidence.s3.endpoint",
                "evidence.signing_key",
            ]
        );
        // A missing key is refused at start-up, naming the file.
        assert!(
            problems[4].message.contains("/nonexistent/ed25519.pem"),
            "{}",
            problems[4].message
        );
    }
}
