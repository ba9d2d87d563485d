//! The evidence bundle: one directory per incident, every artifact hashed as it is written, a
//! JSON manifest listing them, and the manifest's own hash beside it.
//!
//! ```text
//! <out>/<incident>/
//!   manifest.json          what was captured, from where, when, how big, its SHA-256
//!   manifest.json.sha256   "<hex>  manifest.json", as sha256sum writes it
//!   <artifacts...>
//! ```
//!
//! [`verify`] re-hashes everything and lists every difference.

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The file holding the manifest's SHA-256.
pub const MANIFEST_SHA256: &str = "manifest.json.sha256";
/// Manifest format version.
pub const FORMAT: u32 = 1;

/// Failure to write or read a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The incident's directory exists: evidence is never overwritten.
    #[error("bundle {0} already exists")]
    Exists(PathBuf),
    /// An artifact name that would leave the bundle directory.
    #[error("artifact name {0:?} is not a relative path inside the bundle")]
    BadName(String),
    /// A file of the bundle could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The manifest is not valid JSON for this schema.
    #[error("{path}: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The manifest: everything an analyst needs to know about the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// Incident id.
    pub incident: String,
    /// What collected it.
    pub collector: Collector,
    /// Node name.
    pub node: String,
    /// What was captured.
    pub target: TargetInfo,
    /// Start of the capture (RFC 3339).
    pub started_at: String,
    /// End of the capture (RFC 3339).
    pub finished_at: String,
    /// True only when every artifact was captured whole; otherwise see `incomplete_reasons`,
    /// `not_captured` and the artifacts' `partial_reason`.
    pub complete: bool,
    /// Why the capture is not complete.
    pub incomplete_reasons: Vec<String>,
    /// Every artifact in the bundle.
    pub artifacts: Vec<Artifact>,
    /// Artifacts that were wanted but not captured, with the reason.
    pub not_captured: Vec<NotCaptured>,
    /// What the collector did to the container (pause, commit, unpause), in order.
    pub actions: Vec<Action>,
}

/// The collector's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collector {
    /// Program name.
    pub name: String,
    /// Program version.
    pub version: String,
}

impl Collector {
    /// This program.
    pub fn this() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The captured container or cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Container id, when known.
    pub container_id: Option<String>,
    /// cgroup2 path relative to the cgroup2 root, when known.
    pub cgroup: Option<String>,
    /// Runtime detected from the cgroup path or named on the command line.
    pub runtime: String,
    /// Whether the runtime was reachable and used.
    pub runtime_used: bool,
}

/// One artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Path relative to the bundle directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// When writing it ended (RFC 3339).
    pub captured_at: String,
    /// Where it came from, e.g. `docker:/containers/{id}/export` or `procfs`.
    pub source: String,
    /// Why it is partial, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_reason: Option<String>,
}

/// An artifact that could not be captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotCaptured {
    /// What it would have been.
    pub artifact: String,
    /// Why not.
    pub reason: String,
}

/// Something the collector did to the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `pause`, `commit`, `unpause`.
    pub action: String,
    /// When (RFC 3339).
    pub at: String,
    /// Whether it worked.
    pub ok: bool,
    /// Result or error text.
    pub detail: String,
}

/// A bundle being written.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

/// An artifact file being written: hashed and counted as it goes, cut at its size limit.
#[derive(Debug)]
pub struct ArtifactWriter {
    rel: String,
    path: PathBuf,
    source: String,
    file: File,
    hasher: Sha256,
    written: u64,
    max_bytes: u64,
    cut: bool,
}

