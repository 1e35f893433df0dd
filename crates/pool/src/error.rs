//! What can go wrong when the pool deploys or invokes a function.

use std::time::Duration;

use wharf_image::ImageError;
use wharf_sandbox::{ExitInfo, NetworkError, StartError};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("function {name} cannot be deployed: {reason}")]
    Invalid { name: String, reason: String },
    #[error("bridge networking cannot be set up on this host: {source}")]
    Network {
        #[source]
        source: NetworkError,
    },
}

/// Why an invocation produced no answer from the function. Function errors (the function ran and
/// reported a failure) are not errors here: they are an [`Outcome`](wharf_contract::Outcome) of
/// a successful [`Invocation`](crate::Invocation).
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("function {name} does not exist")]
    FunctionNotFound { name: String },
    #[error("function {name}: its image could not be made ready for a cold start: {source}")]
    Image {
        name: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error(
        "function {name}: the image {image} has no ENTRYPOINT or CMD and the function sets no \
         command: set `command` on the function"
    )]
    NoCommand { name: String, image: String },
    #[error("function {name}: the instance could not be created: {}", wharf_sandbox::display_chain(source.as_ref()))]
    StartFailed {
        name: String,
        #[source]
        source: Box<StartError>,
    },
    #[error("function {name}: {message}")]
    NotStarted {
        name: String,
        port: u16,
        message: String,
    },
    #[error("function {name}: the initializer failed on instance {instance}: {reason}")]
    InitializeFailed {
        name: String,
        instance: String,
        reason: String,
        /// The instance was stopped (it asked to be restarted, or the hook timed out).
        restarted: bool,
    },
    #[error(
        "function {name} timed out after {timeout:?} on instance {instance}; the instance was \
         stopped and will be replaced"
    )]
    Timeout {
        name: String,
        instance: String,
        timeout: Duration,
    },
    #[error(
        "function {name}: instance {instance} exited during the invocation ({exit}). Logs: {output}",
        exit = exit.map(|e| e.to_string()).unwrap_or_else(|| "no exit status".into())
    )]
    Crashed {
        name: String,
        instance: String,
        exit: Option<ExitInfo>,
        output: String,
    },
    #[error(
        "function {name}: the instance ran out of memory: its limit is {limit_mb} MB{peak}; \
         raise memory_mb (instance {instance} was killed and will be replaced)",
        peak = peak_mb.map(|p| format!(", it peaked at {p} MB")).unwrap_or_default()
    )]
    OutOfMemory {
        name: String,
        instance: String,
        limit_mb: u32,
        peak_mb: Option<u64>,
    },
    #[error("function {name}: instance {instance} could not be reached: {reason}")]
    Unreachable {
        name: String,
        instance: String,
        reason: String,
    },
    #[error("function {name}: the response is larger than the limit of {limit} bytes")]
    ResponseTooLarge { name: String, limit: usize },
    /// The caller's request cannot be passed to the function as it is.
    #[error("function {name}: {reason}")]
    BadRequest { name: String, reason: String },
    #[error("function {name} has reached its maximum of {max} instances, all busy: retry later")]
    TooManyInstances { name: String, max: usize },
    #[error("wharf is shutting down")]
    ShuttingDown,
    #[error("internal error while invoking function {name}: {reason}")]
    Internal { name: String, reason: String },
}

