//! Bridge networking ([`crate::NetworkMode::Bridge`]): outbound access for the instances that
//! ask for it, kept off the cold-start path.
//!
//! The default mode needs nothing from here: the runtime creates a network namespace with
//! loopback only. A bridge-mode instance instead *joins* a namespace Wharf prepared ahead of
//! time (its `config.json` names `/proc/<wharf pid>/fd/<n>`), already wired to the host:
//!
//! ```text
//!  instance netns                 host
//!  ┌──────────────────┐           ┌───────────────────────────────────────────────┐
//!  │ lo  (up)         │           │ wharf0 (bridge, 10.250.0.1/16) ── NAT ── uplinks
//!  │ eth0 10.250.0.7 ─┼── veth ───┼─ wh0afa0007 (port, isolated)                  │
//!  │ default via .1   │           │ nft table inet wharf-wharf0                   │
//!  └──────────────────┘           └───────────────────────────────────────────────┘
//! ```
//!
//! * `bridge`: the host side, once (bridge, forwarding, nftables), and its tear-down;
//! * `prepare`: the dedicated thread that creates namespaces and veths (`unshare`/`setns`
//!   are per thread) and deletes veths;
//! * `pool`: [`pool::POOL_SIZE`] prepared namespaces kept ready, refilled in the background;
//! * `netlink`: the hand-written rtnetlink requests; `subnet`: addresses; `dns`: whether the
//!   host's `resolv.conf` is mounted into instances.
//!
//! Nothing touches the host until the first bridge-mode start or
//! [`crate::Sandbox::prepare_network`]. One daemon per bridge: an abstract unix socket named
//! after the bridge is bound while a sandbox uses (or recovers) it, so that a second daemon
//! configured with the same bridge fails with [`NetworkError::InUse`] instead of deleting the
//! first one's interfaces. Namespaces are held by fds only, never bind-mounted: a daemon that
//! dies leaves no namespace behind that no process uses, and the kernel deletes their veths
//! with them; [`Network::recover`] deletes the rest (the veths of instances that were still
//! running, the table, the bridge).

mod bridge;
mod dns;
mod netlink;
mod pool;
mod prepare;
mod subnet;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

pub use netlink::NetlinkError;
pub(crate) use pool::Slot;

use self::netlink::Rtnl;
use self::pool::Pool;
use self::subnet::Subnet;
use crate::BridgeConfig;
use crate::error::NetworkError;
use crate::host::Host;

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME_BYTES: usize = 15;

/// What recovery did about the network.
#[derive(Debug, Default)]
pub(crate) struct NetworkRecovery {
    /// Veths and the bridge.
    pub interfaces_removed: usize,
    pub errors: Vec<String>,
}

/// The per-sandbox bridge-mode state.
pub(crate) struct Network {
    config: BridgeConfig,
    subnet: Subnet,
    run_dir: PathBuf,
    /// Set up on first use; `None` again after shutdown.
    pool: tokio::sync::Mutex<Option<Arc<Pool>>>,
    /// The slots of running instances, by instance id.
    leases: std::sync::Mutex<HashMap<String, Slot>>,
    /// The bound abstract socket that says this process owns the bridge.
    owner: std::sync::Mutex<Option<OwnedFd>>,
}

fn invalid(reason: String) -> NetworkError {
    NetworkError::InvalidConfig { reason }
}

/// Checks the config's syntax (nothing on the host is looked at).
fn validate(config: &BridgeConfig) -> Result<Subnet, NetworkError> {
    let name = &config.name;
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(invalid(format!(
            "bridge name {name:?} must be 1-{MAX_IFNAME_BYTES} characters of [A-Za-z0-9_.-] (--bridge-name)"
        )));
    }
    Subnet::new(config.subnet, config.prefix_len)
        .map_err(|reason| invalid(format!("bridge subnet: {reason} (--bridge-subnet)")))
}

/// Bind the abstract socket `wharf-bridge/<name>` (abstract sockets live in the network
/// namespace, like the bridge, and vanish with the process that bound them).
fn claim(name: &str) -> Result<OwnedFd, NetworkError> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let err = |source: std::io::Error| NetworkError::Namespace {
        op: "claim the bridge in",
        source,
    };
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let addr = SocketAddrUnix::new_abstract_name(format!("wharf-bridge/{name}").as_bytes())
        .map_err(|e| err(e.into()))?;
    match rustix::net::bind(&fd, &addr) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::ADDRINUSE) => Err(NetworkError::InUse { name: name.into() }),
        Err(e) => Err(err(e.into())),
    }
}

