//! A FunctionGraph container image as the FunctionGraph seed document writes it: Node/Express
//! on port 8000, `POST /init` once per instance, `POST /invoke` per call, the context in the
//! `X-CFF-*` headers and the event as the body — run through the real daemon, as uid 1003.

use serde_json::json;
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::node::{express_image, test_cache};
use wharf_test_support::oci::Pusher;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// The seed's example, answering with what it was given.
const APP_JS: &str = r#"const express = require('express');
const app = express();
const PORT = 8000;
let inits = 0;

app.use(express.raw({ type: () => true }));

app.post('/init', (req, res) => {
  inits += 1;
  res.send('Hello init\n');
});

app.post('/invoke', (req, res) => {
  const event = req.body.toString();
  if (event === 'fail') {
    return res.status(500).send('the function failed');
  }
  const context = Object.fromEntries(
    Object.entries(req.headers).filter(([k]) => k.startsWith('x-cff-')));
  res.json({ event, inits, uid: process.getuid(), gid: process.getgid(), context });
});

app.listen(PORT, () => {
  console.log(`Listening on http://localhost:${PORT}`);
});
process.on('SIGTERM', () => process.exit(0));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_s_express_function_runs_unchanged() {
    if skip_unless_root() {
        return;
    }
    let image = match express_image(APP_JS, &test_cache()) {
        Ok(image) => image,
        Err(e) => {
            println!("skipped: no Node/Express image: {e:#}");
            return;
        }
    };
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    let host = env.registry.host();
    Pusher::new(&host)
        .push_image("fg-express", "latest", &image)
        .await
        .unwrap();
    env.deploy(
        "express",
        json!({
            "image": format!("{host}/fg-express:latest"),
            "contract": "functiongraph",
            "memory_mb": 256,
            "timeout_s": 10,
            "initializer": {"timeout_s": 5},
        }),
    )
    .await;

    for round in 1..=2 {
        let r = env
            .wharf
            .api(
                "POST",
                "/v1/functions/express/invoke",
                Some(format!("event {round}").into_bytes()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["event"], format!("event {round}"));
        assert_eq!(
            v["inits"], 1,
            "/init once per instance, before the first call"
        );
        assert_eq!(
            (v["uid"].as_u64(), v["gid"].as_u64()),
            (Some(1003), Some(1003))
        );
        let c = &v["context"];
        assert_eq!(
            c["x-cff-request-id"].as_str(),
            r.header("x-wharf-request-id").as_deref()
        );
        assert_eq!(c["x-cff-func-name"], "express");
        assert_eq!(c["x-cff-memory"], "256");
        assert_eq!(c["x-cff-timeout"], "10");
        assert!(c["x-cff-func-version"].is_string(), "{c}");
    }

    // A non-2xx answer is the function's error: status and body kept, marked as such.
    let failed = env
        .wharf
        .api(
            "POST",
            "/v1/functions/express/invoke",
            Some(b"fail".to_vec()),
        )
        .await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(failed.text(), "the function failed");
    assert!(failed.header("x-wharf-function-error").is_some());

    let lines = env.log_lines("express").await;
    assert!(
        lines.contains(&"stdout: Listening on http://localhost:8000".to_string()),
        "{lines:#?}"
    );
    env.finish();
}
