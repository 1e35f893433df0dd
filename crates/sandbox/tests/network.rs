//! Bridge networking with real instances, crun and runc: outbound access through the bridge and
//! NAT to a server in a network namespace the test creates, and what stays unreachable (the
//! host's own addresses, other instances, anything from the default mode).
//!
//! Each test uses its own bridge name and subnet (`common::unique_bridge`) and its own server
//! namespace with its own /30, so tests run in parallel processes without meeting. Traffic
//! never leaves the host: the only destinations are the test's own namespaces and addresses.
//! Tests within one process run one at a time (`NET_LOCK`), so that the check for network
//! namespace fds left open sees only its own test's.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    Env, assert_no_network_leftovers, bridge_veths, can_run, foreign_netns_fds, nft_table,
    unique_bridge,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_sandbox::{
    ExitInfo, Instance, InstanceSpec, NetworkError, NetworkMode, RuntimePreference, Sandbox,
    SandboxConfig, SandboxError, StartError, Stream,
};

static NET_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Root, busybox, and `nft` and `ip` on the host.
fn can_run_network() -> bool {
    if !can_run() {
        return false;
    }
    for (program, package) in [("nft", "nftables"), ("ip", "iproute2")] {
        let found = Command::new(program).arg("-V").output().is_ok()
            || Command::new(program).arg("--version").output().is_ok();
        if !found {
            println!("skipped: needs {program} ({package})");
            return false;
        }
    }
    true
}

/// Instantiate an `async fn(RuntimePreference)` test for crun and runc.
macro_rules! both_runtimes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crun() {
                if super::can_run_network() {
                    let _serial = super::NET_LOCK.lock().await;
                    super::$name(wharf_sandbox::RuntimePreference::Crun).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runc() {
                if super::can_run_network() {
                    let _serial = super::NET_LOCK.lock().await;
                    super::$name(wharf_sandbox::RuntimePreference::Runc).await;
                }
            }
        }
    )*};
}

both_runtimes!(
    outbound_through_nat,
    host_and_other_instances_are_unreachable,
    failed_start_releases_its_network,
    crash_recovery_leaves_nothing,
);

static SERVER_COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of the test's own with a veth to the host and a /30 in 10.199.0.0/16:
/// the "internet" bridge-mode instances reach through NAT. Removed on drop.
struct ServerNs {
    name: String,
    host_veth: String,
    /// The host's end (what the server sees as the peer, after NAT).
    host_addr: Ipv4Addr,
    server_addr: Ipv4Addr,
}

impl ServerNs {
    fn new() -> ServerNs {
        let pid = std::process::id();
        let n = SERVER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let slot = (pid.wrapping_mul(4).wrapping_add(n)) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 199, 0, 0)) + slot * 4;
        let ns = ServerNs {
            name: format!("wharf-test-{pid}-{n}"),
            host_veth: format!("ts{pid:x}{n:x}"),
            host_addr: Ipv4Addr::from(base + 1),
            server_addr: Ipv4Addr::from(base + 2),
        };
        ip(&["netns", "add", &ns.name]);
        let peer = format!("tp{pid:x}{n:x}");
        ip(&[
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &ns.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            &ns.host_veth,
        ]);
        ip(&["link", "set", &ns.host_veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.server_addr),
            "dev",
            &peer,
        ]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// A TCP listener inside the namespace (a socket belongs to the namespace it was created
    /// in: a short-lived thread enters it to create the socket).
    fn listen(&self, port: u16) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = SocketAddr::from((self.server_addr, port));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            TcpListener::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for ServerNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Serve one line per connection: answer `hi <peer address>`; report each peer.
fn serve(listener: TcpListener) -> mpsc::Receiver<(SocketAddr, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let peer = stream.peer_addr().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = writeln!(stream, "hi {}", peer.ip());
            if tx.send((peer, line.trim().to_owned())).is_err() {
                return;
            }
        }
    });
    rx
}

fn bridge_spec(env: &Env, script: &str) -> InstanceSpec {
    let mut spec = env.spec(&["sh", "-c", script]);
    spec.network = NetworkMode::Bridge;
    spec
}

/// Run to the end; stdout and stderr lines (the sink is emptied).
async fn run(env: &Env, spec: InstanceSpec) -> (ExitInfo, Vec<String>, Vec<String>) {
    let inst = env.sandbox.start(spec).await.unwrap();
    let exit = inst.exited().await;
    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    let out = (env.lines.of(Stream::Stdout), env.lines.of(Stream::Stderr));
    env.lines.0.lock().unwrap().clear();
    (exit, out.0, out.1)
}

