//! `wharf serve`: open the data directory, wire the pieces, serve the API until SIGTERM/SIGINT,
//! then stop every instance and release what the daemon holds on the host.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use wharf_api::App;
use wharf_image::{ImageStore, RegistryCredentials, RegistrySettings};
use wharf_pool::{Pool, PoolConfig};
use wharf_sandbox::{RuntimePreference, Sandbox, SandboxConfig};
use wharf_store::{EmbeddedStore, LogStore};

use crate::cli::{Global, RuntimeArg, ServeArgs};

/// Written into the data directory while the daemon runs: the API's address, for tools.
pub const ADDR_FILE: &str = "api.addr";
/// At shutdown, how long open connections may take to finish once the instances are stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(global: Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut signals = Signals::install()?;
    if !rustix::process::geteuid().is_root() {
        bail!(
            "wharf serve needs root: it mounts filesystems, creates cgroups and namespaces \
             (run it with sudo)"
        );
    }
    let data_dir = global.data_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    // Also when it existed: it holds registry credentials, the token and instance root
    // filesystems, none of which another host user may read.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;

    let token = wharf_api::auth::load_or_create_token(&data_dir)?;
    let store = Arc::new(EmbeddedStore::open(&data_dir.join("state.db"))?);
    let logs = Arc::new(LogStore::open(&data_dir.join("logs"))?);
    let images = ImageStore::open(&data_dir)?.with_registries(registry_settings(&args)?);
    images.set_max_image_bytes(args.max_image_size);
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: data_dir.clone(),
        cgroup_parent: args.cgroup_parent.clone(),
        runtime: match args.runtime {
            RuntimeArg::Auto => RuntimePreference::Auto,
            RuntimeArg::Crun => RuntimePreference::Crun,
            RuntimeArg::Runc => RuntimePreference::Runc,
        },
        bridge: wharf_sandbox::BridgeConfig {
            name: args.bridge_name.clone(),
            subnet: args.bridge_subnet.0,
            prefix_len: args.bridge_subnet.1,
        },
    })?;
    let rt = sandbox.runtime();
    info!(
        runtime = ?rt.kind,
        path = %rt.path.display(),
        version = %rt.version,
        "OCI runtime: {}",
        rt.note
    );
    let recovered = sandbox.recover().await?;
    if recovered.instances_removed > 0 {
        info!(
            count = recovered.instances_removed,
            "cleaned up instances left by a previous run"
        );
    }
    let pool = Pool::new(
        sandbox,
        images.clone(),
        PoolConfig {
            idle_timeout: Duration::from_secs(args.idle_timeout),
            stop_grace: Duration::from_secs(args.stop_grace),
            start_deadline: args.start_deadline.map(Duration::from_secs),
            pids_limit: args.pids_limit,
            freeze_after: args.freeze_after,
            ..PoolConfig::default()
        },
    );
    let app = App::new(store, logs, images, pool.clone(), token);
    let result = match start_api(&app, &args, &data_dir).await {
        Ok((server, stop_accepting)) => {
            signals.wait().await;
            info!("shutting down: stopping instances");
            // Stop taking connections, then stop the instances at once: in-flight invocations
            // end with an error instead of holding the daemon for up to their timeout.
            let _ = stop_accepting.send(());
            pool.shutdown().await;
            drain(server).await
        }
        Err(e) => {
            // Whatever the pool and the sandbox set up on the host goes, also on this path.
            pool.shutdown().await;
            Err(e)
        }
    };
    // The last lines (instances stopping) are in the function logs before the process ends.
    let logs = app.logs.clone();
    let _ = tokio::task::spawn_blocking(move || logs.flush()).await;
    let _ = std::fs::remove_file(data_dir.join(ADDR_FILE));
    result?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The registry credentials (`--registry-config`, else `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`) and the
/// insecure registries. A file that cannot be read or parsed stops the start-up: pulling
/// anonymously instead would fail later, far from the cause.
fn registry_settings(args: &ServeArgs) -> anyhow::Result<RegistrySettings> {
    let insecure = args
        .insecure_registries
        .iter()
        .map(|value| RegistrySettings::parse_insecure(value))
        .collect::<Result<Vec<_>, _>>()?;
    if !insecure.is_empty() {
        info!(registries = ?insecure, "plain HTTP allowed for these registries (--insecure-registry)");
    }
    let docker_config = std::env::var_os("DOCKER_CONFIG").map(std::path::PathBuf::from);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let credentials = match RegistryCredentials::locate(
        args.registry_config.as_deref(),
        docker_config.as_deref(),
        home.as_deref(),
    ) {
        Some(path) => {
            let (credentials, report) = RegistryCredentials::load(&path)?;
            let registries: Vec<&str> = credentials.registries().collect();
            info!(
                file = %path.display(),
                registries = ?registries,
                "registry credentials read"
            );
            for warning in &report.warnings {
                tracing::warn!(file = %path.display(), "{warning}");
            }
            credentials
        }
        None => {
            info!(
                "no registry config (--registry-config, $DOCKER_CONFIG or ~/.docker/config.json): pulls \
                     use each function's registry_auth, else none"
            );
            RegistryCredentials::default()
        }
    };
    Ok(RegistrySettings {
        credentials,
        insecure,
    })
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

/// Restores the stored functions, binds the API and serves it in a task until told to stop
/// accepting.
async fn start_api(
    app: &Arc<App>,
    args: &ServeArgs,
    data_dir: &Path,
) -> anyhow::Result<(Server, tokio::sync::oneshot::Sender<()>)> {
    let restored = app.restore()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    std::fs::write(data_dir.join(ADDR_FILE), format!("http://{addr}\n"))?;
    info!(
        data_dir = %data_dir.display(),
        functions = restored,
        "listening on http://{addr}"
    );
    let (stop_accepting, stopped_accepting) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wharf_api::server::serve(
        listener,
        app.router(),
        wharf_api::server::HEADER_READ_TIMEOUT,
        async move {
            let _ = stopped_accepting.await;
        },
    ));
    Ok((server, stop_accepting))
}

/// Waits for open connections to finish, at most [`DRAIN_TIMEOUT`].
async fn drain(server: Server) -> anyhow::Result<()> {
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(served)) => served.context("the API server failed"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the API server task failed");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT, caught from the start so that a signal during start-up still ends in a
/// clean shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// One daemon per data directory: a second one would fight the first over mounts and cgroups.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another `wharf serve` (pid {}) uses the data directory {}: stop it, or use \
             another --data-dir",
            holder.trim(),
            dir.display()
        );
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}
