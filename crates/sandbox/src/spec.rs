//! The OCI runtime `config.json` of an instance, with `oci-spec` types.
//!
//! Close to runc's default spec (`runc spec`): the same mounts, masked and read-only paths and
//! device rules, minus the small default capability set (an instance gets **no**
//! capabilities), plus a cgroup namespace, a new network namespace (loopback only), explicit
//! `cgroupsPath` under the Wharf-owned parent, the default seccomp profile (`seccomp.rs`),
//! memory (+swap, so swap cannot extend it) and pids limits, a CPU share proportional to the
//! memory limit ([`cpu_shares`]), and `RLIMIT_NOFILE` clamped to this host's hard limit: the runtime cannot raise it
//! above that without `CAP_SYS_RESOURCE`, and fails with "setrlimit … operation not permitted".
//!
//! After runc's mounts come the instance's `/tmp` (a bind of `rw/tmp` on the writable layer,
//! see `rootfs.rs`) and then the host bind mounts, parents before children: the runtime mounts
//! in the order of the list, so `/tmp/cache` needs `/tmp` first and `/data/sub` needs `/data`.
//! Every bind is `bind`, not `rbind` (a mount below the source on the host stays out),
//! `nosuid,nodev` and `private`. Not `rprivate`: crun 1.8 adds the `MS_REC` of `rprivate` to
//! the bind itself, which then brings the source's sub-mounts along (runc does not); for a
//! non-recursive bind, one mount, `private` and `rprivate` mean the same. `root.readonly`
//! makes the runtime remount the root read-only after all mounts; the binds are mounts of
//! their own and keep their `rw`.

use std::path::Path;

use oci_spec::OciSpecError;

use crate::BindMount;
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// `RLIMIT_NOFILE` an instance asks for; clamped to the host's hard limit.
pub(crate) const DEFAULT_NOFILE: u64 = 65_536;

/// CPU share per MiB of memory limit: `cpu.shares` = memory in MiB (1024, the kernel's default
/// weight, per GiB), clamped to the kernel's range. On cgroup v2 the runtime converts shares
/// to `cpu.weight`. No quota: a share only matters under contention, a quota would slow every
/// small function even on an idle host.
pub(crate) fn cpu_shares(memory_limit_bytes: u64) -> Option<u64> {
    (memory_limit_bytes > 0).then(|| (memory_limit_bytes >> 20).clamp(2, 262_144))
}

/// The `PATH` added when the image's environment has none (Docker's default).
pub(crate) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI version we write; both runc 1.1 and crun 1.8 accept it.
const OCI_VERSION: &str = "1.0.2";

/// runc's default `maskedPaths`.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// runc's default `readonlyPaths`.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything that varies between instances.
#[derive(Clone, Debug)]
pub(crate) struct SpecParams<'a> {
    pub args: &'a [String],
    /// Final environment (HOME and PATH already added).
    pub env: Vec<String>,
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub hostname: &'a str,
    pub rootfs: &'a Path,
    /// `root.readonly`: the image's files cannot be written.
    pub readonly_root: bool,
    /// The host directory mounted at `/tmp` (`rw/tmp`).
    pub tmp: &'a Path,
    /// Host bind mounts, sources already resolved and checked (`mounts.rs`).
    pub bind_mounts: &'a [BindMount],
    pub cgroups_path: String,
    /// 0 = none.
    pub memory_limit_bytes: u64,
    /// Also limit memory+swap to the memory limit (the host accounts swap).
    pub limit_swap: bool,
    /// <= 0 = none.
    pub pids_limit: i64,
    /// Already clamped.
    pub nofile: u64,
}

/// The environment of an instance: the spec's, plus `HOME` and `PATH` when missing.
pub(crate) fn instance_env(env: &[String], home: &str) -> Vec<String> {
    let mut out = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        out.push(DEFAULT_PATH.to_owned());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        out.push(format!("HOME={home}"));
    }
    out
}

/// Clamp the wanted `RLIMIT_NOFILE` to the host's hard limit (`None` = unlimited).
pub(crate) fn clamp_nofile(wanted: u64, host_hard: Option<u64>) -> u64 {
    host_hard.map_or(wanted, |hard| wanted.min(hard))
}

