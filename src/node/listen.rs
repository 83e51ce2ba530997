//! Accepting TCP connections so that no client can stop a listener: an
//! accept error (the process out of file descriptors, a connection reset
//! before it was accepted) is logged at most once a second and retried,
//! never returned; and a `Gate` counts connections per source address, so a
//! server can cap what one client (and all of them) may hold open before
//! authenticating (the SSH server's use; its refusals say so).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// How long to wait after an accept error that will not clear by itself
/// at once (no file descriptors left): long enough not to spin, short
/// enough that the listener is back as soon as connections close.
const BACKOFF: Duration = Duration::from_millis(100);

/// Lets a log line through at most once per interval, counting the ones
/// it held back so the next line can say how many there were.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// Some(number of lines held back since the last one) if a line may be
    /// logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(Duration::from_secs(1))
    }
}

/// " (and N more like it)" for a throttled log line.
pub fn held_note(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(" ({n} more since the last report)"),
    }
}

/// Waits for the next connection. Never fails: errors are logged (throttled)
/// and the listener is tried again, after a pause when the error says the
/// process is out of resources.
pub async fn accept(
    listener: &TcpListener,
    server: &str,
    throttle: &mut Throttle,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                // The connection died in the queue: nothing to wait for.
                let transient = matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                );
                if let Some(held) = throttle.allow(Instant::now()) {
                    let hint = match e.raw_os_error() {
                        Some(libc::EMFILE) | Some(libc::ENFILE) => {
                            "; connections wait until some close (raise the open-file \
                             limit, LimitNOFILE= in the systemd unit, if this persists)"
                        }
                        _ => "",
                    };
                    tracing::error!(
                        "{server}: cannot accept a connection: {e}{hint}{}",
                        held_note(held)
                    );
                }
                if !transient {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_total` connections are open already.
    Total(usize),
    /// `max_per_address` connections from this address are open already.
    Address(usize),
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Total(n) => write!(f, "{n} connections are waiting to authenticate"),
            Full::Address(n) => write!(
                f,
                "{n} connections from this address are waiting to authenticate"
            ),
        }
    }
}

/// Counts connections in total and per source address, up to caps.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Gate {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max_total,
            max_per_address,
            open: Mutex::new(Counts::default()),
        })
    }

    /// Counts a connection from `peer` in, or says which cap it is over.
    /// The count goes down when the returned `Pass` is dropped.
    pub fn admit(self: &Arc<Gate>, peer: IpAddr) -> Result<Pass, Full> {
        let address = bucket(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Full::Total(self.max_total));
        }
        let from_here = open.by_address.entry(address).or_insert(0);
        if *from_here >= self.max_per_address {
            return Err(Full::Address(self.max_per_address));
        }
        *from_here += 1;
        open.total += 1;
        Ok(Pass {
            gate: self.clone(),
            address,
        })
    }

    /// Connections counted now (in total, from `peer`'s address).
    pub fn open(&self, peer: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let here = open.by_address.get(&bucket(peer)).copied().unwrap_or(0);
        (open.total, here)
    }
}

/// One connection counted by a `Gate`, until dropped.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    address: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// The "address" a per-address cap counts: an IPv4 address (also when it
/// arrives mapped into IPv6), or an IPv6 /64, since one IPv6 host usually
/// holds a whole /64 and could otherwise pick a fresh address per
/// connection.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_gate_caps_per_address_and_in_total() {
        let gate = Gate::new(3, 2);
        let a1 = gate.admit(ip("10.0.0.1")).unwrap();
        let _a2 = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.1")).unwrap_err(), Full::Address(2));
        let _b1 = gate.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.3")).unwrap_err(), Full::Total(3));
        assert_eq!(gate.open(ip("10.0.0.1")), (3, 2));
        drop(a1);
        assert_eq!(gate.open(ip("10.0.0.1")), (2, 1));
        let _a3 = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.3")).unwrap_err(), Full::Total(3));
    }

    #[test]
    fn counts_go_back_to_zero() {
        let gate = Gate::new(10, 10);
        let passes: Vec<Pass> = (0..5).map(|_| gate.admit(ip("::1")).unwrap()).collect();
        assert_eq!(gate.open(ip("::1")), (5, 5));
        drop(passes);
        assert_eq!(gate.open(ip("::1")), (0, 0));
        assert!(gate.open.lock().unwrap().by_address.is_empty());
    }

    #[test]
    fn addresses_are_bucketed() {
        // Mapped IPv4 counts as the IPv4 address.
        assert_eq!(bucket(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        // One IPv6 /64 is one address.
        assert_eq!(
            bucket(ip("2001:db8:1:2:aaaa::1")),
            bucket(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(bucket(ip("2001:db8:1:2::1")), bucket(ip("2001:db8:1:3::1")));
        let gate = Gate::new(10, 1);
        let _p = gate.admit(ip("2001:db8::1")).unwrap();
        assert!(gate.admit(ip("2001:db8::2")).is_err());
        let _q = gate.admit(ip("192.0.2.7")).unwrap();
        assert!(gate.admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[test]
    fn the_throttle_lets_one_line_a_second_through() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(2100)), Some(1));
    }
}
