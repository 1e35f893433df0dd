//! Pull progress: what a caller of [`ImageStore::pull_with`](crate::ImageStore::pull_with) can
//! watch while an image is pulled.
//!
//! Per layer, in this order: [`PullEvent::Downloading`] (first with `downloaded: 0`, then at most
//! every [`PROGRESS_INTERVAL`], and always once with `downloaded == total`),
//! [`PullEvent::Unpacking`], [`PullEvent::LayerDone`]. A layer already unpacked locally gets one
//! [`PullEvent::LayerPresent`] instead; a layer whose blob is present but not unpacked skips the
//! downloading events. Before all of them, one [`PullEvent::Layers`] lists the image's layers.
//! Layers are pulled in parallel, so events of different layers interleave.
//!
//! Events are delivered by calling the subscriber's function on the pulling task: it must be
//! cheap (send to a channel, update a bar). Rate limiting keeps the number of calls small, so
//! watching never slows the pull down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Least time between two [`PullEvent::Downloading`] events of one layer (the final one, with
/// every byte, is always sent).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// One step of a pull. Serialised as JSON with an `event` tag, e.g.
/// `{"event":"downloading","layer":"sha256:…","downloaded":1024,"total":4096}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is read: these are the image's layers, base first.
    Layers {
        reference: String,
        digest: String,
        layers: Vec<LayerInfo>,
    },
    /// The layer is already unpacked locally (pulled before, maybe by another image).
    LayerPresent { layer: String, size: u64 },
    /// `downloaded` bytes of the layer's compressed blob (`total` bytes) have arrived.
    Downloading {
        layer: String,
        downloaded: u64,
        total: u64,
    },
    /// The blob is complete and verified; unpacking starts.
    Unpacking { layer: String },
    /// The layer is unpacked and its diff id verified.
    LayerDone { layer: String, unpacked_bytes: u64 },
}

/// A layer as listed in [`PullEvent::Layers`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The digest of the compressed blob.
    pub digest: String,
    /// Its size in bytes, as the manifest declares it.
    pub size: u64,
}

type Subscriber = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// How to pull. `PullOptions::default()` is what [`ImageStore::pull`](crate::ImageStore::pull)
/// uses: no progress.
#[derive(Clone, Default)]
pub struct PullOptions {
    progress: Option<Subscriber>,
}

impl PullOptions {
    /// Calls `subscriber` with each [`PullEvent`] of the pull (from the pulling task).
    pub fn with_progress(subscriber: impl Fn(PullEvent) + Send + Sync + 'static) -> PullOptions {
        PullOptions {
            progress: Some(Arc::new(subscriber)),
        }
    }

    pub(crate) fn emit(&self, event: impl FnOnce() -> PullEvent) {
        if let Some(subscriber) = &self.progress {
            subscriber(event());
        }
    }

    /// A rate-limited reporter of one layer's download.
    pub(crate) fn download(&self, layer: &Digest, total: u64) -> DownloadProgress<'_> {
        let progress = DownloadProgress {
            options: self,
            layer: layer.to_string(),
            total,
            downloaded: 0,
            last: Instant::now(),
        };
        progress.send();
        progress
    }
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions")
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Counts one layer's downloaded bytes and reports them at most every [`PROGRESS_INTERVAL`].
pub(crate) struct DownloadProgress<'a> {
    options: &'a PullOptions,
    layer: String,
    total: u64,
    downloaded: u64,
    last: Instant,
}

impl DownloadProgress<'_> {
    pub(crate) fn add(&mut self, bytes: u64) {
        if self.options.progress.is_none() {
            return;
        }
        self.downloaded += bytes;
        let now = Instant::now();
        if self.downloaded >= self.total || now.duration_since(self.last) >= PROGRESS_INTERVAL {
            self.last = now;
            self.send();
        }
    }

    fn send(&self) {
        self.options.emit(|| PullEvent::Downloading {
            layer: self.layer.clone(),
            downloaded: self.downloaded,
            total: self.total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recorder() -> (PullOptions, Arc<Mutex<Vec<PullEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let options = PullOptions::with_progress(move |e| sink.lock().unwrap().push(e));
        (options, events)
    }

    #[test]
    fn downloads_are_rate_limited_but_start_and_end_are_always_sent() {
        let (options, events) = recorder();
        let layer = Digest::of(b"layer");
        let mut progress = options.download(&layer, 1000);
        for _ in 0..99 {
            progress.add(10); // 990 bytes within far less than the interval
        }
        progress.add(10);
        let events = events.lock().unwrap();
        let downloaded: Vec<u64> = events
            .iter()
            .map(|e| match e {
                PullEvent::Downloading {
                    downloaded, total, ..
                } => {
                    assert_eq!(*total, 1000);
                    *downloaded
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(downloaded.first(), Some(&0));
        assert_eq!(downloaded.last(), Some(&1000));
        assert!(downloaded.len() <= 4, "{downloaded:?}");
    }

    #[test]
    fn events_serialise_with_an_event_tag() {
        let e = PullEvent::LayerDone {
            layer: "sha256:ab".into(),
            unpacked_bytes: 7,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "layer_done", "layer": "sha256:ab", "unpacked_bytes": 7})
        );
    }
}
