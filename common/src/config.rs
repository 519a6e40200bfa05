//! The TOML layer of every service's configuration: defaults, then this file, then env, then flags.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Defaults when `path` is `None`, else the file's values over the defaults (`#[serde(default)]`).
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Overlay optional values (env or flags, as clap parsed them) onto a config that already holds
/// defaults and the TOML file: `overlay!(cli.port => config.port, ...)`.
#[macro_export]
macro_rules! overlay {
    ($($src:expr => $dst:expr),* $(,)?) => {
        $(if let Some(v) = $src {
            $dst = v;
        })*
    };
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
