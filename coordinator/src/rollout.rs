//! Signed model rollout to the fleet: publish, canary, promote, roll back.
//!
//! A version is published as a signed, retained [`ModelBundle`] on
//! `{p}/models/{fleet}/{model}`; a canary publishes it on the group's topic
//! `{p}/models/{group}/{model}` instead, where the group's bundle wins over
//! the fleet's for agents of that group (see the agent's uplink). While a
//! canary runs, [`Rollout::tick`] compares the canary agents' heartbeats
//! (recent flag rate and score distribution) with the rest of the fleet's:
//! healthy for [`RolloutConfig::promote_after`] promotes the version to the
//! fleet topic and clears the group's; unhealthy for
//! [`RolloutConfig::unhealthy_checks`] checks in a row rolls back.
//!
//! A rollback never republishes an older version number (agents refuse
//! versions lower than the one they run): it saves the earlier payload as a
//! new, higher version whose manifest names what it `restores`, publishes
//! that to the fleet and clears the group topic, so canary agents step
//! forward onto the old model and everyone else gets the same model again
//! under the new number.
//!
//! # What survives `kill -9`
//!
//! The rollout state (active version per model, a running canary, history)
//! is a JSON file, `{data_dir}/rollout.json`, written to a temporary file,
//! fsynced and renamed after every change, and before the change is
//! published. After a restart, [`Rollout::reconcile`] publishes the active
//! and canary bundles again (agents treat an equal version as current), so a
//! crash between saving and publishing, or a broker that lost its retained
//! messages, heals at the next start. A canary's health clock restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sad_common::topics::Topics;
use sad_common::{ModelManifest, frame};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::registry::{ModelRegistry, RegistryError, now_ms};
use crate::fleet::AgentView;
use crate::signing::Signer25519;

/// Entries of history kept per model.
pub const MAX_HISTORY: usize = 200;

/// Why a rollout operation failed.
#[derive(Debug, Error)]
pub enum RolloutError {
    /// The model or version does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the current state (e.g. a canary runs).
    #[error("{0}")]
    Conflict(String),
    /// The operation is refused (older version, failed quality gate).
    #[error("{0}")]
    Refused(String),
    /// No MQTT publisher, or publishing failed.
    #[error("publish failed: {0}")]
    Publish(String),
    /// Reading or saving a model failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The state file could not be written.
    #[error("rollout state {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of rollout and canary health.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Fleet whose topic carries the active versions.
    pub fleet: String,
    /// Topic prefix.
    pub prefix: String,
    /// A canary healthy this long is promoted (default 5 min).
    pub promote_after: Duration,
    /// A canary no agent runs after this long is rolled back (default 10 min).
    pub canary_timeout: Duration,
    /// Consecutive unhealthy checks before an automatic rollback (default 2).
    pub unhealthy_checks: u32,
    /// Scores the canary agents must have summarised before a verdict (default 200).
    pub min_scores: u64,
    /// Canary flag rate may not exceed `ratio ×` the reference rate … (default 3).
    pub max_rate_ratio: f64,
    /// … nor the reference rate plus this margin (default 0.05); the larger bound applies.
    pub rate_margin: f64,
    /// Largest shift of the median calibrated score against the reference (default 0.35).
    pub max_median_shift: f64,
    /// Whether health checks promote and roll back on their own (default true).
    pub auto: bool,
    /// Period of the health check task (default 5 s).
    pub check_every: Duration,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            fleet: "default".into(),
            prefix: sad_common::topics::DEFAULT_PREFIX.into(),
            promote_after: Duration::from_secs(300),
            canary_timeout: Duration::from_secs(600),
            unhealthy_checks: 2,
            min_scores: 200,
            max_rate_ratio: 3.0,
            rate_margin: 0.05,
            max_median_shift: 0.35,
            auto: true,
            check_every: Duration::from_secs(5),
        }
    }
}

/// Publishes retained bundles (MQTT in `serve`, a recorder in tests).
pub trait BundlePublisher: Send + Sync {
    /// Publishes `bytes` retained on `topic`; empty bytes clear the retained message.
    fn publish_retained(&self, topic: &str, bytes: Vec<u8>) -> Result<(), String>;
}

