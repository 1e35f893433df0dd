//! `wharf serve`'s registry settings, black-box: `--registry-config` (a Docker config.json) and
//! `--insecure-registry`. A file that cannot be used stops the start-up, naming the file and the
//! problem; a good one is used for pulls of functions without their own registry_auth, and
//! neither its secrets nor its credential helpers' names are hidden or leaked in the log.

use serde_json::json;
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::testfn::push_testfn;
use wharf_test_support::token_auth::TokenAuthRegistry;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

fn needs_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
    true
}

fn serve_with(extra: &[&str]) -> anyhow::Result<Wharf> {
    Wharf::start(
        WHARF.as_ref(),
        WharfOptions {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ..WharfOptions::default()
        },
    )
}

#[test]
fn serve_refuses_a_registry_config_it_cannot_use() {
    if needs_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    let malformed = dir.path().join("config.json");
    std::fs::write(
        &malformed,
        r#"{"auths":{"reg.example.com":{"auth":"not base64 TOPSECRET"}}}"#,
    )
    .unwrap();
    let err = serve_with(&["--registry-config", malformed.to_str().unwrap()])
        .err()
        .expect("serve refuses to start")
        .to_string();
    assert!(
        err.contains(&format!(
            "the registry config {} is malformed: auths entry \"reg.example.com\": \"auth\" is \
             not base64",
            malformed.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("TOPSECRET"),
        "a secret reached the log: {err}"
    );

    let missing = dir.path().join("nope.json");
    let err = serve_with(&["--registry-config", missing.to_str().unwrap()])
        .err()
        .expect("serve refuses to start")
        .to_string();
    assert!(
        err.contains(&format!(
            "cannot read the registry config {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );

    let err = serve_with(&["--insecure-registry", "http://reg.lan:5000"])
        .err()
        .expect("serve refuses to start")
        .to_string();
    assert!(
        err.contains("invalid --insecure-registry \"http://reg.lan:5000\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pulls_with_the_credentials_of_its_registry_config() {
    if needs_root() {
        return;
    }
    let registry = TokenAuthRegistry::start("team", "pa55w0rd")
        .await
        .expect("start the token-auth registry");
    push_testfn(&registry.backend().host(), "team/hello", "v1")
        .await
        .expect("push the test function");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        json!({
            "auths": {registry.host(): {"username": "team", "password": "pa55w0rd"}},
            "credsStore": "desktop",
        })
        .to_string(),
    )
    .unwrap();
    let mut w =
        serve_with(&["--registry-config", config.to_str().unwrap()]).expect("start wharf serve");
    let log = w.log();
    assert!(
        log.contains("registry credentials read") && log.contains(config.to_str().unwrap()),
        "{log}"
    );
    assert!(log.contains("docker-credential-desktop"), "{log}");

    // No registry_auth: the file's credentials are used.
    let image = format!("{}/team/hello:v1", registry.host());
    let r = w
        .api(
            "PUT",
            "/v1/functions/private",
            Some(json!({"image": image}).to_string().into_bytes()),
        )
        .await;
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(registry.tokens_issued() >= 1);
    let out = w.cli(&["invoke", "private", "--data", r#"{"name":"team"}"#]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, team!\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    w.stop().expect("stop");
    assert!(!w.log().contains("pa55w0rd"), "a secret reached the log");
    assert!(w.leftovers().is_empty(), "{:#?}", w.leftovers());
}