pub(crate) fn build(p: &SpecParams<'_>) -> Result<Spec, OciSpecError> {
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(Default::default()))
        .set_effective(Some(Default::default()))
        .set_inheritable(Some(Default::default()))
        .set_permitted(Some(Default::default()))
        .set_ambient(Some(Default::default()));

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(p.uid)
                .gid(p.gid)
                .additional_gids(Vec::<u32>::new())
                .build()?,
        )
        .args(p.args.to_vec())
        .env(p.env.clone())
        .cwd(p.cwd)
        .capabilities(caps)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(p.nofile)
                .soft(p.nofile)
                .build()?,
        ])
        .no_new_privileges(true)
        .build()?;

    let mut resources = LinuxResourcesBuilder::default().devices(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]);
    if p.memory_limit_bytes > 0 {
        let limit = i64::try_from(p.memory_limit_bytes).unwrap_or(i64::MAX);
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        if p.limit_swap {
            memory = memory.swap(limit);
        }
        resources = resources.memory(memory.build()?);
    }
    if let Some(shares) = cpu_shares(p.memory_limit_bytes) {
        resources = resources.cpu(LinuxCpuBuilder::default().shares(shares).build()?);
    }
    if p.pids_limit > 0 {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p.pids_limit).build()?);
    }

    let linux = LinuxBuilder::default()
        .resources(resources.build()?)
        .cgroups_path(p.cgroups_path.clone())
        .namespaces(namespaces()?)
        .seccomp(crate::seccomp::default_profile()?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()?;

    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            RootBuilder::default()
                .path(p.rootfs)
                .readonly(p.readonly_root)
                .build()?,
        )
        .process(process)
        .mounts(mounts(p.tmp, p.bind_mounts)?)
        .linux(linux)
        .build()?;
    // The builder starts from `Spec::default()`, whose hostname is "youki".
    spec.set_hostname((!p.hostname.is_empty()).then(|| p.hostname.to_owned()));
    Ok(spec)
}

/// Bridge mode: join the network namespace Wharf prepared (`path`, e.g. `/proc/<wharf
/// pid>/fd/<n>`) instead of creating one. The runtime then leaves its interfaces alone (it
/// brings up `lo` only in a namespace it creates), which is why the preparer does it.
pub(crate) fn join_network_namespace(spec: &mut Spec, path: &Path) {
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .and_then(|linux| linux.namespaces_mut().as_mut());
    for ns in namespaces.into_iter().flatten() {
        if ns.typ() == LinuxNamespaceType::Network {
            ns.set_path(Some(path.to_owned()));
        }
    }
}

