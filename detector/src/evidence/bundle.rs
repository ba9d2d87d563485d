//! The evidence bundle: one directory per incident, every artifact hashed as it is written, a
//! JSON manifest listing them, the manifest's own hash beside it and, with a signing key, its
//! signature ([`super::signing`]).
//!
//! ```text
//! <out>/<incident>/
//!   manifest.json          what was captured, from where, when, how big, its SHA-256; the
//!                          trust statement (signing key, or why unsigned)
//!   manifest.json.sha256   "<hex>  manifest.json", as sha256sum writes it
//!   manifest.json.sig      base64 Ed25519 signature of manifest.json (signed bundles only)
//!   <artifacts...>
//! ```
//!
//! [`verify`] re-hashes everything, checks the signature and lists every difference.

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    path::{Component, Path, PathBuf},
};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::signing::{self, SIGNATURE_FILE, Sealer, SignatureCheck, Trust};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The file holding the manifest's SHA-256.
pub const MANIFEST_SHA256: &str = "manifest.json.sha256";
/// Manifest format version (2: the trust statement and the signature file).
pub const FORMAT: u32 = 2;

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
    /// `not_captured` and the artifacts' `partial_reason`. Sealing keeps it equal to
    /// `incomplete_reasons.is_empty()`.
    pub complete: bool,
    /// Why the capture is not complete: one line per partial artifact, artifact not captured
    /// and capture-wide shortfall.
    pub incomplete_reasons: Vec<String>,
    /// Every artifact in the bundle.
    pub artifacts: Vec<Artifact>,
    /// Artifacts that were wanted but not captured, with the reason.
    pub not_captured: Vec<NotCaptured>,
    /// What the collector did to the container (freeze, image, thaw), in order.
    pub actions: Vec<Action>,
    /// Evidence kept outside the bundle, in the cluster (the VolumeSnapshots of the pod's
    /// volumes the containment took).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
    /// What vouches for this manifest: a signing key, or why there is none.
    #[serde(default)]
    pub trust: Trust,
}

/// An object outside the bundle that holds evidence of the incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// `apiVersion` of the object.
    pub api_version: String,
    /// Kind, e.g. `VolumeSnapshot`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What it holds.
    pub note: String,
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

