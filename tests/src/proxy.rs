//! A TCP proxy on a free loopback port that forwards to a target port and
//! can cut the network: [`TcpProxy::cut`] shuts down every open connection
//! and closes each new one at once until [`TcpProxy::heal`], which is what a
//! client sees when a link drops and the far side is unreachable for a while.
//!
//! Threads, not tasks: it works the same whatever runtime the test uses.
//! Nothing is buffered beyond the socket buffers; bytes in flight when a
//! connection is cut are lost, as on a real cut.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A cuttable TCP forwarder, stopped on drop.
pub struct TcpProxy {
    /// The port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    target: u16,
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both sockets of every open connection, to shut them down on a cut.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        TcpProxy { port, shared }
    }

    /// `mqtt://127.0.0.1:<port>`, for MQTT clients that should go through the proxy.
    pub fn mqtt_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection and refuses new ones until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        shutdown_all(&self.shared);
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the link was cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        shutdown_all(&self.shared);
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn shutdown_all(shared: &Shared) {
    let mut open = shared.open.lock().unwrap();
    for (a, b) in open.drain(..) {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.target)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        {
            let mut open = shared.open.lock().unwrap();
            // Forget connections that already ended.
            open.retain(|(a, _)| a.peer_addr().is_ok());
            open.push((c3, s3));
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || pipe(client, s2));
        std::thread::spawn(move || pipe(server, c2));
    }
}

/// Copies `from` to `to` until either side ends, then shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
