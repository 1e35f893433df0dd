//! What a failed pull says: not found, unreachable, unauthorised, malformed, corrupt, too large.

mod common;

use common::{Env, init_tracing, require_root};
use wharf_image::{ImageErrorKind, ImageStore, RegistryAuth, UnpackLimits};
use wharf_test_support::oci::{Blob, Entry, ImageBuilder, Layer, Pusher};
use wharf_test_support::registry::Registry;
use wharf_test_support::token_auth::TokenAuthRegistry;

#[tokio::test]
async fn unknown_tag_and_unknown_repository_are_not_found() -> anyhow::Result<()> {
    let env = Env::new()?;
    env.push(
        "hello",
        "latest",
        ImageBuilder::new().layer(Layer::new(vec![Entry::file("a", "")])),
    )
    .await?;
    let host = env.registry.host();

    let err = env.pull("hello:nope").await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "image {host}/hello:nope not found: the registry at {host} has no manifest for it \
             (push it, or check the repository and tag)"
        )
    );

    let err = env.pull("nope:latest").await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("image {host}/nope:latest not found")),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_registry_says_so() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let err = store
        .pull("127.0.0.1:1/hello:latest", &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unreachable, "{err}");
    assert_eq!(
        err.to_string(),
        "registry 127.0.0.1:1 is unreachable: connection refused (is it running? check the address)"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_references_are_refused_before_any_network() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    for (reference, why) in [
        ("127.0.0.1:5000/Hello:latest", "upper-case"),
        ("127.0.0.1:5000/hello:la test", "character"),
        ("127.0.0.1:5000/hello@sha256:1234", "64"),
        ("", "empty"),
    ] {
        let err = store
            .pull(reference, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ImageErrorKind::InvalidReference, "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("{reference:?}")), "{message}");
        assert!(message.contains(why), "{message} lacks {why}");
    }
    Ok(())
}

#[tokio::test]
async fn basic_auth_right_wrong_and_missing_credentials() -> anyhow::Result<()> {
    if !require_root("basic_auth_right_wrong_and_missing_credentials") {
        return Ok(());
    }
    init_tracing();
    let registry = Registry::start_with_basic_auth("wharf", "s3cret")?;
    let host = registry.host();
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("private", "yes")]))
        .build()?;
    Pusher::for_registry(&registry)
        .push_image("hello", "latest", &image)
        .await?;
    // Without credentials the registry refuses pushes too.
    assert!(
        Pusher::new(&host)
            .push_image("hello", "other", &image)
            .await
            .is_err()
    );

    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let reference = format!("{host}/hello:latest");
    let right = RegistryAuth::Basic {
        username: "wharf".into(),
        password: "s3cret".into(),
    };
    let pulled = store.pull(&reference, &right).await?;
    assert_eq!(
        std::fs::read_to_string(pulled.layers[0].join("private"))?,
        "yes"
    );

    let wrong = RegistryAuth::Basic {
        username: "wharf".into(),
        password: "guess".into(),
    };
    let err = store.pull(&reference, &wrong).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {host} refused the credentials for repository hello (401): check \
             registry_auth"
        )
    );
    assert!(
        !format!("{wrong:?}").contains("guess"),
        "Debug must not show the password"
    );

    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().contains("requires credentials"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_corrupt() -> anyhow::Result<()> {
    if !require_root("a_blob_that_does_not_match_its_digest_is_corrupt") {
        return Ok(());
    }
    let env = Env::new()?;
    for (tag, tamper) in [("same-size", false), ("longer", true)] {
        let image = ImageBuilder::new().layer(Layer::new(vec![Entry::file("data", tag)]));
        let (built, _) = env.push("tampered", tag, image).await?;
        let layer = &built.layers[0].blob;
        let stored = env.registry.blob_data_path(&layer.digest);
        let mut bytes = std::fs::read(&stored)?;
        if tamper {
            bytes.extend_from_slice(b"more");
        } else {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
        std::fs::write(&stored, &bytes)?;

        let err = env.pull(&format!("tampered:{tag}")).await.unwrap_err();
        assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
        let message = err.to_string();
        assert!(message.contains(&layer.digest), "{message}");
        assert!(
            message.starts_with(&format!("blob {} of image", layer.digest)),
            "{message}"
        );
        assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
        assert!(env.layer_dirs().is_empty());
        let blob = env
            .store_root()
            .join("blobs/sha256")
            .join(&layer.digest[7..]);
        assert!(!blob.exists(), "a corrupt blob must not be stored");
    }
    Ok(())
}

#[tokio::test]
async fn a_layer_that_does_not_match_its_diff_id_is_corrupt() -> anyhow::Result<()> {
    if !require_root("a_layer_that_does_not_match_its_diff_id_is_corrupt") {
        return Ok(());
    }
    let env = Env::new()?;
    let builder = ImageBuilder::new().layer(Layer::new(vec![Entry::file("data", "x")]));
    let mut image = builder.build()?;
    // A config that claims another uncompressed content for the layer.
    let lie = wharf_test_support::oci::sha256_digest(b"something else");
    image.config = Blob::new(
        &image.config.media_type,
        serde_json::to_vec(&builder.config_json(std::slice::from_ref(&lie)))?,
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image.manifest.media_type,
        "config": image.config.descriptor(),
        "layers": [image.layers[0].blob.descriptor()],
    });
    image.manifest = Blob::new(&image.manifest.media_type, serde_json::to_vec(&manifest)?);
    env.pusher.push_image("liar", "latest", &image).await?;

    let err = env.pull("liar:latest").await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&lie), "{err}");
    assert!(
        err.to_string().contains(&image.layers[0].blob.digest),
        "{err}"
    );
    assert!(env.layer_dirs().is_empty());
    assert!(env.tmp_entries().is_empty());
    Ok(())
}

