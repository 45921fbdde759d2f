//! The durable outbox: every alert the agent raises, kept in sled until the
//! coordinator acknowledges it.
//!
//! # Guarantees
//!
//! - [`Outbox::append`] assigns each alert the next `seq`, writes the alerts
//!   and the new `last_seq` in **one sled transaction**, flushes (fsync) and
//!   only then returns. An alert counts as raised once `append` returned.
//! - **What survives `kill -9`** (and power loss, as far as the disk honours
//!   fsync): every alert `append` returned a seq for, and the `last_seq` that
//!   goes with it. A crash during `append` leaves either all of that call's
//!   alerts or none. A `seq` is never reused: `open` recovers `last_seq` as
//!   `max(meta.last_seq, largest key)`.
//! - [`Outbox::pending`] (what the uplink sends) returns only alerts whose
//!   `append` has flushed: sled makes a transaction readable before it is on
//!   disk, and an alert sent in that window and then lost to `kill -9` got its
//!   seq again after the restart, on a re-raised copy with a new episode id:
//!   two different payloads under one `alert_id` (seen once in 1,000 kills).
//! - [`Outbox::ack`] removes alerts with `seq <= up_to_seq`. It is not flushed
//!   on its own (sled flushes in the background and with the next append), so
//!   after a crash an acked alert may come back and be sent again; the
//!   coordinator dedupes by `alert_id`. Nothing unacked is ever removed,
//!   except by the full-outbox drop policy below.
//!
//! # Full outbox
//!
//! The outbox is bounded by `max_bytes` (keys plus framed values). When an
//! append would exceed it, existing alerts are dropped first — **lowest
//! severity first, oldest (smallest seq) first within a severity** — just
//! until the new alerts fit; the new alerts themselves are never dropped.
//! Every drop is counted in `anomaly_detector_outbox_dropped_total{severity}`
//! and in [`Outbox::dropped`] (persisted). An append whose alerts alone exceed
//! `max_bytes` is refused with [`OutboxError::TooLarge`].
//!
//! # Damaged files
//!
//! - If sled refuses the directory as corrupt (or panics on it), `open`
//!   moves it to `<path>.corrupt-<unix ms>`, copies every alert and meta
//!   entry sled can still read into a fresh database at `path` and logs an
//!   error naming both directories ([`crate::storage::open_recovering`]).
//!   The agent starts instead of crash-looping; the damaged copy stays for
//!   the operator (`outbox verify --data-dir <path>.corrupt-…` reads it if
//!   sled can).
//! - sled recovers a log whose tail is damaged by silently keeping the state
//!   before the damage, which could hand out seqs again and make the
//!   coordinator drop new alerts as duplicates. Each append therefore also
//!   writes the last seq to `<path>/last_seq.hwm` (not fsynced: it is a
//!   cross-check, not the record). When it is ahead of what sled recovered,
//!   `open` logs the lost seq range as an error and continues after it.
//! - Both count in [`Outbox::recoveries`] (persisted, shown by `outbox verify`).
//!
//! # On-disk layout (sled database at `path`)
//!
//! ```text
//! tree "alerts": key = seq as u64 big-endian (8 bytes, so keys sort by seq)
//!                value = sad_common::frame::encode(Alert)  ([version byte] ++ postcard)
//! tree "meta":   "last_seq" = u64 big-endian, the highest seq ever assigned
//!                "dropped"  = u64 big-endian, alerts dropped by the full-outbox policy
//!                "recoveries" = u64 big-endian, see "Damaged files"
//!                "mark/{key}" = u64 big-endian, a source position written in the
//!                same transaction as the alerts it covers (`append_marked`)
//! file "last_seq.hwm": last seq assigned, u64 big-endian, then its bitwise complement
//! ```
//!
//! `append` blocks on an fsync: call it from `spawn_blocking` or a dedicated
//! thread, not directly on an async worker.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sad_common::wire::Severity;
use sad_common::{Alert, frame};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use thiserror::Error;
use tokio::sync::Notify;

use crate::metrics::AgentMetrics;

/// Default outbox bound: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

const META_LAST_SEQ: &[u8] = b"last_seq";
const META_DROPPED: &[u8] = b"dropped";
const META_RECOVERIES: &[u8] = b"recoveries";
/// The high-water mark file inside the database directory (see the module docs).
pub const HWM_FILE: &str = "last_seq.hwm";
/// sled's page cache; small, the outbox is written once and read once or twice.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// How many problems [`VerifyReport`] lists in detail.
const MAX_LISTED_PROBLEMS: usize = 100;

