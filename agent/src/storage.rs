//! Opening sled databases.
//!
//! sled holds an exclusive file lock on its directory for as long as any of
//! its background threads still references the database; after a `Db` is
//! dropped in-process (a restart of a component, a test reopening its
//! store) the lock can outlive the drop by a few milliseconds. Opening
//! retries on that lock for a bounded time instead of failing at once;
//! another process that really holds the database still gets an error.
//!
//! # Corruption ([`open_recovering`])
//!
//! sled checks a CRC on every log message and, on recovery, treats the first
//! bad one as the torn tail of a crash: it silently keeps the state before
//! it. A damaged `conf` file, or a damaged structure sled only notices later,
//! makes it refuse the whole directory with `Corruption`, and some damage
//! makes it panic. A process that just failed here would crash-loop, so
//! [`open_recovering`] instead:
//!
//! 1. renames the damaged directory to `<dir>.corrupt-<unix ms>` (kept for
//!    the operator, never deleted);
//! 2. salvages from a scratch copy of it (without `conf`, which sled then
//!    rewrites from the config) every entry of every tree sled can still
//!    read, stopping a tree at its first unreadable entry;
//! 3. opens a fresh database at `<dir>`, writes the salvaged entries and
//!    flushes (fsync) before it returns, and reports what it did in a
//!    [`Recovery`] for the caller to log and count.
//!
//! What survives `kill -9` during recovery: the damaged directory is renamed
//! before anything else is written, so a crash leaves either the damaged
//! directory in place (recovery runs again) or it aside plus a fresh
//! database holding all, part or none of the salvaged entries; a crash
//! before the final flush means the next start sees no damage and keeps the
//! partial salvage, while everything salvageable stays in `<dir>.corrupt-*`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`open_db`] waits for sled's directory lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens `config`, retrying while sled's directory lock is held (up to [`LOCK_WAIT`]).
pub fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// What [`open_recovering`] did about a damaged database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the damaged directory was moved (`<dir>.corrupt-<unix ms>`).
    pub moved_to: PathBuf,
    /// Why the database could not be used as it was.
    pub reason: String,
    /// Entries salvaged into the fresh database, over all trees.
    pub salvaged: u64,
    /// Trees whose salvage stopped at an unreadable entry or could not be opened at all.
    pub incomplete: Vec<String>,
}

/// A database opened by [`open_recovering`]: the handle and, if it had to be rebuilt, how.
pub struct Opened {
    /// The open database.
    pub db: sled::Db,
    /// `Some` when the directory was damaged and has been moved aside.
    pub recovery: Option<Recovery>,
}

/// Whether `e` means the files are damaged (rather than locked, missing permissions or full).
pub fn is_corruption(e: &sled::Error) -> bool {
    match e {
        sled::Error::Corruption { .. } => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Opens the database and reads every entry of every tree once, turning a
/// sled panic into an error message; `Ok(Err(reason))` = damaged.
fn open_and_check(config: &sled::Config) -> sled::Result<Result<sled::Db, String>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| -> sled::Result<sled::Db> {
        let db = open_db(config)?;
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            for kv in tree.iter() {
                kv?;
            }
        }
        Ok(db)
    })) {
        Ok(Ok(db)) => Ok(Ok(db)),
        Ok(Err(e)) if is_corruption(&e) => Ok(Err(e.to_string())),
        Ok(Err(e)) => Err(e),
        Err(p) => Ok(Err(format!("sled panicked: {}", panic_message(&*p)))),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Reads what sled can still read from a scratch copy of `damaged` into `fresh`.
fn salvage(damaged: &Path, fresh: &sled::Db) -> (u64, Vec<String>) {
    let scratch = damaged.with_extension("salvage");
    let _ = std::fs::remove_dir_all(&scratch);
    let mut incomplete = Vec::new();
    let mut salvaged = 0u64;
    if let Err(e) = copy_dir(damaged, &scratch) {
        incomplete.push(format!("(copy failed: {e})"));
        return (0, incomplete);
    }
    let _ = std::fs::remove_file(scratch.join("conf"));
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let old = open_db(&sled::Config::new().path(&scratch)).map_err(|e| e.to_string())?;
        for name in old.tree_names() {
            let label = String::from_utf8_lossy(&name).into_owned();
            let (Ok(src), Ok(dst)) = (old.open_tree(&name), fresh.open_tree(&name)) else {
                incomplete.push(label);
                continue;
            };
            for kv in src.iter() {
                if kv.and_then(|(k, v)| dst.insert(k, v)).is_err() {
                    incomplete.push(label);
                    break;
                }
                salvaged += 1;
            }
        }
        Ok::<_, String>(())
    }));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => incomplete.push(format!("(cannot open the copy: {e})")),
        Err(p) => incomplete.push(format!("(sled panicked: {})", panic_message(&*p))),
    }
    let _ = std::fs::remove_dir_all(&scratch);
    (salvaged, incomplete)
}

