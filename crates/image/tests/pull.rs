//! Pulling real images from a real registry on loopback, and finding them again offline.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{Env, mode, read, require_root, xattr};
use wharf_image::{ImageConfig, ImageStore, RegistryAuth};
use wharf_test_support::oci::{
    Compression, ENTRY_MTIME, Entry, ImageBuilder, IndexBuilder, Layer, sha256_digest,
};

fn layer_hex(diff_id: &str) -> &str {
    diff_id.strip_prefix("sha256:").unwrap()
}

#[tokio::test]
async fn single_layer_image_unpacks_files_modes_links_owners_and_devices() -> anyhow::Result<()> {
    if !require_root("single_layer_image_unpacks_files_modes_links_owners_and_devices") {
        return Ok(());
    }
    let env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/motd", "hello\n"),
            Entry::dir_mode("secret", 0o700),
            Entry::file_mode("secret/key", "k", 0o600).owned(1003, 1004),
            Entry::file_mode("bin/tool", "#!/bin/sh\n", 0o4755),
            Entry::symlink("etc/link", "motd"),
            Entry::symlink("etc/abs", "/etc/motd").owned(7, 8),
            Entry::hardlink("etc/hard", "etc/motd"),
            Entry::char_device("dev/null", 1, 3),
            Entry::fifo("run/fifo"),
        ]))
        .entrypoint(["/bin/tool"])
        .cmd(["--serve"])
        .env("A=1")
        .env("PATH=/bin")
        .working_dir("/srv")
        .user("1003:1003");
    let (built, digest) = env.push("hello", "latest", image).await?;

    let image = env.pull("hello:latest").await?;
    assert_eq!(image.digest, digest);
    assert_eq!(
        image.pinned,
        format!("{}/hello@{digest}", env.registry.host())
    );
    assert_eq!(
        image.config,
        ImageConfig {
            entrypoint: vec!["/bin/tool".into()],
            cmd: vec!["--serve".into()],
            env: vec!["A=1".into(), "PATH=/bin".into()],
            working_dir: Some("/srv".into()),
            user: Some("1003:1003".into()),
        }
    );
    assert_eq!(image.layers.len(), 1);
    let root = &image.layers[0];
    assert!(root.is_absolute());
    assert_eq!(
        root,
        &env.store_root()
            .join("layers")
            .join(layer_hex(&built.layers[0].diff_id))
    );

    assert_eq!(read(&root.join("etc/motd")), "hello\n");
    assert_eq!(mode(&root.join("etc/motd")), 0o644);
    assert_eq!(mode(&root.join("secret")), 0o700);
    assert_eq!(
        mode(&root.join("bin/tool")),
        0o4755,
        "setuid survives the chown"
    );
    assert_eq!(mode(&root.join("bin")), 0o755, "implicit parents are 0755");
    assert_eq!(mode(root), 0o755, "the layer root is a usable /");
    let key = std::fs::metadata(root.join("secret/key"))?;
    assert_eq!(
        (key.uid(), key.gid(), key.mode() & 0o7777),
        (1003, 1004, 0o600)
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/link"))?,
        Path::new("motd")
    );
    let abs = std::fs::symlink_metadata(root.join("etc/abs"))?;
    assert!(abs.file_type().is_symlink());
    assert_eq!(
        (abs.uid(), abs.gid()),
        (7, 8),
        "symlinks are chowned, not their targets"
    );
    assert_eq!(
        std::fs::metadata(root.join("etc/hard"))?.ino(),
        std::fs::metadata(root.join("etc/motd"))?.ino()
    );
    let null = std::fs::metadata(root.join("dev/null"))?;
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(
        std::fs::metadata(root.join("run/fifo"))?
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        std::fs::metadata(root.join("etc/motd"))?.mtime(),
        ENTRY_MTIME as i64
    );
    assert_eq!(
        std::fs::metadata(root.join("etc"))?.mtime(),
        ENTRY_MTIME as i64
    );
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn multi_layer_image_lists_layers_base_first() -> anyhow::Result<()> {
    if !require_root("multi_layer_image_lists_layers_base_first") {
        return Ok(());
    }
    let env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("base", "0")]))
        .layer(Layer::new(vec![Entry::file("middle", "1")]))
        .layer(Layer::new(vec![
            Entry::file("top", "2"),
            Entry::file("base", "override"),
        ]));
    let (built, _) = env.push("multi", "v1", image).await?;
    let image = env.pull("multi:v1").await?;
    let expected: Vec<_> = built
        .diff_ids()
        .iter()
        .map(|d| env.store_root().join("layers").join(layer_hex(d)))
        .collect();
    assert_eq!(image.layers, expected);
    assert_eq!(read(&image.layers[0].join("base")), "0");
    assert_eq!(read(&image.layers[1].join("middle")), "1");
    assert_eq!(read(&image.layers[2].join("base")), "override");
    assert!(!image.layers[2].join("middle").exists());
    Ok(())
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_become_overlay_markers() -> anyhow::Result<()> {
    if !require_root("whiteouts_and_opaque_dirs_become_overlay_markers") {
        return Ok(());
    }
    let env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/gone", "x"),
            Entry::dir("usr"),
            Entry::file("usr/old", "x"),
        ]))
        .layer(Layer::new(vec![
            Entry::dir("etc"),
            Entry::whiteout("etc/gone"),
            Entry::whiteout("toplevel"),
            Entry::dir("usr"),
            Entry::opaque("usr"),
            Entry::file("usr/new", "y"),
        ]));
    env.push("wh", "latest", image).await?;
    let image = env.pull("wh:latest").await?;
    let top = &image.layers[1];
    for whiteout in ["etc/gone", "toplevel"] {
        let meta = std::fs::symlink_metadata(top.join(whiteout))?;
        assert!(
            meta.file_type().is_char_device(),
            "{whiteout} is not a whiteout"
        );
        assert_eq!(meta.rdev(), 0, "{whiteout} is not 0:0");
    }
    assert!(
        !top.join("etc/.wh.gone").exists(),
        "the marker file itself is not written"
    );
    assert_eq!(
        xattr(&top.join("usr"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("usr/.wh..wh..opq").exists());
    assert_eq!(read(&top.join("usr/new")), "y");
    assert_eq!(xattr(&top.join("etc"), "trusted.overlay.opaque"), None);
    Ok(())
}

#[tokio::test]
async fn gzip_zstd_and_uncompressed_layers() -> anyhow::Result<()> {
    if !require_root("gzip_zstd_and_uncompressed_layers") {
        return Ok(());
    }
    let env = Env::new()?;
    for (compression, docker) in [
        (Compression::Gzip, false),
        (Compression::Zstd, false),
        (Compression::None, false),
        (Compression::Gzip, true),
        (Compression::None, true),
    ] {
        let content = format!("{compression:?} docker={docker}");
        let mut image = ImageBuilder::new()
            .layer(Layer::new(vec![Entry::file("f", content.as_str())]).compression(compression));
        if docker {
            image = image.docker_v2();
        }
        let tag = format!("{compression:?}-{docker}").to_lowercase();
        let (built, _) = env.push("compressed", &tag, image).await?;
        let expected_type = match (compression, docker) {
            (Compression::Gzip, false) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Compression::Zstd, _) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Compression::None, false) => "application/vnd.oci.image.layer.v1.tar",
            (Compression::Gzip, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            (Compression::None, true) => "application/vnd.docker.image.rootfs.diff.tar",
        };
        assert_eq!(built.layers[0].blob.media_type, expected_type);
        let image = env.pull(&format!("compressed:{tag}")).await?;
        assert_eq!(read(&image.layers[0].join("f")), content);
    }
    Ok(())
}

