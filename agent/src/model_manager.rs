//! The model manager: verifies signed model bundles, swaps them in without
//! pausing scoring, and persists them so a restart works offline.
//!
//! # Verification order (for [`ModelManager::offer`])
//!
//! 1. decode the frame (version byte, size cap, postcard, no trailing bytes);
//! 2. `manifest.validate()`;
//! 3. payload length and sha256 equal the manifest's;
//! 4. ed25519 signature over [`sad_common::wire::signed_bytes`] with the pinned key;
//! 5. version strictly greater than the running one (equal = already current);
//! 6. build the detector (`sad_models::bundle::detector_from_parts`, behind
//!    `catch_unwind` in case a model library panics on hostile input);
//! 7. persist, then swap.
//!
//! The payload is never parsed before steps 1–4 passed. On any failure the
//! running model is kept and the error names the step.
//!
//! # Guarantees and what survives `kill -9`
//!
//! - Scoring reads the current [`ModelSet`] lock-free ([`ModelManager::current`]);
//!   a swap replaces the whole set atomically (`ArcSwap`), so a scorer sees the
//!   old or the new model, never a mix, and never waits.
//! - A bundle is persisted (write `.<name>.bundle.tmp`, fsync, rename, fsync
//!   the directory) **before** it is swapped in: after `kill -9` the directory
//!   holds, per model, either the previous accepted bundle or the new one,
//!   never a partial file. [`ModelManager::open`] verifies every persisted
//!   bundle again (signature included when a key is pinned) and skips a bad one.
//!
//! # On-disk layout (`MODEL_PATH`)
//!
//! ```text
//! <dir>/<model name>.bundle      sad_common::frame::encode(ModelBundle) of the accepted version
//! <dir>/.<model name>.bundle.tmp transient while persisting; removed by open
//! ```
//!
//! Other files in the directory are ignored.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ed25519_dalek::{Signature, VerifyingKey};
use sad_common::frame::{FORMAT_VERSION, FrameError};
use sad_common::wire::{WireError, limits, sha256_hex, signed_bytes};
use sad_common::{ModelBundle, ModelManifest, ModelStatus, Wire, frame};
use sad_models::{Detector, ModelError};
use thiserror::Error;

use crate::metrics::AgentMetrics;

/// A model that is running: its manifest and its detector.
pub struct LoadedModel {
    /// The accepted manifest.
    pub manifest: ModelManifest,
    /// The detector built from the payload.
    pub detector: Arc<dyn Detector>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.manifest.name)
            .field("kind", &self.manifest.kind)
            .field("version", &self.manifest.version)
            .finish()
    }
}

/// Every running model, by name; replaced as a whole on each swap.
#[derive(Debug, Default)]
pub struct ModelSet {
    /// Running models by model name.
    pub models: BTreeMap<String, Arc<LoadedModel>>,
}

/// What an accepted offer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferOutcome {
    /// The bundle was verified, persisted and swapped in.
    Installed {
        /// Model name.
        name: String,
        /// The new running version.
        version: u64,
        /// The version it replaced, if any.
        previous: Option<u64>,
    },
    /// The same version already runs; nothing changed.
    AlreadyCurrent {
        /// Model name.
        name: String,
        /// The running version.
        version: u64,
    },
}

