//! Real instances on this host, through the public API, with crun and with runc.
//!
//! Every test runs once per runtime (`<test>::crun`, `<test>::runc`), uses its own state
//! directory and cgroup parent, stops what it started and checks that no mount, cgroup,
//! bundle or process is left.

#[macro_use]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Env, assert_no_mounts_under, assert_process_gone, can_run, cgroup_dirs_named};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_sandbox::{
    ExitInfo, NotListening, RuntimeKind, RuntimePreference, Sandbox, SandboxConfig, StartError,
    Stream, User,
};

both_runtimes!(
    http_through_the_connector,
    listeners_are_there_before_the_process,
    user_env_and_cwd,
    limits_in_the_cgroup,
    oom_kill_is_reported,
    pid_namespace_is_private,
    exit_before_listening,
    deadline_when_nothing_listens,
    stdout_and_stderr,
    runtime_errors_are_reported,
    unknown_user,
    crash_recovery,
);

async fn http_through_the_connector(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let spec = env.spec(&["httpd", "-f", "-p", "9000", "-h", "/www"]);
    let t0 = Instant::now();
    let inst = env.sandbox.start(spec).await.unwrap();
    let started = t0.elapsed();
    let first = inst
        .wait_listening(9000, Duration::from_secs(10))
        .await
        .unwrap();
    let listening = t0.elapsed();
    drop(first);
    let timings = inst.timings();
    println!(
        "{:?}: create {:?}, start {:?}, start() total {started:?}, first connect at {listening:?}",
        runtime, timings.create, timings.start
    );

    let mut stream = inst.connect(9000).await.unwrap();
    assert!(stream.nodelay().unwrap());
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: fn\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.ends_with("hello from the top layer\n"),
        "{response}"
    );

    // Nothing else listens in the instance's netns: the host's ports are not there.
    let other = inst.connect(9001).await.unwrap_err();
    assert_eq!(other.kind(), std::io::ErrorKind::ConnectionRefused);

    let pid = inst.pid();
    let id = inst.id().to_owned();
    let t = Instant::now();
    let report = inst.stop(Duration::from_millis(200)).await;
    println!("{runtime:?}: stop {:?}", t.elapsed());
    assert!(
        report.cleanup_errors.is_empty(),
        "{:?}",
        report.cleanup_errors
    );
    assert!(report.exit.is_some());
    assert!(report.memory_peak_bytes.unwrap_or(0) > 0, "{report:?}");
    // Idempotent.
    let again = inst.stop(Duration::from_millis(200)).await;
    assert_eq!(again.exit, report.exit);
    assert_process_gone(pid).await;
    for dir in cgroup_dirs_named(&env.parent) {
        assert!(!dir.join(&id).exists(), "{}", dir.join(&id).display());
    }
    env.finish().await;
}

/// A port of `listen` is bound inside the instance before its process runs: a process that
/// connects as its very first act reaches Wharf's listener (the Lambda Runtime API's case).
async fn listeners_are_there_before_the_process(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let mut spec = env.spec(&["sh", "-c", "echo first-act | nc 127.0.0.1 9001"]);
    spec.listen = vec![9001];
    let inst = env.sandbox.start(spec).await.unwrap();
    let listener = inst.take_listener(9001).expect("the listener asked for");
    assert!(inst.take_listener(9001).is_none(), "taken once");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the process connected")
        .unwrap();
    // Busybox's nc keeps the connection until the other side closes it: read the line, close.
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut got))
        .await
        .expect("the line came")
        .unwrap();
    assert_eq!(&got, b"first-act\n");
    drop(conn);
    let exit = tokio::time::timeout(Duration::from_secs(10), inst.exited())
        .await
        .expect("nc ended once the connection closed");
    assert_eq!(exit, ExitInfo::Exited(0), "nc connected at its first try");
    drop(listener);
    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    env.finish().await;
}

