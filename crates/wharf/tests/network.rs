//! Network modes through the real daemon. `none` (the default): loopback only, nothing outside
//! is reachable. `bridge`: outbound access through Wharf's bridge and NAT — tested against a
//! server in a network namespace this test makes itself — while the host's own addresses and
//! other instances stay out of reach.

use std::net::TcpListener;

use serde_json::{Value, json};
use wharf_test_support::daemon::WharfOptions;
use wharf_test_support::env::{TestEnv, skip_unless_root};
use wharf_test_support::netns::ServerNamespace;

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// A bridge name and subnet of this test process's own (tests run in parallel processes).
fn bridge_options() -> (WharfOptions, String) {
    let pid = std::process::id();
    let name = format!("wtb{:x}", pid % 0xfff_ffff);
    let subnet = format!("10.248.{}.0/24", pid % 250 + 1);
    (
        WharfOptions {
            extra: vec![
                "--bridge-name".into(),
                name.clone(),
                "--bridge-subnet".into(),
                subnet,
            ],
            ..WharfOptions::default()
        },
        name,
    )
}

fn connect_results(probe: &Value) -> &serde_json::Map<String, Value> {
    probe["connect"].as_object().expect("connect results")
}

fn eth0_address(probe: &Value) -> String {
    probe["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("eth0: "))
        .unwrap_or_else(|| panic!("no eth0 address: {probe}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_mode_reaches_out_and_nothing_else() {
    if skip_unless_root() {
        return;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: needs nft (Debian package nftables; scripts/setup.sh installs it)");
        return;
    }
    let (options, bridge) = bridge_options();
    let env = TestEnv::start(WHARF, options).await;
    let server = ServerNamespace::start(std::process::id(), 8080).expect("the test's server");
    // A listener on every address of the host: the host's side of the bridge must not reach it.
    let host_listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();

    env.deploy("out", json!({"image": env.image, "network": "bridge"}))
        .await;
    env.deploy("out2", json!({"image": env.image, "network": "bridge"}))
        .await;
    env.deploy("closed", json!({"image": env.image})).await;
    let shown = env
        .wharf
        .api("GET", "/v1/functions/closed", None)
        .await
        .json();
    assert_eq!(shown["network"], "none", "{shown}");

    // The other bridge instance, to try to reach.
    let other = env.invoke_json("out2", json!({"cmd": "probe"})).await;
    let other_addr = eth0_address(&other);

    let gateway = {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &bridge])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address on {bridge}: {text}"))
            .to_owned()
    };
    let targets = [
        server.server().to_string(),
        format!("{gateway}:{host_port}"),
        format!("{}:{host_port}", server.host_addr),
        format!("{other_addr}:9000"),
        format!("127.0.0.1:{host_port}"),
    ];
    let probe = env
        .invoke_json("out", json!({"cmd": "probe", "connect": targets}))
        .await;
    println!("bridge: {probe}");
    let seen = connect_results(&probe);
    assert_eq!(
        seen[&targets[0]], "connected",
        "the test's server through the NAT: {probe}"
    );
    for blocked in &targets[1..] {
        assert_ne!(seen[blocked], "connected", "{blocked}: {probe}");
    }
    assert!(eth0_address(&probe).starts_with("10.248."), "{probe}");

    // The default mode: loopback only.
    let probe = env
        .invoke_json(
            "closed",
            json!({"cmd": "probe", "connect": [server.server().to_string()]}),
        )
        .await;
    let seen = connect_results(&probe);
    assert!(
        seen[&server.server().to_string()]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{probe}"
    );
    assert_eq!(probe["addresses"], json!(["lo: 127.0.0.1"]), "{probe}");

    drop(server);
    env.finish();
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "the bridge {bridge} is removed at shutdown"
    );
}