#[tokio::test]
async fn docker_v2_manifest_and_manifest_list() -> anyhow::Result<()> {
    if !require_root("docker_v2_manifest_and_manifest_list") {
        return Ok(());
    }
    let env = Env::new()?;
    let amd64 = ImageBuilder::new()
        .docker_v2()
        .layer(Layer::new(vec![Entry::file("arch", "amd64")]))
        .cmd(["/arch"]);
    let (built, digest) = env.push("docker", "v2", amd64).await?;
    assert_eq!(
        built.manifest.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let image = env.pull("docker:v2").await?;
    assert_eq!(image.digest, digest);
    assert_eq!(image.config.cmd, ["/arch"]);
    assert_eq!(read(&image.layers[0].join("arch")), "amd64");

    let arm = ImageBuilder::new()
        .docker_v2()
        .platform("linux", "arm64")
        .layer(Layer::new(vec![Entry::file("arch", "arm64")]))
        .build()?;
    let list = IndexBuilder::new()
        .image(arm)
        .image(built)
        .docker_manifest_list()
        .build()?;
    let list_digest = env.pusher.push_index("docker", "list", &list).await?;
    let image = env.pull("docker:list").await?;
    assert_eq!(image.digest, list_digest);
    assert_eq!(read(&image.layers[0].join("arch")), "amd64");
    Ok(())
}

#[tokio::test]
async fn index_picks_linux_amd64_over_arm64_and_attestations() -> anyhow::Result<()> {
    if !require_root("index_picks_linux_amd64_over_arm64_and_attestations") {
        return Ok(());
    }
    let env = Env::new()?;
    let arm = ImageBuilder::new()
        .platform("linux", "arm64")
        .layer(Layer::new(vec![Entry::file("arch", "arm64")]))
        .build()?;
    let amd = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("arch", "amd64")]))
        .cmd(["amd64"])
        .build()?;
    let index = IndexBuilder::new()
        .image(arm)
        .image(amd.clone())
        .with_attestation()
        .build()?;
    let index_digest = env
        .pusher
        .push_index("multi-arch", "latest", &index)
        .await?;

    let image = env.pull("multi-arch:latest").await?;
    assert_eq!(image.digest, index_digest, "the digest is the index's");
    assert_eq!(
        image.pinned,
        format!("{}/multi-arch@{index_digest}", env.registry.host())
    );
    assert_eq!(image.config.cmd, ["amd64"]);
    assert_eq!(read(&image.layers[0].join("arch")), "amd64");
    assert_eq!(
        env.layer_dirs().len(),
        1,
        "only the amd64 layer is unpacked"
    );
    // index and chosen manifest are stored as blobs, so `get` works offline.
    let blobs = env.store_root().join("blobs/sha256");
    assert!(blobs.join(layer_hex(&index_digest)).is_file());
    assert!(blobs.join(layer_hex(amd.digest())).is_file());

    // Pulling by the index digest resolves to the same thing.
    let by_digest = env
        .store
        .pull(&image.pinned, &RegistryAuth::Anonymous)
        .await?;
    assert_eq!(by_digest.layers, image.layers);
    Ok(())
}

