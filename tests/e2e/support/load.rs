//! A load generator for tests that change the node while a site is under
//! load (a new site, its certificates, a growing pool) and must fail no
//! request on it: plain HTTP/1.1 GETs on kept-alive connections, each
//! answer checked for its status and body.
//!
//! Kept-alive connections, as browsers and real clients use them: a server
//! may close an idle kept-alive connection at any time (a graceful restart
//! does), and a client then retries the request once on a new connection
//! (RFC 9112 section 9.3.1: the request was never answered and GET is
//! idempotent). Those retries are counted apart, not as failures; any
//! other error, status or body is a failure. A new connection per request
//! would never see that case, but it would also spend most of its time on
//! connection set-up and miss what a restart does to connections in use.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// No load runs longer than this, whatever its stop flag says.
const LOAD_DEADLINE: Duration = Duration::from_secs(240);
/// Nor sends more requests than this, per thread.
const LOAD_MAX_REQUESTS: u32 = 200_000;

/// One GET of `/` on a kept-alive connection (opened when `conn` is None):
/// the status and body, or why there is none; `Err(None)` when a reused
/// connection was closed before any answer (the idle close a browser
/// retries on a new connection).
pub fn keepalive_get(
    conn: &mut Option<(BufReader<TcpStream>, u32)>,
    port: u16,
    host: &str,
) -> Result<(u16, String), Option<String>> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| Some(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        *conn = Some((BufReader::new(s), 0));
    }
    let (r, used) = conn.as_mut().unwrap();
    let reused = *used > 0;
    *used += 1;
    let idle_close = |e: String| if reused { None } else { Some(e) };
    write!(r.get_mut(), "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .map_err(|e| idle_close(e.to_string()))?;
    let mut status = String::new();
    match r.read_line(&mut status) {
        Ok(0) => return Err(idle_close("closed".into())),
        Err(e) => return Err(idle_close(e.to_string())),
        Ok(_) => {}
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(Some(format!("bad status line {status:?}")))?;
    let (mut length, mut close, mut chunked) = (0usize, false, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| Some(e.to_string()))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let body = if chunked {
        read_chunked(r).map_err(|e| Some(e.to_string()))?
    } else {
        let mut body = vec![0; length];
        r.read_exact(&mut body).map_err(|e| Some(e.to_string()))?;
        body
    };
    if close {
        *conn = None;
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// A chunked body (RFC 9112 section 7.1), trailers skipped.
fn read_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|e| std::io::Error::other(format!("chunk size {size:?}: {e}")))?;
        if n == 0 {
            loop {
                let mut line = String::new();
                r.read_line(&mut line)?;
                if line.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk[..n]);
    }
}

/// GETs `host` until `stop` (or the load's deadline or request count) on
/// kept-alive connections: how many were sent, which failed, and how many
/// were retried once on a new connection after an idle kept-alive
/// connection closed (counted apart).
pub fn load(port: u16, host: &str, body: &str, stop: Arc<AtomicBool>) -> (u32, Vec<String>, u32) {
    let (mut sent, mut failed, mut retried) = (0u32, Vec::new(), 0u32);
    let mut conn = None;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && started.elapsed() < LOAD_DEADLINE
        && sent < LOAD_MAX_REQUESTS
    {
        sent += 1;
        let mut answer = keepalive_get(&mut conn, port, host);
        if let Err(None) = answer {
            retried += 1;
            conn = None;
            answer = keepalive_get(&mut conn, port, host);
        }
        match answer {
            Ok((200, b)) if b == body => {}
            other => {
                conn = None;
                failed.push(format!("{other:?}"));
            }
        }
    }
    (sent, failed, retried)
}

/// What a load saw, summed over its threads.
#[derive(Debug, Default)]
pub struct LoadCount {
    pub sent: u32,
    /// Each failed request: what came back instead of the body.
    pub failed: Vec<String>,
    /// Requests retried once on a new connection after an idle close.
    pub retried: u32,
}

impl std::fmt::Display for LoadCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed of {} sent ({} retried once after an idle close)",
            self.failed.len(),
            self.sent,
            self.retried
        )?;
        for fail in self.failed.iter().take(10) {
            // An error page is long: its start tells which one it is.
            let short: String = fail.chars().take(120).collect();
            write!(f, "\n  {short}")?;
        }
        Ok(())
    }
}

/// `threads` threads running `load` on one host until `finish` (stopped
/// on drop too, so a failing test leaves no thread behind).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(u32, Vec<String>, u32)>>,
}

impl Load {
    /// Starts the load on `host` at the Apache on `port`, expecting `body`.
    pub fn start(port: u16, host: &str, body: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, host, body) = (stop.clone(), host.to_string(), body.to_string());
                std::thread::spawn(move || load(port, &host, &body, stop))
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the load and sums what its threads saw.
    pub fn finish(mut self) -> LoadCount {
        self.stop.store(true, Ordering::Relaxed);
        let mut count = LoadCount::default();
        for t in self.threads.drain(..) {
            let (sent, failed, retried) = t.join().expect("a load thread");
            count.sent += sent;
            count.failed.extend(failed);
            count.retried += retried;
        }
        count
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
