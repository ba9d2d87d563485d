//! A preserved image of the container, written from its overlay layers as an OCI image layout
//! tarball: what `docker commit` followed by `docker save` gives, for any runtime. The archive
//! loads with `ctr images import` (containerd), `podman load`, `skopeo copy oci-archive:` and,
//! through the docker-archive `manifest.json` it also carries, `docker load`.
//!
//! One layer per lower directory (bottom first, as a manifest lists them) and the upper
//! directory on top. Overlay's whiteouts become OCI's (image-spec `layer.md`): a 0:0 character
//! device or an `overlay.whiteout` file becomes an empty `.wh.<name>`, an opaque directory
//! gets a `.wh..wh..opq` entry. Layers are uncompressed tars, streamed to temporary files
//! while their sha256 is computed, so an image of any size is never held in memory.
//!
//! [`write_image`] blocks (it reads every layer): an async caller runs it in
//! `spawn_blocking`, ideally while the container is frozen ([`super::freezer`]).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    io::{self, Seek as _, Write},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{
    archive::{Dir, EntryError, TarWriter},
    overlay::{is_opaque, is_whiteout, metacopy_origin},
};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A failure that leaves no usable image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is not `[registry/]repository[:tag]`.
    #[error("image reference {reference:?}: {reason}")]
    Reference {
        /// The reference given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A layer directory could not be opened.
    #[error("cannot open layer {path}: {source}")]
    Layer {
        /// The layer directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A temporary file for a layer could not be written or read back.
    #[error("temporary layer file: {source}")]
    Temp {
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written to the output.
    #[error("cannot write the image archive: {source}")]
    Write {
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// What the image's config says besides its layers.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// Go's name of the architecture (`amd64`, `arm64`), as image configs spell it.
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// When the image was made (the capture's time).
    pub created: time::OffsetDateTime,
    /// The OCI `config` object (`Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, ...), e.g.
    /// the original image's; `labels` are merged into its `Labels`.
    pub config: serde_json::Map<String, Value>,
    /// Labels of the image (the alert, the pod, the node).
    pub labels: BTreeMap<String, String>,
    /// The history entry of the container's own layer (`created_by`).
    pub comment: String,
}

impl ImageMeta {
    /// An image of this node's architecture, for Linux, made at `created`, with an empty
    /// config and no labels.
    pub fn for_this_node(created: time::OffsetDateTime, comment: &str) -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            created,
            config: serde_json::Map::new(),
            labels: BTreeMap::new(),
            comment: comment.to_owned(),
        }
    }
}

/// One layer as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    /// The directory it was read from.
    pub source: PathBuf,
    /// `sha256:<hex>` of the (uncompressed) tar: its digest and its diff id alike.
    pub digest: String,
    /// Bytes of the tar.
    pub size: u64,
    /// Entries archived (whiteout markers included).
    pub entries: u64,
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// `sha256:<hex>` of the manifest: the image's digest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config: the image id `docker images` shows.
    pub config_digest: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerSummary>,
    /// Entries that could not be read (path in the layer, error), left out of the image.
    pub unreadable: Vec<(String, String)>,
}

/// Where the layers are staged before the archive is assembled (each layer's digest must be
/// known before the archive's index names it).
#[derive(Debug, Clone, Copy)]
pub struct Staging<'a> {
    /// The directory of the staged files: on the disk the image goes to, never a memory-backed
    /// `/tmp` (a DaemonSet's is small).
    pub dir: &'a Path,
    /// Most bytes of all staged layers together; past it the image is given up (the archive
    /// could not hold them anyway).
    pub max_bytes: u64,
}

