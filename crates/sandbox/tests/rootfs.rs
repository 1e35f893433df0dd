//! The instance's file system, with crun and with runc: the writable layer and `/tmp`, a
//! read-only root, host bind mounts, and the no-root rule.
//!
//! Every test runs once per runtime, uses its own state directory and cgroup parent, stops what
//! it started and checks that nothing is left (`Env::finish`); the host directories a test
//! mounts in live in its tempdir.

#[macro_use]
mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{
    Env, HostTmpfs, add_applets, assert_no_mounts_under, busybox_layers_with_tmp,
    cgroup_dirs_named, wait_for_line,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_sandbox::{
    BindMount, ExitInfo, InstanceSpec, MountError, RuntimePreference, StartError, Stream, User,
};

both_runtimes!(
    tmp_is_writable_whatever_the_image_has,
    full_writable_layer_is_enospc,
    read_only_root,
    bind_mounts,
    refused_mounts_leave_nothing,
    forbid_root,
);

const APP: User = User::Id {
    uid: 1003,
    gid: 1003,
};

/// What a script printed and how it ended.
struct Run {
    exit: ExitInfo,
    out: Vec<String>,
    err: Vec<String>,
}

/// Start `spec`, wait for its end, stop it; the lines it printed (then cleared).
async fn run(env: &Env, spec: InstanceSpec) -> Run {
    let inst = env.sandbox.start(spec).await.unwrap();
    let exit = inst.exited().await;
    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    let run = Run {
        exit,
        out: env.lines.of(Stream::Stdout),
        err: env.lines.of(Stream::Stderr),
    };
    env.lines.0.lock().unwrap().clear();
    println!("stdout {:?}\nstderr {:?}", run.out, run.err);
    run
}

fn has_line(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l == want)
}

/// `/tmp` is the writable layer's, for a non-root uid without a passwd entry (so `HOME=/`),
/// whether the image has no `/tmp`, a root-only `/tmp`, or a read-only root; what is written
/// there lives on the instance's tmpfs, not in the shared layers.
async fn tmp_is_writable_whatever_the_image_has(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let no_tmp = busybox_layers_with_tmp(&env.tmp.path().join("no-tmp"), None);
    let root_only_tmp = busybox_layers_with_tmp(&env.tmp.path().join("tmp-0755"), Some(0o755));
    for (what, layers, read_only) in [
        ("no /tmp", &no_tmp, false),
        ("a 0755 /tmp", &root_only_tmp, false),
        ("no /tmp, read-only root", &no_tmp, true),
        ("a 1777 /tmp, read-only root", &env.layers, true),
    ] {
        println!("{runtime:?}: image with {what}");
        let mut spec = env.spec(&[
            "sh",
            "-c",
            "id; echo HOME=$HOME; cd \"$HOME\" && pwd; grep '^Groups:' /proc/self/status; \
             ls -ld /tmp; echo hello > /tmp/f && cat /tmp/f && echo written; exec sleep 30",
        ]);
        spec.layers = layers.clone();
        spec.read_only_rootfs = read_only;
        spec.user = User::Id {
            uid: 4242,
            gid: 4242,
        };
        let id = spec.id.clone();
        let inst = env.sandbox.start(spec).await.unwrap();
        wait_for_line(&env.lines, "written").await;
        // On the instance's tmpfs, not in any layer.
        let on_host = env.state_dir().join("instances").join(&id).join("rw/tmp/f");
        assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "hello\n");
        assert_eq!(std::fs::metadata(&on_host).unwrap().uid(), 4242);
        for layer in layers {
            assert!(!layer.join("tmp/f").exists(), "{}", layer.display());
        }
        let report = inst.stop(Duration::ZERO).await;
        assert!(report.cleanup_errors.is_empty(), "{report:?}");
        let out = env.lines.of(Stream::Stdout);
        let err = env.lines.of(Stream::Stderr);
        env.lines.0.lock().unwrap().clear();
        assert!(err.is_empty(), "{what}: {err:?}");
        assert_eq!(out[0], "uid=4242 gid=4242", "{what}: {out:?}");
        assert_eq!(out[1], "HOME=/", "{what}");
        assert_eq!(out[2], "/", "{what}: HOME exists");
        // No supplementary group.
        assert_eq!(out[3].trim(), "Groups:", "{what}: {out:?}");
        assert!(out[4].starts_with("drwxrwxrwt "), "{what}: {out:?}");
        assert_eq!(out[5], "hello", "{what}");
    }
    env.finish().await;
}

