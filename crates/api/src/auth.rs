//! The API token: generated at first start into `<data-dir>/api.token` (mode 0600), required as
//! `Authorization: Bearer <token>` on every API call except the health check.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;
use http::header::AUTHORIZATION;

use crate::{ApiError, App};

pub const TOKEN_FILE: &str = "api.token";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or create the API token {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the API token file {path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`",
        path = path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the API token file {} is empty: delete it to have a new token generated", path.display())]
    Empty { path: PathBuf },
}

/// Reads the token in `data_dir`, creating it (32 random bytes, hex) if there is none.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = data_dir.join(TOKEN_FILE);
    let io = |source| TokenError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::Permissions { path, mode });
            }
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty { path });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(token)
        }
        Err(e) => Err(io(e)),
    }
}

/// Compares in time independent of where the first difference is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: the request must carry the token.
pub async fn require_token(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), app.token.as_bytes()) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the bearer token is wrong: use the token in <data-dir>/api.token of this server",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing `Authorization: Bearer <token>`: the token is in <data-dir>/api.token of \
             this server",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t1);
        std::fs::set_permissions(
            dir.path().join(TOKEN_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = load_or_create_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
