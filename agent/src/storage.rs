//! Opening sled databases.
//!
//! sled holds an exclusive file lock on its directory for as long as any of
//! its background threads still references the database; after a `Db` is
//! dropped in-process (a restart of a component, a test reopening its
//! store) the lock can outlive the drop by a few milliseconds. Opening
//! retries on that lock for a bounded time instead of failing at once;
//! another process that really holds the database still gets an error.

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
}
