//! The coordinator's ed25519 model-signing key.
//!
//! The key is generated on first start and kept in `{data_dir}/signing.key`
//! as 64 hex digits (the 32-byte secret seed) with mode `0600`; the public
//! key (`signing.pub`, 64 hex digits) is written beside it for agents to pin
//! (`[model] pinned_public_key` in the agent's TOML: the hex or the file's
//! path; also `GET /api/v1/models/public-key`). Every bundle
//! the coordinator publishes is signed over [`sad_common::wire::signed_bytes`].
//!
//! What survives `kill -9`: the key file is written to a temporary file,
//! fsynced and renamed into place, so a crash during first start leaves either
//! no key (a new one is generated on the next start, and nothing was signed
//! with the lost one) or the complete key; an existing key is never rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use sad_common::{ModelBundle, ModelManifest};
use thiserror::Error;

/// File name of the secret key under the data directory.
pub const KEY_FILE: &str = "signing.key";
/// File name of the exported public key under the data directory.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Why the signing key could not be loaded or created.
#[derive(Debug, Error)]
pub enum SigningError {
    /// Reading or writing the key file failed.
    #[error("signing key {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex digits.
    #[error(
        "signing key {}: not 64 hex digits; restore it from a backup (agents pin its public key) or move it away to generate a new one",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// The coordinator's signing key.
pub struct Signer25519 {
    key: SigningKey,
    path: PathBuf,
}

impl std::fmt::Debug for Signer25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer25519")
            .field("public_key", &self.public_key_hex())
            .field("path", &self.path)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn write_atomic(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Signer25519 {
    /// Loads `{dir}/signing.key`, or generates and stores a new key when absent.
    ///
    /// Warns when the key file is readable by group or others.
    pub fn load_or_generate(dir: &Path) -> Result<Self, SigningError> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(KEY_FILE);
        let io = |source| SigningError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed = parse_hex32(&text)
                    .ok_or_else(|| SigningError::Malformed { path: path.clone() })?;
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the signing key is readable by other users; chmod 600 it");
                }
                SigningKey::from_bytes(&seed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                let key = SigningKey::from_bytes(&seed);
                write_atomic(&path, &format!("{}\n", hex(&seed)), 0o600).map_err(io)?;
                tracing::info!(path = %path.display(), public_key = %hex(key.verifying_key().as_bytes()), "generated the model signing key");
                key
            }
            Err(e) => return Err(io(e)),
        };
        let signer = Self { key, path };
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        let want = format!("{}\n", signer.public_key_hex());
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(want.as_str()) {
            write_atomic(&pub_path, &want, 0o644).map_err(|source| SigningError::Io {
                path: pub_path.clone(),
                source,
            })?;
        }
        Ok(signer)
    }

    /// A signer over a given key (tests, tools).
    pub fn from_key(key: SigningKey) -> Self {
        Self {
            key,
            path: PathBuf::new(),
        }
    }

    /// The public key agents pin.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as 64 lowercase hex digits.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// Where the secret key is stored (empty for [`Signer25519::from_key`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A signed bundle of `manifest` and `payload`.
    pub fn sign(&self, manifest: ModelManifest, payload: Vec<u8>) -> ModelBundle {
        let sig = self
            .key
            .sign(&sad_common::wire::signed_bytes(&manifest, &payload));
        ModelBundle {
            manifest,
            payload,
            signature: sig.to_bytes().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn a_key_is_generated_once_private_and_reloaded_the_same() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Signer25519::load_or_generate(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Signer25519::load_or_generate(dir.path()).unwrap();
        assert_eq!(a.public_key_hex(), b.public_key_hex());
        let exported = std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(exported.trim(), a.public_key_hex());
        let other = tempfile::tempdir().unwrap();
        let c = Signer25519::load_or_generate(other.path()).unwrap();
        assert_ne!(a.public_key_hex(), c.public_key_hex());
    }

    #[test]
    fn a_malformed_key_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let err = Signer25519::load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(err, SigningError::Malformed { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap(),
            "not a key"
        );
    }

    #[test]
    fn signatures_verify_with_the_exported_key_over_the_signed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer25519::load_or_generate(dir.path()).unwrap();
        let (manifest, payload) = crate::api::registry::train_default().unwrap();
        let bundle = s.sign(manifest, payload);
        let sig = ed25519_dalek::Signature::from_slice(&bundle.signature).unwrap();
        let key = VerifyingKey::from_bytes(
            &parse_hex32(&std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).unwrap())
                .unwrap(),
        )
        .unwrap();
        key.verify(&bundle.signed_bytes(), &sig).unwrap();
        let mut tampered = bundle.clone();
        tampered.manifest.threshold = 0.0;
        assert!(key.verify(&tampered.signed_bytes(), &sig).is_err());
    }
}