/// One measurement of a canary against its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryCheck {
    /// When (ms since the epoch).
    pub ts_ms: i64,
    /// Canary agents running the candidate.
    pub canary_agents: usize,
    /// Scores summarised by them.
    pub canary_scores: u64,
    /// Their flag rate (score-count weighted).
    pub canary_rate: f64,
    /// Their median score (mean of the agents' medians).
    pub canary_median: f64,
    /// Reference agents (the rest of the fleet running the model).
    pub reference_agents: usize,
    /// Reference flag rate.
    pub reference_rate: f64,
    /// Reference median score.
    pub reference_median: f64,
    /// `healthy`, `unhealthy` or `waiting`.
    pub verdict: String,
    /// Why.
    pub reason: String,
}

/// A canary in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// The candidate version.
    pub version: u64,
    /// The fleet's active version when the canary started, if any.
    pub baseline: Option<u64>,
    /// The canary group.
    pub group: String,
    /// Start time (ms).
    pub started_ms: i64,
    /// Start of the current healthy streak (ms).
    pub healthy_since_ms: Option<i64>,
    /// Unhealthy checks in a row.
    pub unhealthy_count: u32,
    /// The latest check.
    pub last_check: Option<CanaryCheck>,
}

/// One thing that happened to a model's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When (ms since the epoch).
    pub ts_ms: i64,
    /// `published`, `canary`, `promoted`, `rolled_back`, `canary_cancelled`.
    pub action: String,
    /// The version concerned.
    pub version: u64,
    /// Fleet or group topic level it went to.
    pub target: String,
    /// Details (reason, restored version).
    pub detail: String,
}

/// Rollout state of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRollout {
    /// Version on the fleet topic.
    pub active: Option<u64>,
    /// A canary in progress.
    pub canary: Option<Canary>,
    /// Newest last, at most [`MAX_HISTORY`].
    pub history: Vec<RolloutEvent>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    models: BTreeMap<String, ModelRollout>,
}

/// How to publish a version.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOptions {
    /// Version to publish (default: the newest).
    #[serde(default)]
    pub version: Option<u64>,
    /// Canary group to publish to first (default: the whole fleet at once).
    #[serde(default)]
    pub canary_group: Option<String>,
    /// Publish even when the version failed its quality gate.
    #[serde(default)]
    pub force: bool,
}

/// What a health check decided.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryAction {
    /// Promote the canary of this model.
    Promote(String),
    /// Roll the canary of this model back, for this reason.
    Rollback(String, String),
}

/// The rollout manager.
pub struct Rollout {
    cfg: RolloutConfig,
    registry: Arc<ModelRegistry>,
    signer: Arc<Signer25519>,
    publisher: RwLock<Option<Arc<dyn BundlePublisher>>>,
    state: Mutex<Persisted>,
    path: PathBuf,
    topics: Topics,
    metrics: Option<crate::metrics::CoordinatorMetrics>,
}

fn gate_failed(m: &ModelManifest) -> bool {
    !crate::gate::publishable(m)
}

