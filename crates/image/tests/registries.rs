//! Registries as they are: credentials from a Docker config.json, plain HTTP only where allowed,
//! tokens that expire in the middle of a pull, blob redirects to storage, non-distributable
//! layers with URLs, configs that are not quite conformant, and a tampering man in the middle.
//! Against the real registry on loopback, with `wharf_test_support::staged` in front of it where
//! a registry's behaviour has to be staged.

mod common;

use std::collections::HashSet;

use common::{Env, init_tracing, read, require_root};
use serde_json::json;
use wharf_image::{
    ImageErrorKind, ImageStore, RegistryAuth, RegistryCredentials, RegistrySettings,
};
use wharf_test_support::oci::{Blob, Entry, Format, ImageBuilder, Layer, Pusher};
use wharf_test_support::registry::Registry;
use wharf_test_support::staged::{Front, FrontOptions, Listener};

fn five_layers() -> ImageBuilder {
    let mut image = ImageBuilder::new().cmd(["/bin/app"]);
    for i in 0..5 {
        image = image.layer(Layer::new(vec![Entry::file(
            &format!("layer{i}.txt"),
            format!("content of layer {i}"),
        )]));
    }
    image
}

fn settings_from_file(path: &std::path::Path, insecure: Vec<String>) -> RegistrySettings {
    let (credentials, report) = RegistryCredentials::load(path).expect("the config loads");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    RegistrySettings {
        credentials,
        insecure,
    }
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn credentials_come_from_the_config_file_unless_the_function_has_its_own()
-> anyhow::Result<()> {
    if !require_root("credentials_come_from_the_config_file_unless_the_function_has_its_own") {
        return Ok(());
    }
    init_tracing();
    let registry = Registry::start_with_basic_auth("alice", "s3cret")?;
    let pusher = Pusher::for_registry(&registry);
    let built = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("hello.txt", "hi")]))
        .build()?;
    pusher.push_image("private", "v1", &built).await?;
    let reference = format!("{}/private:v1", registry.host());
    let dir = tempfile::tempdir()?;

    // Without credentials: the error says how to give them.
    let store = ImageStore::open(&dir.path().join("anonymous"))?;
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().contains("--registry-config"), "{err}");

    // The config file's `auth` entry (an https:// key with a path, as `docker login` writes).
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        json!({"auths": {
            format!("http://{}/v1/", registry.host()): {"auth": base64("alice:s3cret")},
            "other.example.com": {"username": "x", "password": "y"},
        }})
        .to_string(),
    )?;
    let store = ImageStore::open(&dir.path().join("from-file"))?
        .with_registries(settings_from_file(&config, vec![]));
    let image = store.pull(&reference, &RegistryAuth::Anonymous).await?;
    assert_eq!(read(&image.layers[0].join("hello.txt")), "hi");

    // The function's own credentials win, even when wrong; the error points at registry_auth.
    let store = ImageStore::open(&dir.path().join("own"))?
        .with_registries(settings_from_file(&config, vec![]));
    let own = RegistryAuth::Basic {
        username: "alice".into(),
        password: "wrong".into(),
    };
    let err = store.pull(&reference, &own).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().ends_with("check registry_auth"), "{err}");

    // Wrong credentials in the file: the error names the file and the entry, not the secret.
    std::fs::write(
        &config,
        json!({"auths": {registry.host(): {"username": "alice", "password": "n0pe"}}}).to_string(),
    )?;
    let store = ImageStore::open(&dir.path().join("wrong-file"))?
        .with_registries(settings_from_file(&config, vec![]));
    let err = store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "check the entry for {} in {}",
            registry.host(),
            config.display()
        )),
        "{message}"
    );
    assert!(!message.contains("n0pe"), "{message}");
    Ok(())
}

/// The machine's host name, if it resolves to a loopback address (Debian's /etc/hosts does
/// this): a registry name that is not loopback by its spelling but stays on this machine.
fn loopback_host_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = rustix::system::uname()
        .nodename()
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    let all_loopback = (name.as_str(), 80)
        .to_socket_addrs()
        .ok()?
        .all(|a| a.ip().is_loopback());
    (all_loopback && !name.is_empty() && name != "localhost").then_some(name)
}

