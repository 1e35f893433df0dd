//! Pull progress events, resolving without pulling, and the cap on an image's total unpacked
//! size, against a real registry on loopback.

mod common;

use std::sync::{Arc, Mutex};

use common::{Env, require_root};
use wharf_image::{ImageErrorKind, ImageStore, LayerInfo, PullEvent, PullOptions, RegistryAuth};
use wharf_test_support::oci::{Entry, ImageBuilder, Layer};

/// Bytes that gzip cannot shrink, so that a layer's blob is as large as its content.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn recorder() -> (PullOptions, Arc<Mutex<Vec<PullEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let options = PullOptions::with_progress(move |e| sink.lock().unwrap().push(e));
    (options, events)
}

/// The events about one layer, in order.
fn of_layer<'a>(events: &'a [PullEvent], layer: &str) -> Vec<&'a PullEvent> {
    events
        .iter()
        .filter(|e| match e {
            PullEvent::Layers { .. } => false,
            PullEvent::LayerPresent { layer: l, .. }
            | PullEvent::Downloading { layer: l, .. }
            | PullEvent::Unpacking { layer: l }
            | PullEvent::LayerDone { layer: l, .. } => l == layer,
        })
        .collect()
}

#[tokio::test]
async fn a_pull_reports_each_layer_downloaded_unpacked_and_done() -> anyhow::Result<()> {
    if !require_root("a_pull_reports_each_layer_downloaded_unpacked_and_done") {
        return Ok(());
    }
    let env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("base", noise(3 << 20, 1))]))
        .layer(Layer::new(vec![Entry::file("middle", noise(1 << 20, 2))]))
        .layer(Layer::new(vec![Entry::file("top", "small")]));
    let (built, digest) = env.push("progress", "v1", image).await?;
    let (options, events) = recorder();
    env.store
        .pull_with(
            &env.reference("progress:v1"),
            &RegistryAuth::Anonymous,
            &options,
        )
        .await?;
    let events = events.lock().unwrap().clone();

    // First, the layers as the manifest lists them.
    let expected: Vec<LayerInfo> = built
        .layers
        .iter()
        .map(|l| LayerInfo {
            digest: l.blob.digest.clone(),
            size: l.blob.bytes.len() as u64,
        })
        .collect();
    assert_eq!(
        events.first(),
        Some(&PullEvent::Layers {
            reference: env.reference("progress:v1"),
            digest,
            layers: expected,
        })
    );
    // Then, per layer: downloaded from 0 up to its size, unpacked, done.
    let mut downloaded_total = 0;
    for layer in &built.layers {
        let size = layer.blob.bytes.len() as u64;
        let steps = of_layer(&events, &layer.blob.digest);
        let (downloading, rest) = steps.split_at(steps.len() - 2);
        assert!(
            matches!(
                rest,
                [PullEvent::Unpacking { .. }, PullEvent::LayerDone { .. }]
            ),
            "{rest:?}"
        );
        let counts: Vec<u64> = downloading
            .iter()
            .map(|e| match e {
                PullEvent::Downloading {
                    downloaded, total, ..
                } => {
                    assert_eq!(*total, size);
                    *downloaded
                }
                other => panic!("expected downloading, got {other:?}"),
            })
            .collect();
        assert_eq!(counts.first(), Some(&0), "{counts:?}");
        assert_eq!(counts.last(), Some(&size), "{counts:?}");
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        downloaded_total += counts.last().unwrap();
        let PullEvent::LayerDone { unpacked_bytes, .. } = rest[1] else {
            unreachable!()
        };
        assert!(*unpacked_bytes > 0);
    }
    let blob_total: u64 = built.layers.iter().map(|l| l.blob.bytes.len() as u64).sum();
    assert_eq!(downloaded_total, blob_total);
    assert!(
        blob_total > 4 << 20,
        "the noise did not compress: {blob_total}"
    );
    Ok(())
}