impl Rollout {
    /// Opens the state at `{data_dir}/rollout.json` and pins each model's
    /// active version as the registry's serving one. Blocking.
    pub fn open(
        data_dir: &Path,
        cfg: RolloutConfig,
        registry: Arc<ModelRegistry>,
        signer: Arc<Signer25519>,
    ) -> Result<Self, RolloutError> {
        let path = data_dir.join("rollout.json");
        let state: Persisted = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RolloutError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(source) => return Err(RolloutError::Io { path, source }),
        };
        let topics = Topics::new(&cfg.prefix)
            .map_err(|e| RolloutError::Refused(format!("topic prefix: {e}")))?;
        for (name, m) in &state.models {
            if let Some(v) = m.active
                && let Err(e) = registry.serve_version(name, v)
            {
                tracing::warn!(model = %name, version = v, error = %e, "active version cannot be loaded");
            }
        }
        Ok(Self {
            cfg,
            registry,
            signer,
            publisher: RwLock::new(None),
            state: Mutex::new(state),
            path,
            topics,
            metrics: None,
        })
    }

    /// Counts actions and exports active versions in `m`.
    pub fn with_metrics(mut self, m: crate::metrics::CoordinatorMetrics) -> Self {
        for (name, r) in self.all() {
            if let Some(v) = r.active {
                m.active_model_version
                    .with_label_values(&[&name])
                    .set(v as i64);
            }
        }
        self.metrics = Some(m);
        self
    }

    fn count(&self, action: &str, name: &str, active: Option<u64>) {
        if let Some(m) = &self.metrics {
            m.rollout_actions.with_label_values(&[action]).inc();
            if let Some(v) = active {
                m.active_model_version
                    .with_label_values(&[name])
                    .set(v as i64);
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    /// The signing key's public half, hex.
    pub fn public_key_hex(&self) -> String {
        self.signer.public_key_hex()
    }

    /// Sets where bundles are published.
    pub fn set_publisher(&self, p: Arc<dyn BundlePublisher>) {
        *self.publisher.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rollout state of `name` (default when never published).
    pub fn status(&self, name: &str) -> ModelRollout {
        self.lock().models.get(name).cloned().unwrap_or_default()
    }

    /// Every model's rollout state.
    pub fn all(&self) -> BTreeMap<String, ModelRollout> {
        self.lock().models.clone()
    }

    fn save(&self, st: &Persisted) -> Result<(), RolloutError> {
        use std::io::Write;
        let io = |source| RolloutError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(d) = self.path.parent()
            && let Ok(d) = std::fs::File::open(d)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn publisher(&self) -> Result<Arc<dyn BundlePublisher>, RolloutError> {
        self.publisher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| RolloutError::Publish("no mqtt connection configured".into()))
    }

    fn signed_frame(&self, name: &str, version: u64) -> Result<Vec<u8>, RolloutError> {
        let (manifest, payload) = self.registry.load_version(name, version)?;
        let bundle = self.signer.sign(manifest, payload);
        frame::encode_checked(&bundle).map_err(|e| RolloutError::Publish(e.to_string()))
    }

    fn topic(&self, target: &str, name: &str) -> Result<String, RolloutError> {
        self.topics
            .model(target, name)
            .map_err(|e| RolloutError::Refused(e.to_string()))
    }

    fn send(&self, target: &str, name: &str, bytes: Vec<u8>) -> Result<(), RolloutError> {
        let topic = self.topic(target, name)?;
        self.publisher()?
            .publish_retained(&topic, bytes)
            .map_err(RolloutError::Publish)
    }

    fn push_event(m: &mut ModelRollout, action: &str, version: u64, target: &str, detail: String) {
        m.history.push(RolloutEvent {
            ts_ms: now_ms(),
            action: action.into(),
            version,
            target: target.into(),
            detail,
        });
        if m.history.len() > MAX_HISTORY {
            let drop = m.history.len() - MAX_HISTORY;
            m.history.drain(..drop);
        }
    }

    /// Publishes a version of `name`: to the whole fleet, or to a canary
    /// group first. Refuses a version not newer than the active one, a
    /// version that failed its quality gate (unless `force`), and a second
    /// canary while one runs. Blocking.
    pub fn publish(&self, name: &str, opts: &PublishOptions) -> Result<ModelRollout, RolloutError> {
        let versions = self.registry.versions(name);
        let manifest = match opts.version {
            Some(v) => versions.iter().find(|m| m.version == v),
            None => versions.last(),
        }
        .cloned()
        .ok_or_else(|| {
            RolloutError::NotFound(match opts.version {
                Some(v) => format!("model {name} has no version {v}"),
                None => format!("model {name} not found"),
            })
        })?;
        let version = manifest.version;
        if gate_failed(&manifest) && !opts.force {
            return Err(RolloutError::Refused(format!(
                "{name} v{version} failed its quality gate ({}); publish with force to override",
                manifest.notes.as_deref().unwrap_or("see its manifest")
            )));
        }
        if let Some(g) = &opts.canary_group {
            sad_common::wire::validate_id("canary_group", g)
                .map_err(|e| RolloutError::Refused(e.to_string()))?;
            if *g == self.cfg.fleet {
                return Err(RolloutError::Refused(
                    "the canary group must differ from the fleet".into(),
                ));
            }
        }
        let bytes = self.signed_frame(name, version)?;
        let mut st = self.lock();
        let m = st.models.entry(name.to_string()).or_default();
        if let Some(c) = &m.canary {
            return Err(RolloutError::Conflict(format!(
                "a canary of {name} v{} runs in group {}; promote or roll it back first",
                c.version, c.group
            )));
        }
        if let Some(a) = m.active
            && version <= a
        {
            return Err(RolloutError::Refused(format!(
                "{name} v{version} is not newer than the active v{a}; agents refuse older versions (use rollback to restore an earlier model)"
            )));
        }
        let mut next = m.clone();
        let target = match &opts.canary_group {
            Some(g) => {
                next.canary = Some(Canary {
                    version,
                    baseline: m.active,
                    group: g.clone(),
                    started_ms: now_ms(),
                    healthy_since_ms: None,
                    unhealthy_count: 0,
                    last_check: None,
                });
                Self::push_event(&mut next, "canary", version, g, String::new());
                g.clone()
            }
            None => {
                next.active = Some(version);
                Self::push_event(
                    &mut next,
                    "published",
                    version,
                    &self.cfg.fleet,
                    String::new(),
                );
                self.cfg.fleet.clone()
            }
        };
        let old = std::mem::replace(m, next.clone());
        if let Err(e) = self.save(&st) {
            st.models.insert(name.to_string(), old);
            return Err(e);
        }
        drop(st);
        if next.canary.is_none() {
            self.registry.serve_version(name, version)?;
        }
        self.send(&target, name, bytes)?;
        self.count(
            if next.canary.is_some() {
                "canary"
            } else {
                "published"
            },
            name,
            next.active,
        );
        tracing::info!(model = %name, version, %target, "model published");
        Ok(next)
    }

    /// Promotes the running canary of `name` to the fleet. Blocking.
    pub fn promote(&self, name: &str, reason: &str) -> Result<ModelRollout, RolloutError> {
        let canary = self
            .status(name)
            .canary
            .ok_or_else(|| RolloutError::Conflict(format!("no canary of {name} runs")))?;
        let bytes = self.signed_frame(name, canary.version)?;
        let next = {
            let mut st = self.lock();
            let m = st.models.entry(name.to_string()).or_default();
            if m.canary.as_ref().map(|c| c.version) != Some(canary.version) {
                return Err(RolloutError::Conflict(format!(
                    "the canary of {name} changed meanwhile"
                )));
            }
            let old = m.clone();
            m.canary = None;
            m.active = Some(canary.version);
            Self::push_event(
                m,
                "promoted",
                canary.version,
                &self.cfg.fleet,
                reason.to_string(),
            );
            let next = m.clone();
            if let Err(e) = self.save(&st) {
                st.models.insert(name.to_string(), old);
                return Err(e);
            }
            next
        };
        self.registry.serve_version(name, canary.version)?;
        self.send(&self.cfg.fleet, name, bytes)?;
        self.send(&canary.group, name, Vec::new())?;
        self.count("promoted", name, next.active);
        tracing::info!(model = %name, version = canary.version, reason, "canary promoted");
        Ok(next)
    }

    /// Rolls `name` back: a running canary is withdrawn and the fleet gets
    /// its baseline again; without a canary, the fleet gets `to_version`
    /// (default: the active version before the current one). Either way the
    /// restored payload goes out as a new, higher version. Blocking.
    pub fn rollback(
        &self,
        name: &str,
        to_version: Option<u64>,
        reason: &str,
    ) -> Result<ModelRollout, RolloutError> {
        let cur = self.status(name);
        let (restore, group, from) = match &cur.canary {
            Some(c) => (to_version.or(c.baseline), Some(c.group.clone()), c.version),
            None => {
                let active = cur
                    .active
                    .ok_or_else(|| RolloutError::Conflict(format!("{name} was never published")))?;
                let earlier = to_version.or_else(|| previous_active(&cur, active));
                (
                    Some(earlier.ok_or_else(|| {
                        RolloutError::Conflict(format!(
                            "{name} has no earlier published version to roll back to"
                        ))
                    })?),
                    None,
                    active,
                )
            }
        };
        let mut new_version = None;
        if let Some(restore) = restore {
            // What the restored version itself restores, so the chain names the original.
            let (mut manifest, payload) = self.registry.load_version(name, restore)?;
            let original = manifest.restores.unwrap_or(restore);
            manifest.version = self.registry.next_version(name);
            manifest.restores = Some(original);
            manifest.created_ms = now_ms();
            manifest.notes = Some(format!(
                "rollback of v{from} to the model of v{original}: {reason}"
            ));
            let entry = self.registry.save(manifest, payload)?;
            new_version = Some(entry.manifest.version);
        }
        let bytes = match new_version {
            Some(v) => Some(self.signed_frame(name, v)?),
            None => None,
        };
        let next = {
            let mut st = self.lock();
            let m = st.models.entry(name.to_string()).or_default();
            let old = m.clone();
            m.canary = None;
            if let Some(v) = new_version {
                m.active = Some(v);
            }
            Self::push_event(
                m,
                "rolled_back",
                new_version.unwrap_or(from),
                &self.cfg.fleet,
                format!(
                    "from v{from}{}: {reason}",
                    restore
                        .map(|r| format!(" to the model of v{r}"))
                        .unwrap_or_default()
                ),
            );
            let next = m.clone();
            if let Err(e) = self.save(&st) {
                st.models.insert(name.to_string(), old);
                return Err(e);
            }
            next
        };
        if let (Some(v), Some(bytes)) = (new_version, bytes) {
            self.registry.serve_version(name, v)?;
            self.send(&self.cfg.fleet, name, bytes)?;
        }
        if let Some(g) = group {
            self.send(&g, name, Vec::new())?;
        }
        self.count("rolled_back", name, next.active);
        tracing::warn!(model = %name, from, restored = ?restore, new_version = ?new_version, reason, "model rolled back");
        Ok(next)
    }

    /// Publishes every active and canary bundle again (after a restart or a
    /// broker that lost its retained messages). Blocking.
    pub fn reconcile(&self) -> Result<usize, RolloutError> {
        let all = self.all();
        let mut n = 0;
        for (name, m) in all {
            if let Some(v) = m.active {
                self.send(&self.cfg.fleet, &name, self.signed_frame(&name, v)?)?;
                n += 1;
            }
            if let Some(c) = &m.canary {
                self.send(&c.group, &name, self.signed_frame(&name, c.version)?)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Checks every running canary against the fleet at `now_ms`, records the
    /// checks, and returns what should happen (nothing is published here).
    pub fn check(&self, agents: &[AgentView], now_ms: i64) -> Vec<CanaryAction> {
        let mut actions = Vec::new();
        let mut st = self.lock();
        for (name, m) in st.models.iter_mut() {
            let Some(c) = m.canary.as_mut() else { continue };
            let check = measure(&self.cfg, name, c, agents, now_ms);
            match check.verdict.as_str() {
                "healthy" => {
                    c.unhealthy_count = 0;
                    let since = *c.healthy_since_ms.get_or_insert(now_ms);
                    if now_ms - since >= self.cfg.promote_after.as_millis() as i64 {
                        actions.push(CanaryAction::Promote(name.clone()));
                    }
                }
                "unhealthy" => {
                    c.healthy_since_ms = None;
                    c.unhealthy_count += 1;
                    if c.unhealthy_count >= self.cfg.unhealthy_checks {
                        actions.push(CanaryAction::Rollback(name.clone(), check.reason.clone()));
                    }
                }
                _ => {
                    if now_ms - c.started_ms >= self.cfg.canary_timeout.as_millis() as i64 {
                        actions.push(CanaryAction::Rollback(
                            name.clone(),
                            format!(
                                "no verdict within {} s: {}",
                                self.cfg.canary_timeout.as_secs(),
                                check.reason
                            ),
                        ));
                    }
                }
            }
            c.last_check = Some(check);
        }
        actions
    }

    /// One health-check round: [`Rollout::check`], then promote or roll back
    /// when `auto` is on. Returns what was done. Blocking.
    pub fn tick(&self, agents: &[AgentView], now_ms: i64) -> Vec<CanaryAction> {
        let actions = self.check(agents, now_ms);
        if !self.cfg.auto {
            return actions;
        }
        for a in &actions {
            let r = match a {
                CanaryAction::Promote(name) => self.promote(name, "canary healthy").map(|_| ()),
                CanaryAction::Rollback(name, reason) => self
                    .rollback(name, None, &format!("canary unhealthy: {reason}"))
                    .map(|_| ()),
            };
            if let Err(e) = r {
                tracing::error!(action = ?a, error = %e, "automatic rollout action failed");
            }
        }
        actions
    }
}

/// The active version before `active` in the history, if any.
fn previous_active(m: &ModelRollout, active: u64) -> Option<u64> {
    m.history
        .iter()
        .rev()
        .filter(|e| matches!(e.action.as_str(), "published" | "promoted" | "rolled_back"))
        .map(|e| e.version)
        .find(|v| *v < active)
}

/// Score-count weighted flag rate and mean median of some agents' summaries.
fn summarise<'a>(agents: impl Iterator<Item = &'a AgentView>) -> (usize, u64, f64, f64) {
    let (mut n, mut scores, mut flagged, mut med) = (0usize, 0u64, 0.0, 0.0);
    for a in agents {
        if let Some(s) = &a.heartbeat.score_summary
            && s.count > 0
        {
            n += 1;
            scores += s.count;
            flagged += s.alert_rate * s.count as f64;
            med += s.p50;
        }
    }
    if n == 0 {
        return (0, 0, 0.0, 0.0);
    }
    (n, scores, flagged / scores as f64, med / n as f64)
}

fn runs(a: &AgentView, name: &str, version: Option<u64>) -> bool {
    a.heartbeat
        .models
        .iter()
        .any(|m| m.name == name && version.is_none_or(|v| m.version == v))
}

/// Measures a canary: its agents (online, in the group, running the
/// candidate) against the reference (online agents outside the group running
/// the model).
pub fn measure(
    cfg: &RolloutConfig,
    name: &str,
    c: &Canary,
    agents: &[AgentView],
    now_ms: i64,
) -> CanaryCheck {
    let in_group = |a: &&AgentView| a.online && a.heartbeat.group.as_deref() == Some(&c.group);
    let canary = agents
        .iter()
        .filter(in_group)
        .filter(|a| runs(a, name, Some(c.version)));
    let (ca, cs, crate_, cmed) = summarise(canary);
    let reference = agents
        .iter()
        .filter(|a| a.online && a.heartbeat.group.as_deref() != Some(&c.group))
        .filter(|a| runs(a, name, None));
    let (ra, rs, rrate, rmed) = summarise(reference);
    let mut check = CanaryCheck {
        ts_ms: now_ms,
        canary_agents: ca,
        canary_scores: cs,
        canary_rate: crate_,
        canary_median: cmed,
        reference_agents: ra,
        reference_rate: rrate,
        reference_median: rmed,
        verdict: "waiting".into(),
        reason: String::new(),
    };
    if ca == 0 {
        check.reason = format!("no agent of group {} reports v{} yet", c.group, c.version);
        return check;
    }
    if cs < cfg.min_scores {
        check.reason = format!("{cs} of {} scores needed", cfg.min_scores);
        return check;
    }
    // Without a reference (the whole fleet is the canary), only the absolute bound applies.
    let (ref_rate, ref_med) = if rs >= cfg.min_scores {
        (rrate, Some(rmed))
    } else {
        (0.0, None)
    };
    let max_rate = (ref_rate * cfg.max_rate_ratio).max(ref_rate + cfg.rate_margin);
    if crate_ > max_rate {
        check.verdict = "unhealthy".into();
        check.reason =
            format!("flag rate {crate_:.3} above {max_rate:.3} (reference {ref_rate:.3})");
    } else if let Some(m) = ref_med
        && (cmed - m).abs() > cfg.max_median_shift
    {
        check.verdict = "unhealthy".into();
        check.reason = format!("median score {cmed:.3} against {m:.3}");
    } else {
        check.verdict = "healthy".into();
        check.reason = format!("flag rate {crate_:.3} within {max_rate:.3}");
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use sad_common::wire::{ModelStatus, ScoreSummary};
    use sad_common::{Heartbeat, ModelBundle, ModelKind};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Vec<u8>)>>);

    impl BundlePublisher for Recorder {
        fn publish_retained(&self, topic: &str, bytes: Vec<u8>) -> Result<(), String> {
            self.0.lock().unwrap().push((topic.to_string(), bytes));
            Ok(())
        }
    }

    impl Recorder {
        /// Retained state per topic: the last publish, `None` when cleared.
        fn retained(&self, topic: &str) -> Option<ModelBundle> {
            let v = self.0.lock().unwrap();
            let (_, b) = v.iter().rev().find(|(t, _)| t == topic)?;
            if b.is_empty() {
                None
            } else {
                Some(frame::decode(b).unwrap())
            }
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        registry: Arc<ModelRegistry>,
        rollout: Rollout,
        rec: Arc<Recorder>,
    }

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            promote_after: Duration::from_secs(10),
            canary_timeout: Duration::from_secs(60),
            min_scores: 100,
            ..RolloutConfig::default()
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(ModelRegistry::open(dir.path().join("models")).unwrap());
        let signer = Arc::new(Signer25519::load_or_generate(dir.path()).unwrap());
        let rollout = Rollout::open(dir.path(), cfg(), registry.clone(), signer).unwrap();
        let rec = Arc::new(Recorder::default());
        rollout.set_publisher(rec.clone());
        Fixture {
            _dir: dir,
            registry,
            rollout,
            rec,
        }
    }

    const M: &str = crate::api::registry::DEFAULT_MODEL;

    fn new_version(f: &Fixture, gate: Option<f64>) -> u64 {
        let (mut m, p) = crate::api::registry::train_default().unwrap();
        if let Some(g) = gate {
            m.training
                .metrics
                .insert(crate::gate::GATE_PASSED.into(), g);
        }
        f.registry.save(m, p).unwrap().manifest.version
    }

    fn agent(id: &str, group: Option<&str>, version: u64, rate: f64, p50: f64) -> AgentView {
        AgentView {
            agent_id: id.into(),
            online: true,
            last_seen_ms: 0,
            heartbeat: Heartbeat {
                agent_id: id.into(),
                ts_ms: 0,
                online: true,
                uptime_s: 1,
                models: vec![ModelStatus {
                    name: M.into(),
                    kind: ModelKind::IsolationForest,
                    version,
                }],
                events_processed: 1000,
                anomalies: 0,
                bad_input: 0,
                outbox_depth: 0,
                outbox_bytes: 0,
                rss_bytes: 0,
                group: group.map(String::from),
                score_summary: Some(ScoreSummary {
                    count: 500,
                    mean: p50,
                    p50,
                    p95: p50 + 0.2,
                    p99: p50 + 0.3,
                    alert_rate: rate,
                }),
            },
        }
    }

    fn canary() -> PublishOptions {
        PublishOptions {
            canary_group: Some("canary".into()),
            ..Default::default()
        }
    }

    fn fleet_topic() -> String {
        format!("sad/v1/models/default/{M}")
    }

    fn group_topic() -> String {
        format!("sad/v1/models/canary/{M}")
    }

    #[test]
    fn publishing_signs_the_bundle_and_refuses_older_versions_and_failed_gates() {
        let f = fixture();
        let st = f.rollout.publish(M, &PublishOptions::default()).unwrap();
        assert_eq!(st.active, Some(1));
        let b = f.rec.retained(&fleet_topic()).unwrap();
        assert_eq!(b.manifest.version, 1);
        let sig = ed25519_dalek::Signature::from_slice(&b.signature).unwrap();
        use ed25519_dalek::Verifier;
        f.rollout
            .signer
            .verifying_key()
            .verify(&b.signed_bytes(), &sig)
            .unwrap();
        let again = f.rollout.publish(M, &PublishOptions::default());
        assert!(matches!(again, Err(RolloutError::Refused(_))), "{again:?}");
        let bad = new_version(&f, Some(0.0));
        let refused = f.rollout.publish(M, &PublishOptions::default());
        assert!(
            matches!(&refused, Err(RolloutError::Refused(m)) if m.contains("quality gate")),
            "{refused:?}"
        );
        let forced = f
            .rollout
            .publish(
                M,
                &PublishOptions {
                    force: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(forced.active, Some(bad));
        assert_eq!(f.registry.get(M).unwrap().manifest.version, bad);
    }

    #[test]
    fn a_healthy_canary_is_promoted_after_its_quiet_period() {
        let f = fixture();
        f.rollout.publish(M, &PublishOptions::default()).unwrap();
        let v2 = new_version(&f, Some(1.0));
        let st = f.rollout.publish(M, &canary()).unwrap();
        assert_eq!(st.active, Some(1));
        assert_eq!(f.rec.retained(&group_topic()).unwrap().manifest.version, v2);
        assert_eq!(f.rec.retained(&fleet_topic()).unwrap().manifest.version, 1);
        // detect keeps serving the fleet's version during the canary
        assert_eq!(f.registry.get(M).unwrap().manifest.version, 1);
        // a second publish is refused while the canary runs
        assert!(matches!(
            f.rollout.publish(M, &PublishOptions::default()),
            Err(RolloutError::Conflict(_))
        ));
        let agents = vec![
            agent("c1", Some("canary"), v2, 0.02, 0.4),
            agent("a1", None, 1, 0.015, 0.38),
            agent("a2", None, 1, 0.01, 0.41),
        ];
        let t0 = now_ms();
        assert!(f.rollout.tick(&agents, t0).is_empty());
        assert!(f.rollout.tick(&agents, t0 + 5_000).is_empty());
        let done = f.rollout.tick(&agents, t0 + 10_000);
        assert_eq!(done, vec![CanaryAction::Promote(M.into())]);
        let st = f.rollout.status(M);
        assert_eq!((st.active, st.canary), (Some(v2), None));
        assert_eq!(f.rec.retained(&fleet_topic()).unwrap().manifest.version, v2);
        assert!(
            f.rec.retained(&group_topic()).is_none(),
            "group topic cleared"
        );
        assert_eq!(f.registry.get(M).unwrap().manifest.version, v2);
    }

    #[test]
    fn an_alerting_canary_is_rolled_back_under_a_new_higher_version() {
        let f = fixture();
        f.rollout.publish(M, &PublishOptions::default()).unwrap();
        let v2 = new_version(&f, None);
        f.rollout.publish(M, &canary()).unwrap();
        let agents = vec![
            agent("c1", Some("canary"), v2, 0.97, 0.9),
            agent("a1", None, 1, 0.01, 0.4),
        ];
        let t0 = now_ms();
        assert!(
            f.rollout.tick(&agents, t0).is_empty(),
            "one bad check is not enough"
        );
        let done = f.rollout.tick(&agents, t0 + 1000);
        assert!(
            matches!(&done[..], [CanaryAction::Rollback(m, _)] if m == M),
            "{done:?}"
        );
        let st = f.rollout.status(M);
        let v3 = st.active.unwrap();
        assert!(v3 > v2 && st.canary.is_none());
        let b = f.rec.retained(&fleet_topic()).unwrap();
        assert_eq!((b.manifest.version, b.manifest.restores), (v3, Some(1)));
        let (_, p1) = f.registry.load_version(M, 1).unwrap();
        assert_eq!(b.payload, p1, "the restored payload is version 1's");
        assert!(f.rec.retained(&group_topic()).is_none());
        assert_eq!(st.history.last().unwrap().action, "rolled_back");
    }

    #[test]
    fn a_canary_nobody_runs_is_rolled_back_after_the_timeout_and_waits_before() {
        let f = fixture();
        f.rollout.publish(M, &PublishOptions::default()).unwrap();
        new_version(&f, None);
        f.rollout.publish(M, &canary()).unwrap();
        let agents = vec![agent("a1", None, 1, 0.01, 0.4)];
        let t0 = now_ms();
        assert!(f.rollout.tick(&agents, t0 + 30_000).is_empty());
        let c = f.rollout.status(M).canary.unwrap();
        assert_eq!(c.last_check.unwrap().verdict, "waiting");
        let done = f.rollout.tick(&agents, t0 + 61_000);
        assert!(
            matches!(&done[..], [CanaryAction::Rollback(..)]),
            "{done:?}"
        );
    }

    #[test]
    fn manual_rollback_restores_the_previous_active_and_state_survives_a_restart() {
        let f = fixture();
        f.rollout.publish(M, &PublishOptions::default()).unwrap();
        let v2 = new_version(&f, None);
        f.rollout.publish(M, &PublishOptions::default()).unwrap();
        let st = f.rollout.rollback(M, None, "operator").unwrap();
        let v3 = st.active.unwrap();
        assert!(v3 > v2);
        assert_eq!(f.registry.manifest(M, v3).unwrap().restores, Some(1));
        // restart: the active version is pinned over a newer unpublished one,
        // and reconcile republishes it
        let dir = f._dir.path();
        new_version(&f, None);
        let registry = Arc::new(ModelRegistry::open(dir.join("models")).unwrap());
        let signer = Arc::new(Signer25519::load_or_generate(dir).unwrap());
        let r2 = Rollout::open(dir, cfg(), registry.clone(), signer).unwrap();
        assert_eq!(r2.status(M).active, Some(v3));
        assert_eq!(
            registry.get(M).unwrap().manifest.version,
            v3,
            "pinned over the newer v4"
        );
        let rec = Arc::new(Recorder::default());
        r2.set_publisher(rec.clone());
        assert_eq!(r2.reconcile().unwrap(), 1);
        assert_eq!(rec.retained(&fleet_topic()).unwrap().manifest.version, v3);
    }
}
