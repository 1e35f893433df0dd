//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Run OCI container images as serverless functions on your own machines",
    after_help = "Exit status of client commands: 0 success, 1 the function reported an error, \
                  2 Wharf or the request failed."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Data directory: state, images, instances, logs and the API token
    /// [default: $XDG_DATA_HOME/wharf or ~/.local/share/wharf]
    #[arg(long, global = true, env = "WHARF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API of a running `wharf serve`
    #[arg(
        long,
        global = true,
        env = "WHARF_URL",
        default_value = "http://127.0.0.1:9800"
    )]
    pub url: String,
    /// API token (default: read from <data-dir>/api.token)
    #[arg(long, global = true, env = "WHARF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Global {
    /// `--data-dir`, else `$XDG_DATA_HOME/wharf`, else `~/.local/share/wharf`.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("wharf"));
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => Ok(PathBuf::from(home).join(".local/share/wharf")),
            None => anyhow::bail!("cannot choose a data directory: set --data-dir or $HOME"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Wharf daemon (needs root)
    Serve(ServeArgs),
    /// Create or update a function from an image
    Deploy(DeployArgs),
    /// Invoke a function and print what it answered
    Invoke(InvokeArgs),
    /// List functions
    Ls,
    /// Show a function's configuration as JSON
    Get { name: String },
    /// Delete a function and stop its instances
    Rm { name: String },
    /// Print what a function's instances printed, newest last
    Logs {
        name: String,
        /// How many lines
        #[arg(long, default_value_t = 200)]
        tail: usize,
        /// Keep printing new lines as they are written (Ctrl-C to stop)
        #[arg(long, short = 'f', conflicts_with = "request")]
        follow: bool,
        /// Only the lines of one invocation (its request id), from START to REPORT
        #[arg(long)]
        request: Option<String>,
    },
    /// List a function's recent invocations, newest first: request id, cold or warm, duration,
    /// memory, status
    Invocations {
        name: String,
        /// How many
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// List the instances of a function (or of every function): state, revision, age,
    /// requests served, memory now/peak/limit
    Ps {
        name: Option<String>,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// List the images in the store, or remove those no function uses
    #[command(subcommand)]
    Image(ImageCommand),
    /// Publish, list and delete a function's versions (invoke one as NAME:VERSION)
    #[command(subcommand)]
    Version(VersionCommand),
    /// Point a name at a version, or split calls between two (invoke as NAME:ALIAS)
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Publish the function's current configuration and image as a new, immutable version
    Publish {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a function's versions, oldest first
    Ls {
        name: String,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a version and stop its instances (refused while an alias uses it)
    Rm { name: String, version: u64 },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Create or change an alias: all calls to VERSION, or a share to another with --weight
    Set {
        name: String,
        alias: String,
        version: u64,
        /// Send this share of the calls to another version: OTHER=SHARE, e.g. 2=0.1
        #[arg(long, value_parser = parse_weight)]
        weight: Option<(u64, f64)>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a function's aliases
    Ls {
        name: String,
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete an alias
    Rm { name: String, alias: String },
}

/// `2=0.1` → version 2 gets a tenth of the calls.
fn parse_weight(s: &str) -> Result<(u64, f64), String> {
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VERSION=SHARE, e.g. 2=0.1"))?;
    let v = v
        .parse()
        .map_err(|_| format!("{v:?} is not a version number"))?;
    let w: f64 = w
        .parse()
        .map_err(|_| format!("{w:?} is not a share between 0 and 1"))?;
    if !(0.0..=1.0).contains(&w) {
        return Err(format!("the share {w} is not between 0 and 1"));
    }
    Ok((v, w))
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images in the store: size on disk, layers, the functions that use each
    Ls {
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove every image, blob and unpacked layer that no deployed function or running
    /// instance uses (waits for pulls in progress)
    Prune {
        /// Print the API's JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RuntimeArg {
    /// crun when it works on this host, else runc
    Auto,
    Crun,
    Runc,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the API
    #[arg(long, default_value = "127.0.0.1:9800")]
    pub listen: SocketAddr,
    /// OCI runtime
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeArg,
    /// Seconds an instance may stay idle before it is stopped
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds between SIGTERM and SIGKILL when an instance is stopped
    #[arg(long, default_value_t = 5)]
    pub stop_grace: u64,
    /// Seconds a new instance may take to listen [default: the contract's, 120 for fc]
    #[arg(long)]
    pub start_deadline: Option<u64>,
    /// Processes and threads one instance may have at most (its cgroup's pids limit); a fork
    /// bomb stops there
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(i64).range(1..))]
    pub pids_limit: i64,
    /// Threads that run the API and the invocations (blocking work has threads of its own).
    /// One keeps a warm invocation on one thread, with no hand-offs between threads; more
    /// spread the API over cores under heavy load
    #[arg(long, default_value = "1")]
    pub worker_threads: std::num::NonZeroUsize,
    /// Name of the cgroup under which instances' cgroups are created
    #[arg(long, default_value = "wharf")]
    pub cgroup_parent: String,
    /// Largest unpacked size of one image, all its layers together (e.g. 10GiB, 512MiB); a
    /// larger image is refused while it is unpacked. One layer is also held to 10 GiB
    /// (MAX_LAYER_UNPACKED_BYTES), whatever this says
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub max_image_size: u64,
    /// Registry credentials: a Docker config.json (`auths`) [default: $DOCKER_CONFIG/config.json
    /// when $DOCKER_CONFIG is set, else $HOME/.docker/config.json, if it exists]. A function's registry_auth wins over it
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// A registry spoken to in plain HTTP (repeatable); loopback registries always are
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// How long an instance must be idle before it is frozen (for functions with freeze_idle),
    /// e.g. 1s, 200ms, 0 (at once)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub freeze_after: std::time::Duration,
    /// The bridge that instances with network "bridge" are attached to (created on first use,
    /// removed at shutdown)
    #[arg(long, value_name = "NAME", default_value = "wharf0")]
    pub bridge_name: String,
    /// The subnet of bridge-mode instances; the bridge takes its first address
    #[arg(long, value_name = "CIDR", default_value = "10.250.0.0/16", value_parser = parse_cidr)]
    pub bridge_subnet: (std::net::Ipv4Addr, u8),
}

/// `200ms`, `1s`, `1m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration (e.g. 1s, 200ms): {e}"))
}

/// `10.250.0.0/16`: an IPv4 network whose host bits are zero, prefix 8-30.
pub fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let usage = || format!("{text:?} is not an IPv4 subnet like 10.250.0.0/16");
    let (addr, len) = text.trim().split_once('/').ok_or_else(usage)?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| usage())?;
    let len: u8 = len.parse().map_err(|_| usage())?;
    if !(8..=30).contains(&len) {
        return Err(format!("{text:?}: the prefix must be between 8 and 30"));
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(format!(
            "{text:?}: the host bits must be zero ({}/{len})",
            std::net::Ipv4Addr::from(u32::from(addr) & mask)
        ));
    }
    Ok((addr, len))
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    pub name: String,
    /// Image reference, e.g. 127.0.0.1:5000/hello:latest, or an archive on the server's machine
    /// (absolute path): oci-archive:PATH, oci:PATH, docker-archive:PATH (resolved to a digest
    /// and pinned)
    #[arg(long)]
    pub image: String,
    /// Contract the image speaks: fc, functiongraph, scf, http, lambda
    #[arg(long, default_value = "fc")]
    pub contract: String,
    /// How it is called: event, http (a server that gets requests passed through), job (no
    /// server; fc and scf) [default: event; http for the http contract]
    #[arg(long)]
    pub mode: Option<String>,
    /// Memory limit in MB
    #[arg(long)]
    pub memory: Option<u32>,
    /// Timeout in seconds
    #[arg(long)]
    pub timeout: Option<u32>,
    /// Environment variable, KEY=VALUE (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Port the function's server listens on (default: the contract's)
    #[arg(long)]
    pub port: Option<u16>,
    /// Replace the image's ENTRYPOINT (repeat for each word)
    #[arg(long = "command", value_name = "WORD")]
    pub command: Vec<String>,
    /// Replace the image's CMD (repeat for each argument)
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Working directory inside the instance
    #[arg(long)]
    pub working_dir: Option<String>,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// Call the contract's initialize hook once per instance, with this timeout in seconds
    #[arg(long, value_name = "SECONDS")]
    pub initializer_timeout: Option<u32>,
    /// Registry user name (with --registry-password or $WHARF_REGISTRY_PASSWORD)
    #[arg(long)]
    pub registry_user: Option<String>,
    #[arg(long, env = "WHARF_REGISTRY_PASSWORD", hide_env_values = true)]
    pub registry_password: Option<String>,
    /// Do not pull the image now: only resolve it to its digest; the first invocation pulls
    #[arg(long)]
    pub no_prepull: bool,
    /// Size of the writable layer (the image's changed files and /tmp) in MB; it is memory, and
    /// what is written there counts against --memory [default: 512, at most half of --memory]
    #[arg(long, value_name = "MB")]
    pub disk: Option<u32>,
    /// Make the image's files read-only (only /tmp and read-write mounts stay writable)
    /// [default: the contract's: true for scf]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub read_only_rootfs: Option<bool>,
    /// Mount a host path into every instance: SOURCE:TARGET[:ro|:rw], absolute paths on the
    /// server's machine (repeatable; read-write unless :ro)
    #[arg(long = "mount", value_name = "SOURCE:TARGET[:ro]")]
    pub mounts: Vec<String>,
    /// Network: none (loopback only) or bridge (outbound access through a NAT'd bridge)
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// Call the contract's pre-freeze hook before an idle instance is frozen, with this timeout
    #[arg(long, value_name = "SECONDS")]
    pub pre_freeze_timeout: Option<u32>,
    /// Call the contract's pre-stop hook before an instance is stopped, with this timeout
    #[arg(long, value_name = "SECONDS")]
    pub pre_stop_timeout: Option<u32>,
    /// Do not freeze idle instances
    #[arg(long)]
    pub no_freeze: bool,
    /// Requests one instance serves at once (1-1000) [default: 1]
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Keep this many instances started and warm, re-created if they die (reserved)
    #[arg(long)]
    pub min_instances: Option<u32>,
    /// At most this many instances at once (1-1000) [default: 100]
    #[arg(long)]
    pub max_instances: Option<u32>,
    /// Seconds an idle instance is kept; 0 stops it right after its call [default: the
    /// server's --idle-timeout]
    #[arg(long = "idle-timeout")]
    pub idle_timeout_s: Option<u32>,
}

/// `SOURCE:TARGET[:ro|:rw]` of `--mount`.
pub fn parse_mount(text: &str) -> Result<(String, String, bool), String> {
    let usage =
        || format!("--mount {text:?} must be SOURCE:TARGET, SOURCE:TARGET:ro or SOURCE:TARGET:rw");
    let mut parts = text.split(':');
    let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
        return Err(usage());
    };
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return Err(usage()),
    };
    if parts.next().is_some() || source.is_empty() || target.is_empty() {
        return Err(usage());
    }
    Ok((source.to_owned(), target.to_owned(), read_only))
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    pub name: String,
    /// The event
    #[arg(long, conflicts_with = "file")]
    pub data: Option<String>,
    /// Read the event from a file (`-` for standard input)
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Print the request id, instance, cold start and duration to standard error
    #[arg(long, short)]
    pub verbose: bool,
}

/// A size with an optional unit: `512MiB`, `10 GiB`, `4096` (bytes). K, M, G, T and KiB…TiB are
/// powers of 1024; KB…TB are powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let usage = || {
        format!(
            "{text:?} is not a size: write a whole number with an optional unit, e.g. 10GiB or 512MiB"
        )
    };
    let number: u64 = number.parse().map_err(|_| usage())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(usage()),
    };
    let size = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if size == 0 {
        return Err(format!("{text:?}: the size must be more than 0"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_their_units() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 mib"), Ok(512 << 20));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "GiB", "1.5GiB", "10 parsecs", "-1", "0"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn mounts_durations_and_subnets() {
        assert_eq!(
            parse_mount("/srv/data:/data:ro"),
            Ok(("/srv/data".into(), "/data".into(), true))
        );
        assert_eq!(
            parse_mount("/srv/data:/data"),
            Ok(("/srv/data".into(), "/data".into(), false))
        );
        for bad in ["/srv", "/a:/b:x", "/a:/b:ro:z", ":/b"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("200ms"),
            Ok(std::time::Duration::from_millis(200))
        );
        assert_eq!(parse_duration("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_duration("2"), Ok(std::time::Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_cidr("10.250.0.0/16"),
            Ok((std::net::Ipv4Addr::new(10, 250, 0, 0), 16))
        );
        assert!(
            parse_cidr("10.250.0.1/16")
                .unwrap_err()
                .contains("10.250.0.0/16")
        );
        assert!(parse_cidr("10.0.0.0/31").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
    }
}
