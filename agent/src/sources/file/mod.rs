//! File and stdin replay: CSV (with a header) or JSON lines, for backfills
//! and benchmarks.
//!
//! The reader runs on a blocking thread and sends into the pipeline's
//! bounded channel with `blocking_send`, so a slow pipeline slows the reader
//! down and nothing is dropped.
//!
//! **Pacing**: `speed = 0` replays as fast as possible; with a
//! `mapping.timestamp_field`, `speed = k` replays `k` times faster than the
//! recorded timestamps; without one, `speed` is events per second.
//!
//! **Resume** (`resume = true`): the byte offset after the last processed
//! line is kept in `{data_dir}/sources/{name}.offset` (8 ASCII digits or
//! more, written to a temporary file and renamed). The pipeline commits an
//! offset only after the alerts raised by the lines before it are flushed
//! to the outbox: at once when the batch raised alerts, else at most once a
//! second. A batch that raised alerts also stores its offset in the
//! outbox's own transaction (an outbox mark, see
//! [`crate::outbox::Outbox::append_marked`]), and at start the offset file
//! is moved forward to that mark ([`reconcile_offsets`]). So after
//! `kill -9`, even between the outbox append and the offset file write, the
//! agent restarts after every line whose alerts are in the outbox: no event
//! raises its alert twice under two ids; lines that raised nothing may be
//! replayed (harmless).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::{
    BadInput, BadInputReporter, Committer, Envelope, EventSender, Mapping, MappingConfig,
    MappingError, Mark, SourceInfo,
};

/// Errors of the file source.
#[derive(Debug, Error)]
pub enum FileSourceError {
    /// The config is invalid.
    #[error("sources.{name}: {source}")]
    Mapping {
        /// Source name.
        name: String,
        /// What is wrong.
        source: MappingError,
    },
    /// A config value is invalid.
    #[error("sources.{name}.{key}: {reason}")]
    Invalid {
        /// Source name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Line format of a replay file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// CSV; the first line is the header unless `mapping.columns` is set.
    Csv,
    /// One JSON object (or array) per line.
    Jsonl,
}

/// `type = "file"`: replay a file or stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Source name (unique).
    pub name: String,
    /// File to read; `-` = stdin.
    pub path: PathBuf,
    /// Line format (default: `csv` for `*.csv`, else `jsonl`).
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Replay speed: 0 = as fast as possible (default 0); see the module docs.
    #[serde(default)]
    pub speed: f64,
    /// Start again at the top when the end is reached (default false).
    #[serde(default, rename = "loop")]
    pub repeat: bool,
    /// Remember the position across restarts (default false; not for stdin).
    #[serde(default)]
    pub resume: bool,
    /// Model that scores these events (default: the only installed model, else streaming).
    #[serde(default)]
    pub model: Option<String>,
    /// Field mapping.
    pub mapping: MappingConfig,
}

impl FileSourceConfig {
    /// The format in use.
    pub fn format(&self) -> FileFormat {
        self.format
            .unwrap_or_else(|| match self.path.extension().and_then(|e| e.to_str()) {
                Some(e) if e.eq_ignore_ascii_case("csv") => FileFormat::Csv,
                _ => FileFormat::Jsonl,
            })
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), FileSourceError> {
        let invalid = |key, reason: &str| FileSourceError::Invalid {
            name: self.name.clone(),
            key,
            reason: reason.into(),
        };
        if !(self.speed.is_finite() && self.speed >= 0.0) {
            return Err(invalid("speed", "must be a finite number >= 0"));
        }
        if self.resume && self.path == Path::new("-") {
            return Err(invalid("resume", "is not possible on stdin"));
        }
        if self.repeat && self.path == Path::new("-") {
            return Err(invalid("loop", "is not possible on stdin"));
        }
        self.mapping
            .build(&self.name)
            .map(|_| ())
            .map_err(|source| FileSourceError::Mapping {
                name: self.name.clone(),
                source,
            })
    }