impl Network {
    pub fn new(config: BridgeConfig, run_dir: PathBuf) -> Result<Network, NetworkError> {
        let subnet = validate(&config)?;
        Ok(Network {
            config,
            subnet,
            run_dir,
            pool: tokio::sync::Mutex::new(None),
            leases: std::sync::Mutex::new(HashMap::new()),
            owner: std::sync::Mutex::new(None),
        })
    }

    fn claim(&self) -> Result<(), NetworkError> {
        let mut owner = self.owner.lock().unwrap();
        if owner.is_none() {
            *owner = Some(claim(&self.config.name)?);
        }
        Ok(())
    }

    /// The pool, setting up the host on first use (blocking work, off the async threads).
    async fn pool(&self, host: &Arc<dyn Host>) -> Result<Arc<Pool>, NetworkError> {
        let mut pool = self.pool.lock().await;
        if let Some(p) = pool.as_ref() {
            return Ok(p.clone());
        }
        self.claim()?;
        let (host, name, subnet, run_dir) = (
            host.clone(),
            self.config.name.clone(),
            self.subnet,
            self.run_dir.clone(),
        );
        let started = Instant::now();
        let ready = tokio::task::spawn_blocking(move || -> Result<Arc<Pool>, NetworkError> {
            let mut rtnl = Rtnl::open().map_err(|e| NetworkError::Netlink {
                op: "open a socket for",
                interface: name.clone(),
                source: NetlinkError::from_io(e),
            })?;
            let index = bridge::set_up(host.as_ref(), &mut rtnl, &name, subnet, &run_dir)?;
            let resolv_conf = dns::resolv_conf_for_instances();
            Pool::start(&name, index, subnet, resolv_conf).inspect_err(|_| {
                bridge::tear_down(host.as_ref(), &mut rtnl, &name, &run_dir);
            })
        })
        .await
        .map_err(|_| NetworkError::ThreadStopped)??;
        info!(bridge = %self.config.name, took = ?started.elapsed(), "bridge networking set up");
        *pool = Some(ready.clone());
        Ok(ready)
    }

    /// Set up the host and wait until the pool is full.
    pub async fn prepare(&self, host: &Arc<dyn Host>) -> Result<(), NetworkError> {
        self.pool(host).await?.fill().await
    }

    /// A prepared namespace for one instance, and the `resolv.conf` to mount into it.
    pub async fn take(
        &self,
        host: &Arc<dyn Host>,
    ) -> Result<(Slot, Option<PathBuf>), NetworkError> {
        let pool = self.pool(host).await?;
        let slot = pool.take().await?;
        Ok((slot, pool.resolv_conf.clone()))
    }

    /// The instance `id` runs with `slot` until [`Network::release`].
    pub fn lease(&self, id: &str, slot: Slot) {
        self.leases.lock().unwrap().insert(id.to_owned(), slot);
    }

    /// Delete the veth of instance `id` (if it has one) and free its address.
    pub async fn release(&self, id: &str) -> Result<(), NetworkError> {
        let slot = self.leases.lock().unwrap().remove(id);
        match slot {
            Some(slot) => self.release_slot(slot).await,
            None => Ok(()),
        }
    }

    pub async fn release_slot(&self, slot: Slot) -> Result<(), NetworkError> {
        match slot.pool.upgrade() {
            Some(pool) => pool.remove(slot).await,
            // After shutdown: the bridge is gone, the veth maybe not.
            None => {
                let veth = slot.veth.clone();
                let result = tokio::task::spawn_blocking(move || prepare::remove_veth_now(&veth))
                    .await
                    .unwrap_or(Err(NetworkError::ThreadStopped));
                drop(slot);
                result
            }
        }
    }