async fn user_env_and_cwd(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "id; echo \"FOO=$FOO HOME=$HOME\"; pwd; echo written > /tmp/f && cat /tmp/f; hostname",
    ]);
    spec.hostname = String::new();
    spec.user = User::Named("app:staff".into());
    spec.env = vec!["FOO=bar baz".into()];
    spec.cwd = "/www".into();
    let id = spec.id.clone();
    let inst = env.sandbox.start(spec).await.unwrap();
    assert_eq!(inst.exited().await, ExitInfo::Exited(0));
    let report = inst.stop(Duration::ZERO).await;
    assert_eq!(report.exit, Some(ExitInfo::Exited(0)));
    let out = env.lines.of(Stream::Stdout);
    assert!(out[0].starts_with("uid=1003(app) gid=50(staff)"), "{out:?}");
    assert_eq!(out[1], "FOO=bar baz HOME=/home/app");
    assert_eq!(out[2], "/www");
    assert_eq!(out[3], "written");
    assert_eq!(out[4], id, "an empty hostname means the instance id");
    assert!(env.lines.0.lock().unwrap().iter().all(|(i, _, _)| *i == id));
    // The writable layer is the tmpfs: the shared layers are untouched.
    assert!(!env.layers[0].join("tmp/f").exists());
    env.finish().await;
}

async fn limits_in_the_cgroup(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let mut spec = env.spec(&["sleep", "30"]);
    spec.memory_limit_bytes = 48 << 20;
    spec.pids_limit = 17;
    let id = spec.id.clone();
    let inst = env.sandbox.start(spec).await.unwrap();
    let cg = Path::new("/sys/fs/cgroup");
    let (limit, pids) = if cg.join("memory").is_dir() {
        (
            cg.join("memory")
                .join(&env.parent)
                .join(&id)
                .join("memory.limit_in_bytes"),
            cg.join("pids").join(&env.parent).join(&id).join("pids.max"),
        )
    } else {
        (
            cg.join(&env.parent).join(&id).join("memory.max"),
            cg.join(&env.parent).join(&id).join("pids.max"),
        )
    };
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap().trim(),
        (48u64 << 20).to_string()
    );
    assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), "17");
    // The CPU share follows the memory limit: 1024 per GiB, so 48 for 48 MiB (v2: the
    // runtime's conversion of 48 shares to a weight, 1 + (48 - 2) * 9999 / 262142 = 2).
    let (cpu, want) = if cg.join("cpu").is_dir() {
        (
            cg.join("cpu")
                .join(&env.parent)
                .join(&id)
                .join("cpu.shares"),
            "48",
        )
    } else {
        (cg.join(&env.parent).join(&id).join("cpu.weight"), "2")
    };
    assert_eq!(std::fs::read_to_string(&cpu).unwrap().trim(), want);
    assert!(inst.memory_peak_bytes().is_some());
    // The cheap per-call read (a kept file, re-read) sees the same counter, again and again.
    let first = inst.memory_peak_now().expect("a peak");
    assert!(first > 0 && first <= 48 << 20, "{first}");
    assert!(inst.memory_peak_now().unwrap() >= first);
    assert!(!inst.oom_killed());
    // `runtime start` returns before the init has exec'd: until then it is the runtime's own
    // init (runc's, in Go, dies of SIGTERM with exit code 2). Wait for sleep itself.
    let end = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{}/comm", inst.pid())).unwrap_or_default()
        != "sleep\n"
    {
        assert!(Instant::now() < end, "sleep never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // sleep as pid 1 has no SIGTERM handler: the grace runs out and SIGKILL ends it.
    let t = Instant::now();
    let report = inst.stop(Duration::from_millis(100)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(report.exit, Some(ExitInfo::Signaled(libc::SIGKILL)));
    assert!(!report.oom_killed);
    assert!(report.memory_peak_bytes.is_some());
    assert!(!limit.exists());
    env.finish().await;
}

/// The writable layer is tmpfs, charged to the instance's memory cgroup: filling it past the
/// memory limit gets a process OOM-killed, and the stop report says so.
async fn oom_kill_is_reported(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/big bs=1M count=64 2>/dev/null; echo dd-status=$?",
    ]);
    spec.memory_limit_bytes = 16 << 20;
    spec.writable_layer_bytes = 128 << 20;
    let inst = env.sandbox.start(spec).await.unwrap();
    let exit = inst.exited().await;
    let report = inst.stop(Duration::ZERO).await;
    println!(
        "{runtime:?}: {exit:?} {report:?} {:?}",
        env.lines.of(Stream::Stdout)
    );
    assert!(report.oom_killed, "{report:?}");
    let peak = report.memory_peak_bytes.unwrap();
    assert!(peak <= 16 << 20 && peak > 8 << 20, "peak {peak}");
    env.finish().await;
}