/// Bridge mode: the host's `resolv.conf` (`host_file`) read-only at `/etc/resolv.conf`.
pub(crate) fn mount_resolv_conf(spec: &mut Spec, host_file: &Path) -> Result<(), OciSpecError> {
    let mount = MountBuilder::default()
        .destination("/etc/resolv.conf")
        .typ("bind")
        .source(host_file)
        .options(
            ["bind", "ro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        )
        .build()?;
    spec.mounts_mut().get_or_insert_with(Vec::new).push(mount);
    Ok(())
}

fn namespaces() -> Result<Vec<LinuxNamespace>, OciSpecError> {
    [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect()
}

/// A non-recursive, private, `nosuid,nodev` bind of `source` at `dest` (`private`, not
/// `rprivate`: see the module docs).
fn bind(source: &Path, dest: &str, read_only: bool) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(
            [
                "bind",
                if read_only { "ro" } else { "rw" },
                "nosuid",
                "nodev",
                "private",
            ]
            .map(String::from)
            .to_vec(),
        )
        .build()
}

/// runc's default mounts, then `/tmp`, then the bind mounts with parents before children
/// (a stable sort by depth keeps the caller's order otherwise).
fn mounts(tmp: &Path, binds: &[BindMount]) -> Result<Vec<Mount>, OciSpecError> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        let mut b = MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source);
        if !options.is_empty() {
            b = b.options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        b.build()
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &[])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    mounts.push(bind(tmp, "/tmp", false)?);
    let mut binds: Vec<&BindMount> = binds.iter().collect();
    binds.sort_by_key(|m| Path::new(&m.target).components().count());
    for m in binds {
        mounts.push(bind(&m.source, &m.target, m.read_only)?);
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(args: &'a [String], rootfs: &'a Path) -> SpecParams<'a> {
        SpecParams {
            args,
            env: instance_env(&["FOO=bar".into()], "/home/app"),
            cwd: "/srv",
            uid: 1003,
            gid: 1003,
            hostname: "fn-hello",
            rootfs,
            readonly_root: false,
            tmp: Path::new("/data/instances/i1/rw/tmp"),
            bind_mounts: &[],
            cgroups_path: "/wharf/i1".into(),
            memory_limit_bytes: 128 << 20,
            limit_swap: true,
            pids_limit: 64,
            nofile: clamp_nofile(DEFAULT_NOFILE, Some(20_000)),
        }
    }

    #[test]
    fn config_json_snapshot() {
        let args = vec!["/bin/httpd".to_string(), "-f".into()];
        let spec = build(&params(&args, Path::new("/data/instances/i1/rootfs"))).unwrap();
        insta::assert_json_snapshot!(spec);
    }

    #[test]
    fn fields() {
        let args = vec!["/bin/app".to_string()];
        let rootfs = Path::new("/r");
        let spec = build(&params(&args, rootfs)).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let process = &json["process"];
        assert_eq!(process["terminal"], false);
        assert_eq!(process["noNewPrivileges"], true);
        assert_eq!(process["user"]["uid"], 1003);
        assert_eq!(process["user"]["additionalGids"], serde_json::json!([]));
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(process["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert_eq!(process["rlimits"][0]["hard"], 20_000);
        assert_eq!(process["cwd"], "/srv");
        let env = process["env"].as_array().unwrap();
        assert!(env.contains(&"HOME=/home/app".into()));
        assert!(env.contains(&DEFAULT_PATH.into()));
        let linux = &json["linux"];
        assert_eq!(linux["cgroupsPath"], "/wharf/i1");
        assert_eq!(linux["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(linux["resources"]["memory"]["swap"], 128 << 20);
        assert_eq!(linux["resources"]["pids"]["limit"], 64);
        assert_eq!(linux["resources"]["cpu"]["shares"], 128);
        let ns: Vec<_> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert!(n.get("path").is_none(), "new namespaces only: {n}");
                n["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts", "network", "cgroup"]);
        assert_eq!(linux["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(linux["seccomp"]["syscalls"].as_array().unwrap().len() > 1);
        assert_eq!(json["hostname"], "fn-hello");
        assert_eq!(json["root"]["path"], "/r");
    }

    fn mount_list(json: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
        json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let options = m["options"]
                    .as_array()
                    .map(|o| o.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                (
                    m["destination"].as_str().unwrap().to_owned(),
                    m["source"].as_str().unwrap().to_owned(),
                    options,
                )
            })
            .collect()
    }

    #[test]
    fn tmp_is_always_the_writable_layers() {
        let args = vec!["/bin/app".to_string()];
        let json = serde_json::to_value(build(&params(&args, Path::new("/r"))).unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], false);
        let mounts = mount_list(&json);
        let tmp: Vec<_> = mounts.iter().filter(|m| m.0 == "/tmp").collect();
        assert_eq!(tmp.len(), 1, "{mounts:?}");
        assert_eq!(tmp[0].1, "/data/instances/i1/rw/tmp");
        assert_eq!(tmp[0].2, ["bind", "rw", "nosuid", "nodev", "private"]);
        assert_eq!(mounts.last().unwrap().0, "/tmp", "after runc's mounts");
    }

    #[test]
    fn read_only_root_and_bind_mounts() {
        let args = vec!["/bin/app".to_string()];
        let binds = [
            BindMount {
                source: "/srv/sub".into(),
                target: "/data/sub".into(),
                read_only: false,
            },
            BindMount {
                source: "/srv/cache".into(),
                target: "/tmp/cache".into(),
                read_only: false,
            },
            BindMount {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            },
            BindMount {
                source: "/srv/app.conf".into(),
                target: "/etc/app.conf".into(),
                read_only: true,
            },
        ];
        let mut p = params(&args, Path::new("/data/instances/i1/rootfs"));
        p.readonly_root = true;
        p.bind_mounts = &binds;
        let json = serde_json::to_value(build(&p).unwrap()).unwrap();
        assert_eq!(json["root"]["readonly"], true);
        let mounts = mount_list(&json);
        let order: Vec<_> = mounts.iter().map(|m| m.0.as_str()).collect();
        // runc's seven, /tmp, then parents before children (same depth: as given).
        assert_eq!(
            order[7..],
            ["/tmp", "/data", "/data/sub", "/tmp/cache", "/etc/app.conf"]
        );
        for (dest, source, options) in &mounts[8..] {
            let bind = binds.iter().find(|b| b.target == *dest).unwrap();
            assert_eq!(Path::new(source), bind.source, "{dest}");
            let rw = if bind.read_only { "ro" } else { "rw" };
            // Nothing recursive (no `rbind`, no `rprivate`, which crun makes a recursive bind).
            assert_eq!(
                options,
                &["bind", rw, "nosuid", "nodev", "private"],
                "{dest}"
            );
        }
        insta::assert_json_snapshot!(serde_json::json!({
            "root": json["root"],
            "mounts": json["mounts"].as_array().unwrap()[7..],
        }));
    }

    #[test]
    fn bridge_mode_joins_the_prepared_namespace_and_mounts_resolv_conf() {
        let args = vec!["/bin/app".to_string()];
        let default = build(&params(&args, Path::new("/r"))).unwrap();
        let mut spec = default.clone();
        join_network_namespace(&mut spec, Path::new("/proc/42/fd/17"));
        mount_resolv_conf(&mut spec, Path::new("/etc/resolv.conf")).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        for ns in json["linux"]["namespaces"].as_array().unwrap() {
            match ns["type"].as_str().unwrap() {
                "network" => assert_eq!(ns["path"], "/proc/42/fd/17"),
                _ => assert!(ns.get("path").is_none(), "{ns}"),
            }
        }
        let mounts = json["mounts"].as_array().unwrap();
        let last = mounts.last().unwrap();
        assert_eq!(last["destination"], "/etc/resolv.conf");
        assert_eq!(last["source"], "/etc/resolv.conf");
        assert_eq!(last["type"], "bind");
        assert_eq!(
            last["options"],
            serde_json::json!(["bind", "ro", "nosuid", "nodev", "noexec"])
        );
        // Everything else is the default mode's config.
        let mut rest = json.clone();
        rest["mounts"].as_array_mut().unwrap().pop();
        for ns in rest["linux"]["namespaces"].as_array_mut().unwrap() {
            ns.as_object_mut().unwrap().remove("path");
        }
        assert_eq!(rest, serde_json::to_value(&default).unwrap());
    }

    #[test]
    fn optional_limits() {
        let args = vec!["/bin/app".to_string()];
        let mut p = params(&args, Path::new("/r"));
        p.memory_limit_bytes = 0;
        p.pids_limit = 0;
        p.hostname = "";
        let json = serde_json::to_value(build(&p).unwrap()).unwrap();
        assert!(json["linux"]["resources"].get("memory").is_none());
        assert!(json["linux"]["resources"].get("pids").is_none());
        assert!(json["linux"]["resources"].get("cpu").is_none());
        assert!(json.get("hostname").is_none());

        let mut p = params(&args, Path::new("/r"));
        p.limit_swap = false;
        let json = serde_json::to_value(build(&p).unwrap()).unwrap();
        assert!(json["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn env_defaults_do_not_override() {
        let env = instance_env(&["HOME=/x".into(), "PATH=/bin".into()], "/home/app");
        assert_eq!(env, ["HOME=/x", "PATH=/bin"]);
        assert_eq!(cpu_shares(0), None);
        assert_eq!(cpu_shares(64 << 20), Some(64));
        assert_eq!(cpu_shares(1 << 30), Some(1024));
        assert_eq!(cpu_shares(1 << 20), Some(2));
        assert_eq!(cpu_shares(1 << 40), Some(262_144));
        assert_eq!(clamp_nofile(65_536, None), 65_536);
        assert_eq!(clamp_nofile(65_536, Some(1024)), 1024);
    }
}
