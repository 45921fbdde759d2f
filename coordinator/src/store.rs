//! The alert store: every alert the coordinator accepted, deduplicated by
//! `alert_id`, queryable by time, agent, series and severity, with retention
//! by age and by size.
//!
//! # Guarantees
//!
//! - [`AlertStore::insert_batch`] writes the batch's new alerts and their
//!   index entries in **one atomic sled batch**, flushes (fsync) and only
//!   then returns. The intake acks an agent only after that, so an acked
//!   alert is on disk.
//! - **What survives `kill -9`**: every alert `insert_batch` returned for,
//!   with its indexes; a crash during `insert_batch` keeps all of that call's
//!   new alerts or none. Feedback ([`AlertStore::set_feedback`]) and
//!   retention deletes are flushed before they return too.
//! - An `alert_id` is stored at most once: a second insert of the same id is
//!   counted as a duplicate and leaves the first copy (and its feedback) alone.
//!
//! # On-disk layout (sled database at `path`, one tree so batches are atomic)
//!
//! ```text
//! "a/" ++ alert_id                          → [1] ++ postcard(Record { alert, received_ms, feedback })
//! "t/" ++ ts_ms (8 bytes, sortable) ++ alert_id   → ""   (query index, event time)
//! "r/" ++ received_ms (8 bytes, sortable) ++ alert_id → "" (retention index, arrival time)
//! "m/bytes"                                 → u64 big-endian, bytes of all records
//! ```
//!
//! A damaged database (sled refuses it or panics on it) is moved to
//! `<path>.corrupt-<unix ms>` and every entry sled can still read is copied
//! into a fresh store, with an error log naming both paths
//! ([`sad_agent::storage::open_recovering`]); the coordinator starts instead
//! of crash-looping, and agents re-send whatever was lost and not yet acked.
//! An index key too short to hold an id is skipped by queries and removed
//! by retention.
//!
//! Sortable = the `i64` with its sign bit flipped, big-endian, so byte order
//! is numeric order. Every write blocks on an fsync: call the store from
//! `spawn_blocking` or a dedicated thread, never directly on an async worker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sad_common::wire::Severity;
use sad_common::{Alert, AlertRecord};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const ALERT: &[u8] = b"a/";
const BY_TS: &[u8] = b"t/";
const BY_RECEIVED: &[u8] = b"r/";
const META_BYTES: &[u8] = b"m/bytes";
const RECORD_VERSION: u8 = 1;

/// Default retention by age: 7 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default retention by size: 1 GiB of records.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Most alerts one [`AlertStore::query`] returns.
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// Errors of the alert store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption it detected, the lock held by another process).
    #[error("alert store at {path}: {source}")]
    Storage {
        /// Path of the database.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A stored record could not be decoded.
    #[error("corrupt alert record {key:?}: {reason}")]
    Corrupt {
        /// The record's key (lossy UTF-8).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A query cursor is not one this store handed out.
    #[error("invalid cursor {0:?}")]
    BadCursor(String),
}

/// Where the store lives and how much it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Alerts received longer ago than this are deleted by retention (default 7 days).
    pub max_age: Duration,
    /// Records beyond this many bytes are deleted oldest first by retention (default 1 GiB).
    pub max_bytes: u64,
}

impl StoreConfig {
    /// A store at `path` with the default retention.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What [`AlertStore::insert_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Alerts stored now.
    pub new: usize,
    /// Alerts whose id was already stored (or repeated within the batch).
    pub duplicates: usize,
}

/// Filters of [`AlertStore::query`]; every `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AlertQuery {
    /// Event time at or after this (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Event time before this (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only this agent's alerts.
    pub agent: Option<String>,
    /// Only this series.
    pub series: Option<String>,
    /// Only alerts at least this severe.
    pub min_severity: Option<Severity>,
    /// Most alerts returned (default 100, at most [`MAX_QUERY_LIMIT`]).
    pub limit: Option<usize>,
    /// Continue after this cursor ([`StoredAlert::cursor`] of the last alert of the previous page).
    pub cursor: Option<String>,
}