/// Writes the image made of `lower` (top first, as [`super::overlay::OverlayLayers`] has them)
/// and `upper` to `out`, as an OCI image layout in a tar archive that names the image
/// `reference` (`docker.io/library/name:tag`: containerd needs the full form).
pub fn write_image(
    lower: &[PathBuf],
    upper: &Path,
    out: impl Write,
    reference: &str,
    meta: &ImageMeta,
    staging: Staging<'_>,
) -> Result<ImageSummary, OciError> {
    let tag = tag_of(reference)?;
    let mut unreadable = Vec::new();
    let mut layers = Vec::new();
    let mut room = staging.max_bytes;
    for (i, dir) in lower.iter().enumerate().rev() {
        let layer = write_layer(dir, &lower[i + 1..], &mut unreadable, staging.dir, room)?;
        room -= layer.summary.size;
        layers.push(layer);
    }
    layers.push(write_layer(
        upper,
        lower,
        &mut unreadable,
        staging.dir,
        room,
    )?);
    let config = config_json(meta, &layers);
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config_digest, config.len() as u64),
        "layers": layers
            .iter()
            .map(|l| descriptor(LAYER_TYPE, &l.summary.digest, l.summary.size))
            .collect::<Vec<_>>(),
    }))
    .expect("a JSON value serializes");
    let manifest_digest = digest(&manifest);
    let mut descriptor = descriptor(MANIFEST_TYPE, &manifest_digest, manifest.len() as u64);
    descriptor["annotations"] = json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [descriptor],
    });
    let docker_manifest = json!([{
        "Config": blob_path(&config_digest),
        "RepoTags": [reference],
        "Layers": layers.iter().map(|l| blob_path(&l.summary.digest)).collect::<Vec<_>>(),
    }]);

    let mtime = u64::try_from(meta.created.unix_timestamp()).unwrap_or(0);
    let mut archive = Outer {
        builder: tar::Builder::new(out),
        mtime,
    };
    archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    archive.file("index.json", &to_vec(&index))?;
    archive.file("manifest.json", &to_vec(&docker_manifest))?;
    archive.file(&blob_path(&config_digest), &config)?;
    archive.file(&blob_path(&manifest_digest), &manifest)?;
    for layer in &mut layers {
        archive.layer(layer)?;
    }
    archive
        .builder
        .into_inner()
        .map_err(|source| OciError::Write { source })?;
    Ok(ImageSummary {
        manifest_digest,
        config_digest,
        layers: layers.into_iter().map(|l| l.summary).collect(),
        unreadable,
    })
}

/// The tag of a reference (`latest` when it has none); refuses a digest reference, which an
/// image made here cannot match.
fn tag_of(reference: &str) -> Result<&str, OciError> {
    let refuse = |reason| OciError::Reference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.is_empty() || reference.contains(char::is_whitespace) {
        return Err(refuse("empty or holds whitespace"));
    }
    if reference.contains('@') {
        return Err(refuse("a digest reference cannot name a new image"));
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    Ok(last.split_once(':').map_or("latest", |(_, tag)| tag))
}

/// A layer written to a temporary file.
struct Layer {
    file: fs::File,
    summary: LayerSummary,
}

/// Writes layer `dir` to a file staged in `scratch`, at most `room` bytes; `below` are the
/// layers under it (top first), where the data of its metadata-only entries is.
fn write_layer(
    dir: &Path,
    below: &[PathBuf],
    unreadable: &mut Vec<(String, String)>,
    scratch: &Path,
    room: u64,
) -> Result<Layer, OciError> {
    let root = Dir::open_root(dir).map_err(|source| OciError::Layer {
        path: dir.to_owned(),
        source,
    })?;
    let temp = |source| OciError::Temp { source };
    let file = tempfile::tempfile_in(scratch).map_err(temp)?;
    let mut walk = LayerWalk {
        tar: TarWriter::new(Hashing {
            file,
            hash: Sha256::new(),
            room,
        }),
        entries: 0,
        unreadable,
        source: dir,
        below,
    };
    walk.dir(&root, Path::new(""))?;
    let entries = walk.entries;
    let (hashing, size) = walk.tar.finish().map_err(temp)?;
    let mut file = hashing.file;
    file.rewind().map_err(temp)?;
    Ok(Layer {
        file,
        summary: LayerSummary {
            source: dir.to_owned(),
            digest: format!("sha256:{:x}", hashing.hash.finalize()),
            size,
            entries,
        },
    })
}

struct LayerWalk<'a, W: Write> {
    tar: TarWriter<W>,
    entries: u64,
    unreadable: &'a mut Vec<(String, String)>,
    source: &'a Path,
    below: &'a [PathBuf],
}

