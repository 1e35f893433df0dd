//! From a function revision and its image to the sandbox's instance spec: which program runs,
//! with which environment, in which directory, as whom.
//!
//! The rules, in one place:
//! - **Program**: the function's `command` replaces the image's ENTRYPOINT and `args` its CMD.
//!   As in Kubernetes, a `command` without `args` drops the image's CMD too (a CMD written for
//!   one entrypoint rarely makes sense for another).
//! - **Environment**: the image's, then the contract's, then the function's; a later one wins
//!   for the same name; a job's event variable last. A `lambda` function's `_HANDLER` is the first word of its CMD (or
//!   `args`). (The sandbox adds `PATH` and `HOME` when nobody sets them.)
//! - **Directory**: the function's `working_dir`, else the image's `WorkingDir`, else `/`.
//! - **User**: the function's `uid`/`gid`, else the contract's default, else the image's `USER`,
//!   else root. A `uid` without `gid` runs with `gid = uid`, never with the root group. Where the
//!   contract forbids root (FunctionGraph), an image that would run as uid 0 is refused at start
//!   (the API refuses `uid: 0` at deploy already).
//! - **Files**: the writable layer is `disk_mb` of tmpfs, charged to the memory limit; the root
//!   is read-only when the function (or its contract's default) says so; `/tmp` is always
//!   writable.

use std::sync::Arc;

use wharf_image::Image;
use wharf_sandbox::{EventSink, InstanceSpec, User};

use crate::function::Revision;
use crate::{InvokeError, PoolConfig};

/// The program and its arguments.
pub fn argv(
    command: Option<&[String]>,
    args: Option<&[String]>,
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    let (head, default_tail): (&[String], &[String]) = match command {
        Some(c) => (c, &[]),
        None => (entrypoint, cmd),
    };
    let tail = args.unwrap_or(default_tail);
    head.iter().chain(tail).cloned().collect()
}

/// `K=V` strings: `layers` in order, later layers winning; the first occurrence's position is
/// kept so the image's order is stable.
pub fn merge_env<'a>(layers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in layers {
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

pub fn user(
    uid: Option<u32>,
    gid: Option<u32>,
    contract_default: Option<(u32, u32)>,
    image_user: Option<&str>,
) -> User {
    match (uid, gid) {
        (Some(uid), gid) => User::Id {
            uid,
            gid: gid.unwrap_or(uid),
        },
        (None, Some(gid)) => User::Id { uid: 0, gid },
        (None, None) => match (contract_default, image_user) {
            (Some((uid, gid)), _) => User::Id { uid, gid },
            (None, Some(u)) if !u.trim().is_empty() => User::Named(u.trim().to_string()),
            _ => User::Id { uid: 0, gid: 0 },
        },
    }
}

/// The spec of a new instance `id` of `revision`.
pub(crate) fn build(
    revision: &Revision,
    image: &Image,
    config: &PoolConfig,
    id: &str,
    events: Arc<dyn EventSink>,
    extra_env: &[(String, String)],
) -> Result<InstanceSpec, InvokeError> {
    let spec = &revision.spec;
    let args = argv(
        spec.command.as_deref(),
        spec.args.as_deref(),
        &image.config.entrypoint,
        &image.config.cmd,
    );
    if args.is_empty() {
        return Err(InvokeError::NoCommand {
            name: spec.name.clone(),
            image: spec.image_pinned.clone(),
        });
    }
    let image_env = image
        .config
        .env
        .iter()
        .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), "")));
    let mut contract_env = revision.contract.environment(&revision.context);
    // Lambda's `_HANDLER` is the image's CMD (or the function's `args`): `app.handler` of
    // `ENTRYPOINT ["python", "-m", "awslambdaric"]` + `CMD ["app.handler"]`.
    if revision.contract.kind() == wharf_contract::ContractKind::Lambda
        && let Some(handler) = spec.args.as_deref().unwrap_or(&image.config.cmd).first()
    {
        contract_env.push(("_HANDLER".into(), handler.clone()));
    }
    let env = merge_env(
        image_env
            .chain(contract_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .chain(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .chain(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    );
    let cwd = spec
        .working_dir
        .clone()
        .or_else(|| image.config.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".into());
    Ok(InstanceSpec {
        id: id.to_string(),
        layers: image.layers.clone(),
        args,
        env,
        cwd,
        user: user(
            spec.uid,
            spec.gid,
            revision.contract.default_user(),
            image.config.user.as_deref(),
        ),
        hostname: spec.name.clone(),
        memory_limit_bytes: u64::from(spec.memory_mb) * 1024 * 1024,
        writable_layer_bytes: u64::from(spec.disk_mb) * 1024 * 1024,
        pids_limit: config.pids_limit,
        read_only_rootfs: spec.read_only_rootfs,
        forbid_root: !revision.contract.root_allowed(),
        mounts: spec.mounts.clone(),
        network: spec.network,
        listen: if revision.contract.pulls_work() {
            vec![revision.context.port]
        } else {
            Vec::new()
        },
        output: spec.log.clone(),
        events: Some(events),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_follows_the_override_rules() {
        let ep = v(&["/entry"]);
        let cmd = v(&["--serve"]);
        assert_eq!(argv(None, None, &ep, &cmd), v(&["/entry", "--serve"]));
        assert_eq!(
            argv(None, Some(&v(&["--other"])), &ep, &cmd),
            v(&["/entry", "--other"])
        );
        assert_eq!(argv(Some(&v(&["/bin/x"])), None, &ep, &cmd), v(&["/bin/x"]));
        assert_eq!(
            argv(Some(&v(&["/bin/x"])), Some(&v(&["a"])), &ep, &cmd),
            v(&["/bin/x", "a"])
        );
        assert!(argv(None, None, &[], &[]).is_empty());
        assert_eq!(argv(None, None, &[], &cmd), v(&["--serve"]));
    }

    #[test]
    fn later_env_wins_in_the_first_place() {
        let env = merge_env([("A", "image"), ("B", "image"), ("A", "function")]);
        assert_eq!(env, v(&["A=function", "B=image"]));
        let env = merge_env([("PATH", "/x"), ("A", "1=2")]);
        assert_eq!(env, v(&["PATH=/x", "A=1=2"]));
    }

    #[test]
    fn user_precedence() {
        assert_eq!(
            user(Some(5), None, Some((1003, 1003)), Some("app")),
            User::Id { uid: 5, gid: 5 }
        );
        assert_eq!(
            user(None, None, Some((1003, 1003)), Some("app")),
            User::Id {
                uid: 1003,
                gid: 1003
            }
        );
        assert_eq!(
            user(None, None, None, Some("app:staff")),
            User::Named("app:staff".into())
        );
        assert_eq!(
            user(None, None, None, Some("")),
            User::Id { uid: 0, gid: 0 }
        );
        assert_eq!(user(None, None, None, None), User::Id { uid: 0, gid: 0 });
        assert_eq!(user(None, Some(7), None, None), User::Id { uid: 0, gid: 7 });
    }
}
