//! A slow link on loopback: a TCP proxy on 127.0.0.1 that delays every
//! byte by a one-way latency in each direction and lets at most a given
//! number of bytes a second through towards the client (one link shared
//! by every connection), counting them. Benchmarks put it in front of a
//! registry to pull over a realistic network.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running proxy; it lives as long as the process.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// `127.0.0.1:PORT`, to use instead of the upstream address.
    pub addr: String,
    down: Arc<AtomicU64>,
}

/// The downlink both directions of every connection share.
struct Link {
    bytes_per_sec: u64,
    /// When the link is next free.
    free_at: Mutex<Instant>,
}

impl Link {
    /// Waits until `n` bytes have gone through the link.
    fn send(&self, n: usize) {
        let took = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let done = {
            let mut free = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*free).max(Instant::now());
            *free = start + took;
            *free
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
    }
}

impl Throttle {
    /// Starts a proxy to `upstream` with `delay` each way and
    /// `bytes_per_sec` towards the client.
    pub fn start(upstream: &str, bytes_per_sec: u64, delay: Duration) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let down = Arc::new(AtomicU64::new(0));
        let link = Arc::new(Link {
            bytes_per_sec,
            free_at: Mutex::new(Instant::now()),
        });
        let (upstream, counter) = (upstream.to_owned(), down.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(client, server, delay, None, None);
                pipe(s2, c2, delay, Some(link.clone()), Some(counter.clone()));
            }
        });
        Throttle { addr, down }
    }

    /// Bytes sent towards clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` through a delay line (and `link`, when given).
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    link: Option<Arc<Link>>,
    counter: Option<Arc<AtomicU64>>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if let Some(link) = &link {
                link.send(bytes.len());
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
            if let Some(c) = &counter {
                c.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