#[tokio::test]
async fn layers_already_present_are_reported_as_such() -> anyhow::Result<()> {
    if !require_root("layers_already_present_are_reported_as_such") {
        return Ok(());
    }
    let env = Env::new()?;
    let base = Layer::new(vec![Entry::file("base", "shared")]);
    let first = ImageBuilder::new().layer(base.clone());
    let second = ImageBuilder::new()
        .layer(base)
        .layer(Layer::new(vec![Entry::file("app", "new")]));
    env.push("first", "v1", first).await?;
    let (built, _) = env.push("second", "v1", second).await?;
    env.pull("first:v1").await?;

    let (options, events) = recorder();
    env.store
        .pull_with(
            &env.reference("second:v1"),
            &RegistryAuth::Anonymous,
            &options,
        )
        .await?;
    let events = events.lock().unwrap().clone();
    let base = &built.layers[0].blob;
    assert_eq!(
        of_layer(&events, &base.digest),
        vec![&PullEvent::LayerPresent {
            layer: base.digest.clone(),
            size: base.bytes.len() as u64,
        }]
    );
    let app = of_layer(&events, &built.layers[1].blob.digest);
    assert!(
        matches!(app.last(), Some(PullEvent::LayerDone { .. })),
        "{app:?}"
    );

    // Pulling it again: everything is present, nothing is downloaded.
    let (options, events) = recorder();
    env.store
        .pull_with(
            &env.reference("second:v1"),
            &RegistryAuth::Anonymous,
            &options,
        )
        .await?;
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events[1..]
            .iter()
            .all(|e| matches!(e, PullEvent::LayerPresent { .. })),
        "{events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn resolve_pins_the_reference_without_downloading() -> anyhow::Result<()> {
    let env = Env::new()?;
    let (_, digest) = env
        .push(
            "lazy",
            "v1",
            ImageBuilder::new().layer(Layer::new(vec![Entry::file("a", "1")])),
        )
        .await?;
    let resolved = env
        .store
        .resolve(&env.reference("lazy:v1"), &RegistryAuth::Anonymous)
        .await?;
    assert_eq!(resolved.digest, digest);
    assert_eq!(
        resolved.pinned,
        format!("{}/lazy@{digest}", env.registry.host())
    );
    let blobs = std::fs::read_dir(env.store_root().join("blobs/sha256"))?.count();
    assert_eq!(blobs, 0, "resolving downloads nothing");
    assert!(env.store.get(&resolved.pinned)?.is_none());

    let err = env
        .store
        .resolve(&env.reference("absent:v1"), &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    Ok(())
}

#[tokio::test]
async fn the_total_unpacked_size_of_an_image_is_capped() -> anyhow::Result<()> {
    if !require_root("the_total_unpacked_size_of_an_image_is_capped") {
        return Ok(());
    }
    let env = Env::new()?;
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    assert_eq!(
        store.max_image_bytes(),
        wharf_image::MAX_IMAGE_UNPACKED_BYTES
    );
    store.set_max_image_bytes(2 << 20);
    // Each layer alone is under the cap (zeros: the blobs are small); together they are over.
    let zeros = |name: &str| Layer::new(vec![Entry::file(name, vec![0u8; 3 << 19])]);
    env.push("one", "v1", ImageBuilder::new().layer(zeros("c")))
        .await?;
    let (built, _) = env
        .push(
            "two",
            "v1",
            ImageBuilder::new().layer(zeros("a")).layer(zeros("b")),
        )
        .await?;
    assert!(built.layers.iter().all(|l| l.blob.bytes.len() < 64 << 10));

    let one = store
        .pull(&env.reference("one:v1"), &RegistryAuth::Anonymous)
        .await?;
    assert_eq!(one.layers.len(), 1);

    let reference = env.reference("two:v1");
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    let message = err.to_string();
    for needle in [
        format!("image {reference}"),
        "its layer sha256:".to_string(),
        "2 MiB".to_string(),
        "--max-image-size".to_string(),
        "make the image smaller".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in {message}");
    }
    // The layer that crossed the cap is not kept (the other one may be: it is whole and
    // verified); unpacks still in flight end soon after.
    let kept = built
        .layers
        .iter()
        .filter(|l| {
            dir.path()
                .join("layers")
                .join(l.diff_id.trim_start_matches("sha256:"))
                .exists()
        })
        .count();
    assert!(kept < 2, "both layers of the refused image were kept");
    wharf_test_support::assert_eventually!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count() == 0,
        "tmp/ is emptied"
    );

    // Pulled again, the layer kept from the first try counts all the same: still refused.
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    // An image made of a layer another image brought counts it too: `one`'s layer (1.5 MiB)
    // and a new one of 1.5 MiB are over 2 MiB together.
    let (_, _) = env
        .push(
            "three",
            "v1",
            ImageBuilder::new().layer(zeros("c")).layer(zeros("d")),
        )
        .await?;
    let err = store
        .pull(&env.reference("three:v1"), &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    Ok(())
}