#[tokio::test]
async fn plain_http_only_for_loopback_and_listed_registries() -> anyhow::Result<()> {
    if !require_root("plain_http_only_for_loopback_and_listed_registries") {
        return Ok(());
    }
    let Some(name) = loopback_host_name() else {
        eprintln!(
            "SKIPPED plain_http_only_for_loopback_and_listed_registries: the host name does not \
             resolve to a loopback address"
        );
        return Ok(());
    };
    let env = Env::new()?;
    env.push("plain", "v1", five_layers()).await?;
    let port = env.registry.host().rsplit_once(':').unwrap().1.to_owned();
    let registry = format!("{name}:{port}");
    let reference = format!("{registry}/plain:v1");

    // Not listed: TLS is tried, fails against plain HTTP, and the error says what to do.
    let err = env
        .store
        .pull(&reference, &RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Registry, "{err}");
    let message = err.to_string();
    assert!(message.contains("TLS handshake failed"), "{message}");
    assert!(
        message.contains(&format!("--insecure-registry {registry}")),
        "{message}"
    );

    // Listed (by host, any port): plain HTTP.
    let store = env.store.clone().with_registries(RegistrySettings {
        credentials: RegistryCredentials::default(),
        insecure: vec![RegistrySettings::parse_insecure(&name)?],
    });
    let image = store.pull(&reference, &RegistryAuth::Anonymous).await?;
    assert_eq!(image.layers.len(), 5);
    Ok(())
}

async fn token_expiry_mid_pull(expired_status: u16) -> anyhow::Result<()> {
    let env = Env::new()?;
    let (built, _) = env.push("slow", "v1", five_layers()).await?;
    let front = Front::start(
        &env.registry.host(),
        FrontOptions {
            token_auth: Some(("bob".into(), "hunter2".into())),
            token_uses: Some(2),
            expired_status: Some(expired_status),
            ..FrontOptions::default()
        },
    )
    .await?;
    let bob = RegistryAuth::Basic {
        username: "bob".into(),
        password: "hunter2".into(),
    };
    let image = env
        .store
        .pull(&format!("{}/slow:v1", front.host()), &bob)
        .await?;
    assert_eq!(image.layers.len(), 5);
    for (i, dir) in image.layers.iter().enumerate() {
        assert_eq!(
            read(&dir.join(format!("layer{i}.txt"))),
            format!("content of layer {i}")
        );
    }
    // Manifest, config and five layers with two uses per token: the token ran out mid-pull
    // and was renewed, more than once.
    let expired: Vec<_> = front
        .seen()
        .into_iter()
        .filter(|s| s.status == expired_status && s.authorization.is_some())
        .collect();
    assert!(!expired.is_empty(), "no request met an expired token");
    assert!(
        front.tokens_issued() >= 4,
        "{} tokens issued",
        front.tokens_issued()
    );
    assert!(env.tmp_entries().is_empty());
    assert_eq!(image.digest, built.digest());
    Ok(())
}

#[tokio::test]
async fn a_token_that_expires_mid_pull_is_renewed_on_401() -> anyhow::Result<()> {
    if !require_root("a_token_that_expires_mid_pull_is_renewed_on_401") {
        return Ok(());
    }
    token_expiry_mid_pull(401).await
}

#[tokio::test]
async fn a_token_that_expires_mid_pull_is_renewed_on_403() -> anyhow::Result<()> {
    if !require_root("a_token_that_expires_mid_pull_is_renewed_on_403") {
        return Ok(());
    }
    token_expiry_mid_pull(403).await
}

