//! Isolation seen from inside a function, through the real daemon: the test function's
//! `probe` command reports its capabilities, seccomp mode, the processes it sees, what denied
//! syscalls answer and whether it can reach the daemon's API on the host's loopback. Once per
//! runtime (crun and runc).

use serde_json::{Value, json};
use wharf_test_support::daemon::{Wharf, WharfOptions};
use wharf_test_support::registry::Registry;
use wharf_test_support::testfn::push_testfn;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_is_confined_with_crun_and_with_runc() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (wharf serve mounts filesystems and creates cgroups)");
        return;
    }
    let registry = Registry::start().expect("start the registry");
    push_testfn(&registry.host(), "hello", "latest")
        .await
        .expect("push the test function");
    let image = format!("{}/hello:latest", registry.host());
    for runtime in ["crun", "runc"] {
        let mut wharf = Wharf::start(
            WHARF.as_ref(),
            WharfOptions {
                runtime: runtime.into(),
                ..WharfOptions::default()
            },
        )
        .expect("start wharf serve");
        let api = wharf
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let body = json!({"image": image, "contract": "fc"}).to_string();
        let resp = wharf
            .api("PUT", "/v1/functions/probe", Some(body.into_bytes()))
            .await;
        assert!(resp.status == 201 || resp.status == 200, "{}", resp.text());
        let event = json!({"cmd": "probe", "connect": [api]}).to_string();
        let resp = wharf
            .api(
                "POST",
                "/v1/functions/probe/invoke",
                Some(event.into_bytes()),
            )
            .await;
        assert_eq!(resp.status, 200, "{runtime}: {}", resp.text());
        let seen: Value = resp.json();
        println!("{runtime}: {seen}");

        let status = &seen["status"];
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status[cap], "0000000000000000", "{runtime} {cap}: {seen}");
        }
        assert_eq!(status["NoNewPrivs"], "1", "{runtime}: {seen}");
        assert_eq!(status["Seccomp"], "2", "{runtime}: {seen}");
        // Its own PID namespace: the function is pid 1 and sees no host process.
        let pids: Vec<u64> = seen["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(pids, [1], "{runtime}: other processes visible: {seen}");
        // Denied by the seccomp profile: none of them needs a capability, and on this host,
        // outside an instance, the test function's probe gets "ok" for all three.
        for call in ["unshare_newuser", "clone_newuser", "keyctl"] {
            assert_eq!(
                seen["syscalls"][call], "Operation not permitted (os error 1)",
                "{runtime} {call}: {seen}"
            );
        }
        // `clone3` answers ENOSYS (so libcs fall back to `clone`); the kernel itself would
        // answer EINVAL to this empty call.
        assert_eq!(
            seen["syscalls"]["clone3"], "Function not implemented (os error 38)",
            "{runtime}: {seen}"
        );
        let keys = seen["masked"]["/proc/keys"].as_str().unwrap();
        assert_eq!(keys, "0 bytes", "{runtime}: /proc/keys readable: {seen}");
        let timer_list = seen["masked"]["/proc/timer_list"].as_str().unwrap();
        assert!(
            timer_list == "0 bytes" || timer_list.contains("No such file"),
            "{runtime}: {seen}"
        );
        // The daemon's API listens on the host's 127.0.0.1: not reachable from inside.
        let reach = seen["connect"][&api].as_str().unwrap();
        assert!(
            reach.contains("refused"),
            "{runtime}: reached the API: {seen}"
        );

        wharf.stop().expect("stop wharf serve");
        let left = wharf.leftovers();
        assert!(left.is_empty(), "{runtime}: left behind: {left:#?}");
    }
}