async fn pid_namespace_is_private(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let spec = env.spec(&["sh", "-c", "echo $$; ls -d /proc/[0-9]*; ps -o pid | wc -l"]);
    let inst = env.sandbox.start(spec).await.unwrap();
    inst.exited().await;
    inst.stop(Duration::ZERO).await;
    let out = env.lines.of(Stream::Stdout);
    assert_eq!(out[0], "1", "the init is pid 1: {out:?}");
    // sh and the ls it runs; no host process.
    let procs: Vec<_> = out.iter().filter(|l| l.starts_with("/proc/")).collect();
    assert!(procs.len() <= 2, "{out:?}");
    assert!(procs.contains(&&"/proc/1".to_string()), "{out:?}");
    let host_pid = format!("/proc/{}", std::process::id());
    assert!(!out.contains(&host_pid), "{out:?}");
    env.finish().await;
}

async fn exit_before_listening(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let inst = env
        .sandbox
        .start(env.spec(&["sh", "-c", "echo bye; exit 3"]))
        .await
        .unwrap();
    let t = Instant::now();
    let err = inst
        .wait_listening(9000, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotListening::Exited(ExitInfo::Exited(3))),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(inst.exit_status(), Some(ExitInfo::Exited(3)));
    inst.stop(Duration::from_secs(1)).await;
    assert!(inst.recent_output().contains("bye"));
    env.finish().await;
}

async fn deadline_when_nothing_listens(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let inst = env.sandbox.start(env.spec(&["sleep", "30"])).await.unwrap();
    let t = Instant::now();
    let err = inst
        .wait_listening(9000, Duration::from_millis(150))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, NotListening::Deadline), "{err:?}");
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    inst.stop(Duration::ZERO).await;
    env.finish().await;
}

async fn stdout_and_stderr(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let inst = env
        .sandbox
        .start(env.spec(&[
            "sh",
            "-c",
            "echo out-1; echo err-1 >&2; echo out-2; printf 'no newline' >&2",
        ]))
        .await
        .unwrap();
    inst.exited().await;
    inst.stop(Duration::ZERO).await;
    assert_eq!(env.lines.of(Stream::Stdout), ["out-1", "out-2"]);
    assert_eq!(env.lines.of(Stream::Stderr), ["err-1", "no newline"]);
    let recent = inst.recent_output();
    assert!(
        recent.contains("out-1") && recent.contains("err-1"),
        "{recent}"
    );
    env.finish().await;
}

