//! Image archives without a registry: images pushed to a real registry on loopback, written out
//! by `skopeo copy` as `oci-archive:`, `docker-archive:` and `oci:` layouts, then pulled from
//! those files through the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use common::{Env, read, require_root};
use serde_json::json;
use wharf_image::{ImageErrorKind, RegistryAuth};
use wharf_test_support::oci::{Entry, ImageBuilder, IndexBuilder, Layer};

/// `skopeo copy` from the test registry to `dest`; `None` (and the test says SKIPPED) when
/// skopeo is not installed.
fn skopeo_copy(env: &Env, source: &str, dest: &str, all: bool) -> anyhow::Result<Option<()>> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        eprintln!("SKIPPED: skopeo is not installed (scripts/setup.sh installs it)");
        return Ok(None);
    }
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    let out = cmd
        .arg(format!("docker://{}/{source}", env.registry.host()))
        .arg(dest)
        .output()
        .context("running skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {source} {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Some(()))
}

fn two_layers(tag: &str) -> ImageBuilder {
    ImageBuilder::new()
        .layer(Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/motd", format!("base {tag}\n")),
            Entry::file("etc/gone", "x"),
        ]))
        .layer(Layer::new(vec![
            Entry::file("etc/app", format!("app {tag}\n")),
            Entry::whiteout("etc/gone"),
        ]))
        .entrypoint(["/bin/app"])
        .env(&format!("TAG={tag}"))
}

/// The files a two-layer image unpacked to, base first.
fn assert_two_layers(layers: &[PathBuf], tag: &str) {
    assert_eq!(layers.len(), 2);
    assert_eq!(read(&layers[0].join("etc/motd")), format!("base {tag}\n"));
    assert_eq!(read(&layers[1].join("etc/app")), format!("app {tag}\n"));
    let whiteout = std::fs::symlink_metadata(layers[1].join("etc/gone")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()),
        "the whiteout is an overlayfs whiteout"
    );
}