    /// Starts the reader on a blocking thread; it returns at the end of the
    /// input (unless looping), on shutdown or when the pipeline is gone.
    pub fn spawn(
        self,
        data_dir: &Path,
        tx: EventSender,
        reporter: BadInputReporter,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<Result<u64, FileSourceError>>, FileSourceError> {
        self.validate()?;
        let offsets = self.resume.then(|| {
            Arc::new(OffsetFile::new(
                data_dir
                    .join("sources")
                    .join(format!("{}.offset", sanitize(&self.name))),
            ))
        });
        Ok(tokio::task::spawn_blocking(move || {
            self.read_all(offsets, &tx, &reporter, &shutdown)
        }))
    }

    /// Reads the whole input (blocking); returns the number of events sent.
    pub fn read_all(
        &self,
        offsets: Option<Arc<OffsetFile>>,
        tx: &EventSender,
        reporter: &BadInputReporter,
        shutdown: &CancellationToken,
    ) -> Result<u64, FileSourceError> {
        let mut sent = 0;
        loop {
            let start = offsets.as_ref().map_or(0, |o| o.load());
            let done = self.read_pass(start, offsets.clone(), tx, reporter, shutdown, &mut sent)?;
            if !done || !self.repeat || shutdown.is_cancelled() {
                return Ok(sent);
            }
            if let Some(o) = &offsets {
                o.commit(0, true);
            }
        }
    }

    /// One pass over the input from byte `start`; `Ok(false)` = stopped early.
    fn read_pass(
        &self,
        start: u64,
        offsets: Option<Arc<OffsetFile>>,
        tx: &EventSender,
        reporter: &BadInputReporter,
        shutdown: &CancellationToken,
        sent: &mut u64,
    ) -> Result<bool, FileSourceError> {
        let io_err = |source| FileSourceError::Io {
            path: self.path.clone(),
            source,
        };
        let mut reader: Box<dyn BufRead> = if self.path == Path::new("-") {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            let f = File::open(&self.path).map_err(io_err)?;
            Box::new(BufReader::with_capacity(256 * 1024, f))
        };
        let format = self.format();
        let mut mapping_cfg = self.mapping.clone();
        let mut pos: u64 = 0;
        let mut line = Vec::with_capacity(256);
        if format == FileFormat::Csv && self.mapping.columns.is_none() {
            let n = read_line(&mut reader, &mut line).map_err(io_err)?;
            pos += n as u64;
            let header = String::from_utf8_lossy(&line);
            let cols = super::split_csv(header.trim_end_matches(['\r', '\n']))
                .map_err(|e| FileSourceError::Invalid {
                    name: self.name.clone(),
                    key: "path",
                    reason: format!("bad CSV header: {e}"),
                })?
                .into_iter()
                .map(|c| c.trim().to_string())
                .collect();
            mapping_cfg.columns = Some(cols);
        }
        let mapping: Mapping =
            mapping_cfg
                .build(&self.name)
                .map_err(|source| FileSourceError::Mapping {
                    name: self.name.clone(),
                    source,
                })?;
        if start > pos {
            let mut skip = reader.as_mut().take(start - pos);
            std::io::copy(&mut skip, &mut std::io::sink()).map_err(io_err)?;
            pos = start;
        }
        let info = Arc::new(SourceInfo {
            name: self.name.clone(),
            feature_names: mapping.fields().to_vec(),
            model: self.model.clone(),
            featurize_window: self.mapping.featurize_window,
        });
        let committer: Option<Arc<dyn Committer>> = offsets.map(|o| o as Arc<dyn Committer>);
        let mut pacer = Pacer::new(self.speed);
        let mut now = super::now_ms();
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let n = read_line(&mut reader, &mut line).map_err(io_err)?;
            if n == 0 {
                return Ok(true);
            }
            pos += n as u64;
            if line.len() > mapping.max_payload_bytes() {
                reporter.report(
                    &self.name,
                    &BadInput::Oversize {
                        len: line.len(),
                        cap: mapping.max_payload_bytes(),
                    },
                );
                continue;
            }
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            if (*sent).is_multiple_of(256) {
                now = super::now_ms();
            }
            let parsed = match format {
                FileFormat::Csv => match std::str::from_utf8(text) {
                    Ok(s) => mapping.parse_csv_line(s, None, now),
                    Err(_) => Err(BadInput::Parse("line is not UTF-8".into())),
                },
                FileFormat::Jsonl => mapping.parse_payload(text, None, now),
            };
            let event = match parsed {
                Ok(e) => e,
                Err(bad) => {
                    reporter.report(&self.name, &bad);
                    continue;
                }
            };
            pacer.wait(
                event.ts_ms,
                self.mapping.timestamp_field.is_some(),
                shutdown,
            );
            let env = Envelope {
                source: info.clone(),
                event,
                mark: committer.as_ref().map(|c| Mark {
                    committer: c.clone(),
                    position: pos,
                }),
            };
            if tx.blocking_send(env).is_err() {
                return Ok(false);
            }
            *sent += 1;
        }
    }
}

/// Reads one line including its `\n`; returns the bytes consumed.
fn read_line(reader: &mut dyn BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    reader.read_until(b'\n', line)
}

/// File-name-safe form of a source name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Sleeps between events to honour the replay speed.
struct Pacer {
    speed: f64,
    start: Option<(Instant, i64)>,
    n: u64,
}

impl Pacer {
    fn new(speed: f64) -> Self {
        Self {
            speed,
            start: None,
            n: 0,
        }
    }

    fn wait(&mut self, ts_ms: i64, has_ts: bool, shutdown: &CancellationToken) {
        if self.speed <= 0.0 {
            return;
        }
        let (t0, ts0) = *self.start.get_or_insert((Instant::now(), ts_ms));
        let due = if has_ts {
            ((ts_ms - ts0).max(0) as f64 / 1000.0) / self.speed
        } else {
            self.n as f64 / self.speed
        };
        self.n += 1;
        let target = t0 + Duration::from_secs_f64(due.min(1e9));
        // Sleep in short steps so shutdown is noticed.
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if now >= target {
                break;
            }
            std::thread::sleep((target - now).min(Duration::from_millis(100)));
        }
    }
}

/// Prefix of the outbox marks that are file source offsets (followed by the offset file's path).
pub const OFFSET_MARK_PREFIX: &str = "file-offset:";

