//! A network the test makes itself: a network namespace linked to the host by a veth pair, with
//! the test function serving HTTP inside it. Bridge-mode functions reach "the outside" by
//! reaching it — the only outbound traffic a test may send. Removed on drop.
//!
//! The namespace knows only its own /30: it has no route back to the instances' subnet, so a
//! connection from an instance succeeds only if Wharf's NAT rewrote its source to the host's
//! address.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::patience;
use crate::testfn::testfn_binary;

pub struct ServerNamespace {
    name: String,
    host_if: String,
    /// The host's end of the link.
    pub host_addr: Ipv4Addr,
    /// The server's address inside the namespace.
    pub server_addr: Ipv4Addr,
    pub port: u16,
    server: Option<Child>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl ServerNamespace {
    /// `10.198.<n>.0/30` with `n` from `tag`: host `.1`, server `.2`, the test function on
    /// `port` inside. `tag` must be unique among the tests running at once (a process id).
    pub fn start(tag: u32, port: u16) -> anyhow::Result<ServerNamespace> {
        let n = (tag % 250) as u8 + 1;
        let quarter = ((tag / 250) % 64) as u8 * 4;
        let name = format!("wharf-test-srv-{tag}");
        let host_if = format!("wts{tag:x}");
        let host_addr = Ipv4Addr::new(10, 198, n, quarter + 1);
        let server_addr = Ipv4Addr::new(10, 198, n, quarter + 2);
        let mut ns = ServerNamespace {
            name: name.clone(),
            host_if: host_if.clone(),
            host_addr,
            server_addr,
            port,
            server: None,
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])?;
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{server_addr}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        let server = Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(testfn_binary()?)
            .env("TESTFN_PORT", port.to_string())
            .env("TESTFN_BIND", "0.0.0.0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run the test function in the server namespace")?;
        ns.server = Some(server);
        let addr = SocketAddr::from((server_addr, port));
        let deadline = Instant::now() + patience();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("the server in {name} did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(ns)
    }

    pub fn server(&self) -> SocketAddr {
        SocketAddr::from((self.server_addr, self.port))
    }
}

impl Drop for ServerNamespace {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace deletes its end of the veth, and with it the host's end.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