/// Where the outbox lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Directory of the sled database (default `./outbox`).
    pub path: PathBuf,
    /// Bound on keys plus values, in bytes (default 64 MiB).
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            path: PathBuf::from("./outbox"),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why an outbox operation failed.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// sled failed (I/O, corruption it detected, lock held by another process).
    #[error("outbox storage at {path}: {source}", path = .path.display())]
    Storage {
        /// The database directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The configuration cannot work.
    #[error("invalid outbox config: {0}")]
    Config(String),
    /// An alert could not be encoded (it breaks the wire rules).
    #[error("cannot store alert: {0}")]
    Encode(#[from] frame::FrameError),
    /// The alerts of one append alone exceed `max_bytes`.
    #[error("append of {needed} bytes exceeds the outbox bound of {max_bytes} bytes")]
    TooLarge {
        /// Bytes the append needs.
        needed: u64,
        /// The configured bound.
        max_bytes: u64,
    },
    /// A stored entry cannot be read back.
    #[error("outbox entry {key} is corrupt: {reason}")]
    Corrupt {
        /// Hex of the key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Result of [`Outbox::verify`]: counts and every problem found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// Entries in the `alerts` tree.
    pub entries: u64,
    /// Entries that decoded and passed every check.
    pub valid: u64,
    /// Bytes held (keys plus values).
    pub bytes: u64,
    /// Valid entries by severity.
    pub by_severity: BTreeMap<Severity, u64>,
    /// Smallest key, if any.
    pub first_seq: Option<u64>,
    /// Largest key, if any.
    pub max_key: Option<u64>,
    /// `last_seq` stored in `meta`.
    pub meta_last_seq: u64,
    /// Alerts dropped by the full-outbox policy (persisted counter).
    pub dropped: u64,
    /// Times the outbox was recovered from damage (persisted counter).
    pub recoveries: u64,
    /// Agent id of the stored alerts (of the first valid one).
    pub agent_id: Option<String>,
    /// Total problems found.
    pub problem_count: u64,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(p);
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |s: Option<u64>| s.map_or("-".to_string(), |v| v.to_string());
        writeln!(
            f,
            "agent {}: entries {} (valid {}), {} bytes, seq {}..{}, meta last_seq {}, dropped {}, recoveries {}",
            self.agent_id.as_deref().unwrap_or("-"),
            self.entries,
            self.valid,
            self.bytes,
            seq(self.first_seq),
            seq(self.max_key),
            self.meta_last_seq,
            self.dropped,
            self.recoveries
        )?;
        let sev: Vec<String> = self
            .by_severity
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        writeln!(f, "by severity: {}", sev.join(", "))?;
        if self.is_ok() {
            write!(f, "ok")
        } else {
            writeln!(f, "{} problem(s):", self.problem_count)?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            if self.problem_count > self.problems.len() as u64 {
                writeln!(
                    f,
                    "  ... and {} more",
                    self.problem_count - self.problems.len() as u64
                )?;
            }
            write!(f, "FAILED")
        }
    }
}

/// Mutable bookkeeping, guarded by one mutex so appends, acks and drops are serialised.
struct State {
    last_seq: u64,
    dropped: u64,
    /// Per severity: every entry of that severity has `seq >= scan_from`.
    /// Valid because entries leave only oldest-first per severity (drops) or
    /// as a prefix (acks), and new entries get larger seqs.
    scan_from: [u64; 3],
}

struct Inner {
    path: PathBuf,
    agent_id: String,
    max_bytes: u64,
    db: sled::Db,
    alerts: sled::Tree,
    meta: sled::Tree,
    state: Mutex<State>,
    depth: AtomicU64,
    bytes: AtomicU64,
    last_seq: AtomicU64,
    dropped: AtomicU64,
    notify: Notify,
    metrics: Option<AgentMetrics>,
    /// Times the database was found damaged or behind its high-water mark (persisted).
    recoveries: u64,
}

/// The sled-backed outbox; cheap to clone (an `Arc` inside), `Send + Sync`.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Prefix of source positions in the meta tree.
const META_MARK_PREFIX: &[u8] = b"mark/";

fn mark_key(key: &str) -> Vec<u8> {
    let mut k = META_MARK_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn read_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn sev_index(s: Severity) -> usize {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// The last seq recorded in `dir/last_seq.hwm`, if the file is intact.
fn read_hwm(dir: &Path) -> Option<u64> {
    let b = std::fs::read(dir.join(HWM_FILE)).ok()?;
    let seq = read_be(b.get(..8)?)?;
    (read_be(b.get(8..)?)? == !seq).then_some(seq)
}

/// Records `seq` in `dir/last_seq.hwm` (seq and its complement, so a torn
/// write is recognised); not fsynced, a failure only loses the cross-check.
fn write_hwm(dir: &Path, seq: u64) {
    let mut b = be(seq).to_vec();
    b.extend_from_slice(&be(!seq));
    if let Err(e) = std::fs::write(dir.join(HWM_FILE), b) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot write the outbox high-water mark");
    }
}

impl Outbox {
    /// Opens (or creates) the outbox at `cfg.path` and recovers `last_seq`, depth and bytes.
    pub fn open(
        cfg: &OutboxConfig,
        agent_id: &str,
        metrics: Option<AgentMetrics>,
    ) -> Result<Outbox, OutboxError> {
        sad_common::wire::validate_id("agent_id", agent_id)
            .map_err(|e| OutboxError::Config(e.to_string()))?;
        if cfg.max_bytes == 0 {
            return Err(OutboxError::Config("max_bytes must be positive".into()));
        }
        let path = cfg.path.clone();
        let storage = |source| OutboxError::Storage {
            path: path.clone(),
            source,
        };
        // Read before sled can move the directory aside.
        let hwm = read_hwm(&cfg.path);
        let opened = crate::storage::open_recovering(
            &sled::Config::new()
                .path(&cfg.path)
                .cache_capacity(CACHE_BYTES)
                .flush_every_ms(Some(1000)),
            &cfg.path,
        )
        .map_err(storage)?;
        let db = opened.db;
        let alerts = db.open_tree("alerts").map_err(storage)?;
        let meta = db.open_tree("meta").map_err(storage)?;
        let mut recovered = opened.recovery.is_some();
        if let Some(r) = &opened.recovery {
            tracing::error!(
                path = %cfg.path.display(),
                moved_to = %r.moved_to.display(),
                reason = %r.reason,
                salvaged_entries = r.salvaged,
                incomplete = ?r.incomplete,
                "outbox database is damaged: moved it aside, kept every entry sled could read, starting on a fresh database"
            );
        }
        let meta_u64 = |k: &[u8]| -> Result<u64, OutboxError> {
            Ok(meta
                .get(k)
                .map_err(storage)?
                .and_then(|v| read_be(&v))
                .unwrap_or(0))
        };
        let meta_last = meta_u64(META_LAST_SEQ)?;
        let dropped = meta_u64(META_DROPPED)?;
        let mut depth = 0u64;
        let mut bytes = 0u64;
        let mut max_key = 0u64;
        for kv in alerts.iter() {
            let (k, v) = kv.map_err(storage)?;
            depth += 1;
            bytes += entry_bytes(&k, &v);
            if let Some(seq) = read_be(&k) {
                max_key = max_key.max(seq);
            }
        }
        let mut last_seq = meta_last.max(max_key);
        if let Some(h) = hwm.filter(|h| *h > last_seq) {
            tracing::error!(
                path = %cfg.path.display(),
                recovered_last_seq = last_seq,
                assigned_last_seq = h,
                "outbox lost writes: sled recovered an older state than the last append; unacked alerts with seq in recovered_last_seq+1..=assigned_last_seq are lost. Seqs continue after assigned_last_seq so no alert id is reused"
            );
            last_seq = h;
            recovered = true;
        }
        let mut recoveries = meta_u64(META_RECOVERIES)?;
        if recovered {
            recoveries += 1;
            meta.insert(META_LAST_SEQ, &be(last_seq)).map_err(storage)?;
            meta.insert(META_RECOVERIES, &be(recoveries))
                .map_err(storage)?;
            db.flush().map_err(storage)?;
            write_hwm(&cfg.path, last_seq);
        }
        let inner = Inner {
            path: cfg.path.clone(),
            agent_id: agent_id.to_string(),
            max_bytes: cfg.max_bytes,
            db,
            alerts,
            meta,
            state: Mutex::new(State {
                last_seq,
                dropped,
                scan_from: [0; 3],
            }),
            depth: AtomicU64::new(depth),
            bytes: AtomicU64::new(bytes),
            last_seq: AtomicU64::new(last_seq),
            dropped: AtomicU64::new(dropped),
            recoveries,
            notify: Notify::new(),
            metrics,
        };
        let outbox = Outbox {
            inner: Arc::new(inner),
        };
        outbox.update_gauges();
        Ok(outbox)
    }

    fn storage(&self, source: sled::Error) -> OutboxError {
        OutboxError::Storage {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn tx_error(&self, e: TransactionError<OutboxError>) -> OutboxError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.storage(e),
        }
    }

    fn update_gauges(&self) {
        if let Some(m) = &self.inner.metrics {
            m.outbox_depth.set(self.depth() as i64);
            m.outbox_bytes.set(self.bytes() as i64);
        }
    }

    /// Path of the sled database.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Assigns each alert the next seq (overwriting `alert.seq`, setting
    /// `alert.agent_id`), writes all of them and the new last seq in one sled
    /// transaction, flushes, and only then returns the seqs. Notifies waiters.
    /// When over `max_bytes`, applies the drop policy first (see the module docs).
    pub fn append(&self, alerts: Vec<Alert>) -> Result<Vec<u64>, OutboxError> {
        self.append_marked(alerts, &[])
    }

    /// [`Outbox::append`], also storing source positions (`key`, position
    /// after the events that raised these alerts) in the same transaction, so
    /// after `kill -9` a source never resumes before alerts it already raised
    /// (see [`Outbox::marks`]).
    pub fn append_marked(
        &self,
        mut alerts: Vec<Alert>,
        marks: &[(String, u64)],
    ) -> Result<Vec<u64>, OutboxError> {
        if alerts.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let first = state.last_seq + 1;
        let mut batch = sled::Batch::default();
        let mut seqs = Vec::with_capacity(alerts.len());
        let mut added = 0u64;
        for (i, a) in alerts.iter_mut().enumerate() {
            let seq = first + i as u64;
            a.seq = seq;
            a.agent_id.clone_from(&inner.agent_id);
            let value = frame::encode_checked(a)?;
            added += entry_bytes(&be(seq), &value);
            batch.insert(&be(seq), value);
            seqs.push(seq);
        }
        if added > inner.max_bytes {
            return Err(OutboxError::TooLarge {
                needed: added,
                max_bytes: inner.max_bytes,
            });
        }
        let last = first + alerts.len() as u64 - 1;

        // Drop policy: make room for exactly what this append needs.
        let current = inner.bytes.load(Ordering::Relaxed);
        let mut victims: Vec<(u64, Severity, u64)> = Vec::new();
        let mut new_scan_from = state.scan_from;
        if current + added > inner.max_bytes {
            let mut to_free = current + added - inner.max_bytes;
            'sev: for sev in Severity::ALL {
                let idx = sev_index(sev);
                for kv in inner.alerts.range(be(new_scan_from[idx])..) {
                    let (k, v) = kv.map_err(|e| self.storage(e))?;
                    let Some(seq) = read_be(&k) else { continue };
                    // An undecodable entry is dropped as if it were the lowest severity.
                    let entry_sev = frame::decode::<Alert>(&v)
                        .map(|a| a.severity)
                        .unwrap_or(Severity::Info);
                    if entry_sev != sev {
                        continue;
                    }
                    let n = entry_bytes(&k, &v);
                    victims.push((seq, sev, n));
                    new_scan_from[idx] = seq + 1;
                    batch.remove(&k);
                    to_free = to_free.saturating_sub(n);
                    if to_free == 0 {
                        break 'sev;
                    }
                }
                // No entry of this severity is left before the end.
                new_scan_from[idx] = new_scan_from[idx].max(state.last_seq + 1);
            }
        }
        let dropped_now = victims.len() as u64;
        let dropped_total = state.dropped + dropped_now;
        (&inner.alerts, &inner.meta)
            .transaction(|(a, m)| {
                a.apply_batch(&batch)?;
                m.insert(META_LAST_SEQ, &be(last))?;
                for (key, pos) in marks {
                    m.insert(mark_key(key), &be(*pos))?;
                }
                if dropped_now > 0 {
                    m.insert(META_DROPPED, &be(dropped_total))?;
                }
                Ok::<_, ConflictableTransactionError<OutboxError>>(())
            })
            .map_err(|e| self.tx_error(e))?;
        inner.db.flush().map_err(|e| self.storage(e))?;
        write_hwm(&inner.path, last);

        state.last_seq = last;
        state.dropped = dropped_total;
        state.scan_from = new_scan_from;
        let freed: u64 = victims.iter().map(|v| v.2).sum();
        // Release: `pending` reads up to this seq only, so nothing unflushed is sent.
        inner.last_seq.store(last, Ordering::Release);
        inner.dropped.store(dropped_total, Ordering::Relaxed);
        // One large new alert can push out several small ones: depth may shrink.
        let appended = seqs.len() as u64;
        if appended >= dropped_now {
            inner
                .depth
                .fetch_add(appended - dropped_now, Ordering::Relaxed);
        } else {
            inner
                .depth
                .fetch_sub(dropped_now - appended, Ordering::Relaxed);
        }
        inner
            .bytes
            .store(current + added - freed, Ordering::Relaxed);
        drop(state);
        if dropped_now > 0 {
            tracing::warn!(
                dropped = dropped_now,
                max_bytes = inner.max_bytes,
                "outbox full: dropped oldest alerts of the lowest severity"
            );
            if let Some(m) = &inner.metrics {
                for (_, sev, _) in &victims {
                    m.outbox_dropped.with_label_values(&[sev.as_str()]).inc();
                }
            }
        }
        self.update_gauges();
        inner.notify.notify_waiters();
        Ok(seqs)
    }

    /// Source positions stored by [`Outbox::append_marked`], by key.
    pub fn marks(&self) -> Result<Vec<(String, u64)>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.inner.meta.scan_prefix(META_MARK_PREFIX) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            if let (Ok(key), Some(pos)) = (
                std::str::from_utf8(&k[META_MARK_PREFIX.len()..]),
                read_be(&v),
            ) {
                out.push((key.to_string(), pos));
            }
        }
        Ok(out)
    }

    /// Up to `max` alerts with `seq > after_seq`, ascending. Undecodable entries are skipped
    /// (and logged); [`Outbox::verify`] reports them.
    pub fn pending(&self, after_seq: u64, max: usize) -> Result<Vec<Alert>, OutboxError> {
        let mut out = Vec::new();
        // Only what `append` has flushed (see the module docs).
        let durable = self.inner.last_seq.load(Ordering::Acquire);
        if max == 0 || after_seq >= durable {
            return Ok(out);
        }
        for kv in self.inner.alerts.range(be(after_seq + 1)..=be(durable)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            match frame::decode::<Alert>(&v) {
                Ok(a) => out.push(a),
                Err(e) => {
                    tracing::error!(key = %hex(&k), error = %e, "skipping corrupt outbox entry");
                    continue;
                }
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Removes every alert with `seq <= up_to_seq`; returns how many were removed.
    pub fn ack(&self, up_to_seq: u64) -> Result<usize, OutboxError> {
        let inner = &self.inner;
        let state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut removed = 0usize;
        let mut freed = 0u64;
        for kv in inner.alerts.range(..=be(up_to_seq)) {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            freed += entry_bytes(&k, &v);
            removed += 1;
            batch.remove(k);
        }
        if removed == 0 {
            return Ok(0);
        }
        inner
            .alerts
            .apply_batch(batch)
            .map_err(|e| self.storage(e))?;
        inner.depth.fetch_sub(removed as u64, Ordering::Relaxed);
        inner.bytes.fetch_sub(freed, Ordering::Relaxed);
        drop(state);
        if let Some(m) = &inner.metrics {
            m.alerts_acked.inc_by(removed as u64);
        }
        self.update_gauges();
        Ok(removed)
    }

    /// Alerts held (not yet acknowledged).
    pub fn depth(&self) -> u64 {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// Bytes held (keys plus framed values).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// Alerts dropped by the full-outbox policy over the outbox's lifetime.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Times this outbox was found damaged (moved aside and salvaged) or
    /// behind its high-water mark, over its lifetime (persisted).
    pub fn recoveries(&self) -> u64 {
        self.inner.recoveries
    }

    /// Highest seq ever assigned (0 before the first alert).
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Relaxed)
    }

    /// Smallest seq held, if any.
    pub fn first_seq(&self) -> Result<Option<u64>, OutboxError> {
        Ok(self
            .inner
            .alerts
            .first()
            .map_err(|e| self.storage(e))?
            .and_then(|(k, _)| read_be(&k)))
    }

    /// Resolves after the next [`Outbox::append`].
    pub fn notified(&self) -> impl Future<Output = ()> + '_ {
        self.inner.notify.notified()
    }

    /// Flushes sled to disk (acks are otherwise flushed in the background).
    pub fn flush(&self) -> Result<(), OutboxError> {
        self.inner
            .db
            .flush()
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    /// The first `limit` alerts held, ascending by seq (corrupt entries skipped).
    pub fn inspect(&self, limit: usize) -> Result<Vec<Alert>, OutboxError> {
        self.pending(0, limit)
    }

    /// Decodes every entry and checks keys, seq order, that all entries carry one
    /// agent id (any: an inspecting tool may open the outbox under another id), and
    /// that `last_seq` covers the largest key. Problems are reported, never panicked on.
    pub fn verify(&self) -> Result<VerifyReport, OutboxError> {
        let inner = &self.inner;
        let mut r = VerifyReport::default();
        let meta_get = |k: &[u8]| -> Result<Option<sled::IVec>, OutboxError> {
            inner.meta.get(k).map_err(|e| self.storage(e))
        };
        match meta_get(META_LAST_SEQ)? {
            None => {}
            Some(v) => match read_be(&v) {
                Some(n) => r.meta_last_seq = n,
                None => r.problem(format!("meta last_seq has {} bytes, not 8", v.len())),
            },
        }
        if let Some(v) = meta_get(META_DROPPED)? {
            r.dropped = read_be(&v).unwrap_or(0);
        }
        if let Some(v) = meta_get(META_RECOVERIES)? {
            r.recoveries = read_be(&v).unwrap_or(0);
        }
        let mut prev: Option<u64> = None;
        for kv in inner.alerts.iter() {
            let (k, v) = kv.map_err(|e| self.storage(e))?;
            r.entries += 1;
            r.bytes += entry_bytes(&k, &v);
            let Some(seq) = read_be(&k) else {
                r.problem(format!("key {} is not an 8-byte seq", hex(&k)));
                continue;
            };
            r.first_seq.get_or_insert(seq);
            r.max_key = Some(seq);
            if seq == 0 {
                r.problem("key seq 0 is never assigned".to_string());
            }
            if let Some(p) = prev
                && seq <= p
            {
                r.problem(format!("seq {seq} follows {p}: keys out of order"));
            }
            prev = Some(seq);
            match frame::decode::<Alert>(&v) {
                Err(e) => r.problem(format!("seq {seq}: cannot decode: {e}")),
                Ok(a) if a.seq != seq => {
                    r.problem(format!("seq {seq}: value carries seq {}", a.seq))
                }
                Ok(a) if r.agent_id.as_ref().is_some_and(|id| *id != a.agent_id) => {
                    r.problem(format!(
                        "seq {seq}: agent_id {:?} differs from the other entries' {:?}",
                        a.agent_id,
                        r.agent_id.as_deref().unwrap_or_default()
                    ))
                }
                Ok(a) => {
                    r.agent_id.get_or_insert_with(|| a.agent_id.clone());
                    r.valid += 1;
                    *r.by_severity.entry(a.severity).or_default() += 1;
                }
            }
        }
        if let Some(max) = r.max_key
            && r.meta_last_seq < max
        {
            r.problem(format!(
                "meta last_seq {} is below the largest key {max}: a seq could be reused",
                r.meta_last_seq
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sad_common::ModelKind;
    use sad_common::wire::FeatureContribution;

    pub(crate) fn alert(severity: Severity, series: &str) -> Alert {
        Alert {
            agent_id: String::new(),
            seq: 0,
            series: series.into(),
            ts_ms: 1_700_000_000_000,
            model: "iforest".into(),
            model_kind: ModelKind::IsolationForest,
            model_version: 1,
            score: 0.9,
            raw_score: 0.7,
            threshold: 0.5,
            severity,
            episode_id: 1,
            explanation: vec![FeatureContribution {
                feature: "temp".into(),
                weight: 1.0,
            }],
            values: vec![1.0, 2.0],
            label: None,
        }
    }

    fn cfg(dir: &Path) -> OutboxConfig {
        OutboxConfig {
            path: dir.join("outbox"),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    fn seqs(v: &[Alert]) -> Vec<u64> {
        v.iter().map(|a| a.seq).collect()
    }

    #[test]
    fn append_assigns_consecutive_seqs_starting_at_one_and_stamps_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        assert_eq!(ob.last_seq(), 0);
        let s = ob
            .append(vec![
                alert(Severity::Info, "a"),
                alert(Severity::Critical, "b"),
            ])
            .unwrap();
        assert_eq!(s, vec![1, 2]);
        let s = ob.append(vec![alert(Severity::Warning, "c")]).unwrap();
        assert_eq!(s, vec![3]);
        let all = ob.inspect(10).unwrap();
        assert_eq!(seqs(&all), vec![1, 2, 3]);
        assert!(all.iter().all(|a| a.agent_id == "edge-1"));
        assert_eq!(all[1].series, "b");
        assert_eq!(ob.depth(), 3);
        assert!(ob.bytes() > 0);
        assert!(ob.append(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn pending_returns_alerts_after_a_seq_in_order_and_respects_max() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        ob.append(
            (0..10)
                .map(|i| alert(Severity::Info, &format!("s{i}")))
                .collect(),
        )
        .unwrap();
        assert_eq!(seqs(&ob.pending(0, 3).unwrap()), vec![1, 2, 3]);
        assert_eq!(seqs(&ob.pending(7, 100).unwrap()), vec![8, 9, 10]);
        assert!(ob.pending(10, 100).unwrap().is_empty());
        assert!(ob.pending(0, 0).unwrap().is_empty());
        assert!(ob.pending(u64::MAX, 5).unwrap().is_empty());
    }

    #[test]
    fn pending_never_returns_an_alert_before_its_append_has_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (ob, done) = (ob.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    ob.append(vec![alert(Severity::Info, "s"); 3]).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        // `last_seq` moves only after the flush: whatever `pending` returns must
        // be covered by it (read after `pending`, it can only have grown).
        let (mut reads, mut early) = (0u64, Vec::new());
        while !done.load(Ordering::SeqCst) {
            let got = ob.pending(0, usize::MAX).unwrap();
            let durable = ob.last_seq();
            reads += 1;
            if let Some(a) = got.last()
                && a.seq > durable
            {
                early.push((a.seq, durable));
            }
        }
        writer.join().unwrap();
        assert!(
            reads > 10,
            "the reader ran alongside the appends ({reads} reads)"
        );
        assert!(
            early.is_empty(),
            "sent before durable (seq, last_seq): {early:?}"
        );
        assert_eq!(ob.pending(0, usize::MAX).unwrap().len(), 600);
    }

    #[test]
    fn ack_removes_exactly_the_covered_prefix_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        ob.append((0..5).map(|_| alert(Severity::Info, "s")).collect())
            .unwrap();
        let before = ob.bytes();
        assert_eq!(ob.ack(3).unwrap(), 3);
        assert_eq!(ob.ack(3).unwrap(), 0);
        assert_eq!(ob.ack(1).unwrap(), 0);
        assert_eq!(seqs(&ob.inspect(10).unwrap()), vec![4, 5]);
        assert_eq!(ob.depth(), 2);
        assert!(ob.bytes() < before);
        assert_eq!(ob.ack(u64::MAX).unwrap(), 2);
        assert_eq!(ob.depth(), 0);
        assert_eq!(ob.bytes(), 0);
        // Acking never lowers the seq counter.
        assert_eq!(
            ob.append(vec![alert(Severity::Info, "s")]).unwrap(),
            vec![6]
        );
    }

    #[test]
    fn source_marks_are_stored_with_their_alerts_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
            assert!(ob.marks().unwrap().is_empty());
            ob.append_marked(vec![alert(Severity::Warning, "s")], &[("f".into(), 120)])
                .unwrap();
            ob.append_marked(vec![alert(Severity::Warning, "s")], &[("f".into(), 250)])
                .unwrap();
            // no alerts: nothing is written, the mark stays where the alerts are
            ob.append_marked(Vec::new(), &[("f".into(), 999)]).unwrap();
        }
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        assert_eq!(ob.marks().unwrap(), vec![("f".to_string(), 250)]);
        assert_eq!(ob.depth(), 2, "marks are not alerts");
        assert!(ob.verify().unwrap().problems.is_empty());
    }

    #[test]
    fn alerts_and_seq_survive_a_reopen_and_seqs_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
            ob.append((0..4).map(|_| alert(Severity::Warning, "s")).collect())
                .unwrap();
            ob.ack(4).unwrap();
            ob.flush().unwrap();
        }
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        assert_eq!(ob.last_seq(), 4);
        assert_eq!(ob.depth(), 0);
        assert_eq!(
            ob.append(vec![alert(Severity::Info, "x")]).unwrap(),
            vec![5]
        );
        drop(ob);
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        let held = ob.inspect(10).unwrap();
        assert_eq!(seqs(&held), vec![5]);
        assert_eq!(held[0].series, "x");
        assert!(ob.verify().unwrap().is_ok());
    }

    #[test]
    fn open_recovers_last_seq_from_the_largest_key_when_meta_lags() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
            ob.append((0..3).map(|_| alert(Severity::Info, "s")).collect())
                .unwrap();
            ob.inner.meta.insert(META_LAST_SEQ, &be(1)).unwrap();
            ob.flush().unwrap();
        }
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        assert_eq!(ob.last_seq(), 3);
        assert_eq!(
            ob.append(vec![alert(Severity::Info, "s")]).unwrap(),
            vec![4]
        );
    }

    #[test]
    fn a_full_outbox_drops_lowest_severity_oldest_first_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let a = frame::encode(&Alert {
                agent_id: "edge-1".into(),
                seq: 1,
                ..alert(Severity::Info, "s")
            })
            .unwrap();
            (a.len() + 8) as u64
        };
        let metrics = AgentMetrics::new().unwrap();
        let c = OutboxConfig {
            path: dir.path().join("ob"),
            max_bytes: one * 5,
        };
        let ob = Outbox::open(&c, "edge-1", Some(metrics.clone())).unwrap();
        // seq:      1         2     3         4     5
        ob.append(vec![
            alert(Severity::Critical, "s"),
            alert(Severity::Info, "s"),
            alert(Severity::Warning, "s"),
            alert(Severity::Info, "s"),
            alert(Severity::Warning, "s"),
        ])
        .unwrap();
        assert_eq!(ob.bytes(), one * 5);
        ob.append(vec![alert(Severity::Critical, "s")]).unwrap();
        assert_eq!(seqs(&ob.inspect(10).unwrap()), vec![1, 3, 4, 5, 6]);
        ob.append(vec![
            alert(Severity::Critical, "s"),
            alert(Severity::Critical, "s"),
        ])
        .unwrap();
        // Info 4 goes, then the oldest warning (3).
        assert_eq!(seqs(&ob.inspect(10).unwrap()), vec![1, 5, 6, 7, 8]);
        assert_eq!(ob.dropped(), 3);
        assert_eq!(ob.depth(), 5);
        assert!(ob.bytes() <= c.max_bytes);
        let d = |s: &str| metrics.outbox_dropped.with_label_values(&[s]).get();
        assert_eq!((d("info"), d("warning"), d("critical")), (2, 1, 0));
        // Only criticals left besides warning 5: the next drop takes 5, then critical 1.
        ob.append(vec![alert(Severity::Info, "s"), alert(Severity::Info, "s")])
            .unwrap();
        assert_eq!(seqs(&ob.inspect(10).unwrap()), vec![6, 7, 8, 9, 10]);
        assert_eq!(ob.dropped(), 5);
        let err = ob
            .append((0..6).map(|_| alert(Severity::Critical, "s")).collect())
            .unwrap_err();
        assert!(matches!(err, OutboxError::TooLarge { .. }), "{err}");
        assert_eq!(ob.depth(), 5, "a refused append changes nothing");
        drop(ob);
        let ob = Outbox::open(&c, "edge-1", None).unwrap();
        assert_eq!(ob.dropped(), 5);
        assert!(ob.verify().unwrap().is_ok());
    }

    #[test]
    fn an_append_that_drops_more_alerts_than_it_adds_lowers_the_depth() {
        // Regression: depth was updated with `added - dropped`, which
        // overflowed (a panic in debug builds, stopping the pipeline) when one
        // large alert pushed out several small ones.
        let dir = tempfile::tempdir().unwrap();
        let small = |seq| {
            (frame::encode(&Alert {
                agent_id: "edge-1".into(),
                seq,
                ..alert(Severity::Info, "s")
            })
            .unwrap()
            .len()
                + 8) as u64
        };
        let c = OutboxConfig {
            path: dir.path().join("ob"),
            max_bytes: small(1) * 4,
        };
        let ob = Outbox::open(&c, "edge-1", None).unwrap();
        ob.append((0..4).map(|_| alert(Severity::Info, "s")).collect())
            .unwrap();
        assert_eq!(ob.depth(), 4);
        // Twice the size of a small alert: two small ones must go.
        let mut big = alert(Severity::Critical, "s");
        big.series = "x".repeat(small(5) as usize);
        ob.append(vec![big]).unwrap();
        assert_eq!(ob.dropped(), 2);
        assert_eq!(ob.depth(), 3);
        assert_eq!(seqs(&ob.inspect(10).unwrap()), vec![3, 4, 5]);
        assert!(ob.bytes() <= c.max_bytes);
    }

    #[test]
    fn verify_reports_a_corrupted_value_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        ob.append((0..3).map(|_| alert(Severity::Info, "s")).collect())
            .unwrap();
        let ok = ob.verify().unwrap();
        assert!(ok.is_ok(), "{ok}");
        assert_eq!((ok.entries, ok.valid), (3, 3));
        assert!(ok.to_string().ends_with("ok"));

        ob.inner
            .alerts
            .insert(be(2), &b"\x01garbage that is not postcard"[..])
            .unwrap();
        ob.inner.alerts.insert(&b"bad"[..], &b"x"[..]).unwrap();
        let r = ob.verify().unwrap();
        assert!(!r.is_ok());
        assert_eq!(r.entries, 4);
        assert_eq!(r.valid, 2);
        assert_eq!(r.problem_count, 2, "{r}");
        let text = r.to_string();
        assert!(text.contains("seq 2: cannot decode"), "{text}");
        assert!(text.contains("not an 8-byte seq"), "{text}");
        assert!(text.ends_with("FAILED"), "{text}");
        // Readers skip the corrupt entry instead of failing.
        assert_eq!(seqs(&ob.pending(0, 10).unwrap()), vec![1, 3]);
    }

    #[test]
    fn verify_flags_a_value_whose_seq_differs_from_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        ob.append(vec![alert(Severity::Info, "s")]).unwrap();
        let mut a = ob.inspect(1).unwrap().remove(0);
        a.seq = 9;
        ob.inner
            .alerts
            .insert(be(1), frame::encode(&a).unwrap())
            .unwrap();
        let r = ob.verify().unwrap();
        assert!(r.problems[0].contains("value carries seq 9"), "{r}");
    }

    #[test]
    fn verify_works_under_another_id_but_flags_entries_of_two_agents() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
            ob.append(vec![alert(Severity::Info, "s")]).unwrap();
        }
        let ob = Outbox::open(&cfg(dir.path()), "inspect", None).unwrap();
        let r = ob.verify().unwrap();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.agent_id.as_deref(), Some("edge-1"));
        assert!(r.to_string().starts_with("agent edge-1: entries 1"), "{r}");
        // A value of another agent under this outbox's keys is a problem.
        let mut a = ob.inspect(1).unwrap().remove(0);
        a.agent_id = "edge-2".into();
        a.seq = 2;
        ob.inner
            .alerts
            .insert(be(2), frame::encode(&a).unwrap())
            .unwrap();
        ob.inner.meta.insert(META_LAST_SEQ, &be(2)).unwrap();
        let r = ob.verify().unwrap();
        assert_eq!(r.problem_count, 1, "{r}");
        assert!(
            r.problems[0].contains("differs from the other entries"),
            "{r}"
        );
    }

    #[test]
    fn appends_wake_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A `Notified` receives `notify_waiters` from the moment it is created.
            let fut = ob.notified();
            let ob2 = ob.clone();
            std::thread::spawn(move || ob2.append(vec![alert(Severity::Info, "s")]).unwrap());
            tokio::time::timeout(std::time::Duration::from_secs(30), fut)
                .await
                .expect("append notifies");
        });
    }

    #[test]
    fn invalid_config_and_alerts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Outbox::open(&cfg(dir.path()), "bad/id", None).is_err());
        let c = OutboxConfig {
            max_bytes: 0,
            ..cfg(dir.path())
        };
        assert!(Outbox::open(&c, "edge-1", None).is_err());
        let ob = Outbox::open(&cfg(dir.path()), "edge-1", None).unwrap();
        let mut bad = alert(Severity::Info, "s");
        bad.score = f64::NAN;
        assert!(matches!(
            ob.append(vec![bad]).unwrap_err(),
            OutboxError::Encode(_)
        ));
        assert_eq!(ob.last_seq(), 0);
    }
}