#[tokio::test]
async fn blob_redirects_are_followed_without_the_registry_token() -> anyhow::Result<()> {
    if !require_root("blob_redirects_are_followed_without_the_registry_token") {
        return Ok(());
    }
    let env = Env::new()?;
    let (built, _) = env.push("redirected", "v1", five_layers()).await?;
    let front = Front::start(
        &env.registry.host(),
        FrontOptions {
            token_auth: Some(("bob".into(), "hunter2".into())),
            redirect_blobs: true,
            ..FrontOptions::default()
        },
    )
    .await?;
    let bob = RegistryAuth::Basic {
        username: "bob".into(),
        password: "hunter2".into(),
    };
    let image = env
        .store
        .pull(&format!("{}/redirected:v1", front.host()), &bob)
        .await?;
    assert_eq!(image.layers.len(), 5);

    let seen = front.seen();
    let redirects: Vec<_> = seen
        .iter()
        .filter(|s| s.listener == Listener::Registry && s.status == 307)
        .collect();
    let fetched: Vec<_> = seen
        .iter()
        .filter(|s| s.listener == Listener::Storage && s.status == 200)
        .collect();
    // Config and five layers, each redirected with the token and fetched from storage without.
    assert_eq!(redirects.len(), 6, "{seen:#?}");
    assert!(
        redirects.iter().all(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))),
        "{redirects:#?}"
    );
    assert_eq!(fetched.len(), 6, "{seen:#?}");
    assert!(
        fetched.iter().all(|s| s.authorization.is_none()),
        "the registry's Authorization reached the storage host: {fetched:#?}"
    );
    for layer in &built.layers {
        assert!(
            fetched.iter().any(|s| s.path.ends_with(&layer.blob.digest)),
            "{} not fetched from storage",
            layer.blob.digest
        );
    }
    Ok(())
}

/// An image whose second layer is non-distributable, with `urls`. The registry has the blobs;
/// its manifest is served by the front (distribution 2.8 refuses to store manifests with `urls`
/// unless configured to allow them), which hides the blob where a test needs a registry without
/// it. Returns the layer's blob.
async fn push_with_foreign_layer(
    pusher: &Pusher,
    front: &Front,
    repo: &str,
    urls: &[String],
    media_type: &str,
    content: &str,
) -> anyhow::Result<Blob> {
    let base = Layer::new(vec![Entry::file("base.txt", "base")]).build(Format::Oci)?;
    let foreign = foreign_layer(content)?;
    let foreign_blob = Blob::new(media_type, foreign.blob.bytes.clone());
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        serde_json::to_vec(
            &ImageBuilder::new().config_json(&[base.diff_id.clone(), foreign.diff_id.clone()]),
        )?,
    );
    pusher.push_blob(repo, &base.blob.bytes).await?;
    pusher.push_blob(repo, &foreign_blob.bytes).await?;
    pusher.push_blob(repo, &config.bytes).await?;
    let mut foreign_descriptor = foreign_blob.descriptor();
    foreign_descriptor["urls"] = json!(urls);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [base.blob.descriptor(), foreign_descriptor],
    });
    front.serve_manifest(
        repo,
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        serde_json::to_vec(&manifest)?,
    );
    Ok(foreign_blob)
}

fn foreign_layer(content: &str) -> anyhow::Result<wharf_test_support::oci::BuiltLayer> {
    Layer::new(vec![Entry::file("licensed/runtime.dll", content)]).build(Format::Oci)
}

