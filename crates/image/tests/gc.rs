//! The store's list of images, leases and prune, through the public API, with images pulled
//! from a real registry on loopback.

mod common;

use common::{Env, require_root};
use wharf_image::{ImageStore, RegistryAuth};
use wharf_test_support::oci::{Entry, ImageBuilder, IndexBuilder, Layer};

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn base() -> Layer {
    Layer::new(vec![
        Entry::dir("etc"),
        Entry::file("etc/os-release", "base\n"),
    ])
}

#[tokio::test]
async fn prune_keeps_what_is_named_or_leased_and_shared_layers() -> anyhow::Result<()> {
    if !require_root("prune_keeps_what_is_named_or_leased_and_shared_layers") {
        return Ok(());
    }
    let env = Env::new()?;
    let a = ImageBuilder::new()
        .layer(base())
        .layer(Layer::new(vec![Entry::file("a.txt", vec![b'a'; 100_000])]))
        .cmd(["/a"]);
    let b = ImageBuilder::new()
        .layer(base())
        .layer(Layer::new(vec![Entry::file("b.txt", vec![b'b'; 100_000])]))
        .cmd(["/b"]);
    let (a_built, _) = env.push("a", "1", a).await?;
    let (b_built, _) = env.push("b", "1", b).await?;
    // `b` also as a multi-platform index: its index and the selected manifest are both kept.
    let index = IndexBuilder::new()
        .image(b_built.clone())
        .with_attestation()
        .build()?;
    let index_digest = env.pusher.push_index("c", "1", &index).await?;

    let image_a = env.pull("a:1").await?;
    let (image_b, lease_b) = env
        .store
        .pull_leased(&env.reference("b:1"), &RegistryAuth::Anonymous)
        .await?;
    let image_c = env.pull("c:1").await?;
    assert_eq!(image_c.digest, index_digest);

    let listed = env.store.list()?;
    let pinned: Vec<&str> = listed.iter().map(|i| i.pinned.as_str()).collect();
    assert_eq!(pinned, [&image_a.pinned, &image_b.pinned, &image_c.pinned]);
    let b_listed = &listed[1];
    assert_eq!((b_listed.layers, b_listed.in_use), (2, 1));
    assert!(b_listed.complete);
    assert!(b_listed.size_bytes >= 100_000, "{b_listed:?}");
    assert_eq!(listed[0].in_use, 0);

    // Named: c (whose manifest is b's); leased: b. a goes, and with it only its own layer.
    let report = env
        .store
        .begin_prune()
        .await
        .run(std::slice::from_ref(&image_c.pinned))?;
    assert_eq!(report.images_removed, std::slice::from_ref(&image_a.pinned));
    assert_eq!(report.layers_removed, 1);
    // a's manifest, config and own layer blob.
    assert_eq!(report.blobs_removed, 3);
    assert!(report.bytes_freed >= 100_000, "{report:?}");
    let layers = env.store.root().join("layers");
    assert!(!layers.join(hex(&a_built.layers[1].diff_id)).exists());
    assert!(layers.join(hex(&a_built.layers[0].diff_id)).is_dir());
    assert!(env.store.get(&image_a.pinned)?.is_none());
    assert!(env.store.get(&image_b.pinned)?.is_some());
    assert!(env.store.get(&image_c.pinned)?.is_some());

    // The lease ends: b's listing goes, its blobs stay for c, which shares them.
    drop(lease_b);
    let report = env
        .store
        .begin_prune()
        .await
        .run(std::slice::from_ref(&image_c.pinned))?;
    assert_eq!(report.images_removed, std::slice::from_ref(&image_b.pinned));
    assert_eq!((report.blobs_removed, report.layers_removed), (0, 0));
    assert!(env.store.get(&image_c.pinned)?.is_some());

    // The list survives a restart of the store; nothing named: everything goes.
    let store = ImageStore::open(env.store.root())?;
    assert_eq!(store.list()?.len(), 1);
    let report = store.begin_prune().await.run(&[])?;
    assert_eq!(report.images_removed, std::slice::from_ref(&image_c.pinned));
    assert_eq!(report.layers_removed, 2);
    assert!(store.list()?.is_empty());
    assert_eq!(std::fs::read_dir(&layers)?.count(), 0);
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))?.count(),
        0
    );

    // A pull after a prune fetches again what the prune removed.
    let again = store
        .pull(&env.reference("a:1"), &RegistryAuth::Anonymous)
        .await?;
    assert_eq!(again.digest, image_a.digest);
    assert!(store.get(&again.pinned)?.is_some());
    Ok(())
}