impl ArtifactWriter {
    /// Appends what fits of `chunk`; returns false once the size limit cut something off.
    pub fn write(&mut self, chunk: &[u8]) -> Result<bool, BundleError> {
        let room = self.max_bytes.saturating_sub(self.written);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
        let part = &chunk[..take];
        self.file.write_all(part).map_err(io_err(&self.path))?;
        self.hasher.update(part);
        self.written += take as u64;
        if take < chunk.len() {
            self.cut = true;
        }
        Ok(!self.cut)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether the size limit cut the content.
    pub fn was_cut(&self) -> bool {
        self.cut
    }
}

impl Bundle {
    /// Creates `<root>/<incident>/`; fails if it exists.
    pub fn create(root: &Path, incident: &str, manifest: Manifest) -> Result<Self, BundleError> {
        check_name(incident)?;
        fs::create_dir_all(root).map_err(io_err(root))?;
        let dir = root.join(incident);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BundleError::Exists(dir));
            }
            Err(err) => return Err(io_err(&dir)(err)),
        }
        Ok(Self { dir, manifest })
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest so far.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Starts an artifact at `rel` (subdirectories are created) holding at most `max_bytes`.
    pub fn writer(
        &self,
        rel: &str,
        source: &str,
        max_bytes: u64,
    ) -> Result<ArtifactWriter, BundleError> {
        check_name(rel)?;
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(ArtifactWriter {
            rel: rel.to_owned(),
            path,
            source: source.to_owned(),
            file,
            hasher: Sha256::new(),
            written: 0,
            max_bytes,
            cut: false,
        })
    }

    /// Closes an artifact and lists it; `partial_reason` says why it is incomplete, if it is
    /// (a cut at the size limit is recorded with `size_reason` when nothing else is given).
    pub fn finish(
        &mut self,
        mut writer: ArtifactWriter,
        partial_reason: Option<String>,
        size_reason: impl FnOnce() -> String,
        captured_at: String,
    ) -> Result<&Artifact, BundleError> {
        writer.file.flush().map_err(io_err(&writer.path))?;
        writer.file.sync_all().map_err(io_err(&writer.path))?;
        let partial_reason = partial_reason.or_else(|| writer.cut.then(size_reason));
        if let Some(reason) = &partial_reason {
            self.manifest
                .incomplete_reasons
                .push(format!("{}: {reason}", writer.rel));
        }
        self.manifest.artifacts.push(Artifact {
            path: writer.rel,
            size: writer.written,
            sha256: format!("{:x}", writer.hasher.finalize()),
            captured_at,
            source: writer.source,
            partial_reason,
        });
        Ok(self.manifest.artifacts.last().expect("just pushed"))
    }

    /// Writes a whole artifact from memory, cut at `max_bytes`.
    pub fn add(
        &mut self,
        rel: &str,
        source: &str,
        content: &[u8],
        max_bytes: u64,
        captured_at: String,
    ) -> Result<&Artifact, BundleError> {
        let mut writer = self.writer(rel, source, max_bytes)?;
        writer.write(content)?;
        self.finish(
            writer,
            None,
            || format!("size limit reached: cut at {max_bytes} bytes"),
            captured_at,
        )
    }

    /// Records an artifact that could not be captured; the bundle is then incomplete.
    pub fn not_captured(&mut self, artifact: &str, reason: impl Into<String>) {
        self.manifest.not_captured.push(NotCaptured {
            artifact: artifact.to_owned(),
            reason: reason.into(),
        });
    }

    /// Records why the capture as a whole is incomplete.
    pub fn incomplete(&mut self, reason: impl Into<String>) {
        self.manifest.incomplete_reasons.push(reason.into());
    }

    /// Records an action on the container.
    pub fn action(&mut self, action: &str, at: String, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.manifest.actions.push(Action {
            action: action.to_owned(),
            at,
            ok,
            detail,
        });
    }

    /// Writes the manifest and its hash; returns the directory and the final manifest.
    pub fn seal(mut self, finished_at: String) -> Result<(PathBuf, Manifest), BundleError> {
        self.manifest.finished_at = finished_at;
        self.manifest.complete =
            self.manifest.incomplete_reasons.is_empty() && self.manifest.not_captured.is_empty();
        let text =
            serde_json::to_vec_pretty(&self.manifest).map_err(|source| BundleError::Manifest {
                path: self.dir.join(MANIFEST),
                source,
            })?;
        let path = self.dir.join(MANIFEST);
        fs::write(&path, &text).map_err(io_err(&path))?;
        let digest = format!("{:x}", Sha256::digest(&text));
        let sum = self.dir.join(MANIFEST_SHA256);
        fs::write(&sum, format!("{digest}  {MANIFEST}\n")).map_err(io_err(&sum))?;
        Ok((self.dir, self.manifest))
    }
}

/// An artifact or incident name must stay inside the bundle: relative, no `..`, no empty parts.
fn check_name(name: &str) -> Result<(), BundleError> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadName(name.to_owned()))
    }
}

/// What [`verify`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Artifacts whose size and hash were checked.
    pub checked: usize,
    /// Whether the manifest says the capture was complete.
    pub complete: bool,
    /// Every mismatch, one sentence each.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing differs.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-hashes the manifest and every artifact of the bundle at `dir`, and lists files that are
