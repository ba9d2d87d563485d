//! Signed manifests: the chain of custody of an evidence bundle.
//!
//! The hashes of `manifest.json` and `manifest.json.sha256` find damage, but anyone who can
//! write the bundle can recompute them. When `evidence.signing_key` names an Ed25519 key,
//! sealing puts a [`Trust`] statement in the manifest (algorithm, public key, key id) and writes
//! [`SIGNATURE_FILE`]: the base64 Ed25519 signature over the exact bytes of `manifest.json`.
//! Only a verifier that pins the public key (`detector evidence verify --key`) learns who sealed
//! the bundle; the key embedded in the manifest shows self-consistency, not origin, since a
//! forger embeds their own.
//!
//! Keys are files in the formats openssl writes: PKCS#8 PEM for the private key
//! (`openssl genpkey -algorithm ed25519`), SubjectPublicKeyInfo PEM for the public one
//! (`openssl pkey -pubout`). The key id is `sha256:` and the hex SHA-256 of the public key's
//! DER SubjectPublicKeyInfo (`openssl pkey -pubin -outform DER | sha256sum`).

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use ed25519_dalek::{
    SECRET_KEY_LENGTH, SIGNATURE_LENGTH, Signature, Signer as _, SigningKey, VerifyingKey,
};
use pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
    LineEnding,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::bundle::MANIFEST;

/// The detached signature of `manifest.json`, base64.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// The private key's file name as `detector evidence keygen` writes it (and the Secret's key).
pub const PRIVATE_KEY_FILE: &str = "ed25519.pem";
/// The public key's file name as `detector evidence keygen` writes it.
pub const PUBLIC_KEY_FILE: &str = "ed25519.pub.pem";

/// Failure to read or write a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("{path}: cannot read the key: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The file is not an Ed25519 private key in PKCS#8 PEM.
    #[error(
        "{path}: not an Ed25519 private key in PKCS#8 PEM (as `openssl genpkey -algorithm \
         ed25519` or `detector evidence keygen` write it): {source}"
    )]
    Private {
        /// The key file.
        path: PathBuf,
        /// The decoder's message.
        #[source]
        source: pkcs8::Error,
    },
    /// The file is not an Ed25519 public key in SubjectPublicKeyInfo PEM.
    #[error(
        "{path}: not an Ed25519 public key in PEM (as `openssl pkey -pubout` or `detector \
         evidence keygen` write it): {source}"
    )]
    Public {
        /// The key file.
        path: PathBuf,
        /// The decoder's message.
        #[source]
        source: pkcs8::spki::Error,
    },
    /// A new key could not be encoded.
    #[error("cannot encode the new key: {0}")]
    Encode(String),
    /// A new key file could not be written (an existing one is never replaced).
    #[error("{path}: cannot write the key: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The operating system gave no randomness for a new key.
    #[error("no randomness for a new key: {0}")]
    Random(getrandom::Error),
}

/// The manifest's statement of what vouches for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Trust {
    /// Only the hashes vouch for the content, and anyone who can write the bundle can
    /// recompute them.
    Unsigned {
        /// Why: no key configured, or the configured key could not be read when sealing.
        reason: String,
    },
    /// [`SIGNATURE_FILE`] holds the signature of `manifest.json` by this key.
    Signed {
        /// [`ALGORITHM`].
        algorithm: String,
        /// The public key, SubjectPublicKeyInfo PEM.
        public_key: String,
        /// [`key_id`] of the public key.
        key_id: String,
    },
}

impl Default for Trust {
    /// A manifest written before manifests had a trust statement (format 1) is unsigned.
    fn default() -> Self {
        Self::Unsigned {
            reason: "the manifest has no trust statement (format 1)".into(),
        }
    }
}

/// `sha256:` and the hex SHA-256 of the key's DER SubjectPublicKeyInfo.
pub fn key_id(key: &VerifyingKey) -> String {
    // Encoding 32 bytes into a fixed 44-byte structure cannot fail.
    let der = key.to_public_key_der().expect("ed25519 SPKI encodes");
    format!("sha256:{:x}", Sha256::digest(der.as_bytes()))
}

/// Reads a private key in PKCS#8 PEM.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?);
    SigningKey::from_pkcs8_pem(&text).map_err(|source| KeyError::Private {
        path: path.to_owned(),
        source,
    })
}

/// Reads a public key in SubjectPublicKeyInfo PEM.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|source| KeyError::Public {
        path: path.to_owned(),
        source,
    })
}

/// What seals a bundle: the configured key, or why there is none.
#[derive(Debug)]
pub enum Sealer {
    /// Sign with this key.
    Key(Box<SigningKey>),
    /// Seal unsigned, for this reason.
    Unsigned(String),
}