/// Moves offset files forward to the positions the outbox stored with its
/// alerts (a `kill -9` between the outbox append and the offset file write
/// leaves the file behind). Only files under `data_dir` are touched; returns
/// how many were moved.
pub fn reconcile_offsets(data_dir: &Path, marks: &[(String, u64)]) -> usize {
    let mut moved = 0;
    for (key, pos) in marks {
        let Some(path) = key.strip_prefix(OFFSET_MARK_PREFIX).map(PathBuf::from) else {
            continue;
        };
        if !path.starts_with(data_dir) {
            continue;
        }
        let f = OffsetFile::new(path.clone());
        if f.load() < *pos {
            match f.write(*pos) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), offset = pos, "file source offset moved forward to the outbox's");
                    moved += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot move the file source offset forward")
                }
            }
        }
    }
    moved
}

/// The persisted read position of a file source.
pub struct OffsetFile {
    path: PathBuf,
    state: Mutex<(u64, Option<Instant>)>,
}

impl OffsetFile {
    /// An offset kept at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new((0, None)),
        }
    }

    /// The committed offset, 0 when none was saved or the file is unreadable.
    pub fn load(&self) -> u64 {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn write(&self, position: u64) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("offset.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{position:08}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Drop for OffsetFile {
    /// Saves a deferred position once nothing can commit any more (end of replay, shutdown).
    fn drop(&mut self) {
        if let Ok(st) = self.state.lock()
            && st.1.is_some()
            && let Err(e) = self.write(st.0)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the file source offset");
        }
    }
}

impl Committer for OffsetFile {
    fn key(&self) -> Option<String> {
        Some(format!("{OFFSET_MARK_PREFIX}{}", self.path.display()))
    }

    fn commit(&self, position: u64, durable: bool) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.0 = position;
        let due = durable || st.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            if let Err(e) = self.write(position) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot save the file source offset");
            }
            st.1 = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: PathBuf, resume: bool) -> FileSourceConfig {
        let mut mapping = MappingConfig::new(&["a", "b"]);
        mapping.timestamp_field = Some("ts".into());
        FileSourceConfig {
            name: "replay".into(),
            path,
            format: None,
            speed: 0.0,
            repeat: false,
            resume,
            model: None,
            mapping,
        }
    }

    #[test]
    fn a_csv_file_is_replayed_in_order_and_bad_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "ts,a,b\n1,1.0,2.0\n2,x,2\n\n3,3,4\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let rep = BadInputReporter::detached();
        let n = cfg(p, false)
            .read_all(None, &tx, &rep, &CancellationToken::new())
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(rep.total(), 1);
        let a = rx.try_recv().unwrap().event;
        let b = rx.try_recv().unwrap().event;
        assert_eq!((a.ts_ms, a.values, b.ts_ms), (1, vec![1.0, 2.0], 3));
    }

    #[test]
    fn offsets_move_forward_to_the_outbox_marks_only_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let inside = data.join("sources/replay.offset");
        let behind = OffsetFile::new(inside.clone());
        behind.write(100).unwrap();
        let ahead = data.join("sources/other.offset");
        OffsetFile::new(ahead.clone()).write(900).unwrap();
        let outside = dir.path().join("elsewhere.offset");
        let key = |p: &Path| format!("{OFFSET_MARK_PREFIX}{}", p.display());
        let marks = vec![
            (key(&inside), 300),
            (key(&ahead), 500),
            (key(&outside), 700),
            ("something-else".to_string(), 5),
        ];
        assert_eq!(reconcile_offsets(&data, &marks), 1);
        assert_eq!(OffsetFile::new(inside.clone()).load(), 300);
        assert_eq!(OffsetFile::new(ahead).load(), 900, "never moved back");
        assert!(!outside.exists(), "nothing written outside the data dir");
        assert_eq!(OffsetFile::new(inside.clone()).key().unwrap(), key(&inside));
    }

    #[test]
    fn a_resumed_replay_starts_after_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let lines: String = (0..10)
            .map(|i| format!("{{\"ts\":{i},\"a\":{i},\"b\":0}}\n"))
            .collect();
        std::fs::write(&p, lines).unwrap();
        let off = Arc::new(OffsetFile::new(dir.path().join("o/replay.offset")));
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let rep = BadInputReporter::detached();
        cfg(p.clone(), true)
            .read_all(Some(off.clone()), &tx, &rep, &CancellationToken::new())
            .unwrap();
        let mut marks = vec![];
        while let Ok(e) = rx.try_recv() {
            marks.push(e.mark.unwrap());
        }
        assert_eq!(marks.len(), 10);
        // commit after the 4th event, durably
        marks[3].committer.commit(marks[3].position, true);
        let off2 = Arc::new(OffsetFile::new(dir.path().join("o/replay.offset")));
        assert_eq!(off2.load(), marks[3].position);
        let n = cfg(p, true)
            .read_all(Some(off2), &tx, &rep, &CancellationToken::new())
            .unwrap();
        assert_eq!(n, 6);
        assert_eq!(rx.try_recv().unwrap().event.ts_ms, 4);
    }
}