/// Why a bundle was refused or the directory could not be used; the running model is unchanged.
#[derive(Debug, Error)]
pub enum ModelManagerError {
    /// The bytes are not a bundle frame (empty, wrong version, too large, garbage, truncated).
    #[error("bundle frame cannot be decoded: {0}")]
    Decode(#[source] FrameError),
    /// The manifest breaks the wire rules.
    #[error("bundle manifest is invalid: {0}")]
    InvalidManifest(#[source] WireError),
    /// The payload does not match the manifest's length or sha256.
    #[error("bundle payload does not match the manifest: {0}")]
    PayloadMismatch(String),
    /// The bundle was not signed by the pinned key (or the signature is malformed).
    #[error("bundle signature does not verify with the pinned key: {0}")]
    BadSignature(String),
    /// No key is pinned, so signed updates cannot be trusted and are refused.
    #[error("no model signing key is pinned: refusing remote model {name}")]
    NoPinnedKey {
        /// Model name.
        name: String,
    },
    /// A key is pinned, so unsigned local bundles are refused.
    #[error("a signing key is pinned: refusing unsigned local model {name}")]
    UnsignedRefused {
        /// Model name.
        name: String,
    },
    /// The offered version is lower than the running one.
    #[error("model {name} version {offered} is older than the running version {running}")]
    OlderVersion {
        /// Model name.
        name: String,
        /// Offered version.
        offered: u64,
        /// Running version.
        running: u64,
    },
    /// The payload could not be turned into a detector.
    #[error("model {name} cannot be built: {source}")]
    Build {
        /// Model name.
        name: String,
        /// The model library's error.
        #[source]
        source: ModelError,
    },
    /// The model library panicked while building the detector.
    #[error("model {name} cannot be built: the model library panicked")]
    BuildPanicked {
        /// Model name.
        name: String,
    },
    /// Reading or writing the model directory failed.
    #[error("model directory {path}: {source}", path = .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ModelManagerError {
    /// A short, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelManagerError::Decode(_) => "decode",
            ModelManagerError::InvalidManifest(_) => "manifest",
            ModelManagerError::PayloadMismatch(_) => "payload_hash",
            ModelManagerError::BadSignature(_) => "signature",
            ModelManagerError::NoPinnedKey { .. } => "no_pinned_key",
            ModelManagerError::UnsignedRefused { .. } => "unsigned",
            ModelManagerError::OlderVersion { .. } => "older_version",
            ModelManagerError::Build { .. } | ModelManagerError::BuildPanicked { .. } => "build",
            ModelManagerError::Io { .. } => "io",
        }
    }
}

struct Inner {
    dir: PathBuf,
    pinned_key: Option<VerifyingKey>,
    metrics: Option<AgentMetrics>,
    current: ArcSwap<ModelSet>,
    /// Serialises offers so version checks and swaps do not race.
    update: Mutex<()>,
}

/// Verifies, persists and swaps models; cheap to clone.
#[derive(Clone)]
pub struct ModelManager {
    inner: Arc<Inner>,
}

/// Decodes a bundle frame without running the wire validation, so each check
/// can be made, in order, with its own error.
fn decode_unvalidated(bytes: &[u8]) -> Result<ModelBundle, FrameError> {
    let (&version, body) = bytes.split_first().ok_or(FrameError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    if bytes.len() > ModelBundle::MAX_BYTES {
        return Err(FrameError::TooLarge {
            what: ModelBundle::NAME,
            len: bytes.len(),
            max: ModelBundle::MAX_BYTES,
        });
    }
    let (bundle, rest): (ModelBundle, &[u8]) =
        postcard::take_from_bytes(body).map_err(|source| FrameError::Postcard {
            op: "decode",
            what: ModelBundle::NAME,
            source,
        })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing {
            what: ModelBundle::NAME,
            count: rest.len(),
        });
    }
    Ok(bundle)
}

/// Steps 2–4: manifest, payload hash, signature (when `key` is given).
fn verify(bundle: &ModelBundle, key: Option<&VerifyingKey>) -> Result<(), ModelManagerError> {
    bundle
        .manifest
        .validate()
        .map_err(ModelManagerError::InvalidManifest)?;
    let m = &bundle.manifest;
    if bundle.payload.len() as u64 != m.payload_len {
        return Err(ModelManagerError::PayloadMismatch(format!(
            "payload has {} bytes, the manifest says {}",
            bundle.payload.len(),
            m.payload_len
        )));
    }
    if sha256_hex(&bundle.payload) != m.payload_sha256 {
        return Err(ModelManagerError::PayloadMismatch(
            "sha256 differs from manifest.payload_sha256".into(),
        ));
    }
    if let Some(key) = key {
        if bundle.signature.len() > limits::MAX_SIGNATURE_BYTES {
            return Err(ModelManagerError::BadSignature("signature too long".into()));
        }
        let sig = Signature::from_slice(&bundle.signature)
            .map_err(|_| ModelManagerError::BadSignature("not a 64-byte signature".into()))?;
        key.verify_strict(&signed_bytes(m, &bundle.payload), &sig)
            .map_err(|_| ModelManagerError::BadSignature("signature mismatch".into()))?;
    }
    Ok(())
}

