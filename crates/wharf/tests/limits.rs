//! Instance limits through the real daemon: memory (an OOM kill is reported with the limit and
//! the peak, and the instance is replaced), the CPU share that follows the memory size, and the
//! pids limit that stops a fork bomb without harming Wharf.

use std::path::PathBuf;

use serde_json::json;
use wharf_test_support::daemon::{ApiResponse, WharfOptions};
use wharf_test_support::env::{TestEnv, skip_unless_root};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// The first of `files` (relative to the instance's cgroup directory in each hierarchy)
/// that exists, and its content.
fn cgroup_file(env: &TestEnv, instance: &str, files: &[&str]) -> (PathBuf, String) {
    let parent = env.wharf.cgroup_parent();
    let roots = [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup",
    ];
    for root in roots {
        for file in files {
            let path = PathBuf::from(root).join(parent).join(instance).join(file);
            if let Ok(text) = std::fs::read_to_string(&path) {
                return (path, text.trim().to_owned());
            }
        }
    }
    panic!("none of {files:?} found for instance {instance} under {parent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_reported_with_the_limit_and_the_peak() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(WHARF, WharfOptions::default()).await;
    env.deploy("hog", json!({"image": env.image, "memory_mb": 64}))
        .await;

    // Below the limit: fine, on the same instance afterwards.
    let small = env.invoke("hog", json!({"cmd": "alloc", "mb": 16})).await;
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!(small.text(), "allocated 16 MiB\n");
    // Each answer reports the instance's memory peak so far.
    let peak_header = |r: &ApiResponse| -> u64 {
        r.header("x-wharf-memory-peak-mb")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-wharf-memory-peak-mb in {:?}", r.headers))
    };
    let small_peak = peak_header(&small);
    assert!((17..=64).contains(&small_peak), "peak {small_peak} MB");

    // Past it: the OOM killer ends the instance; the caller is told why, with the numbers.
    let r = env.invoke("hog", json!({"cmd": "alloc", "mb": 200})).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "FunctionOutOfMemory", "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("function hog: the instance ran out of memory"),
        "{msg}"
    );
    assert!(msg.contains("its limit is 64 MB"), "{msg}");
    let peak: u64 = msg
        .split("it peaked at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {msg}"));
    assert!((48..=64).contains(&peak), "peak {peak} MB: {msg}");
    assert!(msg.contains("raise memory_mb"), "{msg}");

    // The function's log says the same, as a system line.
    let logs = env
        .wharf
        .api("GET", "/v1/functions/hog/logs", None)
        .await
        .json();
    let entries = logs["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|l| l["stream"] == "system"
            && l["message"]
                .as_str()
                .is_some_and(|t| t.contains("ran out of memory") && t.contains("64 MB"))),
        "{logs}"
    );

    // The next call is served by a new instance.
    let next = env.invoke("hog", json!({"name": "again"})).await;
    assert_eq!(next.text(), "Hello, again!\n");
    assert_eq!(next.header("x-wharf-cold-start").as_deref(), Some("true"));
    assert!(
        peak_header(&next) < small_peak,
        "a new instance has a peak of its own"
    );
    assert_ne!(
        next.header("x-wharf-instance-id"),
        small.header("x-wharf-instance-id")
    );
    env.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_share_follows_memory_and_a_fork_bomb_stops_at_the_pids_limit() {
    if skip_unless_root() {
        return;
    }
    let env = TestEnv::start(
        WHARF,
        WharfOptions {
            extra: vec!["--pids-limit".into(), "40".into()],
            ..WharfOptions::default()
        },
    )
    .await;
    env.deploy("small", json!({"image": env.image, "memory_mb": 128}))
        .await;
    env.deploy("big", json!({"image": env.image, "memory_mb": 1024}))
        .await;

    // The CPU share is proportional to the memory size: 1024 shares per GiB.
    let mut shares = Vec::new();
    for name in ["small", "big"] {
        let r = env.invoke(name, json!({"name": name})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.header("x-wharf-instance-id").unwrap();
        let (path, value) = cgroup_file(&env, &id, &["cpu.shares", "cpu.weight"]);
        println!("{name}: {} = {value}", path.display());
        shares.push((path, value.parse::<u64>().unwrap()));
    }
    if shares[0].0.ends_with("cpu.shares") {
        assert_eq!(shares[0].1, 128);
        assert_eq!(shares[1].1, 1024);
    } else {
        // cgroup v2: the runtime converts shares to a weight, in the same proportion.
        assert!(shares[1].1 > shares[0].1 * 7, "{shares:?}");
    }

    // A fork bomb stops at the pids limit; the instance and Wharf carry on.
    let r = env.invoke("small", json!({"name": "x"})).await;
    let id = r.header("x-wharf-instance-id").unwrap();
    let (_, max) = cgroup_file(&env, &id, &["pids.max"]);
    assert_eq!(max, "40");
    let r = env.invoke("small", json!({"cmd": "fork", "n": 500})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = r.json();
    let started = out["started"].as_u64().unwrap();
    assert!(started > 0 && started < 40, "{out}");
    assert!(
        out["error"]
            .as_str()
            .is_some_and(|e| e.contains("Resource temporarily unavailable")),
        "{out}"
    );
    let r = env.invoke("small", json!({"name": "after"})).await;
    assert_eq!(r.text(), "Hello, after!\n");
    assert_eq!(
        r.header("x-wharf-instance-id").as_deref(),
        Some(id.as_str())
    );
    let r = env.invoke("big", json!({"name": "other"})).await;
    assert_eq!(r.text(), "Hello, other!\n");
    env.finish();
}