fn remove_layers(env: &Env) {
    for dir in env.layer_dirs() {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

async fn pull(env: &Env, reference: &str) -> Result<wharf_image::Image, wharf_image::ImageError> {
    env.store.pull(reference, &RegistryAuth::Anonymous).await
}

#[tokio::test]
async fn oci_archive_is_pulled_pinned_found_offline_and_pulled_again_by_digest()
-> anyhow::Result<()> {
    if !require_root("oci_archive_is_pulled_pinned_found_offline_and_pulled_again_by_digest") {
        return Ok(());
    }
    let env = Env::new()?;
    let (_, digest) = env.push("app", "v1", two_layers("v1")).await?;
    let tar = env.dir.path().join("app.tar");
    let dest = format!("oci-archive:{}", tar.display());
    if skopeo_copy(&env, "app:v1", &dest, false)?.is_none() {
        return Ok(());
    }

    let image = pull(&env, &dest).await?;
    assert_eq!(image.digest, digest, "skopeo keeps the manifest as pushed");
    assert_eq!(image.pinned, format!("{dest}@{digest}"));
    assert_eq!(image.config.entrypoint, ["/bin/app"]);
    assert_eq!(image.config.env, ["TAG=v1"]);
    assert_two_layers(&image.layers, "v1");
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());

    // Offline, by the pinned form.
    let found = env.store.get(&image.pinned)?.expect("found offline");
    assert_eq!(found.layers, image.layers);
    assert_eq!(found.config, image.config);

    // Listed like a registry image, and kept by a prune while a function uses it.
    let listed = env.store.list()?;
    let entry = listed
        .iter()
        .find(|i| i.pinned == image.pinned)
        .expect("the archive image is listed");
    assert!(entry.complete && entry.layers == 2, "{entry:?}");
    let report = env
        .store
        .begin_prune()
        .await
        .run(std::slice::from_ref(&image.pinned))?;
    assert!(report.images_removed.is_empty(), "{report:?}");
    assert!(env.store.get(&image.pinned)?.is_some());

    // The same image from the registry shares the unpacked layers.
    let from_registry = env.pull("app:v1").await?;
    assert_eq!(from_registry.layers, image.layers);
    assert_eq!(env.layer_dirs().len(), 2);

    // Layers gone (say, pruned): a cold start pulls the pinned digest from the archive again.
    remove_layers(&env);
    assert!(env.store.get(&image.pinned)?.is_none());
    let again = pull(&env, &image.pinned).await?;
    assert_eq!(again.layers, image.layers);
    assert_two_layers(&again.layers, "v1");

    // The archive replaced by another image: the pinned digest is what runs, or a clear error.
    env.push("app", "v2", two_layers("v2")).await?;
    std::fs::remove_file(&tar)?;
    skopeo_copy(&env, "app:v2", &dest, false)?;
    remove_layers(&env);
    let err = pull(&env, &image.pinned).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&digest) && message.contains("deploy the function again"),
        "{message}"
    );
    // Unpinned, the archive's current image is pulled.
    let v2 = pull(&env, &dest).await?;
    assert_two_layers(&v2.layers, "v2");

    // The archive removed.
    std::fs::remove_file(&tar)?;
    let err = pull(&env, &image.pinned).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("does not exist") && err.to_string().contains("removed"),
        "{err}"
    );
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn docker_archive_is_pulled_and_pulled_again_by_its_pinned_digest() -> anyhow::Result<()> {
    if !require_root("docker_archive_is_pulled_and_pulled_again_by_its_pinned_digest") {
        return Ok(());
    }
    let env = Env::new()?;
    env.push("saved", "v1", two_layers("d1").docker_v2())
        .await?;
    let tar = env.dir.path().join("saved.tar");
    let dest = format!("docker-archive:{}", tar.display());
    if skopeo_copy(&env, "saved:v1", &format!("{dest}:saved:v1"), false)?.is_none() {
        return Ok(());
    }

    let image = pull(&env, &dest).await?;
    assert!(
        image.pinned.starts_with(&format!("{dest}@sha256:")),
        "{}",
        image.pinned
    );
    assert_eq!(image.config.entrypoint, ["/bin/app"]);
    assert_two_layers(&image.layers, "d1");
    assert!(env.tmp_entries().is_empty());

    // Selected by its tag, it is the same image.
    let tagged = pull(&env, &format!("{dest}:saved:v1")).await?;
    assert_eq!(tagged.pinned, image.pinned);
    let err = pull(&env, &format!("{dest}:saved:nope")).await.unwrap_err();
    assert!(err.to_string().contains("saved:v1"), "{err}");

    // Found offline, and brought back from the archive when its layers are gone.
    assert!(env.store.get(&image.pinned)?.is_some());
    remove_layers(&env);
    let again = pull(&env, &image.pinned).await?;
    assert_eq!(again.pinned, image.pinned);
    assert_two_layers(&again.layers, "d1");
    assert!(env.store.get(&image.pinned)?.is_some());
    Ok(())
}

#[tokio::test]
async fn oci_layout_directory_picks_amd64_by_name() -> anyhow::Result<()> {
    if !require_root("oci_layout_directory_picks_amd64_by_name") {
        return Ok(());
    }
    let env = Env::new()?;
    let arch = |a: &str| {
        ImageBuilder::new()
            .platform("linux", a)
            .layer(Layer::new(vec![Entry::file("arch", a)]))
            .cmd([a])
            .build()
    };
    let index = IndexBuilder::new()
        .image(arch("arm64")?)
        .image(arch("amd64")?)
        .with_attestation()
        .build()?;
    let index_digest = env.pusher.push_index("multi", "latest", &index).await?;
    let arm_only = IndexBuilder::new().image(arch("arm64")?).build()?;
    env.pusher.push_index("multi", "arm", &arm_only).await?;

    let layout = env.dir.path().join("layout");
    let dir = layout.display().to_string();
    if skopeo_copy(&env, "multi:latest", &format!("oci:{dir}:multi"), true)?.is_none() {
        return Ok(());
    }
    skopeo_copy(&env, "multi:arm", &format!("oci:{dir}:arm"), true)?;

    let image = pull(&env, &format!("oci:{dir}:multi")).await?;
    assert_eq!(image.digest, index_digest, "pinned to the index");
    assert_eq!(image.pinned, format!("oci:{dir}@{index_digest}"));
    assert_eq!(image.config.cmd, ["amd64"]);
    assert_eq!(read(&image.layers[0].join("arch")), "amd64");
    assert_eq!(env.layer_dirs().len(), 1, "only amd64 is unpacked");
    assert!(env.store.get(&image.pinned)?.is_some());

    let err = pull(&env, &format!("oci:{dir}:arm")).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NoPlatform, "{err}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");

    // Two names and none chosen: the error lists them.
    let err = pull(&env, &format!("oci:{dir}")).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("multi") && message.contains("arm") && message.contains(":NAME"),
        "{message}"
    );
    let err = pull(&env, &format!("oci:{dir}:other")).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