impl<W: Write> LayerWalk<'_, W> {
    fn dir(&mut self, dir: &Dir, rel: &Path) -> Result<(), OciError> {
        let names = match dir.names() {
            Ok(names) => names,
            Err(err) => return self.skip(rel, err),
        };
        for name in &names {
            self.entry(dir, name, &rel.join(name))?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &Dir, name: &OsStr, rel: &Path) -> Result<(), OciError> {
        let path = dir.entry(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) => return self.skip(rel, err),
        };
        let mtime = u64::try_from(std::os::unix::fs::MetadataExt::mtime(&meta)).unwrap_or(0);
        match is_whiteout(&path, &meta) {
            Ok(true) => {
                let mut marker = b".wh.".to_vec();
                marker.extend_from_slice(name.as_bytes());
                let marker = rel.with_file_name(OsStr::from_bytes(&marker));
                return self.marker(&marker, mtime);
            }
            Ok(false) => {}
            Err(err) => return self.skip(rel, err),
        }
        let data = if meta.is_file() {
            self.metacopy_data(&path, rel)?
        } else {
            None
        };
        match self.tar.append(dir, name, rel, &meta, data) {
            Ok(()) => self.entries += 1,
            Err(EntryError::Write(source)) => return Err(OciError::Temp { source }),
            Err(EntryError::Read(err)) => self.skip(rel, err)?,
        }
        if !meta.is_dir() {
            return Ok(());
        }
        match is_opaque(&path) {
            Ok(true) => self.marker(&rel.join(".wh..wh..opq"), mtime)?,
            Ok(false) => {}
            Err(err) => self.skip(rel, err)?,
        }
        match dir.open_dir(name) {
            Ok(sub) => self.dir(&sub, rel),
            Err(err) => self.skip(rel, err),
        }
    }

    /// The data of a metadata-only entry, from the highest layer below that has it. Without
    /// it the entry is archived as it is (holes) and the gap recorded.
    fn metacopy_data(&mut self, path: &Path, rel: &Path) -> Result<Option<fs::File>, OciError> {
        let origin = match metacopy_origin(path, rel) {
            Ok(Some(origin)) => origin,
            Ok(None) => return Ok(None),
            Err(err) => return self.skip(rel, err).map(|()| None),
        };
        for layer in self.below {
            match open_in(layer, &origin) {
                Ok(Some(file)) => return Ok(Some(file)),
                Ok(None) => {}
                Err(err) => return self.skip(rel, err).map(|()| None),
            }
        }
        let err = format!("metacopy data {} is in no layer below", origin.display());
        self.skip(rel, err).map(|()| None)
    }

    fn marker(&mut self, path: &Path, mtime: u64) -> Result<(), OciError> {
        self.tar
            .append_marker(path, mtime)
            .map_err(|source| OciError::Temp { source })?;
        self.entries += 1;
        Ok(())
    }

    /// Records an entry left out of the layer, and carries on.
    fn skip(&mut self, rel: &Path, err: impl std::fmt::Display) -> Result<(), OciError> {
        let path = self.source.join(rel).display().to_string();
        self.unreadable.push((path, err.to_string()));
        Ok(())
    }
}

/// Opens regular file `rel` of `layer` with data of its own, component by component without
/// following a symlink; `None` when the layer does not have it that way.
fn open_in(layer: &Path, rel: &Path) -> io::Result<Option<fs::File>> {
    let absent = |err: &io::Error| {
        err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENOTDIR)
    };
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(None);
    };
    let mut dir = Dir::open_root(layer)?;
    for component in parent.iter() {
        dir = match dir.open_dir(component) {
            Ok(sub) => sub,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
    }
    let entry = dir.entry(name);
    match fs::symlink_metadata(&entry) {
        Ok(meta) if meta.is_file() && metacopy_origin(&entry, rel).is_ok_and(|o| o.is_none()) => {
            dir.open_file(name).map(Some)
        }
        Ok(_) => Ok(None),
        Err(err) if absent(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A writer to a file that hashes what it writes.
struct Hashing {
    file: fs::File,
    hash: Sha256,
    /// Bytes the layer may still take.
    room: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.room {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the layers exceed the image's size limit",
            ));
        }
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.room -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The image config (image-spec `config.md`).
fn config_json(meta: &ImageMeta, layers: &[Layer]) -> Vec<u8> {
    let created = meta
        .created
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut config = meta.config.clone();
    if !meta.labels.is_empty() {
        let labels = config
            .entry("Labels")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(labels) = labels {
            for (key, value) in &meta.labels {
                labels.insert(key.clone(), Value::String(value.clone()));
            }
        }
    }
    let history: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let created_by = if i + 1 == layers.len() {
                meta.comment.clone()
            } else {
                format!("lower layer {}", l.summary.source.display())
            };
            json!({"created": created, "created_by": created_by})
        })
        .collect();
    to_vec(&json!({
        "created": created,
        "architecture": meta.architecture,
        "os": meta.os,
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.summary.digest.clone()).collect::<Vec<_>>(),
        },
        "history": history,
    }))
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn to_vec(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value serializes")
}

