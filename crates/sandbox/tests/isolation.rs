//! Isolation of real instances, with crun and with runc: what a function sees from inside.
//!
//! The instances run as uid 0 inside (the worst case: root without capabilities), except
//! where a test says otherwise.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Env;
use wharf_sandbox::{ExitInfo, RuntimePreference, Stream, User};

both_runtimes!(
    no_capabilities_no_new_privs_seccomp,
    denied_syscalls_fail_with_eperm,
    masked_and_read_only_proc_and_a_minimal_dev,
    host_loopback_is_unreachable,
    node_runs_under_the_profile,
);

/// Run `script` with `sh -c` to its end; its stdout and stderr lines.
async fn run(env: &Env, user: User, script: &str) -> (Vec<String>, Vec<String>) {
    let mut spec = env.spec(&["sh", "-c", script]);
    spec.user = user;
    let inst = env.sandbox.start(spec).await.unwrap();
    let exit = inst.exited().await;
    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    let (out, err) = (env.lines.of(Stream::Stdout), env.lines.of(Stream::Stderr));
    assert_eq!(exit, ExitInfo::Exited(0), "stdout {out:?}, stderr {err:?}");
    env.lines.0.lock().unwrap().clear();
    (out, err)
}

/// `Name:\tvalue` lines of `/proc/self/status`, as a map.
fn status_fields(lines: &[String]) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

async fn no_capabilities_no_new_privs_seccomp(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let script = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status";
    for user in [
        User::Id { uid: 0, gid: 0 },
        User::Id {
            uid: 1003,
            gid: 1003,
        },
    ] {
        let (out, _) = run(&env, user.clone(), script).await;
        let fields = status_fields(&out);
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                fields[cap], "0000000000000000",
                "{cap} as {user:?}: {out:?}"
            );
        }
        assert_eq!(fields["NoNewPrivs"], "1", "{out:?}");
        assert_eq!(fields["Seccomp"], "2", "filter mode: {out:?}");
    }
    env.finish().await;
}

/// `unshare(CLONE_NEWUSER)` needs no capability (unprivileged user namespaces): the seccomp
/// profile is what refuses it. The others are refused twice (capability and profile).
async fn denied_syscalls_fail_with_eperm(runtime: RuntimePreference) {
    use std::os::unix::process::CommandExt;
    // The control: on this host, outside an instance, uid 1003 may create a user namespace.
    let host = std::process::Command::new(common::BUSYBOX)
        .args(["unshare", "-U", "true"])
        .uid(1003)
        .gid(1003)
        .status()
        .unwrap();
    if !host.success() {
        println!("note: this host refuses unprivileged user namespaces by itself");
    }
    let env = Env::new(runtime);
    let (out, err) = run(
        &env,
        User::Id {
            uid: 1003,
            gid: 1003,
        },
        "unshare -U true; echo userns=$?; unshare -n true; echo netns=$?; \
         mount -t tmpfs t /tmp; echo mount=$?; hostname other; echo hostname=$?; hostname",
    )
    .await;
    assert_eq!(
        out,
        ["userns=1", "netns=1", "mount=1", "hostname=1", "fn"],
        "stderr: {err:?}"
    );
    assert!(
        err.iter()
            .any(|l| l.contains("unshare(0x10000000)") && l.contains("Operation not permitted")),
        "{err:?}"
    );
    assert!(
        err.iter()
            .any(|l| l.contains("unshare(0x40000000)") && l.contains("Operation not permitted")),
        "{err:?}"
    );
    assert!(
        err.iter()
            .any(|l| l.contains("sethostname") && l.contains("Operation not permitted")),
        "{err:?}"
    );
    env.finish().await;
}