/// Overwrites the middle byte of `file` (the size stays the same).
fn flip_a_byte(file: &Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(file, bytes)?;
    Ok(())
}

#[tokio::test]
async fn a_tampered_blob_in_a_layout_or_archive_is_refused_naming_its_digest() -> anyhow::Result<()>
{
    if !require_root("a_tampered_blob_in_a_layout_or_archive_is_refused_naming_its_digest") {
        return Ok(());
    }
    let env = Env::new()?;
    let (built, _) = env.push("bad", "v1", two_layers("bad")).await?;
    let layout = env.dir.path().join("layout");
    if skopeo_copy(&env, "bad:v1", &format!("oci:{}", layout.display()), false)?.is_none() {
        return Ok(());
    }
    let layer = &built.layers[1].blob.digest;
    let hex = layer.strip_prefix("sha256:").unwrap();
    flip_a_byte(&layout.join("blobs/sha256").join(hex))?;

    let err = pull(&env, &format!("oci:{}", layout.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains(layer.as_str()) && err.to_string().contains("export"),
        "{err}"
    );

    // The same layout in a tar (as `tar -C layout -cf x.tar .` writes it: `./` names).
    let tar = env.dir.path().join("bad.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    assert!(status.success());
    let err = pull(&env, &format!("oci-archive:{}", tar.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(layer.as_str()), "{err}");

    // Nothing of the bad layer is kept; the good one may be.
    let bad_layer = env
        .store_root()
        .join("layers")
        .join(built.layers[1].diff_id.strip_prefix("sha256:").unwrap());
    assert!(!bad_layer.exists());
    assert!(!env.store_root().join("blobs/sha256").join(hex).exists());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    Ok(())
}

#[tokio::test]
async fn missing_relative_and_non_layout_paths_get_clear_errors() -> anyhow::Result<()> {
    let env = Env::new()?;
    let dir = env.dir.path();
    let missing = dir.join("nope.tar");
    let cases: Vec<(String, ImageErrorKind, Vec<String>)> = vec![
        (
            format!("oci-archive:{}", missing.display()),
            ImageErrorKind::NotFound,
            vec![missing.display().to_string(), "does not exist".into()],
        ),
        (
            format!("docker-archive:{}", missing.display()),
            ImageErrorKind::NotFound,
            vec!["does not exist".into()],
        ),
        (
            "oci-archive:images/app.tar".into(),
            ImageErrorKind::InvalidReference,
            vec!["relative".into(), "absolute path".into()],
        ),
        (
            "dir:/srv/image".into(),
            ImageErrorKind::InvalidReference,
            vec!["dir: transport".into(), "oci-archive:PATH".into()],
        ),
        (
            format!("oci:{}", dir.display()),
            ImageErrorKind::InvalidReference,
            vec!["is not an OCI image layout".into(), "oci-layout".into()],
        ),
        (
            format!("oci-archive:{}", dir.display()),
            ImageErrorKind::InvalidReference,
            vec!["is a directory".into(), "oci:".into()],
        ),
    ];
    for (reference, kind, needles) in cases {
        let err = pull(&env, &reference).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{reference}: {err}");
        for needle in needles {
            assert!(err.to_string().contains(&needle), "{reference}: {err}");
        }
    }

    // A file that is not a tar, and a tar that is not a layout.
    let junk = dir.join("junk.tar");
    std::fs::write(&junk, vec![b'x'; 1500])?;
    let err = pull(&env, &format!("oci-archive:{}", junk.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a usable tar"), "{err}");
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(&junk)
        .arg("store")
        .status()?;
    assert!(status.success());
    let err = pull(&env, &format!("docker-archive:{}", junk.display()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not a Docker archive"), "{err}");
    let err = env
        .store
        .get(&format!("oci-archive:{}", junk.display()))
        .unwrap_err();
    assert!(err.to_string().contains("not pinned"), "{err}");
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

/// A tar of `(name, content)` files and `(name, target)` symlinks, as `docker save` writes.
fn write_tar(path: &Path, files: &[(String, Vec<u8>)], links: &[(String, String)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.finish().unwrap();
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[tokio::test]
async fn docker_save_archives_old_and_new_layouts_gzip_and_linked_layers() -> anyhow::Result<()> {
    if !require_root("docker_save_archives_old_and_new_layouts_gzip_and_linked_layers") {
        return Ok(());
    }
    let env = Env::new()?;
    let base = Layer::new(vec![Entry::file("etc/base", "base\n")]);
    let builder = ImageBuilder::new()
        .layer(base.clone())
        .layer(Layer::new(vec![Entry::file("etc/app", "app\n")]))
        // The same layer again: docker save links it to the first copy.
        .layer(base.clone())
        .cmd(["/app"])
        .docker_v2();
    let built = builder.build()?;
    let diff_ids = built.diff_ids();
    assert_eq!(diff_ids[0], diff_ids[2]);
    let config = serde_json::to_vec(&builder.config_json(&diff_ids))?;
    let config_hex = wharf_test_support::oci::sha256_digest(&config);
    let config_hex = hex(&config_hex).to_owned();
    let plain = |i: usize| builder.layers[i].tar().unwrap();
    let gzipped = built.layers[1].blob.bytes.clone();
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "the second layer is gzip'd");

    // Docker before 25: <id>/layer.tar, <config hex>.json, identical layers as symlinks.
    let old = env.dir.path().join("old.tar");
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["saved:old"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
    }]);
    write_tar(
        &old,
        &[
            ("aaa/VERSION".into(), b"1.0".to_vec()),
            ("aaa/layer.tar".into(), plain(0)),
            ("bbb/layer.tar".into(), gzipped.clone()),
            (format!("{config_hex}.json"), config.clone()),
            ("manifest.json".into(), serde_json::to_vec(&manifest)?),
        ],
        &[("ccc/layer.tar".into(), "../aaa/layer.tar".into())],
    );
    let image = pull(&env, &format!("docker-archive:{}", old.display())).await?;
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.layers[0], image.layers[2]);
    assert_eq!(read(&image.layers[0].join("etc/base")), "base\n");
    assert_eq!(read(&image.layers[1].join("etc/app")), "app\n");
    assert_eq!(image.config.cmd, ["/app"]);
    assert_eq!(env.layer_dirs().len(), 2);

    // Docker 25 and later: blobs/sha256/<hex> names.
    let new = env.dir.path().join("new.tar");
    let blob = |d: &str| format!("blobs/sha256/{}", hex(d));
    let manifest = json!([{
        "Config": format!("blobs/sha256/{config_hex}"),
        "RepoTags": ["saved:new"],
        "Layers": [blob(&diff_ids[0]), blob(&built.layers[1].blob.digest), blob(&diff_ids[0])],
    }]);
    write_tar(
        &new,
        &[
            (blob(&diff_ids[0]), plain(0)),
            (blob(&built.layers[1].blob.digest), gzipped),
            (format!("blobs/sha256/{config_hex}"), config.clone()),
            ("manifest.json".into(), serde_json::to_vec(&manifest)?),
        ],
        &[],
    );
    let again = pull(&env, &format!("docker-archive:{}", new.display())).await?;
    assert_eq!(again.layers, image.layers, "layers are shared by diff id");
    assert!(env.store.get(&again.pinned)?.is_some());

    // A layer whose bytes are not what the config's diff id says is refused.
    let lying = env.dir.path().join("lying.tar");
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "Layers": ["aaa/layer.tar", "bbb/layer.tar", "aaa/layer.tar"],
    }]);
    write_tar(
        &lying,
        &[
            ("aaa/layer.tar".into(), plain(0)),
            ("bbb/layer.tar".into(), plain(0)), // not the app layer
            (format!("{config_hex}.json"), config),
            ("manifest.json".into(), serde_json::to_vec(&manifest)?),
        ],
        &[],
    );
    remove_layers(&env);
    let err = pull(&env, &format!("docker-archive:{}", lying.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&diff_ids[1]), "{err}");
    assert!(
        !env.store_root()
            .join("layers")
            .join(hex(&diff_ids[1]))
            .exists()
    );
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    Ok(())
}

/// Appends a regular file whose header name is `name` as given (`..`, absolute: what a hostile
/// archive has and `tar::Builder` would refuse to write).
fn append_raw(b: &mut tar::Builder<std::fs::File>, name: &[u8], data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

#[tokio::test]
async fn hostile_member_names_and_links_out_of_a_layout_are_never_followed() -> anyhow::Result<()> {
    if !require_root("hostile_member_names_and_links_out_of_a_layout_are_never_followed") {
        return Ok(());
    }
    let env = Env::new()?;
    let (built, _) = env.push("evil", "v1", two_layers("evil")).await?;
    let layout = env.dir.path().join("layout");
    if skopeo_copy(&env, "evil:v1", &format!("oci:{}", layout.display()), false)?.is_none() {
        return Ok(());
    }
    // The layout's files, plus members whose names point outside wherever it might be unpacked.
    let canary = env.dir.path().join("canary");
    let tar = env.dir.path().join("evil.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar)?);
    append_raw(&mut b, b"../canary", b"escaped");
    append_raw(&mut b, canary.to_str().unwrap().as_bytes(), b"escaped");
    b.append_dir_all(".", &layout)?;
    b.finish()?;
    drop(b);
    let image = pull(&env, &format!("oci-archive:{}", tar.display())).await?;
    assert_two_layers(&image.layers, "evil");
    assert!(!canary.exists(), "nothing is extracted by its own name");
    assert!(!env.store_root().join("canary").exists());

    // In a layout directory, a blob that is a symlink out of it is refused, not read.
    let layer = built.layers[1].blob.digest.clone();
    let blob = layout.join("blobs/sha256").join(hex(&layer));
    std::fs::remove_file(&blob)?;
    let outside = env.dir.path().join("outside");
    std::fs::write(&outside, "secret")?;
    std::os::unix::fs::symlink(&outside, &blob)?;
    remove_layers(&env);
    std::fs::remove_file(env.store_root().join("blobs/sha256").join(hex(&layer)))?;
    let err = pull(&env, &format!("oci:{}", layout.display()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("resolves outside the layout directory"),
        "{err}"
    );
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_archive_over_the_image_size_cap_is_refused_before_copying() -> anyhow::Result<()> {
    if !require_root("an_archive_over_the_image_size_cap_is_refused_before_copying") {
        return Ok(());
    }
    let env = Env::new()?;
    // Bytes nobody can compress: the layer's blob is as large as what it unpacks to.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noise: Vec<u8> = (0..(256 << 10))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (built, _) = env
        .push(
            "big",
            "v1",
            two_layers("big").layer(Layer::new(vec![Entry::file("noise", noise)])),
        )
        .await?;
    let layout = env.dir.path().join("layout");
    if skopeo_copy(&env, "big:v1", &format!("oci:{}", layout.display()), false)?.is_none() {
        return Ok(());
    }
    env.store.set_max_image_bytes(128 << 10);
    let err = pull(&env, &format!("oci:{}", layout.display()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    assert!(
        err.to_string().contains("compressed size") && err.to_string().contains("--max-image-size"),
        "{err}"
    );
    let blobs = env.store_root().join("blobs/sha256");
    for layer in &built.layers {
        let hex = layer.blob.digest.strip_prefix("sha256:").unwrap();
        assert!(!blobs.join(hex).exists(), "{hex} was copied");
    }
    Ok(())
}