    /// Remove the pool's entries, the table and the bridge (if this sandbox set them up).
    pub async fn shutdown(&self, host: &Arc<dyn Host>) -> Vec<NetworkError> {
        let Some(pool) = self.pool.lock().await.take() else {
            return Vec::new();
        };
        let running = self.leases.lock().unwrap().len();
        if running > 0 {
            warn!(
                bridge = %self.config.name,
                running,
                "shutting down the bridge network with instances still running: they lose their network"
            );
        }
        let mut errors = pool.close().await;
        drop(pool);
        let (host, name, run_dir) = (host.clone(), self.config.name.clone(), self.run_dir.clone());
        let torn = tokio::task::spawn_blocking(move || match Rtnl::open() {
            Ok(mut rtnl) => bridge::tear_down(host.as_ref(), &mut rtnl, &name, &run_dir),
            Err(e) => vec![NetworkError::Netlink {
                op: "open a socket for",
                interface: name,
                source: NetlinkError::from_io(e),
            }],
        })
        .await
        .unwrap_or_else(|_| vec![NetworkError::ThreadStopped]);
        errors.extend(torn);
        self.owner.lock().unwrap().take();
        if errors.is_empty() {
            info!(bridge = %self.config.name, "bridge network removed");
        }
        errors
    }

    /// What a killed daemon left: the veths of its running instances (the kernel deleted
    /// the others with their namespaces), the table and the bridge. Not while this sandbox
    /// uses the bridge itself; never a bridge that is not Wharf's or that another live
    /// daemon holds.
    pub async fn recover(&self, host: &Arc<dyn Host>) -> NetworkRecovery {
        if self.pool.lock().await.is_some() {
            return NetworkRecovery::default();
        }
        let (host, name, run_dir) = (host.clone(), self.config.name.clone(), self.run_dir.clone());
        // A failed set-up of ours keeps the claim: then it is ours already.
        let claimed = self.owner.lock().unwrap().is_some();
        let mut report = NetworkRecovery::default();
        let outcome = tokio::task::spawn_blocking(move || -> Result<usize, Vec<NetworkError>> {
            let mut rtnl = Rtnl::open().map_err(|e| {
                vec![NetworkError::Netlink {
                    op: "open a socket for",
                    interface: name.clone(),
                    source: NetlinkError::from_io(e),
                }]
            })?;
            let link = match rtnl.find_link(&name) {
                Ok(Some(link)) => link,
                Ok(None) => return Ok(0),
                Err(source) => {
                    return Err(vec![NetworkError::Netlink {
                        op: "look up",
                        interface: name.clone(),
                        source,
                    }]);
                }
            };
            bridge::check_ours(&link).map_err(|e| vec![e])?;
            let _owner = if claimed {
                None
            } else {
                Some(claim(&name).map_err(|e| vec![e])?)
            };
            let (ports, mut errors) = bridge::remove_ports(&mut rtnl, &name, link.index);
            errors.extend(bridge::tear_down(host.as_ref(), &mut rtnl, &name, &run_dir));
            if errors.is_empty() {
                Ok(ports + 1)
            } else {
                Err(errors)
            }
        })
        .await
        .unwrap_or_else(|_| Err(vec![NetworkError::ThreadStopped]));
        match outcome {
            Ok(n) => report.interfaces_removed = n,
            Err(errors) => {
                report.errors = errors
                    .iter()
                    .map(|e| crate::error::display_chain(e))
                    .collect();
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn config(name: &str, subnet: [u8; 4], prefix_len: u8) -> BridgeConfig {
        BridgeConfig {
            name: name.into(),
            subnet: Ipv4Addr::from(subnet),
            prefix_len,
        }
    }

    #[test]
    fn config_validation() {
        validate(&BridgeConfig::default()).unwrap();
        validate(&config("br-0.x_y", [10, 1, 0, 0], 24)).unwrap();
        validate(&config(&"b".repeat(15), [10, 1, 0, 0], 24)).unwrap();
        for bad in ["", ".", "..", "a b", "a/b", "wharf:0", &"b".repeat(16)] {
            let e = validate(&config(bad, [10, 1, 0, 0], 24)).unwrap_err();
            assert!(e.to_string().contains("--bridge-name"), "{bad:?}: {e}");
        }
        let e = validate(&config("wharf0", [10, 1, 0, 1], 24)).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.1.0.0/24"), "{e}");
        assert!(e.to_string().contains("--bridge-subnet"), "{e}");
        assert!(validate(&config("wharf0", [10, 1, 0, 0], 31)).is_err());
    }

    #[test]
    fn one_owner_per_bridge() {
        let name = format!("t{}", std::process::id());
        let first = claim(&name).unwrap();
        let e = claim(&name).unwrap_err();
        assert!(matches!(e, NetworkError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("--bridge-name"), "{e}");
        drop(first);
        claim(&name).unwrap();
    }
}