#[tokio::test]
async fn index_without_amd64_names_the_platforms_it_has() -> anyhow::Result<()> {
    let env = Env::new()?;
    let arm = ImageBuilder::new()
        .platform("linux", "arm64")
        .layer(Layer::new(vec![Entry::file("arch", "arm64")]))
        .build()?;
    let s390x = ImageBuilder::new()
        .platform("linux", "s390x")
        .layer(Layer::new(vec![Entry::file("arch", "s390x")]))
        .build()?;
    let index = IndexBuilder::new()
        .image(arm)
        .image(s390x)
        .with_attestation()
        .build()?;
    env.pusher.push_index("noamd", "latest", &index).await?;

    let err = env.pull("noamd:latest").await.unwrap_err();
    assert_eq!(err.kind(), wharf_image::ImageErrorKind::NoPlatform, "{err}");
    let message = err.to_string();
    assert!(message.contains("linux/arm64, linux/s390x"), "{message}");
    assert!(!message.contains("unknown"), "{message}");
    assert!(message.contains("noamd:latest"), "{message}");
    assert!(env.layer_dirs().is_empty());

    // A single-platform arm64 image is refused the same way.
    env.push(
        "arm-only",
        "latest",
        ImageBuilder::new()
            .platform("linux", "arm64")
            .layer(Layer::new(vec![Entry::file("a", "")])),
    )
    .await?;
    let err = env.pull("arm-only:latest").await.unwrap_err();
    assert_eq!(err.kind(), wharf_image::ImageErrorKind::NoPlatform, "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    Ok(())
}

#[tokio::test]
async fn get_after_pull_works_offline_and_after_reopening() -> anyhow::Result<()> {
    if !require_root("get_after_pull_works_offline_and_after_reopening") {
        return Ok(());
    }
    let mut env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("a", "1")]))
        .layer(Layer::new(vec![Entry::file("b", "2")]))
        .cmd(["/a"]);
    env.push("offline", "latest", image).await?;
    let pulled = env.pull("offline:latest").await?;
    assert!(
        env.store.get(&env.reference("offline:latest")).is_err(),
        "get needs a digest"
    );

    // The registry goes away: get must not need it.
    env.registry = wharf_test_support::registry::Registry::start()?;
    let got = env
        .store
        .get(&pulled.pinned)?
        .expect("pulled image is present");
    assert_eq!(got.layers, pulled.layers);
    assert_eq!(got.digest, pulled.digest);
    assert_eq!(got.pinned, pulled.pinned);
    assert_eq!(got.config, pulled.config);

    let reopened = ImageStore::open(&env.store_root())?;
    let got = reopened
        .get(&pulled.pinned)?
        .expect("present after reopening");
    assert_eq!(got.layers, pulled.layers);

    // A missing layer makes the image absent, not broken.
    std::fs::rename(&pulled.layers[1], env.dir.path().join("moved"))?;
    assert!(reopened.get(&pulled.pinned)?.is_none());
    let unknown = format!("{}/offline@{}", env.registry.host(), sha256_digest(b"nope"));
    assert!(reopened.get(&unknown)?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_layer_shared_by_two_images_is_fetched_and_unpacked_once() -> anyhow::Result<()> {
    if !require_root("a_layer_shared_by_two_images_is_fetched_and_unpacked_once") {
        return Ok(());
    }
    let env = Env::new()?;
    let base = Layer::new(vec![Entry::dir("usr"), Entry::file("usr/base", "shared")]);
    let (first, _) = env
        .push(
            "one",
            "latest",
            ImageBuilder::new()
                .layer(base.clone())
                .layer(Layer::new(vec![Entry::file("one", "1")])),
        )
        .await?;
    let one = env.pull("one:latest").await?;

    // Mark the unpacked base layer, and break the registry's copy of its blob: a second unpack
    // would lose the mark, a second download would fail verification.
    std::fs::write(one.layers[0].join("marker"), "still here")?;
    let base_blob = env.registry.blob_data_path(&first.layers[0].blob.digest);
    std::fs::write(&base_blob, b"tampered")?;

    env.push(
        "two",
        "latest",
        ImageBuilder::new()
            .layer(base)
            .layer(Layer::new(vec![Entry::file("two", "2")])),
    )
    .await?;
    let two = env.pull("two:latest").await?;
    assert_eq!(two.layers[0], one.layers[0]);
    assert_eq!(read(&two.layers[0].join("marker")), "still here");
    assert_eq!(read(&two.layers[1].join("two")), "2");
    assert_eq!(env.layer_dirs().len(), 3);
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_agree() -> anyhow::Result<()> {
    if !require_root("concurrent_pulls_of_one_image_agree") {
        return Ok(());
    }
    let env = Env::new()?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("a", "1")]))
        .layer(Layer::new(vec![Entry::file("b", "2")]));
    env.push("together", "latest", image).await?;
    let (a, b) = tokio::join!(env.pull("together:latest"), env.pull("together:latest"));
    assert_eq!(a?.layers, b?.layers);
    assert_eq!(env.layer_dirs().len(), 2);
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn leftovers_in_tmp_are_removed_at_open() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    ImageStore::open(&root)?;
    std::fs::create_dir_all(root.join("tmp/layer-abc.partial/etc"))?;
    std::fs::write(root.join("tmp/layer-abc.partial/etc/half"), "x")?;
    std::fs::write(root.join("tmp/blob-def.partial"), "half a blob")?;
    let store = ImageStore::open(&root)?;
    assert_eq!(std::fs::read_dir(root.join("tmp"))?.count(), 0);
    assert!(std::fs::read_dir(root.join("layers"))?.next().is_none());
    assert!(
        std::fs::read_dir(root.join("blobs/sha256"))?
            .next()
            .is_none()
    );
    assert_eq!(
        mode(&root.join("layers")),
        0o700,
        "unpacked layers are not reachable by other users"
    );
    drop(store);
    Ok(())
}