impl Sealer {
    /// Reads `evidence.signing_key` for one capture, so that a rotated Secret applies to the
    /// next capture. Start-up validation has read the key once; if it became unreadable since,
    /// the evidence is still sealed (unsigned, saying why) rather than lost.
    pub fn load(path: Option<&Path>) -> Self {
        let Some(path) = path else {
            return Self::Unsigned("no evidence.signing_key configured".into());
        };
        match load_signing_key(path) {
            Ok(key) => Self::Key(Box::new(key)),
            Err(err) => {
                tracing::warn!(%err, "evidence.signing_key unusable: sealing unsigned");
                Self::Unsigned(format!("evidence.signing_key: {err}"))
            }
        }
    }

    /// The trust statement the manifest carries.
    pub fn trust(&self) -> Trust {
        match self {
            Self::Key(key) => {
                let public = key.verifying_key();
                Trust::Signed {
                    algorithm: ALGORITHM.into(),
                    public_key: public
                        .to_public_key_pem(LineEnding::LF)
                        .expect("ed25519 SPKI encodes"),
                    key_id: key_id(&public),
                }
            }
            Self::Unsigned(reason) => Trust::Unsigned {
                reason: reason.clone(),
            },
        }
    }

    /// The content of [`SIGNATURE_FILE`] for the manifest's bytes, when there is a key.
    pub fn sign(&self, manifest: &[u8]) -> Option<String> {
        match self {
            Self::Key(key) => Some(format!(
                "{}\n",
                BASE64.encode(key.sign(manifest).to_bytes())
            )),
            Self::Unsigned(_) => None,
        }
    }
}

/// What the signature check of [`super::bundle::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The manifest says it is unsigned, and why.
    Unsigned(String),
    /// Signed by `key_id`. Checked against the caller's key when `pinned`; otherwise only
    /// against the key the manifest names, which proves self-consistency, not origin.
    Signed {
        /// The signing key's id.
        key_id: String,
        /// Whether the caller gave the key.
        pinned: bool,
    },
}

/// Checks the signature of `manifest` (the exact bytes of `manifest.json` in `dir`) as its
/// `trust` statement describes, against `pinned` when given; every failure goes to `problems`.
pub fn check(
    dir: &Path,
    manifest: &[u8],
    trust: &Trust,
    pinned: Option<&VerifyingKey>,
    problems: &mut Vec<String>,
) -> SignatureCheck {
    match trust {
        Trust::Unsigned { reason } => {
            if pinned.is_some() {
                problems.push(format!(
                    "{SIGNATURE_FILE}: the manifest is unsigned ({reason}), so nothing is signed \
                     by the given key"
                ));
            }
            SignatureCheck::Unsigned(reason.clone())
        }
        Trust::Signed {
            algorithm,
            public_key,
            key_id,
        } => {
            if let Err(problem) = check_signed(dir, manifest, algorithm, public_key, key_id, pinned)
            {
                problems.push(problem);
            }
            SignatureCheck::Signed {
                key_id: key_id.clone(),
                pinned: pinned.is_some(),
            }
        }
    }
}

/// The checks of a signed manifest, first failure first: the statement is consistent, the key
/// is the pinned one, the signature file decodes and verifies.
fn check_signed(
    dir: &Path,
    manifest: &[u8],
    algorithm: &str,
    public_key: &str,
    claimed_id: &str,
    pinned: Option<&VerifyingKey>,
) -> Result<(), String> {
    if algorithm != ALGORITHM {
        return Err(format!(
            "{MANIFEST}: signature algorithm {algorithm:?} is not {ALGORITHM}"
        ));
    }
    let embedded = VerifyingKey::from_public_key_pem(public_key).map_err(|err| {
        format!("{MANIFEST}: trust.public_key is not an Ed25519 public key in PEM: {err}")
    })?;
    let embedded_id = key_id(&embedded);
    if embedded_id != claimed_id {
        return Err(format!(
            "{MANIFEST}: trust.key_id {claimed_id} is not the fingerprint {embedded_id} of \
             trust.public_key"
        ));
    }
    let key = match pinned {
        Some(pinned) if key_id(pinned) != embedded_id => {
            return Err(format!(
                "{SIGNATURE_FILE}: signed by key {embedded_id}, not by the given key {}",
                key_id(pinned)
            ));
        }
        Some(pinned) => pinned,
        None => &embedded,
    };
    let signature = read_signature(&dir.join(SIGNATURE_FILE))?;
    key.verify_strict(manifest, &signature).map_err(|_| {
        format!("{SIGNATURE_FILE}: the signature does not match {MANIFEST} under key {embedded_id}")
    })
}

/// Reads and decodes [`SIGNATURE_FILE`]; a missing, garbled or truncated file is a problem.
fn read_signature(path: &Path) -> Result<Signature, String> {
    let text =
        fs::read_to_string(path).map_err(|err| format!("{SIGNATURE_FILE}: cannot read: {err}"))?;
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|err| format!("{SIGNATURE_FILE}: not base64: {err}"))?;
    let bytes: [u8; SIGNATURE_LENGTH] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        format!(
            "{SIGNATURE_FILE}: {} bytes, an Ed25519 signature has {SIGNATURE_LENGTH}",
            bytes.len()
        )
    })?;
    Ok(Signature::from_bytes(&bytes))
}

