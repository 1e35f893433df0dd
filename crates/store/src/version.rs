//! The stored form of published versions and of aliases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::FunctionRecord;

/// A published version: the function's configuration and pinned image as they were when it
/// was published. Never changed afterwards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub function: String,
    /// 1, 2, … per function; a number is never given twice, also after a delete.
    pub version: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// The function as it was (its `revision` says which update it was).
    pub config: FunctionRecord,
}

/// A name for a version, or for a split of traffic between two.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub function: String,
    pub name: String,
    /// The version that gets the traffic the additional one does not.
    pub version: u64,
    /// At most one other version, with the share of the traffic it gets (between 0 and 1).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_version_weights: BTreeMap<u64, f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}