/// Step 6: builds the detector, turning a panic in the model library into an error.
fn build(manifest: &ModelManifest, payload: &[u8]) -> Result<Arc<dyn Detector>, ModelManagerError> {
    let name = manifest.name.clone();
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        sad_models::bundle::detector_from_parts(manifest, payload)
    })) {
        Ok(Ok(d)) => Ok(Arc::from(d)),
        Ok(Err(source)) => Err(ModelManagerError::Build { name, source }),
        Err(_) => Err(ModelManagerError::BuildPanicked { name }),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelManagerError + '_ {
    move |source| ModelManagerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ModelManager {
    /// Opens `dir` (created if missing) and loads every persisted bundle,
    /// verifying each again; a bundle that fails is logged and skipped.
    pub fn open(
        dir: &Path,
        pinned_key: Option<VerifyingKey>,
        metrics: Option<AgentMetrics>,
    ) -> Result<ModelManager, ModelManagerError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut models = BTreeMap::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if file.starts_with('.') && file.ends_with(".bundle.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if !file.ends_with(".bundle") || file.starts_with('.') {
                continue;
            }
            match Self::load_file(&path, pinned_key.as_ref()) {
                Ok(loaded) => {
                    let expected = format!("{}.bundle", loaded.manifest.name);
                    if file != expected {
                        tracing::warn!(path = %path.display(), name = %loaded.manifest.name, "skipping bundle stored under another model's name");
                        continue;
                    }
                    tracing::info!(name = %loaded.manifest.name, version = loaded.manifest.version, "loaded persisted model");
                    models.insert(loaded.manifest.name.clone(), Arc::new(loaded));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping persisted model bundle");
                }
            }
        }
        let mgr = ModelManager {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                pinned_key,
                metrics,
                current: ArcSwap::from_pointee(ModelSet { models }),
                update: Mutex::new(()),
            }),
        };
        mgr.publish_versions();
        Ok(mgr)
    }

    fn load_file(
        path: &Path,
        key: Option<&VerifyingKey>,
    ) -> Result<LoadedModel, ModelManagerError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let bundle = decode_unvalidated(&bytes).map_err(ModelManagerError::Decode)?;
        verify(&bundle, key)?;
        let detector = build(&bundle.manifest, &bundle.payload)?;
        Ok(LoadedModel {
            manifest: bundle.manifest,
            detector,
        })
    }

    /// The running models; lock-free, scoring never waits for an update.
    pub fn current(&self) -> Arc<ModelSet> {
        self.inner.current.load_full()
    }

    /// The directory bundles are persisted in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Name, kind and version of every running model.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.current()
            .models
            .values()
            .map(|m| ModelStatus {
                name: m.manifest.name.clone(),
                kind: m.manifest.kind,
                version: m.manifest.version,
            })
            .collect()
    }

    /// Running version of `name`, if any.
    pub fn version_of(&self, name: &str) -> Option<u64> {
        self.current().models.get(name).map(|m| m.manifest.version)
    }

    /// Verifies a framed [`ModelBundle`] received from the coordinator and, if it
    /// is newer, persists and swaps it in. See the module docs for the order of checks.
    pub fn offer(&self, frame_bytes: &[u8]) -> Result<OfferOutcome, ModelManagerError> {
        let result = self.offer_inner(frame_bytes);
        self.count(&result);
        result
    }

    fn offer_inner(&self, frame_bytes: &[u8]) -> Result<OfferOutcome, ModelManagerError> {
        let bundle = decode_unvalidated(frame_bytes).map_err(ModelManagerError::Decode)?;
        let Some(key) = self.inner.pinned_key.as_ref() else {
            // Check the manifest first so the error can name the model.
            verify(&bundle, None)?;
            return Err(ModelManagerError::NoPinnedKey {
                name: bundle.manifest.name,
            });
        };
        verify(&bundle, Some(key))?;
        self.install(bundle, frame_bytes.to_vec())
    }

    /// Installs an unsigned bundle (local `MODEL_PATH` files, tests); refused when a key is pinned.
    pub fn install_local(
        &self,
        manifest: ModelManifest,
        payload: Vec<u8>,
    ) -> Result<(), ModelManagerError> {
        let bundle = ModelBundle {
            manifest,
            payload,
            signature: Vec::new(),
        };
        let result = (|| {
            if self.inner.pinned_key.is_some() {
                verify(&bundle, None)?;
                return Err(ModelManagerError::UnsignedRefused {
                    name: bundle.manifest.name.clone(),
                });
            }
            verify(&bundle, None)?;
            let bytes = frame::encode(&bundle).map_err(ModelManagerError::Decode)?;
            self.install(bundle, bytes)
        })();
        self.count(&result);
        result.map(|_| ())
    }

    fn count(&self, result: &Result<OfferOutcome, ModelManagerError>) {
        let label = match result {
            Ok(OfferOutcome::Installed { name, version, .. }) => {
                tracing::info!(%name, version, "model installed");
                "accepted"
            }
            Ok(OfferOutcome::AlreadyCurrent { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, reason = e.reason(), "model bundle rejected, keeping the running model");
                "rejected"
            }
        };
        if let Some(m) = &self.inner.metrics {
            m.model_updates.with_label_values(&[label]).inc();
        }
    }

    /// Steps 5–7 for a verified bundle.
    fn install(
        &self,
        bundle: ModelBundle,
        frame_bytes: Vec<u8>,
    ) -> Result<OfferOutcome, ModelManagerError> {
        let _guard = self.inner.update.lock().unwrap_or_else(|p| p.into_inner());
        let name = bundle.manifest.name.clone();
        let version = bundle.manifest.version;
        let previous = self.version_of(&name);
        if let Some(running) = previous {
            if version == running {
                return Ok(OfferOutcome::AlreadyCurrent { name, version });
            }
            if version < running {
                return Err(ModelManagerError::OlderVersion {
                    name,
                    offered: version,
                    running,
                });
            }
        }
        let detector = build(&bundle.manifest, &bundle.payload)?;
        drop(bundle.payload);
        self.persist(&name, &frame_bytes)?;
        let loaded = Arc::new(LoadedModel {
            manifest: bundle.manifest,
            detector,
        });
        let current = self.current();
        let mut models = current.models.clone();
        models.insert(name.clone(), loaded);
        self.inner.current.store(Arc::new(ModelSet { models }));
        self.publish_versions();
        Ok(OfferOutcome::Installed {
            name,
            version,
            previous,
        })
    }

    /// Writes `dir/.<name>.bundle.tmp`, fsyncs it, renames it to `dir/<name>.bundle`, fsyncs the dir.
    fn persist(&self, name: &str, bytes: &[u8]) -> Result<(), ModelManagerError> {
        let dir = &self.inner.dir;
        let tmp = dir.join(format!(".{name}.bundle.tmp"));
        let dst = dir.join(format!("{name}.bundle"));
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(())
    }

    fn publish_versions(&self) {
        if let Some(m) = &self.inner.metrics {
            for s in self.statuses() {
                m.model_version
                    .with_label_values(&[s.name.as_str()])
                    .set(i64::try_from(s.version).unwrap_or(i64::MAX));
            }
        }
    }
}
