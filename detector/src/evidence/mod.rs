//! Evidence capture from the node side, with integrity: the only module that talks to a
//! container runtime.
//!
//! - [`runtime`]: the [`runtime::ContainerRuntime`] trait and which runtime a cgroup path names;
//!   its implementations: [`containerd`] (containerd's own API, and the CRI plugin's view of
//!   the containers it created), [`cri`] (the CRI API: CRI-O) and [`docker`] (bollard).
//! - [`procfs`]: volatile artifacts of every process of the cgroup(s), read from `/proc`.
//! - [`recent`]: the daemon's ring of recent events per cgroup.
//! - [`bundle`]: the bundle directory, its hashed manifest, and [`bundle::verify`];
//!   [`signing`]: the manifest's Ed25519 signature, keys and key generation.
//! - [`store`]: copying a bundle to S3-compatible object storage.
//! - [`limits`]: size and time budgets; [`config`]: the `evidence:` configuration section.
//! - [`capture`]: one capture, start to end.
//!
//! Without a Docker Engine (containerd, CRI-O), from the node alone:
//! - [`freezer`]: pausing the container through its cgroup's freezer, undone by a guard.
//! - [`overlay`]: the container's overlay layers (from mountinfo) and its changed files.
//! - [`fsexport`]: the container's filesystem as a tar archive, read through `/proc/<pid>/root`.
//! - [`oci`]: a preserved image of the container, written from its layers as an OCI archive.
//!
//! Nothing is ever executed inside the suspect container: the runtime API answers `top` by
//! running `ps` on the host, and everything else is read from the node.

mod archive;
pub mod bundle;
pub mod capture;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod docker;
pub mod freezer;
pub mod fsexport;
pub mod limits;
pub mod oci;
pub mod overlay;
pub mod procfs;
pub mod recent;
pub mod runtime;
pub mod signing;
pub mod steps;
pub mod store;

use std::path::PathBuf;

pub use self::{
    bundle::Reference,
    capture::{CaptureRequest, Outcome, Target, capture, capture_with},
    config::EvidenceConfig,
    recent::RecentEvents,
};

/// Failure of a capture (a partial capture is not a failure: its manifest says what is missing).
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The container runtime could not be reached or refused a call needed to find the target.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The bundle could not be written.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// The bundle could not be copied to object storage (the local bundle is kept).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// No cgroup2 hierarchy is mounted.
    #[error("no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2,
    /// The target's cgroup could not be found or read.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The directory or file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// No runtime knows the container.
    #[error("no runtime knows container {id}: {why}")]
    UnknownContainer {
        /// The id or name asked for.
        id: String,
        /// What each runtime answered.
        why: String,
    },
    /// The container has no running process to capture.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The redaction pattern does not compile (config validation normally catches this).
    #[error("evidence.redact_env: {source}")]
    Redact {
        /// The regex error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