/// An 8 MiB writable layer under a 64 MiB memory limit: filling it gives `ENOSPC` inside, to
/// `/tmp` and to the image's files alike (one size limit), and nothing else happens: the
/// shell goes on, a server in the instance keeps answering, no OOM kill.
async fn full_writable_layer_is_enospc(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    add_applets(&env.layers[0], &["rm"]);
    let mut spec = env.spec(&[
        "sh",
        "-c",
        "httpd -p 9000 -h /www; \
         dd if=/dev/zero of=/tmp/f bs=1M count=64; echo dd=$?; \
         echo more >> /etc/passwd; echo copy-up=$?; \
         cat /www/index.html; echo filled; exec sleep 30",
    ]);
    spec.writable_layer_bytes = 8 << 20;
    spec.memory_limit_bytes = 64 << 20;
    let inst = env.sandbox.start(spec).await.unwrap();
    wait_for_line(&env.lines, "filled").await;

    // The server, started before the disk filled, still answers.
    let mut stream = inst.connect(9000).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: fn\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(!inst.oom_killed());
    let peak = inst.memory_peak_now().unwrap();

    let report = inst.stop(Duration::ZERO).await;
    assert!(report.cleanup_errors.is_empty(), "{report:?}");
    assert!(!report.oom_killed, "{report:?}");
    let out = env.lines.of(Stream::Stdout);
    let err = env.lines.of(Stream::Stderr);
    println!("{runtime:?}: peak {peak}, stdout {out:?}, stderr {err:?}");
    assert!(
        err.iter()
            .any(|l| l.contains("/tmp/f") && l.contains("No space left on device")),
        "{err:?}"
    );
    assert!(has_line(&out, "dd=1"), "{out:?}");
    // The image's files share the limit: a copy-up into the full layer fails too.
    assert!(
        err.iter()
            .any(|l| l.contains("/etc/passwd") && l.contains("No space left on device")),
        "{err:?}"
    );
    assert!(has_line(&out, "copy-up=1"), "{out:?}");
    // A later command runs.
    assert!(has_line(&out, "hello from the top layer"), "{out:?}");
    // The layer's pages are the instance's memory.
    assert!(peak >= 8 << 20, "peak {peak}");
    env.finish().await;
}

/// `read_only_rootfs`: the image's files and `/` give `EROFS`, `/tmp` and a read-write bind
/// mount stay writable.
async fn read_only_root(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let out_dir = env.tmp.path().join("host-out");
    std::fs::create_dir(&out_dir).unwrap();
    for (user, uid) in [(APP, 1003), (User::Id { uid: 0, gid: 0 }, 0)] {
        // The instance's root has no capabilities: the directory must be its own.
        std::os::unix::fs::chown(&out_dir, Some(uid), Some(uid)).unwrap();
        let mut spec = env.spec(&[
            "sh",
            "-c",
            "echo x > /etc/x; echo etc=$?; echo x > /x; echo root=$?; \
             echo x >> /etc/passwd; echo passwd=$?; \
             echo ok > /tmp/ok && cat /tmp/ok; \
             echo from-instance > /out/f && cat /out/f; \
             echo shm > /dev/shm/s && cat /dev/shm/s",
        ]);
        spec.user = user.clone();
        spec.read_only_rootfs = true;
        spec.mounts = vec![BindMount {
            source: out_dir.clone(),
            target: "/out".into(),
            read_only: false,
        }];
        let r = run(&env, spec).await;
        assert_eq!(r.exit, ExitInfo::Exited(0), "{user:?}");
        // Writing an existing file of root's is refused to uid 1003 by its mode first.
        let mut refused = vec![("/etc/x", "etc=1"), ("/x", "root=1")];
        if user == (User::Id { uid: 0, gid: 0 }) {
            refused.push(("/etc/passwd", "passwd=1"));
        }
        for (path, status) in refused {
            assert!(
                r.err
                    .iter()
                    .any(|l| l.contains(path) && l.contains("Read-only file system")),
                "{user:?} {path}: {:?}",
                r.err
            );
            assert!(has_line(&r.out, status), "{user:?}: {:?}", r.out);
        }
        assert!(has_line(&r.out, "ok"), "{user:?}: {:?}", r.out);
        assert!(has_line(&r.out, "from-instance"), "{user:?}: {:?}", r.out);
        assert!(has_line(&r.out, "shm"), "{user:?}: {:?}", r.out);
        assert_eq!(
            std::fs::read_to_string(out_dir.join("f")).unwrap(),
            "from-instance\n"
        );
        std::fs::remove_file(out_dir.join("f")).unwrap();
    }
    // The image is untouched.
    assert!(!env.layers[0].join("etc/x").exists());
    env.finish().await;
}

/// The fields of the `/proc/self/mountinfo` line whose mount point is `target`: (mount options,
/// optional fields).
fn mountinfo_of(lines: &[String], target: &str) -> (String, Vec<String>) {
    let line = lines
        .iter()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("{target} not mounted: {lines:?}"));
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-").unwrap();
    (
        fields[5].to_owned(),
        fields[6..dash].iter().map(|s| s.to_string()).collect(),
    )
}

