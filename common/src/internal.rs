//! The credential the gateway presents to the services behind it (the collector and the
//! generator): one shared secret, made by `./setup.sh` in a file of mode 0600 and read from that
//! file (`--internal-token-file`, `LOGPIPE_INTERNAL_TOKEN_FILE`), never from a command line, where
//! any local user could read it.
//!
//! In containers it comes from `LOGPIPE_INTERNAL_TOKEN` instead (compose passes it; a bind-mounted
//! file keeps the host owner, whom the container's user is not).
//!
//! A service started with a token answers only requests that send it as
//! `Authorization: Bearer <token>` (what Prometheus sends with `authorization.credentials_file`),
//! except `GET /health`, which says nothing but "alive". A service started without one serves
//! everyone who can connect, so it starts only on a loopback address (the tests and the fault
//! suite, which start each service by hand) and says so in a warning.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ConfigError;

/// Tokens shorter than this are refused: setup makes 32 random bytes (64 hex digits).
pub const MIN_TOKEN_CHARS: usize = 32;

/// The internal token, or none. Its `Debug` never shows it.
#[derive(Clone, Default)]
pub struct InternalToken(Option<Arc<str>>);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "InternalToken(<redacted>)"
        } else {
            "InternalToken(none)"
        })
    }
}

impl InternalToken {
    pub fn none() -> InternalToken {
        InternalToken(None)
    }

    /// A token given directly (tests; config files hold a path, not the secret).
    pub fn new(token: &str) -> Result<InternalToken, ConfigError> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_CHARS || token.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(ConfigError::Invalid {
                field: "internal_token_file",
                reason: format!(
                    "the internal token must be at least {MIN_TOKEN_CHARS} printable ASCII \
                     characters with no spaces (setup makes 64 hex digits)"
                ),
            });
        }
        Ok(InternalToken(Some(Arc::from(token))))
    }

    /// Read from `path`. The file must not be readable by other users: a token anyone can read
    /// guards nothing.
    pub fn from_file(path: &Path) -> Result<InternalToken, ConfigError> {
        let unreadable = |e: std::io::Error| ConfigError::Invalid {
            field: "internal_token_file",
            reason: format!("cannot read {}: {e}", path.display()),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(unreadable)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ConfigError::Invalid {
                    field: "internal_token_file",
                    reason: format!(
                        "{} has mode {:o}: other users can read it; make it 0600",
                        path.display(),
                        mode & 0o777
                    ),
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        InternalToken::new(&text)
    }

    /// The file, when the config names one; else `LOGPIPE_INTERNAL_TOKEN` from the environment
    /// (containers: other users cannot read a process's environment, as they can its command
    /// line); else none.
    pub fn load(path: Option<&Path>) -> Result<InternalToken, ConfigError> {
        match path {
            Some(p) => InternalToken::from_file(p),
            None => match std::env::var("LOGPIPE_INTERNAL_TOKEN") {
                Ok(t) if !t.trim().is_empty() => InternalToken::new(&t),
                _ => Ok(InternalToken::none()),
            },
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The `Authorization` value to send.
    pub fn bearer(&self) -> Option<String> {
        self.0.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Does this `Authorization` header carry the token? Compared as SHA-256 digests, in constant
    /// time: neither the length nor the first differing byte shows in the answer's timing.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.0 else {
            return true;
        };
        let Some(sent) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let (a, b) = (Sha256::digest(sent), Sha256::digest(token.as_bytes()));
        a.ct_eq(&b).into()
    }
}

/// Refuse to serve everyone on an address other machines can reach: without a token, a service
/// binds loopback only.
pub fn check_bind(token: &InternalToken, host: &str) -> Result<(), ConfigError> {
    if token.is_set() || crate::config::is_loopback(host) {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field: "internal_token_file",
        reason: format!(
            "{host} is not a loopback address and no internal token is set: anyone who reaches \
             it could drive this service around the gateway's keys and limits. Set \
             LOGPIPE_INTERNAL_TOKEN_FILE (./setup.sh makes one) or bind 127.0.0.1"
        ),
    })
}

/// Middleware: every request but `GET /health` must carry the token (when one is set).
pub async fn require(State(token): State<InternalToken>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/health"
        || token.accepts(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    {
        return next.run(req).await;
    }
    crate::http::error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this service answers only the gateway: send its internal token as \
         `Authorization: Bearer <token>` (the file named by LOGPIPE_INTERNAL_TOKEN_FILE)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn only_the_exact_token_is_accepted() {
        let t = InternalToken::new(T).unwrap();
        assert!(t.accepts(Some(format!("Bearer {T}").as_bytes())));
        for bad in [
            "".to_owned(),
            T.to_owned(),
            format!("Bearer {T}x"),
            format!("Bearer {}", &T[1..]),
            format!("bearer {T}"),
            "Bearer ".to_owned(),
        ] {
            assert!(!t.accepts(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!t.accepts(None));
        assert!(InternalToken::none().accepts(None));
    }

    #[test]
    fn a_short_or_spaced_token_is_refused_and_debug_hides_it() {
        assert!(InternalToken::new("short").is_err());
        assert!(InternalToken::new(&format!("{T} {T}")).is_err());
        let t = InternalToken::new(&format!("{T}\n")).unwrap();
        assert!(!format!("{t:?}").contains(T));
        assert_eq!(t.bearer().unwrap(), format!("Bearer {T}"));
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, T).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = InternalToken::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("0600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(InternalToken::from_file(&path).unwrap().is_set());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_token_only_loopback_binds() {
        let none = InternalToken::none();
        assert!(check_bind(&none, "127.0.0.1").is_ok());
        assert!(check_bind(&none, "0.0.0.0").is_err());
        assert!(check_bind(&InternalToken::new(T).unwrap(), "0.0.0.0").is_ok());
    }
}