/// `finish`, then: no namespace fd of ours left open.
async fn finish(env: Env) {
    env.finish().await;
    let fds = foreign_netns_fds();
    assert!(fds.is_empty(), "network namespaces still held: {fds:?}");
}

fn host_ipv6_all() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6").unwrap_or_default()
}

async fn outbound_through_nat(runtime: RuntimePreference) {
    let server = ServerNs::new();
    let peers = serve(server.listen(8080));
    let env = Env::new(runtime);
    let bridge = env.bridge().clone();
    let gateway = Ipv4Addr::from(u32::from(bridge.subnet) + 1);
    let ipv6_before = host_ipv6_all();

    // Nothing exists before the first use.
    assert!(!Path::new("/sys/class/net").join(&bridge.name).exists());
    let t = Instant::now();
    env.sandbox.prepare_network().await.unwrap();
    let set_up = t.elapsed();
    assert!(Path::new("/sys/class/net").join(&bridge.name).exists());
    let table = nft_table(&bridge).expect("the nftables table");
    assert!(table.contains("masquerade"), "{table}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let pool = bridge_veths(&bridge);
    assert!(!pool.is_empty(), "the pool is filled");
    // Each prepared port is isolated.
    for veth in &pool {
        let isolated =
            std::fs::read_to_string(format!("/sys/class/net/{veth}/brport/isolated")).unwrap();
        assert_eq!(isolated.trim(), "1", "{veth}");
    }
    let t = Instant::now();
    env.sandbox.prepare_network().await.unwrap();
    let again = t.elapsed();

    let script = format!(
        "ip -4 -o addr show eth0; ip route; ip -o link | wc -l; \
         cat /proc/sys/net/ipv6/conf/all/disable_ipv6; \
         echo x >> /etc/resolv.conf; echo resolv-write=$?; \
         echo hello | nc -w 5 {} 8080; echo nc=$?",
        server.server_addr
    );
    let (exit, out, err) = run(&env, bridge_spec(&env, &script)).await;
    assert_eq!(exit, ExitInfo::Exited(0), "{out:?} {err:?}");
    let addr_line = &out[0];
    assert!(
        addr_line.contains("eth0") && addr_line.contains(&format!("/{}", bridge.prefix_len)),
        "{out:?}"
    );
    let addr: Ipv4Addr = addr_line
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    assert_eq!(
        u32::from(addr) >> 8,
        u32::from(bridge.subnet) >> 8,
        "{addr}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with(&format!("default via {gateway} dev eth0"))),
        "{out:?}"
    );
    assert!(out.contains(&"2".to_string()), "lo and eth0 only: {out:?}");
    assert!(out.contains(&"1".to_string()), "IPv6 off inside: {out:?}");
    assert_eq!(host_ipv6_all(), ipv6_before, "the host's IPv6 is untouched");
    // This host's resolv.conf names a non-loopback nameserver: mounted, read-only.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !host_resolv.contains("nameserver 127.") && host_resolv.contains("nameserver") {
        assert!(
            out.contains(&"resolv-write=1".to_string()),
            "{out:?} {err:?}"
        );
    }
    assert!(
        out.contains(&format!("hi {}", server.host_addr)),
        "{out:?} {err:?}"
    );
    assert!(out.contains(&"nc=0".to_string()), "{out:?}");
    let (peer, line) = peers.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(line, "hello");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(server.host_addr),
        "the server sees the host (NAT)"
    );

    // The default mode reaches nothing.
    let mut none = env.spec(&[
        "sh",
        "-c",
        &format!(
            "echo hello | nc -w 2 {} 8080; echo nc=$?",
            server.server_addr
        ),
    ]);
    none.network = NetworkMode::None;
    let (_, out, err) = run(&env, none).await;
    assert_eq!(out, ["nc=1"], "{err:?}");
    assert!(
        err.iter().any(|l| l.contains("Network is unreachable")),
        "{err:?}"
    );
    assert!(peers.try_recv().is_err(), "nothing else connected");

    // The connector reaches a bridge-mode instance through its namespace (lo is up), and a
    // bridge-mode cold start takes its namespace from the pool.
    let mut cold = Vec::new();
    for mode in [NetworkMode::None, NetworkMode::Bridge].repeat(3) {
        let mut spec = env.spec(&["httpd", "-f", "-p", "9000", "-h", "/www"]);
        spec.network = mode;
        let t = Instant::now();
        let inst = env.sandbox.start(spec).await.unwrap();
        let started = t.elapsed();
        let mut stream = inst
            .wait_listening(9000, Duration::from_secs(10))
            .await
            .unwrap();
        let listening = t.elapsed();
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: fn\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.ends_with("hello from the top layer\n"),
            "{response}"
        );
        let timings = inst.timings();
        if mode == NetworkMode::Bridge {
            // Microseconds: the pool had one (refilled after each take, while this runs).
            assert!(timings.network < Duration::from_millis(5), "{timings:?}");
        } else {
            assert_eq!(timings.network, Duration::ZERO);
        }
        cold.push((mode, started, listening, timings.network));
        let report = inst.stop(Duration::ZERO).await;
        assert!(report.cleanup_errors.is_empty(), "{report:?}");
    }

    // A burst of starts empties the pool: the last ones wait for a preparation.
    let mut burst = Vec::new();
    for _ in 0..6 {
        let sandbox = env.sandbox.clone();
        let spec = bridge_spec(&env, "sleep 30");
        burst.push(tokio::spawn(
            async move { sandbox.start(spec).await.unwrap() },
        ));
    }
    let mut started: Vec<Instance> = Vec::new();
    for handle in burst {
        started.push(handle.await.unwrap());
    }
    let waits: Vec<Duration> = started.iter().map(|i| i.timings().network).collect();
    for inst in &started {
        inst.stop(Duration::ZERO).await;
    }
    drop(started);

    println!(
        "{runtime:?}: set-up + pool fill {set_up:?}, prepare_network again {again:?}; \
         network waits in a burst of 6 starts {waits:?} (the longest ~ one preparation)"
    );
    for (mode, started, listening, network) in &cold {
        println!(
            "{runtime:?}: {mode:?} cold start: start() {started:?} (network wait {network:?}), listening at {listening:?}"
        );
    }
    let veths_before_shutdown = bridge_veths(&bridge);
    assert!(!veths_before_shutdown.is_empty(), "the pool is still there");
    finish(env).await;
    drop(server);
}