#[tokio::test]
async fn layers_over_the_caps_are_too_large() -> anyhow::Result<()> {
    if !require_root("layers_over_the_caps_are_too_large") {
        return Ok(());
    }
    let env = Env::new()?;
    let dir = tempfile::tempdir()?;
    let small = ImageStore::open_with_limits(
        dir.path(),
        UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 10,
        },
    )?;
    // Highly compressible: a few kilobytes of gzip unpack to 2 MiB.
    let big = ImageBuilder::new().layer(Layer::new(vec![Entry::file("zeros", vec![0u8; 2 << 20])]));
    let (built, _) = env.push("big", "latest", big).await?;
    assert!(built.layers[0].blob.bytes.len() < 64 << 10);
    let err = small
        .pull(&env.reference("big:latest"), &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    assert!(
        err.to_string().contains("1 MiB (MAX_LAYER_UNPACKED_BYTES)"),
        "{err}"
    );

    let many: Vec<Entry> = (0..20).map(|i| Entry::file(&format!("f{i}"), "")).collect();
    env.push(
        "many",
        "latest",
        ImageBuilder::new().layer(Layer::new(many)),
    )
    .await?;
    let err = small
        .pull(&env.reference("many:latest"), &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    assert!(err.to_string().contains("10 (MAX_LAYER_ENTRIES)"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path().join("layers"))?.count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
    Ok(())
}

#[tokio::test]
async fn artifacts_are_not_images() -> anyhow::Result<()> {
    let env = Env::new()?;
    let mut image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("a", "")]))
        .build()?;
    image.config = Blob::new("application/vnd.cncf.helm.config.v1+json", b"{}".to_vec());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image.manifest.media_type,
        "config": image.config.descriptor(),
        "layers": [image.layers[0].blob.descriptor()],
    });
    image.manifest = Blob::new(&image.manifest.media_type, serde_json::to_vec(&manifest)?);
    env.pusher.push_image("chart", "latest", &image).await?;
    let err = env.pull("chart:latest").await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Registry, "{err}");
    assert!(err.to_string().contains("helm"), "{err}");
    Ok(())
}

#[tokio::test]
async fn bearer_token_auth_right_wrong_and_missing_credentials() -> anyhow::Result<()> {
    if !require_root("bearer_token_auth_right_wrong_and_missing_credentials") {
        return Ok(());
    }
    init_tracing();
    let registry = TokenAuthRegistry::start("wharf", "t0ken-pass").await?;
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("private", "behind a token")]))
        .build()?;
    Pusher::for_registry(registry.backend())
        .push_image("team/app", "v1", &image)
        .await?;
    let host = registry.host();
    let reference = format!("{host}/team/app:v1");
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;

    let right = RegistryAuth::Basic {
        username: "wharf".into(),
        password: "t0ken-pass".into(),
    };
    let pulled = store.pull(&reference, &right).await?;
    assert_eq!(
        std::fs::read_to_string(pulled.layers[0].join("private"))?,
        "behind a token"
    );
    assert!(
        registry.tokens_issued() >= 1,
        "the pull went through the token realm"
    );

    let wrong = RegistryAuth::Basic {
        username: "wharf".into(),
        password: "guess".into(),
    };
    let err = store.pull(&reference, &wrong).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    Ok(())
}
