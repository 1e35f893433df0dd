//! The default seccomp profile of an instance: a deny-list.
//!
//! Docker's default profile is an allow-list of ~350 syscalls; Wharf writes the inverse,
//! shorter and easier to review: every syscall is allowed except those that give access to
//! the kernel's most exposed or host-wide interfaces, which fail with `EPERM` (as under
//! Docker). Most of them already fail without capabilities; the filter is the second wall and
//! also closes what needs no capability at all: `unshare`/`clone` into new (user) namespaces,
//! `keyctl`/`add_key` (the session keyring is not namespaced), `bpf`, `perf_event_open`,
//! `userfaultfd`, `io_uring_*`, `ptrace`/`process_vm_*`/`kcmp`.
//!
//! `clone3` fails with `ENOSYS`, not `EPERM`: its flags are in a struct that seccomp cannot
//! look into, and `ENOSYS` makes glibc and musl fall back to `clone`, whose flags are
//! checked (a `clone` with any `CLONE_NEW*` flag fails with `EPERM`).
//!
//! Architectures: the native one and its compat ABIs (x86_64: also x86 and x32, so the same
//! syscall made through `int 0x80` or with the x32 bit set is filtered as well). A syscall
//! from any other ABI is refused by the runtime's bad-architecture action. Names this
//! host's libseccomp does not know are skipped by crun and runc.

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `EPERM`: what a denied syscall returns.
const EPERM: u32 = libc::EPERM as u32;
/// `ENOSYS`: what `clone3` returns, so that libcs fall back to `clone`.
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Syscalls that fail with `EPERM`, whatever their arguments.
pub(crate) const DENIED: &[&str] = &[
    // Kernel keyrings: not namespaced.
    "add_key",
    "keyctl",
    "request_key",
    // Kernel-wide tracing, programs and memory tricks.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    // Other processes' memory.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    // Namespaces (see `clone` below).
    "unshare",
    "setns",
    // Mounts and the root.
    "mount",
    "umount",
    "umount2",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pivot_root",
    "chroot",
    "name_to_handle_at",
    "open_by_handle_at",
    // Kernel modules and kexec.
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "kexec_load",
    "kexec_file_load",
    // The machine.
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "syslog",
    "sethostname",
    "setdomainname",
    "vhangup",
    // Clocks (not namespaced).
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_adjtime",
    // I/O ports and legacy interfaces.
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "afs_syscall",
    "tuxcall",
];

/// The `CLONE_NEW*` flags a `clone` may not carry (each one a rule: the rules are OR-ed,
/// the conditions of one rule AND-ed).
pub(crate) const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The architectures the filter covers on this build's target.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// The profile: allow by default, deny [`DENIED`], `clone` with a namespace flag and
/// `clone3`.
pub(crate) fn default_profile() -> Result<LinuxSeccomp, OciSpecError> {
    let deny = |names: &[&str], errno: u32| -> Result<LinuxSyscall, OciSpecError> {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno)
            .build()
    };
    let mut syscalls = vec![deny(DENIED, EPERM)?, deny(&["clone3"], ENOSYS)?];
    for &flag in CLONE_NAMESPACE_FLAGS {
        // `clone`'s flags are its first argument on x86 and arm (not on s390x, which Wharf
        // does not support). MASKED_EQ: `(arg & value) == value_two`.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(EPERM)
                .args(vec![
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(flag)
                        .value_two(flag)
                        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                        .build()?,
                ])
                .build()?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_json() {
        let json = serde_json::to_value(default_profile().unwrap()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                json["architectures"],
                serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
        }
        let rules = json["syscalls"].as_array().unwrap();
        let first = &rules[0];
        assert_eq!(first["action"], "SCMP_ACT_ERRNO");
        assert_eq!(first["errnoRet"], libc::EPERM);
        let names: Vec<&str> = first["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for must in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "userfaultfd",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
        // Never deny what every process needs.
        for keep in ["clone", "execve", "read", "write", "exit_group", "mmap"] {
            assert!(!names.contains(&keep), "{keep} is denied");
        }
        assert_eq!(rules[1]["names"], serde_json::json!(["clone3"]));
        assert_eq!(rules[1]["errnoRet"], libc::ENOSYS);
        let clone_rules = &rules[2..];
        assert_eq!(clone_rules.len(), 7);
        let mut all = 0u64;
        for rule in clone_rules {
            assert_eq!(rule["names"], serde_json::json!(["clone"]));
            assert_eq!(rule["errnoRet"], libc::EPERM);
            let arg = &rule["args"][0];
            assert_eq!(arg["index"], 0);
            assert_eq!(arg["op"], "SCMP_CMP_MASKED_EQ");
            assert_eq!(arg["value"], arg["valueTwo"]);
            all |= arg["value"].as_u64().unwrap();
        }
        // Docker's mask of the namespace flags (2114060288).
        assert_eq!(all, 0x7E02_0000);
    }
}