/// Opens `config` (whose path is `path`) like [`open_db`]; when sled reports
/// the files as damaged or panics on them, moves them aside, salvages what it
/// can read into a fresh database and says so (see the module docs).
/// A lock held by another process or an I/O failure is still an error.
pub fn open_recovering(config: &sled::Config, path: &Path) -> sled::Result<Opened> {
    let reason = match open_and_check(config)? {
        Ok(db) => {
            return Ok(Opened { db, recovery: None });
        }
        Err(reason) => reason,
    };
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{ms}"));
    let moved_to = PathBuf::from(name);
    std::fs::rename(path, &moved_to)?;
    if let Some(parent) = moved_to.parent() {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    let db = open_db(config)?;
    let (salvaged, incomplete) = salvage(&moved_to, &db);
    db.flush()?;
    Ok(Opened {
        db,
        recovery: Some(Recovery {
            moved_to,
            reason,
            salvaged,
            incomplete,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_reopens_right_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(Some(10));
        for i in 0..20u32 {
            let db = open_db(&cfg).unwrap();
            db.insert(i.to_be_bytes(), &[1]).unwrap();
            db.flush().unwrap();
            assert_eq!(db.len(), i as usize + 1);
        }
    }

    #[test]
    fn a_database_held_open_is_still_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled::Config::new().path(dir.path().join("db"));
        let _held = open_db(&cfg).unwrap();
        let started = Instant::now();
        // a second Config (as another component would build) cannot take the lock
        let other = sled::Config::new().path(dir.path().join("db"));
        assert!(open_db(&other).is_err());
        assert!(started.elapsed() >= LOCK_WAIT);
    }

    #[test]
    fn a_damaged_conf_is_moved_aside_and_every_entry_is_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cfg = sled::Config::new().path(&path);
        {
            let db = open_db(&cfg).unwrap();
            let t = db.open_tree("t").unwrap();
            for i in 0..50u32 {
                t.insert(i.to_be_bytes(), &[7u8; 10]).unwrap();
            }
            db.flush().unwrap();
        }
        let conf = path.join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&conf, bytes).unwrap();
        assert!(
            matches!(open_and_check(&cfg), Ok(Err(_))),
            "sled refuses it"
        );

        let opened = open_recovering(&cfg, &path).unwrap();
        let r = opened.recovery.expect("recovered");
        assert!(r.moved_to.to_string_lossy().contains("db.corrupt-"));
        assert!(
            r.moved_to.join("conf").exists(),
            "the damaged files are kept"
        );
        assert_eq!(r.salvaged, 50);
        assert!(r.incomplete.is_empty(), "{:?}", r.incomplete);
        assert_eq!(opened.db.open_tree("t").unwrap().len(), 50);
        drop(opened.db);
        let again = open_recovering(&cfg, &path).unwrap();
        assert!(again.recovery.is_none(), "the rebuilt database is healthy");
    }

    #[test]
    fn a_locked_database_is_an_error_not_a_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = open_db(&sled::Config::new().path(&path)).unwrap();
        let err = open_recovering(&sled::Config::new().path(&path), &path).err();
        assert!(err.is_some_and(|e| !is_corruption(&e)));
        assert!(path.exists());
    }
}
