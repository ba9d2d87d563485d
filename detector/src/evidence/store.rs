//! Where bundles are kept: the local directory always (the bundle is written there), and an
//! S3-compatible bucket when configured. Every object is uploaded with retries and confirmed
//! by reading its size back; the local copy is removed only after that, and only when asked.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use object_store::{
    ObjectStore, PutPayload, RetryConfig, WriteMultipart, aws::AmazonS3Builder, path::Path as Key,
};
use tokio::io::AsyncReadExt as _;

use super::{
    bundle::{MANIFEST, MANIFEST_SHA256, files_below},
    config::S3Config,
};

/// Files at least this big are uploaded in parts.
const MULTIPART_BYTES: u64 = 16 << 20;

/// Failure to copy a bundle to object storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bucket settings are unusable.
    #[error("object storage configuration: {source}")]
    Config {
        /// What the client said.
        #[source]
        source: object_store::Error,
    },
    /// A local file of the bundle could not be read or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// An object could not be uploaded within the configured attempts.
    #[error("cannot upload {key} after {attempts} attempts: {source}")]
    Upload {
        /// Object key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: object_store::Error,
    },
    /// An uploaded object is not what was sent.
    #[error("{key}: {found} bytes in the bucket, {expected} sent")]
    Mismatch {
        /// Object key.
        key: String,
        /// Local size.
        expected: u64,
        /// Size the bucket reports.
        found: u64,
    },
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// `s3://bucket/prefix/incident/`.
    pub location: String,
    /// Objects uploaded and confirmed.
    pub objects: usize,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Whether the local bundle was removed afterwards.
    pub deleted_local: bool,
}

/// A bucket to copy bundles to.
#[derive(Debug, Clone)]
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    config: S3Config,
}

impl S3Store {
    /// A client for the configured bucket (no request is made yet).
    pub fn new(config: &S3Config) -> Result<Self, StoreError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|source| StoreError::Config { source })?;
        Ok(Self {
            store: Arc::new(store),
            config: config.clone(),
        })
    }

    /// The object key of a bundle file.
    fn key(&self, incident: &str, rel: &str) -> Key {
        let prefix = self.config.prefix.trim_matches('/');
        if prefix.is_empty() {
            Key::from(format!("{incident}/{rel}"))
        } else {
            Key::from(format!("{prefix}/{incident}/{rel}"))
        }
    }

    /// Uploads every file of the bundle at `dir` (the manifest and its hash last, so that a
    /// manifest in the bucket means the rest is there), confirms each object's size, and then,
    /// only if `delete_local`, removes the local bundle.
    pub async fn upload(
        &self,
        dir: &Path,
        incident: &str,
        delete_local: bool,
    ) -> Result<UploadReport, StoreError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let mut files = files_below(dir, dir).map_err(io(dir))?;
        files.retain(|f| f != MANIFEST && f != MANIFEST_SHA256);
        files.push(MANIFEST.to_owned());
        files.push(MANIFEST_SHA256.to_owned());
        let mut bytes = 0;
        for rel in &files {
            let path = dir.join(rel);
            let size = tokio::fs::metadata(&path).await.map_err(io(&path))?.len();
            let key = self.key(incident, rel);
            self.put_with_retries(&path, &key, size).await?;
            let found = self
                .store
                .head(&key)
                .await
                .map_err(|source| StoreError::Upload {
                    key: key.to_string(),
                    attempts: 1,
                    source,
                })?
                .size;
            if found != size {
                return Err(StoreError::Mismatch {
                    key: key.to_string(),
                    expected: size,
                    found,
                });
            }
            bytes += size;
        }
        if delete_local {
            tokio::fs::remove_dir_all(dir).await.map_err(io(dir))?;
        }
        Ok(UploadReport {
            location: format!("s3://{}/{}", self.config.bucket, self.key(incident, "")),
            objects: files.len(),
            bytes,
            deleted_local: delete_local,
        })
    }

    /// Reads one file of an uploaded bundle back.
    pub async fn fetch(&self, incident: &str, rel: &str) -> Result<bytes::Bytes, StoreError> {
        let key = self.key(incident, rel);
        let fail = |source| StoreError::Upload {
            key: key.to_string(),
            attempts: 1,
            source,
        };
        self.store
            .get(&key)
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)
    }

    async fn put_with_retries(&self, path: &Path, key: &Key, size: u64) -> Result<(), StoreError> {
        let attempts = self.config.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.put_once(path, key, size).await {
                Ok(()) => return Ok(()),
                Err(PutError::Io(source)) => {
                    return Err(StoreError::Io {
                        path: path.to_owned(),
                        source,
                    });
                }
                Err(PutError::Store(source)) if attempt >= attempts => {
                    return Err(StoreError::Upload {
                        key: key.to_string(),
                        attempts,
                        source,
                    });
                }
                Err(PutError::Store(err)) => {
                    tracing::warn!("upload of {key} failed (attempt {attempt}): {err}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
                }
            }
        }
    }

    async fn put_once(&self, path: &Path, key: &Key, size: u64) -> Result<(), PutError> {
        if size < MULTIPART_BYTES {
            let content = tokio::fs::read(path).await.map_err(PutError::Io)?;
            self.store
                .put(key, PutPayload::from(content))
                .await
                .map_err(PutError::Store)?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(PutError::Store)?;
        let mut writer = WriteMultipart::new(upload);
        let mut file = tokio::fs::File::open(path).await.map_err(PutError::Io)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(PutError::Io)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(PutError::Store)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(PutError::Store)?;
        Ok(())
    }
}

enum PutError {
    Io(std::io::Error),
    Store(object_store::Error),
}
