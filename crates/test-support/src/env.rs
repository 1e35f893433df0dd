//! The usual set-up of a black-box test: a real registry with the test function pushed to it
//! as `hello:latest`, a real `wharf serve`, and the calls a test makes against them.

use std::path::PathBuf;

use serde_json::Value;

use crate::daemon::{ApiResponse, Wharf, WharfOptions};
use crate::registry::Registry;
use crate::testfn::push_testfn;

/// `true` (after printing why it is skipped) when the test cannot run here: `wharf serve`
/// mounts filesystems and creates cgroups.
pub fn skip_unless_root() -> bool {
    if rustix_is_root() {
        return false;
    }
    println!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
    true
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A registry with the test function, and a daemon.
pub struct TestEnv {
    pub registry: Registry,
    pub wharf: Wharf,
    /// `<registry>/hello:latest`: the test function.
    pub image: String,
}

impl TestEnv {
    /// Starts the registry, pushes the test function, starts `binary serve` with `options`.
    pub async fn start(binary: &str, options: WharfOptions) -> TestEnv {
        let registry = Registry::start().expect("start the registry");
        push_testfn(&registry.host(), "hello", "latest")
            .await
            .expect("push the test function");
        let wharf = Wharf::start(binary.as_ref(), options).expect("start wharf serve");
        let image = format!("{}/hello:latest", registry.host());
        TestEnv {
            registry,
            wharf,
            image,
        }
    }

    /// `PUT /v1/functions/{name}` with `body`, as it answers.
    pub async fn put_function(&self, name: &str, body: &Value) -> ApiResponse {
        self.wharf
            .api(
                "PUT",
                &format!("/v1/functions/{name}"),
                Some(body.to_string().into_bytes()),
            )
            .await
    }

    /// Deploys `name`, which must succeed; returns the function as the API shows it.
    pub async fn deploy(&self, name: &str, body: Value) -> Value {
        let resp = self.put_function(name, &body).await;
        assert!(
            resp.status == 200 || resp.status == 201,
            "deploy {name}: {} {}",
            resp.status,
            resp.text()
        );
        resp.json()
    }

    pub async fn invoke(&self, name: &str, event: Value) -> ApiResponse {
        self.wharf
            .api(
                "POST",
                &format!("/v1/functions/{name}/invoke"),
                Some(event.to_string().into_bytes()),
            )
            .await
    }

    /// Invokes `name` with `event` in a task of its own, for calls that must run while the test
    /// goes on; the task ends with the answer (status 0, and the error as the body, when the
    /// call failed to be sent or its answer to be read).
    pub fn invoke_in_background(
        &self,
        name: &str,
        event: Value,
    ) -> tokio::task::JoinHandle<ApiResponse> {
        crate::install_crypto_provider();
        let url = format!("{}/v1/functions/{name}/invoke", self.wharf.url());
        let token = self.wharf.token().to_string();
        tokio::spawn(async move {
            let answer = async {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .body(event.to_string())
                    .send()
                    .await?;
                let (status, headers) = (r.status().as_u16(), r.headers().clone());
                let body = r.bytes().await?.to_vec();
                Ok::<_, reqwest::Error>(ApiResponse {
                    status,
                    headers,
                    body,
                })
            };
            answer.await.unwrap_or_else(|e| ApiResponse {
                status: 0,
                headers: Default::default(),
                body: e.to_string().into_bytes(),
            })
        })
    }

    /// The instances of `name`, as `GET /v1/functions/{name}/instances` lists them.
    pub async fn instances(&self, name: &str) -> Vec<Value> {
        let r = self
            .wharf
            .api("GET", &format!("/v1/functions/{name}/instances"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Invokes `name`, which must answer 200 with JSON; returns it.
    pub async fn invoke_json(&self, name: &str, event: Value) -> Value {
        let resp = self.invoke(name, event.clone()).await;
        assert_eq!(resp.status, 200, "invoke {name} {event}: {}", resp.text());
        resp.json()
    }

    /// What the function's instances printed and Wharf noted about them, as text lines
    /// (`stream: message`).
    pub async fn log_lines(&self, name: &str) -> Vec<String> {
        let resp = self
            .wharf
            .api("GET", &format!("/v1/functions/{name}/logs?tail=1000"), None)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{}: {}",
                    l["stream"].as_str().unwrap_or_default(),
                    l["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// The instance's cgroup directory in the hierarchy mounted at `/sys/fs/cgroup/<hierarchy>`
    /// (`""` for a pure v2 host's root).
    pub fn cgroup_dir(&self, hierarchy: &str, instance: &str) -> PathBuf {
        PathBuf::from("/sys/fs/cgroup")
            .join(hierarchy)
            .join(self.wharf.cgroup_parent())
            .join(instance)
    }

    /// The freezer state of an instance as the kernel reports it: `FROZEN`, `THAWED`,
    /// `FREEZING` (v1), or `frozen 1`/`frozen 0` (v2's `cgroup.events`); `None` if the cgroup
    /// is gone.
    pub fn freezer_state(&self, instance: &str) -> Option<String> {
        let v1 = self.cgroup_dir("freezer", instance).join("freezer.state");
        if let Ok(s) = std::fs::read_to_string(&v1) {
            return Some(s.trim().to_owned());
        }
        let v2 = self.cgroup_dir("", instance).join("cgroup.events");
        let events = std::fs::read_to_string(v2).ok()?;
        events
            .lines()
            .find(|l| l.starts_with("frozen "))
            .map(str::to_owned)
    }

    /// Stops the daemon and checks that it left nothing behind.
    pub fn finish(mut self) {
        self.wharf.stop().expect("stop wharf serve");
        let left = self.wharf.leftovers();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// Whether a freezer state read by [`TestEnv::freezer_state`] says frozen.
pub fn is_frozen(state: Option<&str>) -> bool {
    matches!(state, Some("FROZEN" | "frozen 1"))
}
