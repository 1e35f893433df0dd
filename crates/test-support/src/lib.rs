//! Test support shared by the crates of the workspace: real components to test against.
//!
//! - [`registry`]: a real OCI registry (distribution) on loopback, killed on drop.
//! - [`oci`]: building OCI / Docker images in memory and pushing them to a registry.
//! - [`front`]: a loopback front for a registry that counts requests and throttles blobs.
//! - [`token_auth`]: a registry behind the bearer-token dance (challenge, realm, token).
//! - [`staged`]: a loopback front for a registry that stages what registries out there do:
//!   short-lived tokens, redirects to blob storage, hidden blobs, tampered bytes, and a record
//!   of what each request carried.
//! - [`netns`]: a network namespace of the test's own with a server in it, for outbound traffic.
//! - [`testfn`]: the test function (`wharf-testfn`) packed as an image.
//! - [`node`]: Node/Express function images (the host's node, express from npm).
//! - [`lambda`]: the lambda contract's images (AWS's Rust and Python runtime clients).
//! - [`daemon`]: a real `wharf serve` with its own data directory, stopped on drop, and the
//!   check for what it leaves on the host.
//! - [`env`]: the usual black-box set-up (a registry with the test function, a daemon) and its
//!   calls.
//! - [`patience`] and [`assert_eventually!`]: waiting without fixed sleeps.

pub mod daemon;
pub mod env;
pub mod front;
pub mod lambda;
pub mod netns;
pub mod node;
pub mod oci;
pub mod registry;
pub mod staged;
pub mod testfn;
pub mod token_auth;

use std::time::Duration;

/// How long tests wait for something that should happen: `$WHARF_TEST_PATIENCE_MS`, default 30 s.
/// Waiting goes through [`assert_eventually!`], never through fixed sleeps.
pub fn patience() -> Duration {
    std::env::var("WHARF_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(30))
}

/// Installs ring as rustls' crypto provider for test clients (reqwest is built without one).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Asserts that `$cond` becomes true within [`patience`], checking every 20 ms.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $crate::patience();
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("not true within {:?}: {}", $crate::patience(), format!($($msg)+));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }};
}
