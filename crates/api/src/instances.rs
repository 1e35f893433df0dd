//! What runs: `GET /v1/functions/{name}/instances` and `GET /metrics`, both read from the pool.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde::Serialize;

use crate::{ApiError, App};

#[derive(Serialize)]
pub struct Instances {
    pub instances: Vec<wharf_pool::InstanceInfo>,
}

/// `GET /v1/functions/{name}/instances`: the function's instances, oldest first: state (`busy`,
/// `idle`, `frozen`, `stopping`), revision, since, requests served, memory now and peak.
pub async fn list(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Instances>, ApiError> {
    let instances = app
        .pool
        .instances(&name)
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    Ok(Json(Instances { instances }))
}

/// `GET /metrics`: the pool's counters in Prometheus' text format.
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.pool.metrics_text(),
    )
}
