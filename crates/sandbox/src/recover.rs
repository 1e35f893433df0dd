//! Orphan recovery: what a killed daemon left in its state directory.
//!
//! A daemon that dies without stopping its instances leaves running containers (their inits
//! reparented to pid 1 or to the next subreaper), runtime state under `run/<runtime>/`, mounts
//! and bundles under `instances/`, and cgroups under `/<parent>/`. At the next start, before
//! the first instance starts, [`recover`] removes them all, in that order: the processes
//! first (`runtime delete --force` kills and deletes), so that nothing holds the mounts or
//! the cgroups.
//!
//! Both runtimes' roots are swept, since the previous daemon may have chosen the other one.
//!
//! Last, the bridge network (`network::Network::recover`): once the containers are gone, the
//! veths still on the configured bridge, its nftables table and the bridge itself are removed,
//! so the next bridge-mode start sets everything up afresh. (The prepared namespaces the dead
//! daemon held only by fd are gone already: the kernel deleted them, and their veths, when the
//! daemon died.)

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{info, warn};

use crate::cgroup::remove_tree;
use crate::error::SandboxError;
use crate::instance_start::run_runtime;
use crate::rootfs::{self, mounts_under};
use crate::runtime::{Runtime, failure_message};
use crate::sandbox::SandboxInner;
use crate::{RecoveryReport, RuntimeKind};

pub(crate) async fn recover(sb: &Arc<SandboxInner>) -> Result<RecoveryReport, SandboxError> {
    let host = sb.host.as_ref();
    let mut report = RecoveryReport::default();
    let mut instances = BTreeSet::new();

    // 1. Containers, in both runtimes' roots.
    for kind in [RuntimeKind::Crun, RuntimeKind::Runc] {
        let runtime = if kind == sb.runtime.kind {
            sb.runtime.clone()
        } else {
            let root = sb.run_dir.join(kind.name());
            if !host.exists(&root) {
                continue;
            }
            let Some(path) = host.find_program(kind.name()) else {
                report.errors.push(format!(
                    "{} has containers left in {} but is not installed",
                    kind,
                    root.display()
                ));
                continue;
            };
            // The same private mount namespace as the current runtime would use on this host.
            let detach_mount = match kind {
                RuntimeKind::Crun => sb
                    .cgroups
                    .mode()
                    .filter(|m| *m == crate::cgroup::CgroupMode::Hybrid)
                    .and(sb.cgroups.v2_mount().map(|p| p.to_path_buf())),
                RuntimeKind::Runc => None,
            };
            Runtime {
                kind,
                path,
                root,
                detach_mount,
            }
        };
        for id in runtime.containers(host) {
            match run_runtime(&sb.host, runtime.delete_force(&id)).await {
                Ok(out) if out.success => {
                    report.containers_deleted += 1;
                    instances.insert(id);
                }
                Ok(out) => report.errors.push(format!(
                    "{kind} delete --force {id}: {}",
                    failure_message(&out, None)
                )),
                Err(e) => report
                    .errors
                    .push(format!("{kind} delete --force {id}: {e}")),
            }
        }
    }

    // 2. Mounts under instances/, deepest first.
    let mountinfo = host
        .mountinfo()
        .map_err(|source| SandboxError::MountTable { source })?;
    for mount in mounts_under(&mountinfo, &sb.instances_dir) {
        match rootfs::unmount(host, &mount) {
            Ok(()) => report.mounts_removed += 1,
            Err(e) => report
                .errors
                .push(format!("failed to unmount {}: {e}", mount.display())),
        }
    }

    // 3. Bundles.
    match std::fs::read_dir(&sb.instances_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                // Only if nothing is mounted below any more: never delete through a mount.
                let still_mounted = host
                    .mountinfo()
                    .map(|info| !mounts_under(&info, &path).is_empty())
                    .unwrap_or(true);
                if still_mounted {
                    report.errors.push(format!(
                        "{} is still mounted; left in place",
                        path.display()
                    ));
                    continue;
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        instances.insert(entry.file_name().to_string_lossy().into_owned());
                    }
                    Err(e) => report
                        .errors
                        .push(format!("failed to remove {}: {e}", path.display())),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.errors.push(format!(
            "failed to list {}: {e}",
            sb.instances_dir.display()
        )),
    }

    // 4. Empty cgroups under the parent, in every hierarchy.
    for parent in sb.cgroups.parent_dirs(&sb.config.cgroup_parent) {
        for child in host.list_dirs(&parent).unwrap_or_default() {
            let (removed, errors) = remove_tree(host, &parent.join(&child));
            report.cgroups_removed += removed;
            report.errors.extend(errors);
            // The previous daemon's freezer keeper is no instance.
            if removed > 0 && child != crate::sandbox::FREEZER_KEEPER {
                instances.insert(child);
            }
        }
    }

    // 5. The bridge network.
    let network = sb.network.recover(&sb.host).await;
    report.interfaces_removed = network.interfaces_removed;
    report.errors.extend(network.errors);

    report.instances_removed = instances.len();
    for e in &report.errors {
        warn!(error = %e, "recovery left something behind");
    }
    info!(
        instances = report.instances_removed,
        containers = report.containers_deleted,
        mounts = report.mounts_removed,
        cgroups = report.cgroups_removed,
        interfaces = report.interfaces_removed,
        "recovered the state directory"
    );
    Ok(report)
}