impl InvokeError {
    /// The stable code of the error, as the API shows it (`"error": {"code"}`) and as
    /// invocation records and REPORT lines name it.
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::FunctionNotFound { .. } => "FunctionNotFound",
            // The image error's own code says more (ImageCorrupt, RegistryUnreachable, …): the
            // API uses that; here the kind of failure is enough.
            InvokeError::Image { .. } => "ImageUnavailable",
            InvokeError::NoCommand { .. } => "FunctionMisconfigured",
            InvokeError::StartFailed { .. } => "InstanceStartFailed",
            InvokeError::NotStarted { .. } => "FunctionNotStarted",
            InvokeError::InitializeFailed { .. } => "FunctionInitializationFailed",
            InvokeError::Timeout { .. } => "FunctionTimeout",
            InvokeError::Crashed { .. } => "FunctionCrashed",
            InvokeError::OutOfMemory { .. } => "FunctionOutOfMemory",
            InvokeError::Unreachable { .. } => "InstanceUnreachable",
            InvokeError::ResponseTooLarge { .. } => "FunctionResponseTooLarge",
            // FC's code for a request outside its rules.
            InvokeError::BadRequest { .. } => "InvalidArgument",
            InvokeError::TooManyInstances { .. } => "ResourceExhausted",
            InvokeError::ShuttingDown => "ShuttingDown",
            InvokeError::Internal { .. } => "InternalError",
        }
    }

    /// The instance the error happened on, when one was serving.
    pub fn instance(&self) -> Option<&str> {
        match self {
            InvokeError::InitializeFailed { instance, .. }
            | InvokeError::Timeout { instance, .. }
            | InvokeError::Crashed { instance, .. }
            | InvokeError::OutOfMemory { instance, .. }
            | InvokeError::Unreachable { instance, .. } => Some(instance),
            _ => None,
        }
    }

    /// The same error for another request that waited for the same failed start: the variant
    /// and its fields where they can be copied; a failure of the image or of the sandbox (whose
    /// sources are not copied) as [`InvokeError::NotStarted`] with the same text.
    pub(crate) fn duplicate(&self) -> InvokeError {
        match self {
            InvokeError::FunctionNotFound { name } => {
                InvokeError::FunctionNotFound { name: name.clone() }
            }
            InvokeError::NoCommand { name, image } => InvokeError::NoCommand {
                name: name.clone(),
                image: image.clone(),
            },
            InvokeError::NotStarted {
                name,
                port,
                message,
            } => InvokeError::NotStarted {
                name: name.clone(),
                port: *port,
                message: message.clone(),
            },
            InvokeError::InitializeFailed {
                name,
                instance,
                reason,
                restarted,
            } => InvokeError::InitializeFailed {
                name: name.clone(),
                instance: instance.clone(),
                reason: reason.clone(),
                restarted: *restarted,
            },
            InvokeError::Unreachable {
                name,
                instance,
                reason,
            } => InvokeError::Unreachable {
                name: name.clone(),
                instance: instance.clone(),
                reason: reason.clone(),
            },
            InvokeError::ShuttingDown => InvokeError::ShuttingDown,
            InvokeError::Internal { name, reason } => InvokeError::Internal {
                name: name.clone(),
                reason: reason.clone(),
            },
            other => {
                let text = other.to_string();
                let name = other.function().unwrap_or_default().to_string();
                // The text begins "function NAME: "; NotStarted adds that again.
                let prefix = format!("function {name}: ");
                InvokeError::NotStarted {
                    message: text.strip_prefix(&prefix).unwrap_or(&text).to_string(),
                    name,
                    port: 0,
                }
            }
        }
    }

    /// The function the error is about.
    pub fn function(&self) -> Option<&str> {
        match self {
            InvokeError::FunctionNotFound { name }
            | InvokeError::Image { name, .. }
            | InvokeError::NoCommand { name, .. }
            | InvokeError::StartFailed { name, .. }
            | InvokeError::NotStarted { name, .. }
            | InvokeError::InitializeFailed { name, .. }
            | InvokeError::Timeout { name, .. }
            | InvokeError::Crashed { name, .. }
            | InvokeError::OutOfMemory { name, .. }
            | InvokeError::Unreachable { name, .. }
            | InvokeError::ResponseTooLarge { name, .. }
            | InvokeError::BadRequest { name, .. }
            | InvokeError::TooManyInstances { name, .. }
            | InvokeError::Internal { name, .. } => Some(name),
            InvokeError::ShuttingDown => None,
        }
    }

    /// Whether the instance that produced this error must not serve again.
    pub(crate) fn kills_instance(&self) -> bool {
        match self {
            InvokeError::Timeout { .. }
            | InvokeError::Crashed { .. }
            | InvokeError::OutOfMemory { .. }
            | InvokeError::Unreachable { .. }
            | InvokeError::ResponseTooLarge { .. }
            | InvokeError::Internal { .. } => true,
            InvokeError::InitializeFailed { restarted, .. } => *restarted,
            _ => false,
        }
    }
}