async fn host_and_other_instances_are_unreachable(runtime: RuntimePreference) {
    let server = ServerNs::new();
    let peers = serve(server.listen(8080));
    let env = Env::new(runtime);
    let gateway = Ipv4Addr::from(u32::from(env.bridge().subnet) + 1);
    // On the host, on every address: the bridge's, the server veth's, loopback.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();

    let b = env
        .sandbox
        .start(bridge_spec(
            &env,
            "ip -4 -o addr show eth0; exec httpd -f -p 8080 -h /www",
        ))
        .await
        .unwrap();
    b.wait_listening(8080, Duration::from_secs(10))
        .await
        .unwrap();
    let b_addr: Ipv4Addr = env
        .lines
        .of(Stream::Stdout)
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
        })
        .expect("b's address");
    env.lines.0.lock().unwrap().clear();
    // b serves on its own address (seen from its own namespace).
    b.connect_to(b_addr, 8080).await.unwrap();

    let script = format!(
        "(nc -w 2 {gateway} {port} </dev/null; echo bridge=$?) & \
         (nc -w 2 {host} {port} </dev/null; echo host=$?) & \
         (nc -w 2 127.0.0.1 {port} </dev/null; echo loopback=$?) & \
         (echo GET | nc -w 2 {b_addr} 8080; echo instance=$?) & \
         (echo hello | nc -w 2 {server} 8080; echo server=$?) & \
         wait",
        host = server.host_addr,
        server = server.server_addr,
    );
    let (exit, out, err) = run(&env, bridge_spec(&env, &script)).await;
    assert_eq!(exit, ExitInfo::Exited(0), "{out:?} {err:?}");
    let mut results: Vec<&str> = out
        .iter()
        .filter(|l| l.contains('='))
        .map(|l| l.as_str())
        .collect();
    results.sort();
    assert_eq!(
        results,
        ["bridge=1", "host=1", "instance=1", "loopback=1", "server=0"],
        "stdout {out:?}, stderr {err:?}"
    );
    // The control: the outside world was reachable, the host was not.
    assert_eq!(
        peers.recv_timeout(Duration::from_secs(5)).unwrap().1,
        "hello"
    );
    assert_eq!(
        host.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing reached the host's listener"
    );
    // And b got no request from a. (Two walls stand between them: bridge-port isolation,
    // and on hosts with br_netfilter, like this one, the table's forward drop; each alone
    // makes this test pass, removing both makes it fail.)
    b.stop(Duration::ZERO).await;
    assert!(
        env.lines.of(Stream::Stdout).is_empty(),
        "{:?}",
        env.lines.of(Stream::Stdout)
    );
    drop(b);
    finish(env).await;
    drop(server);
}