/// not in the manifest. Only an unreadable manifest is an error; every difference is a problem
/// in the report.
pub fn verify(dir: &Path) -> Result<VerifyReport, BundleError> {
    let mut report = VerifyReport::default();
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let sum_path = dir.join(MANIFEST_SHA256);
    match fs::read_to_string(&sum_path) {
        Ok(sum) => {
            let expected = sum.split_whitespace().next().unwrap_or_default();
            let actual = format!("{:x}", Sha256::digest(&text));
            if expected != actual {
                report.problems.push(format!(
                    "{MANIFEST}: sha256 {actual} differs from {expected} in {MANIFEST_SHA256}"
                ));
            }
        }
        Err(err) => report
            .problems
            .push(format!("{MANIFEST_SHA256}: cannot read: {err}")),
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|source| BundleError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
    report.complete = manifest.complete;
    let mut listed = vec![MANIFEST.to_owned(), MANIFEST_SHA256.to_owned()];
    for artifact in &manifest.artifacts {
        listed.push(artifact.path.clone());
        if check_name(&artifact.path).is_err() {
            report
                .problems
                .push(format!("{}: not a path inside the bundle", artifact.path));
            continue;
        }
        match hash_file(&dir.join(&artifact.path)) {
            Ok((size, sha256)) => {
                report.checked += 1;
                if size != artifact.size {
                    report.problems.push(format!(
                        "{}: size {size} differs from {} in the manifest",
                        artifact.path, artifact.size
                    ));
                }
                if sha256 != artifact.sha256 {
                    report.problems.push(format!(
                        "{}: sha256 {sha256} differs from {} in the manifest",
                        artifact.path, artifact.sha256
                    ));
                }
            }
            Err(err) => report
                .problems
                .push(format!("{}: cannot read: {err}", artifact.path)),
        }
    }
    for file in files_below(dir, dir).map_err(io_err(dir))? {
        if !listed.contains(&file) {
            report
                .problems
                .push(format!("{file}: in the bundle but not in the manifest"));
        }
    }
    Ok(report)
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("{:x}", hasher.finalize())))
}

/// Every regular file below `dir`, as `/`-separated paths relative to `root`, sorted.
pub fn files_below(root: &Path, dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            out.extend(files_below(root, &entry.path())?);
        } else {
            let rel = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push(rel);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            incident: "inc-1".into(),
            collector: Collector::this(),
            node: "node-a".into(),
            target: TargetInfo::default(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: String::new(),
            complete: false,
            incomplete_reasons: Vec::new(),
            artifacts: Vec::new(),
            not_captured: Vec::new(),
            actions: Vec::new(),
        }
    }

    #[test]
    fn sealed_bundle_verifies_and_any_change_is_found() {
        let root = tempfile::tempdir().unwrap();
        let mut bundle = Bundle::create(root.path(), "inc-1", manifest()).unwrap();
        bundle
            .add("a/one.txt", "test", b"hello", 100, "t".into())
            .unwrap();
        let sealed = bundle
            .add("two.bin", "test", &[7u8; 10], 4, "t".into())
            .unwrap();
        assert_eq!(sealed.size, 4);
        assert!(sealed.partial_reason.is_some());
        assert!(matches!(
            Bundle::create(root.path(), "inc-1", manifest()),
            Err(BundleError::Exists(_))
        ));
        let bundle = Bundle::create(root.path(), "inc-2", manifest()).unwrap();
        assert!(matches!(
            bundle.writer("../escape", "x", 1),
            Err(BundleError::BadName(_))
        ));
        drop(bundle);

        let mut bundle = Bundle::create(root.path(), "inc-3", manifest()).unwrap();
        bundle.add("x.txt", "test", b"abc", 10, "t".into()).unwrap();
        let (dir, sealed) = bundle.seal("t2".into()).unwrap();
        assert!(sealed.complete);
        assert_eq!(
            sealed.artifacts[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let report = verify(&dir).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.checked, 1);

        fs::write(dir.join("x.txt"), b"abd").unwrap();
        fs::write(dir.join("extra"), b"").unwrap();
        let report = verify(&dir).unwrap();
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(report.problems[0].contains("x.txt: sha256"));
        assert!(report.problems[1].contains("extra"));

        let mut text = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        text = text.replace("node-a", "node-b");
        fs::write(dir.join(MANIFEST), text).unwrap();
        let report = verify(&dir).unwrap();
        assert!(report.problems[0].starts_with(MANIFEST), "{report:?}");
    }

    #[test]
    fn partial_artifact_makes_the_bundle_incomplete() {
        let root = tempfile::tempdir().unwrap();
        let mut bundle = Bundle::create(root.path(), "inc", manifest()).unwrap();
        bundle
            .add("big", "test", &[0u8; 10], 3, "t".into())
            .unwrap();
        bundle.not_captured("filesystem.tar", "no runtime");
        let (_, sealed) = bundle.seal("t".into()).unwrap();
        assert!(!sealed.complete);
        assert_eq!(sealed.incomplete_reasons.len(), 1);
        assert_eq!(sealed.not_captured[0].artifact, "filesystem.tar");
    }
}
