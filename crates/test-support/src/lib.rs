//! Test support shared by the crates of the workspace: real components to test against.
//!
//! - [`registry`]: a real OCI registry (distribution) on loopback, killed on drop.
//! - [`oci`]: building OCI / Docker images in memory and pushing them to a registry.

pub mod oci;
pub mod registry;