/// A bridge-mode start that fails after taking its namespace gives it back: its veth is
/// deleted and the pool is what it was.
async fn failed_start_releases_its_network(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    env.sandbox.prepare_network().await.unwrap();
    let before = bridge_veths(env.bridge()).len();
    let mut spec = env.spec(&["/no/such/binary"]);
    spec.network = NetworkMode::Bridge;
    let err = env.sandbox.start(spec).await.unwrap_err();
    assert!(matches!(err, StartError::Runtime { .. }), "{err}");
    env.sandbox.prepare_network().await.unwrap();
    assert_eq!(bridge_veths(env.bridge()).len(), before);
    finish(env).await;
}

/// A daemon killed with bridge-mode instances running: recovery removes their veths, the
/// table and the bridge (the pool's namespaces went with the daemon).
async fn crash_recovery_leaves_nothing(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let a = env
        .sandbox
        .start(bridge_spec(&env, "sleep 60"))
        .await
        .unwrap();
    let b = env
        .sandbox
        .start(bridge_spec(&env, "sleep 60"))
        .await
        .unwrap();
    let bridge = env.bridge().clone();
    assert!(bridge_veths(&bridge).len() >= 2);
    // The "crash": no stop, no shutdown.
    drop(a);
    drop(b);
    let Env {
        sandbox,
        guard,
        tmp,
        parent,
        layers,
        lines,
    } = env;
    drop(sandbox);
    // What the dead daemon left: the bridge, its table, the running instances' veths.
    assert!(
        bridge_veths(&bridge).len() >= 2,
        "{:?}",
        bridge_veths(&bridge)
    );
    assert!(nft_table(&bridge).is_some());

    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: tmp.path().join("state"),
        cgroup_parent: parent.clone(),
        runtime,
        bridge: bridge.clone(),
    })
    .unwrap();
    let report = sandbox.recover().await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.containers_deleted, 2, "{report:?}");
    // The bridge, and those veths the kernel had not yet deleted with their namespaces
    // (which lose their last process when the containers are deleted).
    assert!(report.interfaces_removed >= 1, "{report:?}");
    assert_no_network_leftovers(&bridge);
    let again = sandbox.recover().await.unwrap();
    assert_eq!(again.interfaces_removed, 0, "{again:?}");
    let env = Env {
        sandbox,
        guard,
        tmp,
        parent,
        layers,
        lines,
    };
    finish(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bridge_configs_are_refused() {
    if !can_run_network() {
        return;
    }
    let _serial = NET_LOCK.lock().await;
    // Syntax: at Sandbox::new, before anything is touched.
    let tmp = tempfile::tempdir().unwrap();
    let mut bridge = unique_bridge();
    bridge.name = "no spaces".into();
    let err = Sandbox::new(SandboxConfig {
        state_dir: tmp.path().join("state"),
        cgroup_parent: common::unique("wharf-test"),
        runtime: RuntimePreference::Runc,
        bridge,
    })
    .unwrap_err();
    assert!(matches!(err, SandboxError::Bridge { .. }), "{err}");

    // A subnet overlapping an address of another interface: refused at set-up, naming it.
    let server = ServerNs::new();
    let mut bridge = unique_bridge();
    let host = u32::from(server.host_addr);
    bridge.subnet = Ipv4Addr::from(host & 0xffff_ff00);
    let env = Env::with_bridge(RuntimePreference::Runc, bridge.clone());
    let err = env.sandbox.prepare_network().await.unwrap_err();
    match &err {
        NetworkError::SubnetOverlap { interface, .. } => assert_eq!(interface, &server.host_veth),
        other => panic!("unexpected: {other}"),
    }
    assert!(err.to_string().contains("--bridge-subnet"), "{err}");
    // A start says the same, and nothing was created.
    let mut spec = env.spec(&["true"]);
    spec.network = NetworkMode::Bridge;
    let err = env.sandbox.start(spec).await.unwrap_err();
    assert!(matches!(err, StartError::Network { .. }), "{err}");
    finish(env).await;

    // An interface of that name that Wharf did not create is neither used nor removed.
    let bridge = unique_bridge();
    ip(&["link", "add", &bridge.name, "type", "bridge"]);
    let env = Env::with_bridge(RuntimePreference::Runc, bridge.clone());
    let err = env.sandbox.prepare_network().await.unwrap_err();
    assert!(matches!(err, NetworkError::NotOurs { .. }), "{err}");
    let report = env.sandbox.recover().await.unwrap();
    assert!(
        report.errors.iter().any(|e| e.contains("--bridge-name")),
        "{report:?}"
    );
    assert!(Path::new("/sys/class/net").join(&bridge.name).exists());
    ip(&["link", "del", &bridge.name]);
    finish(env).await;
    drop(server);
}
