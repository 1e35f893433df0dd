//! `/v1/images`: what the image store holds, which functions use each image, and pruning what
//! no function uses.
//!
//! The image store knows nothing of functions: this module tells it which images are in use
//! (the pinned images of every stored function and published version; the pool's instances hold
//! leases of their own).
//! The function list is read while the prune has the store to itself, so a deploy either
//! finished before (its function is listed) or is still holding its image's lease.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use wharf_image::PruneReport;

use crate::{ApiError, App};

/// One image of `GET /v1/images`.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub pinned: String,
    pub digest: String,
    /// Disk space of its blobs and unpacked layers (shared parts counted for each image).
    pub size_bytes: u64,
    pub layers: usize,
    /// Deployed functions pinned to it, by name.
    pub functions: Vec<String>,
    /// Instances running on it and deploys in progress.
    pub in_use: usize,
    /// Every blob and layer is present.
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulled_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ImageList {
    pub images: Vec<ImageView>,
}

/// Every pinned image a stored function or a published version uses, with who uses it: `NAME`
/// or `NAME:VERSION`.
fn users_of_images(
    store: &dyn wharf_store::FunctionStore,
) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in store.list_functions()? {
        for v in store.list_versions(&f.name)? {
            users
                .entry(v.config.image_pinned)
                .or_default()
                .push(wharf_pool::version_key(&f.name, v.version));
        }
        users.entry(f.image_pinned).or_default().push(f.name);
    }
    Ok(users)
}

/// `GET /v1/images`
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<ImageList>, ApiError> {
    let images = crate::blocking(move || -> Result<_, ApiError> {
        let users = users_of_images(&*app.store)?;
        let images = app
            .images
            .list()?
            .into_iter()
            .map(|i| ImageView {
                functions: users.get(&i.pinned).cloned().unwrap_or_default(),
                pinned: i.pinned,
                digest: i.digest,
                size_bytes: i.size_bytes,
                layers: i.layers,
                in_use: i.in_use,
                complete: i.complete,
                pulled_at: (i.pulled_at_ms > 0).then(|| {
                    humantime::format_rfc3339_millis(
                        SystemTime::UNIX_EPOCH + Duration::from_millis(i.pulled_at_ms),
                    )
                    .to_string()
                }),
            })
            .collect();
        Ok(images)
    })
    .await?;
    Ok(Json(ImageList { images }))
}

/// `POST /v1/images/prune`: removes every image, blob and unpacked layer that no deployed
/// function and no running instance uses. Waits for pulls in progress; runs to the end even if
/// the client goes away.
pub async fn prune(State(app): State<Arc<App>>) -> Result<Json<PruneReport>, ApiError> {
    crate::detached(async move {
        let pruning = app.images.begin_prune().await;
        let report = crate::blocking(move || -> Result<_, ApiError> {
            let in_use: Vec<String> = users_of_images(&*app.store)?.into_keys().collect();
            Ok(pruning.run(&in_use)?)
        })
        .await?;
        Ok(Json(report))
    })
    .await
}