/// The outer archive: the layout's files and blobs.
struct Outer<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> Outer<W> {
    fn file(&mut self, path: &str, content: &[u8]) -> Result<(), OciError> {
        let mut header = self.header(content.len() as u64);
        self.builder
            .append_data(&mut header, path, content)
            .map_err(|source| OciError::Write { source })
    }

    fn layer(&mut self, layer: &mut Layer) -> Result<(), OciError> {
        let mut header = self.header(layer.summary.size);
        let path = blob_path(&layer.summary.digest);
        self.builder
            .append_data(&mut header, path, &mut layer.file)
            .map_err(|source| OciError::Write { source })
    }

    fn header(&self, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_staged_in_the_given_directory_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper, scratch) = (
            dir.path().join("lower"),
            dir.path().join("upper"),
            dir.path().join("scratch"),
        );
        for d in [&lower, &upper, &scratch] {
            fs::create_dir(d).unwrap();
        }
        fs::write(lower.join("big"), vec![7u8; 64 << 10]).unwrap();
        fs::write(upper.join("implant"), b"x").unwrap();
        let meta = ImageMeta::for_this_node(time::OffsetDateTime::now_utc(), "t");
        let write = |max_bytes| {
            let staging = Staging {
                dir: &scratch,
                max_bytes,
            };
            write_image(
                std::slice::from_ref(&lower),
                &upper,
                io::sink(),
                "docker.io/library/t:1",
                &meta,
                staging,
            )
        };
        let summary = write(u64::MAX).unwrap();
        assert_eq!(summary.layers.len(), 2);
        // A budget smaller than the layers stops the staging, and says why.
        let err = write(16 << 10).unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        // The staged files are anonymous: nothing is left in the directory either way.
        assert_eq!(fs::read_dir(&scratch).unwrap().count(), 0);
    }

    #[test]
    fn tags_of_references() {
        assert_eq!(tag_of("docker.io/library/app:v1").unwrap(), "v1");
        assert_eq!(tag_of("localhost:5000/app").unwrap(), "latest");
        assert_eq!(tag_of("localhost:5000/app:ev-1").unwrap(), "ev-1");
        let err = tag_of("docker.io/library/app@sha256:00").unwrap_err();
        assert!(err.to_string().contains("digest reference"), "{err}");
        assert!(tag_of("").is_err());
    }

    #[test]
    fn labels_join_the_config_and_diff_ids_follow_the_layers() {
        let created = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut meta = ImageMeta::for_this_node(created, "evidence of alert 7");
        meta.config.insert("Cmd".into(), json!(["/bin/sh"]));
        meta.labels.insert("detector.alert".into(), "7".into());
        let layer = |digest: &str| Layer {
            file: tempfile::tempfile().unwrap(),
            summary: LayerSummary {
                source: PathBuf::from("/l"),
                digest: digest.to_owned(),
                size: 0,
                entries: 0,
            },
        };
        let config: Value =
            serde_json::from_slice(&config_json(&meta, &[layer("sha256:a"), layer("sha256:b")]))
                .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!(["sha256:a", "sha256:b"])
        );
        assert_eq!(config["config"]["Labels"]["detector.alert"], "7");
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));
        assert_eq!(config["history"][1]["created_by"], "evidence of alert 7");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["os"], "linux");
    }
}
