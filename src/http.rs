//! The node's HTTP server (axum). For now it answers `GET /healthz` once the
//! node is ready; webhooks and the status API grow here.

use axum::{Router, routing::get};

pub fn router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> &'static str {
    "ok\n"
}