/// An alert as stored, with arrival time and operator feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    /// The alert.
    pub alert: Alert,
    /// When the coordinator stored it (ms since the epoch).
    pub received_ms: i64,
    /// Operator feedback: `Some(true)` = true positive, `Some(false)` = false positive.
    pub feedback: Option<bool>,
}

impl StoredAlert {
    /// The pagination cursor that continues after this alert in a newest-first query.
    pub fn cursor(&self) -> String {
        format!("{}~{}", self.alert.ts_ms, self.alert.alert_id())
    }
}

#[derive(Serialize)]
struct StoredAlertJson<'a> {
    alert: AlertRecord,
    received_ms: i64,
    feedback: Option<bool>,
    cursor: &'a str,
}

impl Serialize for StoredAlert {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredAlertJson {
            alert: AlertRecord::from(&self.alert),
            received_ms: self.received_ms,
            feedback: self.feedback,
            cursor: &self.cursor(),
        }
        .serialize(s)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    alert: Alert,
    received_ms: i64,
    feedback: Option<bool>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    max_age: Duration,
    max_bytes: u64,
    /// Serialises read-check-write sequences (dedupe, byte counter).
    write: Mutex<()>,
    count: AtomicU64,
    bytes: AtomicU64,
}

/// The sled-backed alert store; cheap to clone (an `Arc` inside), `Send + Sync`.
#[derive(Clone)]
pub struct AlertStore {
    inner: Arc<Inner>,
}

