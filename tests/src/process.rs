//! Process and polling helpers shared by every harness piece: free loopback
//! ports, bounded waits and POSIX signals to child processes.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until something accepts TCP connections on `127.0.0.1:port`; returns whether it did in time.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Async version of [`wait_until`] (sleeps on the tokio timer).
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to `child` with kill(1); the
/// workspace forbids `unsafe`, so no libc call.
pub fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
}

/// SIGKILL and reap the process in `slot`, if there is one (it is taken out).
pub fn kill_slot(slot: &mut Option<Child>) {
    if let Some(mut c) = slot.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// [`terminate`] the process in `slot`, if there is one (it is taken out);
/// `true` when there was none or it exited on its own.
pub fn stop_slot(slot: &mut Option<Child>, grace: Duration) -> bool {
    slot.take().is_none_or(|mut c| terminate(&mut c, grace))
}

/// SIGTERM, then SIGKILL if `child` has not exited within `grace`; reaps it.
/// Returns whether it exited on its own after SIGTERM.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    signal(child, "TERM");
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}
