//! Black-box tests of the whole system: a real registry on loopback, the test function image
//! built and pushed by the test, the real `wharf` binary with a temporary data directory, a real
//! OCI runtime, overlayfs, cgroups and namespaces. Deploy and invoke through the CLI and the API.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use wharf_test_support::assert_eventually;
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::registry::Registry;
use wharf_test_support::testfn::push_testfn;
use wharf_test_support::token_auth::TokenAuthRegistry;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// A registry with the test function pushed as `hello:latest`, and a daemon.
struct Env {
    registry: Registry,
    wharf: Wharf,
    image: String,
    digest: String,
}

fn needs_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return false;
    }
    eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
    true
}

async fn env(options: WharfOptions) -> Env {
    let registry = Registry::start().expect("start the registry");
    let digest = push_testfn(&registry.host(), "hello", "latest")
        .await
        .expect("push the test function");
    let wharf = Wharf::start(WHARF.as_ref(), options).expect("start wharf serve");
    let image = format!("{}/hello:latest", registry.host());
    Env {
        registry,
        wharf,
        image,
        digest,
    }
}

impl Env {
    async fn deploy(&self, name: &str, body: Value) -> Value {
        let resp = self
            .wharf
            .api(
                "PUT",
                &format!("/v1/functions/{name}"),
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert!(
            resp.status == 200 || resp.status == 201,
            "deploy {name}: {} {}",
            resp.status,
            resp.text()
        );
        resp.json()
    }

    async fn invoke(&self, name: &str, event: Value) -> wharf_test_support::daemon::ApiResponse {
        self.wharf
            .api(
                "POST",
                &format!("/v1/functions/{name}/invoke"),
                Some(event.to_string().into_bytes()),
            )
            .await
    }

    /// Stops the daemon and checks it left nothing on the host.
    fn finish(mut self) {
        self.wharf.stop().expect("stop wharf serve");
        let left = self.wharf.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Processes running inside instances of this daemon (in its instances' cgroups).
fn instance_processes(w: &Wharf) -> usize {
    let pid = w.pid();
    w.leftovers()
        .iter()
        .filter(|l| l.starts_with("process"))
        .filter(|l| pid.is_none_or(|p| !l.starts_with(&format!("process {p}:"))))
        .filter(|l| !l.contains(" serve "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_invoke_through_the_cli_and_the_api() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions::default()).await;
    let w = &env.wharf;

    let out = w.cli(&["deploy", "hello", "--image", &env.image, "--contract", "fc"]);
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    assert!(stdout(&out).contains(&env.digest), "{}", stdout(&out));

    let out = w.cli(&["invoke", "hello", "--data", r#"{"name":"wharf"}"#]);
    assert!(out.status.success(), "invoke: {}", stderr(&out));
    assert_eq!(stdout(&out), "Hello, wharf!\n");

    // The stored function is pinned to the digest the tag had at deploy.
    let f = w.api("GET", "/v1/functions/hello", None).await.json();
    assert_eq!(f["image_digest"], env.digest.as_str());
    assert_eq!(
        f["image_pinned"],
        format!("{}/hello@{}", env.registry.host(), env.digest)
    );
    assert_eq!(f["contract"], "fc");
    assert_eq!(f["port"], 9000);
    assert_eq!(f["memory_mb"], 128);
    assert_eq!(f["timeout_s"], 60);
    let list = w.api("GET", "/v1/functions", None).await.json();
    assert_eq!(list["functions"][0]["name"], "hello");
    let ls = w.cli(&["ls"]);
    assert!(stdout(&ls).contains("hello"), "{}", stdout(&ls));

    // The CLI's call left a warm instance: the API's call reuses it.
    let first = env.invoke("hello", json!({"cmd": "headers"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-wharf-cold-start").as_deref(), Some("false"));
    let request_id = first.header("x-wharf-request-id").expect("request id");
    let instance = first.header("x-wharf-instance-id").expect("instance id");
    assert!(first.header("x-wharf-duration-ms").is_some());
    let headers = first.json();
    assert_eq!(headers["x-fc-request-id"], request_id.as_str());
    assert_eq!(headers["x-fc-function-name"], "hello");
    assert_eq!(headers["x-fc-function-memory"], "128");
    assert_eq!(headers["x-fc-function-timeout"], "60");
    assert_eq!(headers["x-fc-control-path"], "/invoke");
    assert_eq!(headers["x-fc-qualifier"], "LATEST");
    assert_eq!(headers["content-type"], "application/octet-stream");

    let second = env.invoke("hello", json!({"name": "again"})).await;
    assert_eq!(second.text(), "Hello, again!\n");
    assert_eq!(
        second.header("x-wharf-cold-start").as_deref(),
        Some("false")
    );
    assert_eq!(second.header("x-wharf-instance-id"), Some(instance));
    assert_ne!(second.header("x-wharf-request-id"), Some(request_id));

    // What the instance printed, both streams, newest last.
    env.invoke(
        "hello",
        json!({"cmd": "print", "stdout": "to stdout 1", "stderr": "to stderr 2"}),
    )
    .await;
    assert_eventually!({
        let logs = w.api("GET", "/v1/functions/hello/logs", None).await.json();
        let entries = logs["entries"].as_array().cloned().unwrap_or_default();
        let pos = |msg: &str, stream: &str| {
            entries
                .iter()
                .position(|e| e["message"] == msg && e["stream"] == stream)
        };
        matches!(
            (pos("to stdout 1", "stdout"), pos("to stderr 2", "stderr")),
            (Some(_), Some(_))
        ) && pos("testfn: this line goes to stderr", "stderr").is_some()
    });
    let logs = w.cli(&["logs", "hello"]);
    assert!(stdout(&logs).contains("to stderr 2"), "{}", stdout(&logs));

    // Deleting the function stops its instance.
    let out = w.cli(&["rm", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(instance_processes(w), 0, "{:#?}", w.leftovers());
    let gone = w.api("GET", "/v1/functions/hello", None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["code"], "FunctionNotFound");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_runs_once_per_instance_before_the_first_invocation() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions::default()).await;
    env.deploy(
        "init",
        json!({"image": env.image, "initializer": {"timeout_s": 5}}),
    )
    .await;
    let first = env.invoke("init", json!({"cmd": "state"})).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-wharf-cold-start").as_deref(), Some("true"));
    let s = first.json();
    assert_eq!(s["initialize_calls"], 1);
    assert_eq!(s["invokes_before_initialize"], 0);
    assert_eq!(s["initialize_headers"]["x-fc-control-path"], "/initialize");
    assert_eq!(s["initialize_headers"]["x-fc-initialization-timeout"], "5");

    let again = env.invoke("init", json!({"cmd": "state"})).await.json();
    assert_eq!(again["initialize_calls"], 1);
    assert_eq!(again["invoke_calls"], 2);
    assert_eq!(
        again["pid"], s["pid"],
        "a warm call goes to the same instance"
    );

    // While the warm instance is busy, a second call starts a second instance, which gets its
    // own initialize call before its first invocation.
    let (busy, other) = tokio::join!(
        env.invoke("init", json!({"cmd": "sleep", "ms": 1500})),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            env.invoke("init", json!({"cmd": "state"})).await
        }
    );
    assert_eq!(busy.status, 200, "{}", busy.text());
    assert_eq!(other.header("x-wharf-cold-start").as_deref(), Some("true"));
    assert_ne!(
        other.header("x-wharf-instance-id"),
        busy.header("x-wharf-instance-id")
    );
    let o = other.json();
    assert_eq!(o["initialize_calls"], 1);
    assert_eq!(o["invokes_before_initialize"], 0);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_errors_timeouts_and_crashes_are_reported() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions::default()).await;
    env.deploy("errs", json!({"image": env.image})).await;

    let r = env
        .invoke("errs", json!({"cmd": "status", "status": 404}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "failed on purpose\n");
    assert!(
        r.header("x-wharf-function-error")
            .is_some_and(|e| e.contains("404")),
        "{:?}",
        r.headers
    );

    let r = env
        .invoke("errs", json!({"cmd": "x-fc-status", "value": "404"}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-wharf-function-error")
            .is_some_and(|e| e.contains("x-fc-status")),
        "{:?}",
        r.headers
    );
    assert!(
        r.header("x-fc-status").is_none(),
        "x-fc-* headers are not passed on"
    );

    let ok = env.invoke("errs", json!({"name": "x"})).await;
    assert!(ok.header("x-wharf-function-error").is_none());

    // A server that closes idle keep-alive connections (as Node does after 5 s) costs nothing.
    env.deploy(
        "closer",
        json!({"image": env.image, "env": {"TESTFN_KEEPALIVE_MS": "100"}}),
    )
    .await;
    let first = env.invoke("closer", json!({"name": "a"})).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = env.invoke("closer", json!({"name": "b"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("false"));
        assert_eq!(
            r.header("x-wharf-instance-id"),
            first.header("x-wharf-instance-id")
        );
    }

    // A timeout is an error, never a 200, and the stuck instance is replaced.
    env.deploy("slow", json!({"image": env.image, "timeout_s": 1}))
        .await;
    let r = env
        .invoke("slow", json!({"cmd": "sleep", "ms": 5000}))
        .await;
    assert_eq!(r.status, 504, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "FunctionTimeout");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{e}"
    );
    let r = env.invoke("slow", json!({"name": "next"})).await;
    assert_eq!(r.text(), "Hello, next!\n");
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));

    // An instance that dies mid-call: the caller is told, with what it printed; it is replaced.
    let r = env.invoke("errs", json!({"cmd": "exit", "code": 7})).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "FunctionCrashed", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exiting with 7 on request"), "{msg}");
    let r = env.invoke("errs", json!({"name": "back"})).await;
    assert_eq!(r.text(), "Hello, back!\n");
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));

    // The CLI prints the body and exits 1 on a function error.
    let out = env.wharf.cli(&[
        "invoke",
        "errs",
        "--data",
        r#"{"cmd":"status","status":404}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "failed on purpose\n");
    assert!(stderr(&out).contains("function error"), "{}", stderr(&out));
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_do_not_listen_as_they_should_are_reported() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions {
        extra: vec!["--start-deadline".into(), "2".into()],
        ..WharfOptions::default()
    })
    .await;
    env.deploy(
        "mute",
        json!({"image": env.image, "env": {"TESTFN_MODE": "never-listen"}}),
    )
    .await;
    let r = env.invoke("mute", json!({})).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "FunctionNotStarted");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("port 9000"), "{msg}");
    assert!(msg.contains("told never to listen"), "{msg}");
    assert!(r.header("x-wharf-request-id").is_some());

    // A server that exits at once fails as fast, saying so.
    env.deploy(
        "quitter",
        json!({"image": env.image, "env": {"TESTFN_MODE": "exit"}}),
    )
    .await;
    let r = env.invoke("quitter", json!({})).await;
    let e = r.json();
    assert_eq!(e["error"]["code"], "FunctionNotStarted", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited"), "{msg}");
    assert!(msg.contains("told to exit at once"), "{msg}");

    // The CLI names the error and exits 2.
    let out = env.wharf.cli(&["invoke", "mute"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("FunctionNotStarted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(instance_processes(&env.wharf), 0);

    // A server bound to 127.0.0.1 works here, but would not on the clouds: the log says so.
    env.deploy(
        "local",
        json!({"image": env.image, "env": {"TESTFN_BIND": "127.0.0.1"}}),
    )
    .await;
    let r = env.invoke("local", json!({"name": "lo"})).await;
    assert_eq!(r.text(), "Hello, lo!\n");
    let logs = env.wharf.cli(&["logs", "local"]);
    assert!(
        stdout(&logs).contains("listens on 127.0.0.1 port 9000 only"),
        "{}",
        stdout(&logs)
    );
    let logs = env.wharf.cli(&["logs", "mute"]);
    assert!(!stdout(&logs).contains("only"), "{}", stdout(&logs));
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_get_clear_errors_and_change_nothing() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions::default()).await;
    let w = &env.wharf;
    let host = env.registry.host();
    let put = |name: &str, body: Value| {
        let path = format!("/v1/functions/{name}");
        async move {
            w.api("PUT", &path, Some(body.to_string().into_bytes()))
                .await
        }
    };
    let cases = [
        (
            "nope",
            json!({"image": format!("{host}/missing:latest")}),
            400,
            "ImageNotFound",
            "missing",
        ),
        (
            "nope",
            json!({"image": format!("{host}/hello:no-such-tag")}),
            400,
            "ImageNotFound",
            "no-such-tag",
        ),
        (
            "nope",
            json!({"image": "127.0.0.1:1/hello:latest"}),
            502,
            "RegistryUnreachable",
            "127.0.0.1:1",
        ),
        (
            "nope",
            json!({"image": "UPPER CASE/Bad::ref"}),
            400,
            "InvalidImageReference",
            "UPPER CASE/Bad::ref",
        ),
        (
            "1-bad-name",
            json!({"image": env.image}),
            400,
            "InvalidArgument",
            "name",
        ),
        (
            "nope",
            json!({"image": env.image, "memory_mb": 1}),
            400,
            "InvalidArgument",
            "memory_mb",
        ),
        (
            "nope",
            json!({"image": env.image, "contract": "soap"}),
            400,
            "InvalidArgument",
            "unknown contract `soap`",
        ),
    ];
    for (name, body, status, code, mention) in cases {
        let r = put(name, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["code"], code, "{body}: {e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(mention), "{body}: {msg}");
    }
    let r = w
        .api("PUT", "/v1/functions/nope", Some(b"{not json".to_vec()))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "InvalidArgument");

    // Nothing was stored.
    let list = w.api("GET", "/v1/functions", None).await.json();
    assert_eq!(list["functions"], json!([]));

    // The CLI says what went wrong and exits 2.
    let out = w.cli(&[
        "deploy",
        "nope",
        "--image",
        &format!("{host}/missing:latest"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ImageNotFound"), "{}", stderr(&out));

    // The token is required and checked.
    let r = w.api_with_token("GET", "/v1/functions", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "Unauthorized");
    let r = w
        .api_with_token("GET", "/v1/functions", None, Some("wrong"))
        .await;
    assert_eq!(r.status, 401);
    let mode = std::fs::metadata(w.data_dir().join("api.token"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600);

    let r = env.invoke("ghost", json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "FunctionNotFound");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_survive_a_restart_and_a_crash_leaves_nothing_behind() {
    if needs_root() {
        return;
    }
    let mut env = env(WharfOptions::default()).await;
    env.deploy("keep", json!({"image": env.image, "memory_mb": 256}))
        .await;
    let r = env.invoke("keep", json!({"name": "before"})).await;
    assert_eq!(r.text(), "Hello, before!\n");

    // A clean restart: instances stopped, function kept.
    env.wharf.restart().expect("restart");
    let f = env
        .wharf
        .api("GET", "/v1/functions/keep", None)
        .await
        .json();
    assert_eq!(f["memory_mb"], 256);
    assert_eq!(f["image_digest"], env.digest.as_str());
    let r = env.invoke("keep", json!({"name": "after"})).await;
    assert_eq!(r.text(), "Hello, after!\n");
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));

    // A crash: the daemon dies with its instance running...
    env.wharf.kill().expect("kill");
    assert!(
        !env.wharf.leftovers().is_empty(),
        "a killed daemon leaves its instance running"
    );
    // ...and the next start cleans up what it left.
    env.wharf.restart().expect("start after the crash");
    assert_eq!(
        instance_processes(&env.wharf),
        0,
        "{:#?}",
        env.wharf.leftovers()
    );
    assert!(
        env.wharf.log().contains("cleaned up"),
        "{}",
        env.wharf.log()
    );
    let r = env.invoke("keep", json!({"name": "again"})).await;
    assert_eq!(r.text(), "Hello, again!\n");
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_stopped() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions {
        idle_timeout_s: 2,
        ..WharfOptions::default()
    })
    .await;
    env.deploy("idle", json!({"image": env.image})).await;
    let r = env.invoke("idle", json!({"name": "x"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(instance_processes(&env.wharf), 1);
    assert_eventually!(instance_processes(&env.wharf) == 0);
    let logs = env.wharf.cli(&["logs", "idle"]);
    assert!(
        stdout(&logs).contains("instance stopped after 1 request"),
        "{}",
        stdout(&logs)
    );
    let r = env.invoke("idle", json!({"name": "y"})).await;
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_with_token_auth() {
    if needs_root() {
        return;
    }
    let registry = TokenAuthRegistry::start("team", "pa55")
        .await
        .expect("start the token-auth registry");
    push_testfn(&registry.backend().host(), "team/hello", "v1")
        .await
        .expect("push the test function");
    let w = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start wharf serve");
    let image = format!("{}/team/hello:v1", registry.host());
    let put = |body: Value| {
        let w = &w;
        async move {
            w.api(
                "PUT",
                "/v1/functions/private",
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };

    let r = put(json!({"image": image})).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "RegistryUnauthorized");
    let r = put(json!({"image": image, "registry_auth": {"username": "team", "password": "nope"}}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "RegistryUnauthorized");

    let out = w.cli(&[
        "deploy",
        "private",
        "--image",
        &image,
        "--registry-user",
        "team",
        "--registry-password",
        "pa55",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(registry.tokens_issued() >= 1);
    let f = w.api("GET", "/v1/functions/private", None).await;
    assert_eq!(f.json()["registry_auth"], json!({"username": "team"}));
    assert!(!f.text().contains("pa55"), "the password is never shown");

    let out = w.cli(&["invoke", "private", "--data", r#"{"name":"team"}"#]);
    assert_eq!(stdout(&out), "Hello, team!\n", "{}", stderr(&out));
    let mut w = w;
    w.stop().expect("stop");
    assert!(w.leftovers().is_empty(), "{:#?}", w.leftovers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_shutdowns_finish_what_they_start() {
    if needs_root() {
        return;
    }
    let mut env = env(WharfOptions {
        stop_grace_s: 2,
        ..WharfOptions::default()
    })
    .await;
    wharf_test_support::install_crypto_provider();
    // Instances that ignore SIGTERM take the whole grace to stop.
    let stubborn = |memory: u32| json!({"image": env.image, "memory_mb": memory, "env": {"TESTFN_IGNORE_SIGTERM": "1"}});

    // A DELETE whose client gives up before the instance has stopped still finishes.
    env.deploy("gone", stubborn(128)).await;
    env.invoke("gone", json!({"name": "x"})).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .delete(format!("{}/v1/functions/gone", env.wharf.url()))
        .bearer_auth(env.wharf.token())
        .send()
        .await;
    assert!(
        r.is_err(),
        "the client gave up before the stop ended: {r:?}"
    );
    assert_eventually!(instance_processes(&env.wharf) == 0);
    assert_eventually!(!env.wharf.data_dir().join("logs/gone.log").exists());
    let r = env.wharf.api("GET", "/v1/functions/gone", None).await;
    assert_eq!(r.status, 404);
    assert!(
        !env.wharf.log().contains("dropped without stop"),
        "{}",
        env.wharf.log()
    );

    // SIGTERM while an old revision's instance is still stopping and an invocation is in
    // flight: the daemon stops them all, does not wait for the call's 30 s, leaves nothing.
    env.deploy("busy", stubborn(128)).await;
    env.invoke("busy", json!({"name": "x"})).await;
    env.deploy("busy", stubborn(256)).await;
    let url = format!("{}/v1/functions/busy/invoke", env.wharf.url());
    let token = env.wharf.token().to_string();
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .body(json!({"cmd": "sleep", "ms": 30000}).to_string())
            .send()
            .await
    });
    assert_eventually!(
        env.wharf
            .api("GET", "/v1/functions/busy/logs", None)
            .await
            .text()
            .matches("instance started")
            .count()
            == 2
    );
    let t0 = std::time::Instant::now();
    env.wharf.stop().expect("stop wharf serve");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        t0.elapsed()
    );
    match in_flight.await.unwrap() {
        Err(_) => {}
        Ok(r) => assert!(r.status().is_server_error(), "{}", r.status()),
    }
    let left = env.wharf.leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        !env.wharf.log().contains("dropped without stop"),
        "{}",
        env.wharf.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_json_errors_and_functions_cannot_forge_wharf_headers() {
    if needs_root() {
        return;
    }
    let env = env(WharfOptions::default()).await;
    env.deploy("forger", json!({"image": env.image})).await;
    let r = env
        .invoke(
            "forger",
            json!({"cmd": "respond-headers", "headers": {
                "x-wharf-function-error": "forged",
                "x-wharf-cold-start": "forged",
                "x-custom": "kept"
            }}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-wharf-function-error"), None);
    assert_eq!(r.header("x-wharf-cold-start").as_deref(), Some("true"));
    assert_eq!(r.header("x-custom").as_deref(), Some("kept"));

    let r = env.wharf.api("POST", "/v1/functions", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["code"], "MethodNotAllowed");
    let r = env.wharf.api("GET", "/v2/nothing", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "NotFound");

    // The scheme is case-insensitive (RFC 9110).
    let lower = reqwest::Client::new()
        .get(format!("{}/v1/functions", env.wharf.url()))
        .header("authorization", format!("bearer {}", env.wharf.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_start_says_why_and_leaves_nothing() {
    if needs_root() {
        return;
    }
    let serve = |data_dir: &std::path::Path, listen: &str, parent: &str| {
        std::process::Command::new(WHARF)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen, "--cgroup-parent", parent])
            .output()
            .expect("run wharf serve")
    };
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = serve(&data, &port, "wharf-test-busyport");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {port}")),
        "{}",
        stderr(&out)
    );
    let left = wharf_test_support::daemon::leftovers(&data, "wharf-test-busyport");
    assert!(left.is_empty(), "left behind: {left:#?}");

    // The data directory is in use by another daemon.
    let running = Wharf::start(WHARF.as_ref(), WharfOptions::default()).expect("start");
    let out = serve(running.data_dir(), "127.0.0.1:0", "wharf-test-second");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another `wharf serve`"),
        "{}",
        stderr(&out)
    );
    drop(running);
}