fn sortable(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn unsortable(b: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl AlertStore {
    /// Opens (or creates) the store at `cfg.path`.
    pub fn open(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let storage = |source| StoreError::Storage {
            path: cfg.path.clone(),
            source,
        };
        let opened = sad_agent::storage::open_recovering(
            &sled::Config::new().path(&cfg.path).cache_capacity(64 << 20),
            &cfg.path,
        )
        .map_err(storage)?;
        if let Some(r) = &opened.recovery {
            tracing::error!(
                path = %cfg.path.display(),
                moved_to = %r.moved_to.display(),
                reason = %r.reason,
                salvaged_entries = r.salvaged,
                incomplete = ?r.incomplete,
                "alert store is damaged: moved it aside, kept every entry sled could read, continuing on a fresh store"
            );
        }
        let db = opened.db;
        let tree = db.open_tree("alerts").map_err(storage)?;
        let count = tree.scan_prefix(ALERT).count() as u64;
        let bytes = match tree.get(META_BYTES).map_err(storage)? {
            Some(v) => v
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default(),
            None => 0,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path: cfg.path.clone(),
                db,
                tree,
                max_age: cfg.max_age,
                max_bytes: cfg.max_bytes,
                write: Mutex::new(()),
                count: AtomicU64::new(count),
                bytes: AtomicU64::new(bytes),
            }),
        })
    }

    fn storage(&self, source: sled::Error) -> StoreError {
        StoreError::Storage {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush().map_err(|e| self.storage(e))?;
        Ok(())
    }

    fn decode(k: &[u8], v: &[u8]) -> Result<Record, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: String::from_utf8_lossy(k).into_owned(),
            reason,
        };
        match v.split_first() {
            Some((&RECORD_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))
            }
            Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
            None => Err(corrupt("empty record".into())),
        }
    }

    fn encode(r: &Record) -> Vec<u8> {
        // A validated alert always encodes; an empty vec is caught by `decode`.
        postcard::to_extend(r, vec![RECORD_VERSION]).unwrap_or_default()
    }

    /// Stores the alerts whose id is new, flushed before it returns (received now).
    pub fn insert_batch(&self, alerts: &[Alert]) -> Result<InsertOutcome, StoreError> {
        self.insert_batch_at(alerts, now_ms())
    }

    /// [`AlertStore::insert_batch`] that also says, per alert, whether this
    /// call stored it (`false` for an id stored before or repeated earlier in `alerts`).
    pub fn insert_batch_marked(
        &self,
        alerts: &[Alert],
    ) -> Result<(InsertOutcome, Vec<bool>), StoreError> {
        let mut fresh = Vec::with_capacity(alerts.len());
        let out = self.insert(alerts, now_ms(), Some(&mut fresh))?;
        Ok((out, fresh))
    }

    /// [`AlertStore::insert_batch`] with an explicit arrival time (tests, replays).
    pub fn insert_batch_at(
        &self,
        alerts: &[Alert],
        received_ms: i64,
    ) -> Result<InsertOutcome, StoreError> {
        self.insert(alerts, received_ms, None)
    }

    fn insert(
        &self,
        alerts: &[Alert],
        received_ms: i64,
        mut fresh: Option<&mut Vec<bool>>,
    ) -> Result<InsertOutcome, StoreError> {
        let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = InsertOutcome::default();
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::new();
        let mut added_bytes = 0u64;
        for a in alerts {
            let id = a.alert_id();
            let akey = key(ALERT, &[id.as_bytes()]);
            let duplicate = !seen.insert(id.clone())
                || self
                    .inner
                    .tree
                    .contains_key(&akey)
                    .map_err(|e| self.storage(e))?;
            if let Some(f) = fresh.as_deref_mut() {
                f.push(!duplicate);
            }
            if duplicate {
                out.duplicates += 1;
                continue;
            }
            let value = Self::encode(&Record {
                alert: a.clone(),
                received_ms,
                feedback: None,
            });
            added_bytes += value.len() as u64;
            batch.insert(akey, value);
            batch.insert(key(BY_TS, &[&sortable(a.ts_ms), id.as_bytes()]), Vec::new());
            batch.insert(
                key(BY_RECEIVED, &[&sortable(received_ms), id.as_bytes()]),
                Vec::new(),
            );
            out.new += 1;
        }
        if out.new > 0 {
            let bytes = self.inner.bytes.load(Ordering::Relaxed) + added_bytes;
            batch.insert(META_BYTES, &bytes.to_be_bytes());
            self.inner
                .tree
                .apply_batch(batch)
                .map_err(|e| self.storage(e))?;
            self.flush()?;
            self.inner.bytes.store(bytes, Ordering::Relaxed);
            self.inner
                .count
                .fetch_add(out.new as u64, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// Whether an alert with this id is stored.
    pub fn contains(&self, alert_id: &str) -> Result<bool, StoreError> {
        self.inner
            .tree
            .contains_key(key(ALERT, &[alert_id.as_bytes()]))
            .map_err(|e| self.storage(e))
    }

    /// The stored alert with this id.
    pub fn get(&self, alert_id: &str) -> Result<Option<StoredAlert>, StoreError> {
        let k = key(ALERT, &[alert_id.as_bytes()]);
        match self.inner.tree.get(&k).map_err(|e| self.storage(e))? {
            Some(v) => {
                let r = Self::decode(&k, &v)?;
                Ok(Some(StoredAlert {
                    alert: r.alert,
                    received_ms: r.received_ms,
                    feedback: r.feedback,
                }))
            }
            None => Ok(None),
        }
    }

    /// Alerts matching `q`, newest event time first, at most `q.limit`.
    pub fn query(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        let limit = q.limit.unwrap_or(100).min(MAX_QUERY_LIMIT);
        let lo = key(BY_TS, &[&sortable(q.since_ms.unwrap_or(i64::MIN))]);
        let mut hi = match q.until_ms {
            Some(u) => key(BY_TS, &[&sortable(u)]),
            None => key(b"t0", &[]), // just past every "t/" key
        };
        if let Some(c) = &q.cursor {
            let bad = || StoreError::BadCursor(c.clone());
            let (ts, id) = c.split_once('~').ok_or_else(bad)?;
            let ts: i64 = ts.parse().map_err(|_| bad())?;
            let after = key(BY_TS, &[&sortable(ts), id.as_bytes()]);
            if after < hi {
                hi = after;
            }
        }
        let mut out = Vec::new();
        if lo >= hi || limit == 0 {
            return Ok(out);
        }
        for item in self.inner.tree.range(lo..hi).rev() {
            let (k, _) = item.map_err(|e| self.storage(e))?;
            let Some(id) = k.get(BY_TS.len() + 8..) else {
                continue; // not an index key this store wrote
            };
            let id = String::from_utf8_lossy(id).into_owned();
            if let Some(agent) = &q.agent {
                // ids are `{agent}:{seq}` and agent ids never contain ':'.
                if id.split_once(':').map(|(a, _)| a) != Some(agent.as_str()) {
                    continue;
                }
            }
            let Some(s) = self.get(&id)? else { continue };
            if q.series.as_ref().is_some_and(|x| *x != s.alert.series)
                || q.min_severity.is_some_and(|m| s.alert.severity < m)
            {
                continue;
            }
            out.push(s);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records operator feedback on an alert; `false` when no such alert is stored.
    pub fn set_feedback(&self, alert_id: &str, true_positive: bool) -> Result<bool, StoreError> {
        let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(ALERT, &[alert_id.as_bytes()]);
        let Some(v) = self.inner.tree.get(&k).map_err(|e| self.storage(e))? else {
            return Ok(false);
        };
        let mut r = Self::decode(&k, &v)?;
        r.feedback = Some(true_positive);
        let nv = Self::encode(&r);
        let bytes = (self.inner.bytes.load(Ordering::Relaxed) + nv.len() as u64)
            .saturating_sub(v.len() as u64);
        let mut batch = sled::Batch::default();
        batch.insert(k, nv);
        batch.insert(META_BYTES, &bytes.to_be_bytes());
        self.inner
            .tree
            .apply_batch(batch)
            .map_err(|e| self.storage(e))?;
        self.flush()?;
        self.inner.bytes.store(bytes, Ordering::Relaxed);
        Ok(true)
    }

    /// Deletes alerts received before `now_ms - max_age`, then the oldest received
    /// until the records fit in `max_bytes`; returns how many were deleted.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<usize, StoreError> {
        let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = now_ms.saturating_sub(self.inner.max_age.as_millis() as i64);
        let mut bytes = self.inner.bytes.load(Ordering::Relaxed);
        let mut batch = sled::Batch::default();
        let mut deleted = 0usize;
        for item in self.inner.tree.scan_prefix(BY_RECEIVED) {
            let (rk, _) = item.map_err(|e| self.storage(e))?;
            let received = unsortable(&rk[BY_RECEIVED.len()..]).unwrap_or(i64::MIN);
            if received >= cutoff && bytes <= self.inner.max_bytes {
                break;
            }
            let Some(id) = rk.get(BY_RECEIVED.len() + 8..) else {
                batch.remove(rk);
                continue;
            };
            let ak = key(ALERT, &[id]);
            if let Some(v) = self.inner.tree.get(&ak).map_err(|e| self.storage(e))? {
                bytes = bytes.saturating_sub(v.len() as u64);
                if let Ok(r) = Self::decode(&ak, &v) {
                    batch.remove(key(BY_TS, &[&sortable(r.alert.ts_ms), id]));
                }
                batch.remove(ak);
                deleted += 1;
            }
            batch.remove(rk);
        }
        if deleted > 0 {
            batch.insert(META_BYTES, &bytes.to_be_bytes());
            self.inner
                .tree
                .apply_batch(batch)
                .map_err(|e| self.storage(e))?;
            self.flush()?;
            self.inner.bytes.store(bytes, Ordering::Relaxed);
            self.inner
                .count
                .fetch_sub(deleted as u64, Ordering::Relaxed);
        }
        Ok(deleted)
    }

    /// Number of stored alerts.
    pub fn len(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Whether no alert is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of all stored records (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sad_common::ModelKind;

    fn alert(agent: &str, seq: u64, series: &str, ts_ms: i64, severity: Severity) -> Alert {
        Alert {
            agent_id: agent.into(),
            seq,
            series: series.into(),
            ts_ms,
            model: "iforest".into(),
            model_kind: ModelKind::IsolationForest,
            model_version: 1,
            score: 0.9,
            raw_score: 0.7,
            threshold: 0.5,
            severity,
            episode_id: 1,
            explanation: vec![],
            values: vec![1.0, 2.0],
            label: None,
        }
    }

    fn open(dir: &tempfile::TempDir) -> AlertStore {
        AlertStore::open(&StoreConfig::at(dir.path().join("store"))).unwrap()
    }

    #[test]
    fn inserting_an_alert_twice_stores_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let a = alert("a1", 1, "s", 10, Severity::Warning);
        let b = alert("a1", 2, "s", 11, Severity::Warning);
        let first = s.insert_batch(&[a.clone(), b.clone(), a.clone()]).unwrap();
        let second = s.insert_batch(&[a.clone(), b]).unwrap();
        println!("first {first:?}, second {second:?}, stored {}", s.len());
        assert_eq!(
            first,
            InsertOutcome {
                new: 2,
                duplicates: 1
            }
        );
        assert_eq!(
            second,
            InsertOutcome {
                new: 0,
                duplicates: 2
            }
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a1:1").unwrap().unwrap().alert, a);
        assert!(s.get("a1:3").unwrap().is_none());
        // The marked variant says which alerts this call stored.
        let c = alert("a1", 3, "s", 12, Severity::Warning);
        let (out, fresh) = s.insert_batch_marked(&[a.clone(), c.clone(), c]).unwrap();
        assert_eq!(
            out,
            InsertOutcome {
                new: 1,
                duplicates: 2
            }
        );
        assert_eq!(fresh, vec![false, true, false]);
    }

    #[test]
    fn queries_filter_by_time_agent_series_and_severity_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let mut all = Vec::new();
        for i in 0..30u64 {
            let sev = Severity::ALL[(i % 3) as usize];
            let agent = if i % 2 == 0 { "even" } else { "odd" };
            all.push(alert(
                agent,
                i + 1,
                &format!("s{}", i % 5),
                1000 + i as i64,
                sev,
            ));
        }
        s.insert_batch(&all).unwrap();
        let ids = |q: AlertQuery| -> Vec<u64> {
            s.query(&q).unwrap().iter().map(|x| x.alert.seq).collect()
        };
        let newest = ids(AlertQuery {
            limit: Some(3),
            ..Default::default()
        });
        assert_eq!(newest, vec![30, 29, 28]);
        let window = ids(AlertQuery {
            since_ms: Some(1010),
            until_ms: Some(1013),
            ..Default::default()
        });
        assert_eq!(window, vec![13, 12, 11]);
        let odd = ids(AlertQuery {
            agent: Some("odd".into()),
            ..Default::default()
        });
        assert_eq!(odd.len(), 15);
        assert!(odd.iter().all(|seq| seq % 2 == 0), "{odd:?}");
        let series = ids(AlertQuery {
            series: Some("s2".into()),
            ..Default::default()
        });
        assert_eq!(series, vec![28, 23, 18, 13, 8, 3]);
        let critical = s
            .query(&AlertQuery {
                min_severity: Some(Severity::Critical),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(critical.len(), 10);
        assert!(
            critical
                .iter()
                .all(|x| x.alert.severity == Severity::Critical)
        );
        // Pagination with the cursor walks the rest without repeats.
        let page1 = s
            .query(&AlertQuery {
                limit: Some(20),
                ..Default::default()
            })
            .unwrap();
        let page2 = ids(AlertQuery {
            limit: Some(20),
            cursor: Some(page1.last().unwrap().cursor()),
            ..Default::default()
        });
        assert_eq!(page2, (1..=10).rev().collect::<Vec<_>>());
        println!(
            "query filters: {} alerts, 2 pages of 20 + {}",
            all.len(),
            page2.len()
        );
        assert!(matches!(
            s.query(&AlertQuery {
                cursor: Some("nope".into()),
                ..Default::default()
            }),
            Err(StoreError::BadCursor(_))
        ));
    }

    #[test]
    fn retention_deletes_alerts_older_than_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = AlertStore::open(&StoreConfig {
            max_age: Duration::from_secs(60),
            ..StoreConfig::at(dir.path().join("store"))
        })
        .unwrap();
        let day = 86_400_000;
        s.insert_batch_at(&[alert("a", 1, "s", 1, Severity::Info)], day)
            .unwrap();
        s.insert_batch_at(&[alert("a", 2, "s", 2, Severity::Info)], day + 50_000)
            .unwrap();
        let deleted = s.enforce_retention(day + 70_000).unwrap();
        println!("deleted by age: {deleted}");
        assert_eq!(deleted, 1);
        assert!(s.get("a:1").unwrap().is_none());
        assert!(s.get("a:2").unwrap().is_some());
        assert_eq!(s.query(&AlertQuery::default()).unwrap().len(), 1);
    }

    #[test]
    fn retention_deletes_the_oldest_until_the_store_fits_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let probe = open(&tempfile::tempdir().unwrap());
        probe
            .insert_batch(&[alert("a", 1, "s", 1, Severity::Info)])
            .unwrap();
        let one = probe.bytes();
        let s = AlertStore::open(&StoreConfig {
            max_bytes: one * 10,
            ..StoreConfig::at(dir.path().join("store"))
        })
        .unwrap();
        for i in 1..=25u64 {
            s.insert_batch_at(&[alert("a", i, "s", i as i64, Severity::Info)], i as i64)
                .unwrap();
        }
        let deleted = s.enforce_retention(30).unwrap();
        println!(
            "deleted by size: {deleted}, left {} alerts in {} bytes",
            s.len(),
            s.bytes()
        );
        assert_eq!(deleted, 15);
        assert_eq!(s.len(), 10);
        assert!(s.bytes() <= one * 10);
        assert!(s.get("a:15").unwrap().is_none());
        assert!(s.get("a:16").unwrap().is_some());
    }

    #[test]
    fn feedback_is_recorded_and_unknown_ids_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        s.insert_batch(&[alert("a", 1, "s", 1, Severity::Critical)])
            .unwrap();
        assert!(s.set_feedback("a:1", false).unwrap());
        assert!(!s.set_feedback("a:9", true).unwrap());
        let got = s.get("a:1").unwrap().unwrap();
        assert_eq!(got.feedback, Some(false));
        let json = serde_json::to_value(&got).unwrap();
        println!("{json}");
        assert_eq!(json["alert"]["alert_id"], "a:1");
        assert_eq!(json["alert"]["severity"], "critical");
        assert_eq!(json["feedback"], false);
        // A re-delivered duplicate does not erase the feedback.
        s.insert_batch(&[alert("a", 1, "s", 1, Severity::Critical)])
            .unwrap();
        assert_eq!(s.get("a:1").unwrap().unwrap().feedback, Some(false));
    }

    #[test]
    fn alerts_survive_closing_and_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            s.insert_batch(&[
                alert("a", 1, "s", 1, Severity::Info),
                alert("a", 2, "s", 2, Severity::Info),
            ])
            .unwrap();
            s.set_feedback("a:2", true).unwrap();
        }
        let s = open(&dir);
        println!("reopened with {} alerts, {} bytes", s.len(), s.bytes());
        assert_eq!(s.len(), 2);
        assert!(s.bytes() > 0);
        assert_eq!(s.get("a:2").unwrap().unwrap().feedback, Some(true));
        assert_eq!(
            s.insert_batch(&[alert("a", 1, "s", 1, Severity::Info)])
                .unwrap(),
            InsertOutcome {
                new: 0,
                duplicates: 1
            }
        );
    }
}