/// Host paths mounted in: read-only (readable, writes EROFS, the host file unchanged),
/// read-write (the write appears on the host), a single file, one below `/tmp`; all
/// `nosuid,nodev` and private; a mount below the source on the host does not come along.
async fn bind_mounts(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let host = env.tmp.path().join("host");
    let data = host.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("data.txt"), "host data\n").unwrap();
    std::fs::write(data.join("sub/under"), "under the sub-mount\n").unwrap();
    // A mount below the source: a non-recursive bind leaves it out, so the instance sees the
    // directory beneath it.
    let sub_mount = HostTmpfs::mount(&data.join("sub"));
    std::fs::write(data.join("sub/secret"), "on the sub-mount\n").unwrap();
    let out = host.join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(1003), Some(1003)).unwrap();
    let conf = host.join("app.conf");
    std::fs::write(&conf, "key=value\n").unwrap();
    let cache = host.join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::os::unix::fs::chown(&cache, Some(1003), Some(1003)).unwrap();
    // A symlink to the data directory: resolved on the host and used.
    std::os::unix::fs::symlink(&data, host.join("data-link")).unwrap();

    let mut spec = env.spec(&[
        "sh",
        "-c",
        "cat /data/data.txt; echo changed > /data/data.txt; echo ro-write=$?; \
         ls /data/sub; cat /data/sub/secret; echo secret=$?; \
         echo from-instance > /out/f && echo rw-write=$?; \
         cat /etc/app.conf; echo x > /etc/app.conf; echo conf-write=$?; \
         echo cached > /tmp/cache/c && echo cache-write=$?; \
         cat /proc/self/mountinfo",
    ]);
    spec.user = APP;
    // Children listed before their parent: the sandbox orders them.
    spec.mounts = vec![
        BindMount {
            source: cache.clone(),
            target: "/tmp/cache".into(),
            read_only: false,
        },
        BindMount {
            source: host.join("data-link"),
            target: "/data".into(),
            read_only: true,
        },
        BindMount {
            source: out.clone(),
            target: "/out".into(),
            read_only: false,
        },
        BindMount {
            source: conf.clone(),
            target: "/etc/app.conf".into(),
            read_only: true,
        },
    ];
    let r = run(&env, spec).await;
    drop(sub_mount);
    assert_eq!(r.exit, ExitInfo::Exited(0));

    // Read-only.
    assert_eq!(r.out[0], "host data");
    assert!(
        r.err
            .iter()
            .any(|l| l.contains("/data/data.txt") && l.contains("Read-only file system")),
        "{:?}",
        r.err
    );
    assert!(has_line(&r.out, "ro-write=1"));
    assert_eq!(
        std::fs::read_to_string(data.join("data.txt")).unwrap(),
        "host data\n"
    );
    // Not recursive: the file under the sub-mount, not the sub-mount's.
    assert!(has_line(&r.out, "under"), "{:?}", r.out);
    assert!(has_line(&r.out, "secret=1"), "{:?}", r.out);
    assert!(!r.out.iter().any(|l| l.contains("on the sub-mount")));
    // Read-write: the write is on the host, owned by the instance's uid.
    assert!(has_line(&r.out, "rw-write=0"));
    assert_eq!(
        std::fs::read_to_string(out.join("f")).unwrap(),
        "from-instance\n"
    );
    assert_eq!(std::fs::metadata(out.join("f")).unwrap().uid(), 1003);
    // A file, read-only.
    assert!(has_line(&r.out, "key=value"));
    assert!(has_line(&r.out, "conf-write=1"));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "key=value\n");
    // Below /tmp.
    assert!(has_line(&r.out, "cache-write=0"));
    assert_eq!(
        std::fs::read_to_string(cache.join("c")).unwrap(),
        "cached\n"
    );
    // nosuid,nodev, ro/rw as asked, and private (no shared: or master: peer group).
    for (target, rw) in [
        ("/data", "ro"),
        ("/out", "rw"),
        ("/etc/app.conf", "ro"),
        ("/tmp/cache", "rw"),
        ("/tmp", "rw"),
    ] {
        let (options, optional) = mountinfo_of(&r.out, target);
        let options: Vec<&str> = options.split(',').collect();
        assert!(options.contains(&rw), "{target}: {options:?}");
        assert!(options.contains(&"nosuid"), "{target}: {options:?}");
        assert!(options.contains(&"nodev"), "{target}: {options:?}");
        assert!(optional.is_empty(), "{target} propagates: {optional:?}");
    }
    assert!(
        !r.out
            .iter()
            .any(|l| l.split(' ').nth(4) == Some("/data/sub")),
        "the sub-mount came along"
    );
    env.finish().await;
}