async fn runtime_errors_are_reported(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let spec = env.spec(&["/no/such/binary"]);
    let id = spec.id.clone();
    let err = env.sandbox.start(spec).await.unwrap_err();
    match &err {
        StartError::Runtime {
            id: failed,
            verb,
            message,
            ..
        } => {
            assert_eq!(failed, &id);
            assert!(*verb == "create" || *verb == "start", "{err}");
            assert!(message.contains("/no/such/binary"), "{message}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // Undone: no bundle, no mount, no cgroup.
    assert!(!env.state_dir().join("instances").join(&id).exists());
    assert_no_mounts_under(&env.state_dir());
    for dir in cgroup_dirs_named(&env.parent) {
        assert!(!dir.join(&id).exists());
    }
    env.finish().await;
}

async fn unknown_user(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let mut spec = env.spec(&["true"]);
    spec.user = User::Named("ghost".into());
    let err = env.sandbox.start(spec).await.unwrap_err();
    assert!(matches!(err, StartError::User { .. }), "{err}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("user \"ghost\" not found"), "{chain}");
    env.finish().await;
}

/// A daemon killed with instances running: a new sandbox on the same state directory and
/// cgroup parent recovers everything.
async fn crash_recovery(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let a = env.sandbox.start(env.spec(&["sleep", "60"])).await.unwrap();
    let b = env
        .sandbox
        .start(env.spec(&["httpd", "-f", "-p", "9000"]))
        .await
        .unwrap();
    let pids = [a.pid(), b.pid()];
    // The "crash": no stop, no shutdown.
    drop(a);
    drop(b);
    let Env {
        guard,
        tmp,
        sandbox,
        parent,
        layers,
        lines,
    } = env;
    drop(sandbox);

    // The env's own bridge: recovery must never touch another daemon's (or the default) one.
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: tmp.path().join("state"),
        cgroup_parent: parent.clone(),
        runtime,
        bridge: guard.bridge.clone(),
    })
    .unwrap();
    let report = sandbox.recover().await.unwrap();
    assert_eq!(report.instances_removed, 2, "{report:?}");
    assert_eq!(report.containers_deleted, 2, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    for pid in pids {
        assert_process_gone(pid).await;
    }
    // A second recovery finds nothing.
    let again = sandbox.recover().await.unwrap();
    assert_eq!(again.instances_removed, 0, "{again:?}");
    let env = Env {
        guard,
        tmp,
        sandbox,
        parent,
        layers,
        lines,
    };
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused() {
    if !can_run() {
        return;
    }
    let env = Env::new(RuntimePreference::Runc);
    let mut bad_id = env.spec(&["true"]);
    bad_id.id = "../escape".into();
    let mut no_layers = env.spec(&["true"]);
    no_layers.layers.clear();
    let mut no_args = env.spec(&[]);
    no_args.args.clear();
    let mut unlimited = env.spec(&["true"]);
    unlimited.writable_layer_bytes = 0;
    for spec in [bad_id, no_layers, no_args, unlimited] {
        let err = env.sandbox.start(spec).await.unwrap_err();
        assert!(matches!(err, StartError::InvalidSpec { .. }), "{err}");
    }
    // The same id twice.
    let spec = env.spec(&["sleep", "5"]);
    let mut twin = env.spec(&["sleep", "5"]);
    twin.id = spec.id.clone();
    let first = env.sandbox.start(spec).await.unwrap();
    let err = env.sandbox.start(twin).await.unwrap_err();
    assert!(matches!(err, StartError::AlreadyExists { .. }), "{err}");
    first.stop(Duration::ZERO).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_a_working_runtime() {
    if !can_run() {
        return;
    }
    let env = Env::new(RuntimePreference::Auto);
    let info = env.sandbox.runtime().clone();
    assert!(!info.note.is_empty());
    assert!(info.path.exists());
    // On this kind of host crun works in a private mount namespace; elsewhere runc is fine.
    if info.kind == RuntimeKind::Crun && Path::new("/sys/fs/cgroup/unified").exists() {
        assert!(
            info.note.contains("private mount namespace"),
            "{}",
            info.note
        );
    }
    let inst = env
        .sandbox
        .start(env.spec(&["httpd", "-f", "-p", "9000", "-h", "/www"]))
        .await
        .unwrap();
    inst.wait_listening(9000, Duration::from_secs(10))
        .await
        .unwrap();
    inst.stop(Duration::ZERO).await;
    env.finish().await;
}
