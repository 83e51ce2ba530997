//! A minimal HTTP/1.0 client for the node's own requests through Apache:
//! release checks and `update_fetch`. The Host header is what
//! routes the request, so it is set explicitly; nothing leaves loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach Apache at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer from Apache within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer from Apache: {0}")]
    Malformed(String),
}

/// GET `path` with `Host: host`, plus `extra` header lines (each without
/// its CRLF; the node's own, never a client's).
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[String],
    timeout: Duration,
) -> Result<Response, ProbeError> {
    tokio::time::timeout(timeout, get_inner(addr, host, path, extra))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn get_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[String],
) -> Result<Response, ProbeError> {
    let connect = |source| ProbeError::Connect { addr, source };
    let mut stream = TcpStream::connect(addr).await.map_err(connect)?;
    let extra: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: toppcloud-node\r\n{extra}Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(connect)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(connect)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response, ProbeError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ProbeError::Malformed("no end of headers".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProbeError::Malformed(format!("status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let r =
            parse(b"HTTP/1.1 503 Service Unavailable\r\nX-Slot-State: empty\r\n\r\nempty slot\n")
                .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-slot-state"), Some("empty"));
        assert_eq!(r.body, "empty slot\n");
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse(b"garbage").is_err());
    }
}
