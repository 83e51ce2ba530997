//! Hands a client's request on to Apache's listener, as it came (method,
//! path and query, headers, body, streamed both ways), and the answer back:
//! how the node answers a request for a release it has just loaded on
//! demand. Hop-by-hop headers stay on their own hop; the caller adds the
//! node's mark, so a request that comes back to the node is known for a
//! loop.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Headers that describe one connection, not the request: never passed on
/// (RFC 9110, 7.6.1), nor any the `Connection` header names.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers of `headers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Sends `req` (its path and query, its headers, with `mark` set as the
/// header `mark.0`) to Apache at `addr` over a connection of its own, and
/// returns Apache's answer, whose body streams as Apache sends it.
pub async fn forward<B>(
    addr: SocketAddr,
    req: Request<B>,
    mark: (&'static str, &str),
) -> Result<Response<Incoming>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(
        HeaderName::from_bytes(mark.0.as_bytes())
            .context("the node's mark is not a header name")?,
        HeaderValue::from_str(mark.1).context("the node's mark is not a header value")?,
    );
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    // Origin form: Apache routes by the Host header, kept as it came.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .context("the request's path is not a URI")?;
    parts.version = hyper::Version::HTTP_11;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach Apache at {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("cannot talk to Apache at {addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("forwarding to Apache: {e}");
        }
    });
    let mut answer = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .with_context(|| format!("no answer from Apache at {addr}"))?;
    strip_hop_by_hop(answer.headers_mut());
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("1.blog.localhost"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["cookie", "host"]);
    }
}