#[tokio::test]
async fn non_distributable_layers_come_from_their_urls_verified() -> anyhow::Result<()> {
    if !require_root("non_distributable_layers_come_from_their_urls_verified") {
        return Ok(());
    }
    let env = Env::new()?;
    const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    let layer = foreign_layer("foreign bytes")?;
    let front = Front::start(
        &env.registry.host(),
        FrontOptions {
            hide_blobs: HashSet::from([layer.blob.digest.clone()]),
            ..FrontOptions::default()
        },
    )
    .await?;
    let storage_requests = || {
        front
            .seen()
            .into_iter()
            .filter(|s| s.listener == Listener::Storage)
            .map(|s| (s.path, s.status, s.authorization))
            .collect::<Vec<_>>()
    };

    // The registry has it (another layer, not hidden): the URLs are not used.
    let bad_bytes = foreign_layer("evil bytes!!!")?.blob.bytes;
    let bad = front.serve_file("bad.tar.gz", bad_bytes);
    push_with_foreign_layer(
        &env.pusher,
        &front,
        "at-registry",
        std::slice::from_ref(&bad),
        MEDIA_TYPE,
        "at the registry",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(&dir.path().join("registry"))?;
    let image = store
        .pull(
            &format!("{}/at-registry:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await?;
    assert_eq!(
        read(&image.layers[1].join("licensed/runtime.dll")),
        "at the registry"
    );
    assert!(storage_requests().is_empty(), "{:?}", storage_requests());

    // The registry lacks it: the first URL fails, the second serves it, without credentials.
    let good = front.serve_file("runtime.tar.gz", layer.blob.bytes.clone());
    let missing = format!("{}/files/missing.tar.gz", front.storage_url());
    push_with_foreign_layer(
        &env.pusher,
        &front,
        "foreign",
        &[missing, good],
        MEDIA_TYPE,
        "foreign bytes",
    )
    .await?;
    let store = ImageStore::open(&dir.path().join("urls"))?;
    let image = store
        .pull(
            &format!("{}/foreign:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await?;
    assert_eq!(
        read(&image.layers[1].join("licensed/runtime.dll")),
        "foreign bytes"
    );
    assert_eq!(
        storage_requests(),
        vec![
            ("/files/missing.tar.gz".into(), 404, None),
            ("/files/runtime.tar.gz".into(), 200, None),
        ]
    );

    // A URL serving other bytes: refused, naming the blob; nothing left behind.
    let blob = push_with_foreign_layer(
        &env.pusher,
        &front,
        "foreign-bad",
        &[bad],
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "foreign bytes",
    )
    .await?;
    let store = ImageStore::open(&dir.path().join("bad"))?;
    let err = store
        .pull(
            &format!("{}/foreign-bad:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&blob.digest), "{err}");
    assert_eq!(std::fs::read_dir(dir.path().join("bad/tmp"))?.count(), 0);

    // Only a non-http URL: not followed; the blob is missing.
    push_with_foreign_layer(
        &env.pusher,
        &front,
        "foreign-ftp",
        &["ftp://127.0.0.1/runtime.tar.gz".into()],
        MEDIA_TYPE,
        "foreign bytes",
    )
    .await?;
    let err = store
        .pull(
            &format!("{}/foreign-ftp:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains(&blob.digest), "{err}");
    Ok(())
}

/// Pushes an image with one layer and this config JSON (diff_ids filled in when `{DIFF_IDS}`
/// appears); returns the config blob.
async fn push_with_config(env: &Env, repo: &str, config: &str) -> anyhow::Result<Blob> {
    let layer = Layer::new(vec![Entry::file("app", "x")]).build(Format::Docker)?;
    let config = config.replace("{DIFF_IDS}", &format!("[\"{}\"]", layer.diff_id));
    let config = Blob::new(
        "application/vnd.docker.container.image.v1+json",
        config.into_bytes(),
    );
    env.pusher.push_blob(repo, &layer.blob.bytes).await?;
    env.pusher.push_blob(repo, &config.bytes).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor()],
    });
    env.pusher
        .push_manifest(
            repo,
            "v1",
            "application/vnd.docker.distribution.manifest.v2+json",
            &serde_json::to_vec(&manifest)?,
        )
        .await?;
    Ok(config)
}

#[tokio::test]
async fn configs_that_are_not_conformant_are_pulled_and_kept_raw() -> anyhow::Result<()> {
    if !require_root("configs_that_are_not_conformant_are_pulled_and_kept_raw") {
        return Ok(());
    }
    let env = Env::new()?;
    let raw = r#"{"architecture":"amd64","os":"linux",
        "config":{"Env":null,"Cmd":"/app --serve","Entrypoint":null,"User":0,
                  "ExposedPorts":{"9000/tcp":{}},"SomethingNew":[1,{"a":null}]},
        "rootfs":{"type":"layers","diff_ids":{DIFF_IDS}},
        "history":"unexpected","created":12}"#;
    let config = push_with_config(&env, "odd", raw).await?;
    let image = env.pull("odd:v1").await?;
    assert_eq!(image.config.cmd, vec!["/app --serve".to_string()]);
    assert!(image.config.env.is_empty() && image.config.entrypoint.is_empty());
    assert_eq!(image.config.user.as_deref(), Some("0"));
    // The raw JSON is kept byte for byte.
    let hex = config.digest.strip_prefix("sha256:").unwrap();
    let kept = std::fs::read(env.store_root().join("blobs/sha256").join(hex))?;
    assert_eq!(kept, config.bytes);
    // And the image is found offline from it.
    let again = env.store.get(&image.pinned)?.expect("present");
    assert_eq!(again.config, image.config);

    // What Wharf needs missing: refused, naming the config and the field.
    let config = push_with_config(&env, "no-diff-ids", r#"{"os":"linux","config":{}}"#).await?;
    let err = env.pull("no-diff-ids:v1").await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(message.contains("rootfs.diff_ids"), "{message}");
    assert!(message.contains(&config.digest), "{message}");
    Ok(())
}

#[tokio::test]
async fn a_tampering_proxy_is_caught_by_digest() -> anyhow::Result<()> {
    if !require_root("a_tampering_proxy_is_caught_by_digest") {
        return Ok(());
    }
    let env = Env::new()?;
    let (built, digest) = env.push("victim", "v1", five_layers()).await?;
    let target = built.layers[2].blob.digest.clone();

    // A layer's bytes changed in flight.
    let front = Front::start(
        &env.registry.host(),
        FrontOptions {
            tamper_blobs: HashSet::from([target.clone()]),
            ..FrontOptions::default()
        },
    )
    .await?;
    let err = env
        .store
        .pull(
            &format!("{}/victim:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&target), "{err}");
    let hex = target.strip_prefix("sha256:").unwrap();
    assert!(!env.store_root().join("blobs/sha256").join(hex).exists());
    assert!(env.tmp_entries().is_empty(), "{:?}", env.tmp_entries());
    drop(front);

    // The manifest changed in flight, pulled by digest.
    let front = Front::start(
        &env.registry.host(),
        FrontOptions {
            tamper_manifests: HashSet::from([digest.clone()]),
            ..FrontOptions::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let err = store
        .pull(
            &format!("{}/victim@{digest}", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&digest), "{err}");
    assert_eq!(std::fs::read_dir(dir.path().join("layers"))?.count(), 0);
    Ok(())
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_without_reading_it_whole() -> anyhow::Result<()> {
    init_tracing();
    let registry = Registry::start()?;
    let front = Front::start(&registry.host(), FrontOptions::default()).await?;
    // Valid JSON, 128 MiB of it (32 × MAX_MANIFEST_BYTES), sent without a length.
    const HUGE: u64 = 128 << 20;
    let mut huge = br#"{"schemaVersion":2,"manifests":[],"padding":""#.to_vec();
    huge.resize(huge.len() + HUGE as usize, b' ');
    huge.extend_from_slice(br#""}"#);
    front.serve_manifest(
        "huge",
        "v1",
        "application/vnd.oci.image.index.v1+json",
        huge,
    );
    let dir = tempfile::tempdir()?;
    let store = ImageStore::open(dir.path())?;
    let err = store
        .pull(
            &format!("{}/huge:v1", front.host()),
            &RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::TooLarge, "{err}");
    assert!(err.to_string().contains("MAX_MANIFEST_BYTES"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs/sha256"))?.count(),
        0
    );
    // Reading stopped at the bound: what the front managed to send is the bound plus what the
    // sockets buffer, far from the whole.
    let sent = front.manifest_bytes_sent();
    assert!(sent < HUGE / 2, "{sent} of {HUGE} bytes were sent");
    Ok(())
}