async fn masked_and_read_only_proc_and_a_minimal_dev(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let (out, err) = run(
        &env,
        User::Id { uid: 0, gid: 0 },
        "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do \
           [ -e $f ] && echo \"$f=$(cat $f | wc -c)\"; done; \
         echo firmware=$(ls -A /sys/firmware | wc -l); \
         echo x > /proc/sysrq-trigger; echo sysrq=$?; \
         echo other > /proc/sys/kernel/hostname; echo sysctl=$?; \
         echo x > /sys/kernel/uevent_helper; echo sys=$?; \
         echo dev=$(ls -A /dev)",
    )
    .await;
    for line in out.iter().filter(|l| l.starts_with("/proc/")) {
        assert!(
            line.ends_with("=0"),
            "masked path readable: {line} ({out:?})"
        );
    }
    // `/proc/kcore` only exists on kernels built with it (not on this host's).
    assert!(out.iter().any(|l| l.starts_with("/proc/keys=")), "{out:?}");
    assert!(out.contains(&"firmware=0".to_string()), "{out:?}");
    for write in ["sysrq=1", "sysctl=1", "sys=1"] {
        assert!(out.contains(&write.to_string()), "{write}: {out:?} {err:?}");
    }
    // `/proc/sysrq-trigger` is missing on some kernels (this host's); the others must be
    // refused as read-only, not for another reason.
    for path in ["/proc/sys/kernel/hostname", "/sys/kernel/uevent_helper"] {
        assert!(
            err.iter()
                .any(|l| l.contains(path) && l.contains("Read-only file system")),
            "{path}: {err:?}"
        );
    }
    let dev: BTreeSet<&str> = out
        .iter()
        .find_map(|l| l.strip_prefix("dev="))
        .unwrap()
        .split_whitespace()
        .collect();
    let allowed: BTreeSet<&str> = [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
        "console", "fd", "stdin", "stdout", "stderr", "core",
    ]
    .into();
    assert!(
        dev.is_subset(&allowed),
        "unexpected in /dev: {:?}",
        dev.difference(&allowed)
    );
    for needed in ["null", "zero", "urandom", "shm"] {
        assert!(dev.contains(needed), "{needed} missing from /dev: {dev:?}");
    }
    env.finish().await;
}

/// The instance has its own network namespace: the host's loopback (where Wharf's API
/// listens) is not reachable from it.
async fn host_loopback_is_unreachable(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (out, _) = run(
        &env,
        User::Id {
            uid: 1003,
            gid: 1003,
        },
        &format!(
            "echo ping | nc -w 2 127.0.0.1 {port}; echo nc=$?; \
             echo ping | nc -w 2 localhost {port}; echo nc-localhost=$?"
        ),
    )
    .await;
    assert_eq!(out, ["nc=1", "nc-localhost=1"], "{out:?}");
    // Nothing ever connected to the host's listener.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    env.finish().await;
}

/// The host's `node` (with the libraries `ldd` lists) as one more layer.
fn node_layer(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let node = std::path::Path::new("/usr/bin/node");
    if !node.exists() {
        println!("skipped: needs /usr/bin/node");
        return None;
    }
    let layer = dir.join("layer-node");
    let ldd = std::process::Command::new("ldd")
        .arg(node)
        .output()
        .unwrap();
    let libs = String::from_utf8(ldd.stdout).unwrap();
    let files = libs
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .chain(std::iter::once("/usr/bin/node"));
    for file in files {
        let to = layer.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let from = std::fs::canonicalize(file).unwrap();
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).unwrap();
        }
    }
    Some(layer)
}

/// Node (libuv: io_uring with its fallback, threads, `fork`, sockets) works under the profile.
async fn node_runs_under_the_profile(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let Some(layer) = node_layer(env.tmp.path()) else {
        env.finish().await;
        return;
    };
    let script = r#"
const fs = require('fs'), cp = require('child_process'), http = require('http');
const { Worker } = require('worker_threads');
(async () => {
  await fs.promises.writeFile('/tmp/a', 'x'.repeat(100000));
  console.log('fs=' + (await fs.promises.readFile('/tmp/a')).length);
  console.log('child=' + cp.execFileSync(process.execPath, ['-p', '40 + 2']).toString().trim());
  const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
  console.log('worker=' + await new Promise(ok => w.on('message', ok)));
  await w.terminate();
  const s = http.createServer((q, r) => r.end('hi')).listen(9000, '127.0.0.1');
  await new Promise(ok => s.on('listening', ok));
  const body = await new Promise(ok => http.get('http://127.0.0.1:9000/', res => {
    let d = ''; res.on('data', c => d += c); res.on('end', () => ok(d));
  }));
  console.log('http=' + body);
  s.close();
})();
"#;
    let mut spec = env.spec(&["/usr/bin/node", "-e", script]);
    spec.layers.push(layer);
    spec.user = User::Id {
        uid: 1003,
        gid: 1003,
    };
    spec.memory_limit_bytes = 512 << 20;
    let inst = env.sandbox.start(spec).await.unwrap();
    let exit = inst.exited().await;
    inst.stop(Duration::ZERO).await;
    let (out, err) = (env.lines.of(Stream::Stdout), env.lines.of(Stream::Stderr));
    assert_eq!(exit, ExitInfo::Exited(0), "stdout {out:?}, stderr {err:?}");
    assert_eq!(
        out,
        ["fs=100000", "child=42", "worker=42", "http=hi"],
        "stderr {err:?}"
    );
    env.finish().await;
}