/// A mount that breaks a rule, a missing source and a device source fail the start with a
/// clear error, and nothing is left: no bundle, mount or cgroup.
async fn refused_mounts_leave_nothing(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    let cases = [
        (
            env.tmp.path().join("missing"),
            "/data",
            "the source cannot be found on the host: create it or correct the path",
        ),
        (
            "/dev/null".into(),
            "/data",
            "is a character device: only a directory or a regular file can be mounted",
        ),
        (
            env.state_dir().join("instances"),
            "/data",
            "is inside the sandbox's state directory",
        ),
        (
            env.layers[0].clone(),
            "/proc/x",
            "/proc is set up by the runtime",
        ),
    ];
    for (source, target, want) in cases {
        let mut spec = env.spec(&["true"]);
        spec.mounts = vec![BindMount {
            source: source.clone(),
            target: target.into(),
            read_only: true,
        }];
        let id = spec.id.clone();
        let err = env.sandbox.start(spec).await.unwrap_err();
        let StartError::Mount {
            id: failed,
            source: mount_err,
        } = &err
        else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(failed, &id);
        let text = mount_err.to_string();
        println!("{text}");
        assert!(
            text.starts_with(&format!("bind mount {} on {target}: ", source.display())),
            "{text}"
        );
        assert!(text.contains(want), "{text}");
        assert_eq!(
            err.to_string(),
            format!("the bind mounts of instance {id} were refused")
        );
        let source_of = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source_of, text);
        assert!(!env.state_dir().join("instances").join(&id).exists());
        assert_no_mounts_under(&env.state_dir());
        for dir in cgroup_dirs_named(&env.parent) {
            assert!(!dir.join(&id).exists());
        }
    }
    // Two mounts on one target.
    let mut spec = env.spec(&["true"]);
    spec.mounts = vec![
        BindMount {
            source: env.layers[0].clone(),
            target: "/data".into(),
            read_only: true,
        },
        BindMount {
            source: env.layers[1].clone(),
            target: "/data".into(),
            read_only: true,
        },
    ];
    let err = env.sandbox.start(spec).await.unwrap_err();
    assert!(
        matches!(&err, StartError::Mount { source, .. }
            if matches!(**source, MountError::DuplicateTarget { .. })),
        "{err}"
    );
    env.finish().await;
}

/// `forbid_root`: uid 0, given or from the image's `USER`, is refused with a message that says
/// which and what to do, after undoing the mounts; a non-root uid runs.
async fn forbid_root(runtime: RuntimePreference) {
    let env = Env::new(runtime);
    for (user, how) in [
        (User::Id { uid: 0, gid: 0 }, "uid 0 and gid 0 were given"),
        (
            User::Named("root".into()),
            "the image's USER \"root\" is uid 0",
        ),
        (
            User::Named("0:50".into()),
            "the image's USER \"0:50\" is uid 0",
        ),
        (
            User::Named(String::new()),
            "the image sets no USER, which means root",
        ),
    ] {
        let mut spec = env.spec(&["true"]);
        spec.forbid_root = true;
        spec.user = user.clone();
        let id = spec.id.clone();
        let err = env.sandbox.start(spec).await.unwrap_err();
        assert!(
            matches!(&err, StartError::RootForbidden { id: i, user: u } if *i == id && *u == user),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "instance {id} would run as root ({how}), which is forbidden here: set uid/gid \
                 to a non-root user"
            )
        );
        assert!(!env.state_dir().join("instances").join(&id).exists());
        assert_no_mounts_under(&env.state_dir());
    }
    for user in [APP, User::Named("app".into())] {
        let mut spec = env.spec(&["sh", "-c", "id -u; grep '^Groups:' /proc/self/status"]);
        spec.forbid_root = true;
        spec.user = user.clone();
        let r = run(&env, spec).await;
        assert_eq!(r.exit, ExitInfo::Exited(0), "{user:?}");
        assert_eq!(r.out[0], "1003", "{user:?}");
        assert_eq!(r.out[1].trim(), "Groups:", "{user:?}");
    }
    env.finish().await;
}

#[test]
fn validation_is_public() {
    // What the API calls before storing a function: no host involved.
    let m = BindMount {
        source: "/srv/models".into(),
        target: "/models".into(),
        read_only: true,
    };
    wharf_sandbox::validate_mount(&m).unwrap();
    wharf_sandbox::validate_mounts(std::slice::from_ref(&m)).unwrap();
    let err = wharf_sandbox::validate_mounts(&[m.clone(), m]).unwrap_err();
    assert!(matches!(err, MountError::DuplicateTarget { .. }), "{err}");
}