/// The files [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// The private key, PKCS#8 PEM, mode 0600.
    pub private: PathBuf,
    /// The public key, SubjectPublicKeyInfo PEM.
    pub public: PathBuf,
    /// [`key_id`] of the public key.
    pub key_id: String,
}

/// Creates a new key pair in `dir` ([`PRIVATE_KEY_FILE`], [`PUBLIC_KEY_FILE`]); an existing
/// file is never replaced, since bundles signed by it would lose their verifier.
pub fn generate(dir: &Path) -> Result<KeyFiles, KeyError> {
    let mut secret = Zeroizing::new([0u8; SECRET_KEY_LENGTH]);
    getrandom::fill(secret.as_mut_slice()).map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&secret);
    let private_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| KeyError::Encode(err.to_string()))?;
    let public = key.verifying_key();
    let public_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|err| KeyError::Encode(err.to_string()))?;
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let files = KeyFiles {
        private: dir.join(PRIVATE_KEY_FILE),
        public: dir.join(PUBLIC_KEY_FILE),
        key_id: key_id(&public),
    };
    write_new(&files.private, private_pem.as_bytes(), 0o600)?;
    write_new(&files.public, public_pem.as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes a file that must not exist yet, created with `mode` (so a private key is never
/// readable by others, not even for a moment).
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), KeyError> {
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        file.write_all(content)?;
        file.sync_all()
    };
    write().map_err(|source| KeyError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A key pair openssl wrote (`genpkey -algorithm ed25519`, `pkey -pubout`), for this test.
    const OPENSSL_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIH8gXYfKGYwgqck8cdCuVzyr3AcwcKsd9vyNnsN+i3r/
-----END PRIVATE KEY-----
";
    const OPENSSL_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJVEyelHJEQh2SehPFnzZIriOZ+CcyNnDhQLk43TKZmQ=
-----END PUBLIC KEY-----
";

    #[test]
    fn openssl_keys_load_and_the_key_id_is_the_spki_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.pem");
        let public = dir.path().join("k.pub.pem");
        fs::write(&private, OPENSSL_PRIVATE).unwrap();
        fs::write(&public, OPENSSL_PUBLIC).unwrap();
        let key = load_signing_key(&private).unwrap();
        let verifying = load_verifying_key(&public).unwrap();
        assert_eq!(key.verifying_key(), verifying);
        // `openssl pkey -pubin -in k.pub.pem -outform DER | sha256sum`
        assert_eq!(
            key_id(&verifying),
            "sha256:aff2cba96c5992da7edc6370123ccd695ddabc0c9e6ac3ae9befcc913e48c1a7"
        );
        assert_eq!(
            verifying.to_public_key_pem(LineEnding::LF).unwrap(),
            OPENSSL_PUBLIC
        );
    }

    #[test]
    fn bad_key_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_signing_key(&missing).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err}");
        assert!(err.to_string().starts_with(&missing.display().to_string()));
        let public = dir.path().join("public.pem");
        fs::write(&public, OPENSSL_PUBLIC).unwrap();
        let err = load_signing_key(&public).unwrap_err();
        assert!(matches!(err, KeyError::Private { .. }), "{err}");
        assert!(err.to_string().contains("public.pem"), "{err}");
        let private = dir.path().join("private.pem");
        fs::write(&private, OPENSSL_PRIVATE).unwrap();
        let err = load_verifying_key(&private).unwrap_err();
        assert!(matches!(err, KeyError::Public { .. }), "{err}");
    }

    #[test]
    fn generated_keys_load_and_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let mode = fs::metadata(&files.private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = load_signing_key(&files.private).unwrap();
        let public = load_verifying_key(&files.public).unwrap();
        assert_eq!(key.verifying_key(), public);
        assert_eq!(files.key_id, key_id(&public));
        let err = generate(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::Write { .. }), "{err}");
        assert_eq!(load_signing_key(&files.private).unwrap(), key);
    }

    #[test]
    fn an_unreadable_key_seals_unsigned_and_says_why() {
        let sealer = Sealer::load(Some(Path::new("/nonexistent/ed25519.pem")));
        assert!(sealer.sign(b"x").is_none());
        let Trust::Unsigned { reason } = sealer.trust() else {
            panic!("{sealer:?}");
        };
        assert!(reason.contains("/nonexistent/ed25519.pem"), "{reason}");
        let Trust::Unsigned { reason } = Sealer::load(None).trust() else {
            panic!("no key, yet signed");
        };
        assert!(reason.contains("no evidence.signing_key"), "{reason}");
    }
}
