//! The node's door for hosts that route to `load` (a kept release no slot
//! holds): Apache hands such a request to the node with its load secret in
//! a header; the engine loads the release (in the site's turn, shared by
//! the requests that arrive meanwhile) and the request goes back through
//! Apache, which now routes it to the release's slot, and its answer is
//! streamed to the client. A request with a header that is not Apache's
//! (from outside, a guess) is refused; one the node already sent that came
//! back is a loop, refused with a 503 rather than followed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::apache::{LOAD_HEADER, LoadMark};
use crate::node::Node;
use crate::node::http::{ApiError, echo};

/// Requests marked with the load header are this door's; every other one
/// goes on to the HTTP API.
pub async fn door(State(api): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let Some(mark) = req.headers().get(LOAD_HEADER) else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match api.engine.apache().load_mark(mark.as_bytes()) {
        LoadMark::Load => {}
        LoadMark::Forged => {
            tracing::warn!(host = ?echo(&host), "load: refused a request without the node's secret");
            return ApiError::Forbidden(
                "refused: only the node's Apache may ask for a release to be loaded".into(),
            )
            .into_response();
        }
        LoadMark::Loop => {
            tracing::error!(
                host = ?echo(&host),
                "load: the node's own request for {} came back to it: the route map does not name the loaded slot",
                echo(&host)
            );
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This address is being started but its route did not follow (a loop, refused); try again shortly.",
            );
        }
    }
    if let Err(e) = api.engine.load_on_demand(&host).await {
        return page(StatusCode::SERVICE_UNAVAILABLE, &e.public);
    }
    match api.engine.apache().forward(req).await {
        Ok(answer) => answer.map(Body::new),
        Err(e) => {
            tracing::error!(host = ?echo(&host), "load: {e:#}");
            page(
                StatusCode::BAD_GATEWAY,
                "The release was started but did not answer; try again shortly.",
            )
        }
    }
}

/// A short page saying why the host could not be served now.
fn page(status: StatusCode, why: &str) -> Response {
    let why = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{status}</title></head>\n<body>\n<h1>Not available yet</h1>\n<p>{why}</p>\n</body>\n</html>\n"
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
