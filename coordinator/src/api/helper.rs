//! A second core for a lone client's batch: one helper thread that takes
//! half of a detect batch while the request's own thread scores the other.
//!
//! Why not the blocking pool: at one connection a 256-row forest batch takes
//! about 80 µs per half, and waking a parked thread on an idle core of a VM
//! costs tens of microseconds each time, which ate most of the gain. The
//! helper therefore stays awake for [`SPIN`] after each job before it parks,
//! so back-to-back requests of one client find it running, and the caller
//! spins for the result (its own half takes as long). While awake it yields
//! the core at every turn (`sched_yield`), so it only takes a core nobody
//! else wants: with a spinning helper (no yield) a 16-connection batch load
//! fell from about 10,000 to 6,600 requests/s, because a request that found
//! no other in flight now and then still split its batch and the helper
//! then held one of the two cores. `DETECT_SPLIT_ROWS=0` turns splitting off.
//!
//! Nothing here holds state across requests: a job that panics is reported
//! to its caller as an error and the helper goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the helper stays awake after a job.
pub const SPIN: Duration = Duration::from_millis(1);

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    /// The job handed over, until the helper takes it.
    job: Mutex<Option<Job>>,
    /// A job is in the slot (what the spinning helper watches).
    ready: AtomicBool,
    /// From hand-over until the job has finished: one job at a time.
    busy: AtomicBool,
    wake: Condvar,
}

/// The helper thread's handle; see the module docs.
pub struct Helper {
    shared: Arc<Shared>,
}

/// The result of a job given to the helper.
pub struct Pending<T> {
    rx: mpsc::Receiver<std::thread::Result<T>>,
}

impl<T> Pending<T> {
    /// Waits for the result, spinning for up to [`SPIN`] first; `None` when the job panicked.
    pub fn wait(self) -> Option<T> {
        let until = Instant::now() + SPIN;
        let mut spins = 0u32;
        loop {
            match self.rx.try_recv() {
                Ok(r) => return r.ok(),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            spins += 1;
            if spins.is_multiple_of(256) && Instant::now() > until {
                return self.rx.recv().ok().and_then(|r| r.ok());
            }
            std::hint::spin_loop();
        }
    }
}

impl Helper {
    /// The process-wide helper, started on first use.
    pub fn global() -> &'static Helper {
        static HELPER: OnceLock<Helper> = OnceLock::new();
        HELPER.get_or_init(Helper::start)
    }

    fn start() -> Helper {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            ready: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("detect-helper".into())
            .spawn(move || run(&s))
            .expect("cannot start the detect helper thread");
        Helper { shared }
    }

    /// Hands `f` to the helper; gives it back when the helper is busy.
    pub fn try_run<T, F>(&self, f: F) -> Result<Pending<T>, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.shared.busy.swap(true, Ordering::AcqRel) {
            return Err(f);
        }
        let mut slot = self.shared.job.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = mpsc::sync_channel(1);
        let shared = self.shared.clone();
        *slot = Some(Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            // Free before the result is out, so the caller's next job finds it idle.
            shared.busy.store(false, Ordering::Release);
            let _ = tx.send(r);
        }));
        self.shared.ready.store(true, Ordering::Release);
        drop(slot);
        self.shared.wake.notify_one();
        Ok(Pending { rx })
    }
}

/// The helper's loop: spin for [`SPIN`] waiting for a job, else sleep until one comes.
fn run(s: &Shared) {
    loop {
        let until = Instant::now() + SPIN;
        let mut spins = 0u32;
        while !s.ready.load(Ordering::Acquire) {
            spins += 1;
            if spins.is_multiple_of(16) && Instant::now() > until {
                let mut slot = s.job.lock().unwrap_or_else(|p| p.into_inner());
                while slot.is_none() {
                    slot = s.wake.wait(slot).unwrap_or_else(|p| p.into_inner());
                }
                break;
            }
            std::thread::yield_now();
        }
        let job = {
            let mut slot = s.job.lock().unwrap_or_else(|p| p.into_inner());
            s.ready.store(false, Ordering::Release);
            slot.take()
        };
        if let Some(job) = job {
            job();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_helper_and_return_their_result() {
        let h = Helper::global();
        for i in 0..200u64 {
            let p = h
                .try_run(move || (i * 2, std::thread::current().name().map(String::from)))
                .unwrap_or_else(|_| panic!("the helper is idle between waited jobs"));
            let (v, name) = p.wait().expect("result");
            assert_eq!(v, i * 2);
            assert_eq!(name.as_deref(), Some("detect-helper"));
            if i % 50 == 0 {
                // Long enough for the helper to park: it must wake up again.
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn a_busy_helper_gives_the_job_back_and_a_panic_is_an_error() {
        let h = Helper::start();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = h
            .try_run(move || release_rx.recv().is_ok())
            .unwrap_or_else(|_| panic!("idle helper"));
        assert!(h.try_run(|| 1).is_err(), "one job at a time");
        release_tx.send(()).unwrap();
        assert_eq!(first.wait(), Some(true));
        let boom = h
            .try_run(|| -> u32 { panic!("job failed") })
            .unwrap_or_else(|_| panic!("idle again once the result is out"));
        assert_eq!(
            boom.wait(),
            None,
            "a panicking job is an error for its caller"
        );
        let after = h
            .try_run(|| 7)
            .unwrap_or_else(|_| panic!("idle after a panicking job"));
        assert_eq!(after.wait(), Some(7), "the helper survives a panicking job");
    }
}
