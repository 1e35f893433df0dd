//! The `wharf` binary: `wharf serve` runs the daemon; every other command is a client of its API.
//! This crate only parses arguments and wires the library crates together.

mod cli;
mod client;
mod images;
mod serve;
mod versions;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// glibc gives a thread that allocates while another holds the arena an arena of its own, and
/// keeps its memory: the blocking threads of a burst of cold starts leave megabytes behind in
/// the daemon (14 MiB after 1,000 starts, P12). The daemon's request path is one worker thread,
/// so two arenas cost it nothing. `MALLOC_ARENA_MAX` in the environment still wins.
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt has no preconditions; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wharf_image::install_crypto_provider();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match &cli.command {
        Command::Serve(args) => {
            cap_malloc_arenas();
            builder.worker_threads(args.worker_threads.get());
        }
        // A client makes one or two requests: one thread is plenty.
        _ => {
            builder.worker_threads(1);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(cli.global, args).await,
            command => client::run(cli.global, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