impl Manifest {
    /// The manifest a capture of `target` for `incident` on `node` starts from, begun now
    /// (`started_at`): nothing captured yet, not sealed, not signed.
    pub fn new(incident: &str, node: String, target: TargetInfo, started_at: String) -> Self {
        Self {
            format: FORMAT,
            incident: incident.to_owned(),
            collector: Collector::this(),
            node,
            target,
            started_at,
            finished_at: String::new(),
            complete: false,
            incomplete_reasons: Vec::new(),
            artifacts: Vec::new(),
            not_captured: Vec::new(),
            actions: Vec::new(),
            references: Vec::new(),
            trust: Trust::default(),
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

    /// Gives up artifact `rel` after a failure to write it (a full disk): its file is removed
    /// and it is listed as not captured with `reason`, so that what follows, and the manifest,
    /// may still fit.
    pub fn discard(&mut self, rel: &str, reason: impl Into<String>) {
        if check_name(rel).is_ok() {
            let _ = fs::remove_file(self.dir.join(rel));
        }
        self.manifest.artifacts.retain(|a| a.path != rel);
        self.not_captured(rel, reason);
    }

    /// Records why the capture as a whole is incomplete.
    pub fn incomplete(&mut self, reason: impl Into<String>) {
        self.manifest.incomplete_reasons.push(reason.into());
    }

    /// Lists evidence kept outside the bundle.
    pub fn reference(&mut self, reference: Reference) {
        self.manifest.references.push(reference);
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

    /// Writes the manifest with `sealer`'s trust statement, its hash and, with a key, its
    /// signature; returns the directory and the final manifest.
    pub fn seal(
        mut self,
        finished_at: String,
        sealer: &Sealer,
    ) -> Result<(PathBuf, Manifest), BundleError> {
        self.manifest.finished_at = finished_at;
        self.explain_incompleteness();
        self.manifest.trust = sealer.trust();
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
        if let Some(signature) = sealer.sign(&text) {
            let sig = self.dir.join(SIGNATURE_FILE);
            fs::write(&sig, signature).map_err(io_err(&sig))?;
        }
        Ok((self.dir, self.manifest))
    }

    /// Adds a reason for every artifact not captured, then derives `complete` from the
    /// reasons alone: a bundle is never incomplete without saying why.
    fn explain_incompleteness(&mut self) {
        let manifest = &mut self.manifest;
        for missing in &manifest.not_captured {
            manifest.incomplete_reasons.push(format!(
                "{}: not captured: {}",
                missing.artifact, missing.reason
            ));
        }
        manifest.complete = manifest.incomplete_reasons.is_empty();
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Artifacts whose size and hash were checked.
    pub checked: usize,
    /// Whether the manifest says the capture was complete.
    pub complete: bool,
    /// What the signature check found (its failures are among the problems).
    pub signature: SignatureCheck,
    /// Every mismatch, one sentence each.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing differs.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-hashes the manifest and every artifact of the bundle at `dir`, checks the manifest's
/// signature (against `pinned` when given, else against the key the manifest names), and
/// lists files that are not in the manifest. Only an unreadable manifest is an error; every
/// difference is a problem in the report.
pub fn verify(dir: &Path, pinned: Option<&VerifyingKey>) -> Result<VerifyReport, BundleError> {
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let mut problems = Vec::new();
    check_manifest_sum(dir, &text, &mut problems);
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|source| BundleError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
    let signature = signing::check(dir, &text, &manifest.trust, pinned, &mut problems);
    let mut report = VerifyReport {
        checked: 0,
        complete: manifest.complete,
        signature,
        problems,
    };
    let mut listed = vec![MANIFEST.to_owned(), MANIFEST_SHA256.to_owned()];
    if matches!(manifest.trust, Trust::Signed { .. }) {
        listed.push(SIGNATURE_FILE.to_owned());
    }
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

/// Compares the manifest's bytes with [`MANIFEST_SHA256`].
fn check_manifest_sum(dir: &Path, text: &[u8], problems: &mut Vec<String>) {
    let sum_path = dir.join(MANIFEST_SHA256);
    match fs::read_to_string(&sum_path) {
        Ok(sum) => {
            let expected = sum.split_whitespace().next().unwrap_or_default();
            let actual = format!("{:x}", Sha256::digest(text));
            if expected != actual {
                problems.push(format!(
                    "{MANIFEST}: sha256 {actual} differs from {expected} in {MANIFEST_SHA256}"
                ));
            }
        }
        Err(err) => problems.push(format!("{MANIFEST_SHA256}: cannot read: {err}")),
    }
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
    use ed25519_dalek::SigningKey;

    use super::*;

    fn manifest() -> Manifest {
        Manifest::new(
            "inc-1",
            "node-a".into(),
            TargetInfo::default(),
            "2026-01-01T00:00:00Z".into(),
        )
    }

    fn unsigned() -> Sealer {
        Sealer::Unsigned("no key in this test".into())
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
        let (dir, sealed) = bundle.seal("t2".into(), &unsigned()).unwrap();
        assert!(sealed.complete);
        assert_eq!(
            sealed.artifacts[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let report = verify(&dir, None).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.checked, 1);

        fs::write(dir.join("x.txt"), b"abd").unwrap();
        fs::write(dir.join("extra"), b"").unwrap();
        let report = verify(&dir, None).unwrap();
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(report.problems[0].contains("x.txt: sha256"));
        assert!(report.problems[1].contains("extra"));

        let mut text = fs::read_to_string(dir.join(MANIFEST)).unwrap();
        text = text.replace("node-a", "node-b");
        fs::write(dir.join(MANIFEST), text).unwrap();
        let report = verify(&dir, None).unwrap();
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
        let (_, sealed) = bundle.seal("t".into(), &unsigned()).unwrap();
        assert!(!sealed.complete);
        assert_eq!(
            sealed.incomplete_reasons,
            [
                "big: size limit reached: cut at 3 bytes",
                "filesystem.tar: not captured: no runtime"
            ]
        );
        assert_eq!(sealed.not_captured[0].artifact, "filesystem.tar");
    }

    #[test]
    fn references_outside_the_bundle_are_sealed_in_the_manifest_and_a_change_is_found() {
        let root = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut bundle = Bundle::create(root.path(), "inc", manifest()).unwrap();
        bundle.add("x.txt", "test", b"abc", 10, "t".into()).unwrap();
        bundle.reference(Reference {
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshot".into(),
            namespace: "shop".into(),
            name: "data-db-1-inc".into(),
            note: "a snapshot".into(),
        });
        let sealer = Sealer::Key(Box::new(key.clone()));
        let (dir, sealed) = bundle.seal("t2".into(), &sealer).unwrap();
        assert_eq!(sealed.references.len(), 1);
        // A reference does not make the capture incomplete.
        assert!(sealed.complete, "{sealed:#?}");
        let report = verify(&dir, Some(&key.verifying_key())).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // Naming another snapshot breaks the seal.
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("data-db-1-inc", "data-db-1-other")).unwrap();
        let report = verify(&dir, Some(&key.verifying_key())).unwrap();
        assert!(!report.problems.is_empty());
    }

    #[test]
    fn incomplete_always_says_why() {
        type Step = fn(&mut Bundle);
        let steps: [(&str, Step); 4] = [
            ("nothing", |_| {}),
            ("a partial artifact", |b| {
                b.add("cut", "test", b"abcdef", 2, "t".into()).unwrap();
            }),
            ("an artifact not captured", |b| {
                b.not_captured("events.jsonl", "manual capture");
            }),
            ("a capture-wide shortfall", |b| b.incomplete("not paused")),
        ];
        for (i, (what, step)) in steps.iter().enumerate() {
            let root = tempfile::tempdir().unwrap();
            let mut bundle = Bundle::create(root.path(), "inc", manifest()).unwrap();
            bundle.add("whole", "test", b"abc", 10, "t".into()).unwrap();
            step(&mut bundle);
            let (_, sealed) = bundle.seal("t".into(), &unsigned()).unwrap();
            assert_eq!(sealed.complete, i == 0, "{what}: {sealed:#?}");
            assert_eq!(
                sealed.complete,
                sealed.incomplete_reasons.is_empty(),
                "{what}: {sealed:#?}"
            );
        }
    }

    /// A sealed bundle with one artifact, `x.txt`, signed by `key` when given.
    fn sealed(root: &Path, key: Option<&SigningKey>) -> PathBuf {
        let mut bundle = Bundle::create(root, "inc", manifest()).unwrap();
        bundle.add("x.txt", "test", b"abc", 10, "t".into()).unwrap();
        let sealer = key.map_or_else(unsigned, |k| Sealer::Key(Box::new(k.clone())));
        bundle.seal("t2".into(), &sealer).unwrap().0
    }

    /// What an attacker without the key can do: change `x.txt`, put its new hash in the
    /// manifest, and recompute `manifest.json.sha256`; `sign` re-signs too (with their key).
    fn forge(dir: &Path, sign: Option<&SigningKey>) {
        fs::write(dir.join("x.txt"), b"abd").unwrap();
        let mut manifest: Manifest =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        let (size, sha256) = hash_file(&dir.join("x.txt")).unwrap();
        manifest.artifacts[0].size = size;
        manifest.artifacts[0].sha256 = sha256;
        if let Some(key) = sign {
            manifest.trust = Sealer::Key(Box::new(key.clone())).trust();
        }
        let text = serde_json::to_vec_pretty(&manifest).unwrap();
        fs::write(dir.join(MANIFEST), &text).unwrap();
        let digest = format!("{:x}", Sha256::digest(&text));
        fs::write(dir.join(MANIFEST_SHA256), format!("{digest}  {MANIFEST}\n")).unwrap();
        if let Some(key) = sign {
            let signature = Sealer::Key(Box::new(key.clone())).sign(&text).unwrap();
            fs::write(dir.join(SIGNATURE_FILE), signature).unwrap();
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signed_bundle_verifies_with_its_key_pinned_or_embedded() {
        let root = tempfile::tempdir().unwrap();
        let ours = key(1);
        let dir = sealed(root.path(), Some(&ours));
        let manifest: Manifest =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
        let Trust::Signed { key_id, .. } = &manifest.trust else {
            panic!("{:?}", manifest.trust);
        };
        assert_eq!(*key_id, signing::key_id(&ours.verifying_key()));
        let report = verify(&dir, Some(&ours.verifying_key())).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(
            report.signature,
            SignatureCheck::Signed {
                key_id: key_id.clone(),
                pinned: true
            }
        );
        let report = verify(&dir, None).unwrap();
        assert!(report.ok(), "{report:?}");
        assert!(matches!(
            report.signature,
            SignatureCheck::Signed { pinned: false, .. }
        ));
    }

    #[test]
    fn a_forger_without_the_key_is_caught_by_the_signature() {
        let root = tempfile::tempdir().unwrap();
        let ours = key(1);
        let dir = sealed(root.path(), Some(&ours));
        forge(&dir, None);
        let report = verify(&dir, Some(&ours.verifying_key())).unwrap();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(
            report.problems[0].starts_with("manifest.json.sig: the signature does not match"),
            "{report:?}"
        );
        // The embedded key catches this forger too (they kept our statement, not our key).
        assert!(!verify(&dir, None).unwrap().ok());
    }

    #[test]
    fn a_signature_by_another_key_fails_against_the_pinned_key() {
        let ours = key(1);
        let theirs = key(2);
        // The forger signs with their own key and names it in the manifest: self-consistent,
        // so only the pinned key tells.
        let root = tempfile::tempdir().unwrap();
        let dir = sealed(root.path(), Some(&ours));
        forge(&dir, Some(&theirs));
        assert!(verify(&dir, None).unwrap().ok());
        let report = verify(&dir, Some(&ours.verifying_key())).unwrap();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        let expected = format!(
            "manifest.json.sig: signed by key {}, not by the given key {}",
            signing::key_id(&theirs.verifying_key()),
            signing::key_id(&ours.verifying_key())
        );
        assert_eq!(report.problems[0], expected);
        // Their signature under our statement does not verify either.
        let root = tempfile::tempdir().unwrap();
        let dir = sealed(root.path(), Some(&ours));
        let text = fs::read(dir.join(MANIFEST)).unwrap();
        let signature = Sealer::Key(Box::new(theirs)).sign(&text).unwrap();
        fs::write(dir.join(SIGNATURE_FILE), signature).unwrap();
        let report = verify(&dir, Some(&ours.verifying_key())).unwrap();
        assert!(
            report.problems[0].starts_with("manifest.json.sig: the signature does not match"),
            "{report:?}"
        );
    }

    #[test]
    fn unsigned_bundle_says_so_and_fails_against_a_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = sealed(root.path(), None);
        assert!(!dir.join(SIGNATURE_FILE).exists());
        let report = verify(&dir, None).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(
            report.signature,
            SignatureCheck::Unsigned("no key in this test".into())
        );
        let report = verify(&dir, Some(&key(1).verifying_key())).unwrap();
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert!(
            report.problems[0].starts_with("manifest.json.sig: the manifest is unsigned"),
            "{report:?}"
        );
    }

    #[test]
    fn a_missing_or_garbled_signature_is_a_problem_not_a_panic() {
        let ours = key(1);
        let root = tempfile::tempdir().unwrap();
        let dir = sealed(root.path(), Some(&ours));
        let good = fs::read_to_string(dir.join(SIGNATURE_FILE)).unwrap();
        for (content, expected) in [
            (
                Some(&good[..good.len() / 2]),
                "manifest.json.sig: 33 bytes, an Ed25519 signature has 64",
            ),
            (
                Some("AAAA"),
                "manifest.json.sig: 3 bytes, an Ed25519 signature has 64",
            ),
            (Some("%%% not a signature"), "manifest.json.sig: not base64"),
            (Some(""), "manifest.json.sig: 0 bytes"),
            (None, "manifest.json.sig: cannot read"),
        ] {
            match content {
                Some(content) => fs::write(dir.join(SIGNATURE_FILE), content).unwrap(),
                None => fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap(),
            }
            for pinned in [Some(ours.verifying_key()), None] {
                let report = verify(&dir, pinned.as_ref()).unwrap();
                assert_eq!(report.problems.len(), 1, "{content:?}: {report:?}");
                assert!(
                    report.problems[0].starts_with(expected),
                    "{content:?}: {report:?}"
                );
            }
        }
    }
}
