//! API keys and scopes.
//!
//! Keys live in config only as SHA-256 hashes (hex); a presented key is hashed and compared with every
//! configured hash in constant time, so neither the comparison nor the number of keys checked leaks how
//! close a guess was. Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`, or in the
//! forms shippers can send (`Basic` with the key as password, Elasticsearch's `ApiKey`), and never reach
//! logs, metrics or Redis: what identifies a client downstream is the key's configured *name*.
//!
//! Scopes: `admin` (generator control, and everything else), `ingest` (`POST /api/v1/logs`), `read`
//! (queries and status). With no keys configured the gateway is open (every anonymous client holds
//! every scope, a warning is logged at start), which is what a local stack wants, so it is allowed
//! only on a loopback address unless `allow_open` says otherwise; once keys exist, anonymous
//! clients hold `anonymous_scopes` (none by default).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Admin,
    Ingest,
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Ingest => "ingest",
            Scope::Read => "read",
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key: shown in logs and used as the rate-limit identity.
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Even the hash stays out of debug output: it is enough to test guesses offline.
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("sha256", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub keys: Vec<ApiKeyConfig>,
    /// Scopes of a request without a key once keys are configured; `None` means none.
    pub anonymous_scopes: Option<Vec<Scope>>,
    /// Serve every route to anyone, with no keys, on an address other than loopback. Without it a
    /// gateway with no keys only starts on a loopback address.
    pub allow_open: bool,
}

/// Who made the request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, or `None` for an anonymous client (limited by address).
    pub key_name: Option<String>,
    scopes: Vec<Scope>,
}

impl Principal {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>` or `X-API-Key`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("this key lacks the `{0}` scope")]
    Forbidden(&'static str),
}

#[derive(Debug, thiserror::Error)]
#[error("api key {name:?}: `sha256` must be 64 hex digits")]
pub struct BadKeyHash {
    pub name: String,
}

pub struct Authenticator {
    keys: Vec<([u8; 32], ApiKeyConfig)>,
    anonymous: Option<Vec<Scope>>,
    /// Clients whose failures hit the limit, refused outright until the instant (this instance).
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `base64(<a>:<b>)`, with `pick` choosing the key from the pair.
fn decoded_pair(
    value: &str,
    pick: impl for<'a> Fn(&'a str, &'a str) -> &'a str,
) -> Option<Cow<'static, str>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (a, b) = text.split_once(':')?;
    Some(Cow::Owned(pick(a, b).to_owned()))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, BadKeyHash> {
        let keys = settings
            .keys
            .iter()
            .map(|k| {
                parse_hex32(&k.sha256)
                    .map(|h| (h, k.clone()))
                    .ok_or_else(|| BadKeyHash {
                        name: k.name.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let anonymous = if keys.is_empty() {
            Some(vec![Scope::Admin])
        } else {
            settings.anonymous_scopes.clone()
        };
        Ok(Authenticator {
            keys,
            anonymous,
            blocked: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key a request presents, if any, in any form a shipper can send:
    /// `Authorization: Bearer <key>`; `X-API-Key: <key>`; `Authorization: Basic` with the key as
    /// the password (the user is free: Loki and Elasticsearch clients send one), or as the user
    /// when the password is empty; `Authorization: ApiKey` as Elasticsearch clients send it,
    /// base64 of `<id>:<key>` (the id is free), or the key itself.
    fn presented(headers: &HeaderMap) -> Option<Cow<'_, str>> {
        if let Some(v) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let (scheme, value) = v.trim().split_once(' ').unwrap_or((v, ""));
            let value = value.trim();
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => return Some(Cow::Borrowed(value)),
                "basic" => {
                    return decoded_pair(
                        value,
                        |user, pass| if pass.is_empty() { user } else { pass },
                    )
                }
                "apikey" => {
                    return decoded_pair(value, |_, key| key).or(Some(Cow::Borrowed(value)))
                }
                _ => {}
            }
        }
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(Cow::Borrowed)
    }

    /// Who the request is from, and whether it may use `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal, AuthError> {
        let principal = match Self::presented(headers) {
            Some(key) if !self.keys.is_empty() => {
                let key = key.as_ref();
                let presented = sha256(key.as_bytes());
                // Check every key, without an early exit, so timing says nothing about which matched.
                let mut found: Option<&ApiKeyConfig> = None;
                for (hash, cfg) in &self.keys {
                    if bool::from(hash.ct_eq(&presented)) {
                        found = Some(cfg);
                    }
                }
                let cfg = found.ok_or(AuthError::Invalid)?;
                Principal {
                    key_name: Some(cfg.name.clone()),
                    scopes: cfg.scopes.clone(),
                }
            }
            // An open gateway ignores keys rather than refusing them.
            _ => match &self.anonymous {
                Some(scopes) => Principal {
                    key_name: None,
                    scopes: scopes.clone(),
                },
                None => return Err(AuthError::Missing),
            },
        };
        if principal.allows(scope) {
            Ok(principal)
        } else if principal.key_name.is_none() {
            Err(AuthError::Missing)
        } else {
            Err(AuthError::Forbidden(scope.as_str()))
        }
    }

    /// Seconds this client stays refused after too many failures, if it is blocked now.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let mut blocked = self.blocked.lock().expect("lock");
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&ip);
            return None;
        }
        Some((until - now).as_secs().max(1))
    }

    pub fn block(&self, ip: IpAddr, for_secs: u64) {
        let mut blocked = self.blocked.lock().expect("lock");
        // Bounded: forget expired entries before adding when the map grows.
        if blocked.len() > 10_000 {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(ip, Instant::now() + Duration::from_secs(for_secs.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn settings() -> AuthSettings {
        AuthSettings {
            keys: vec![
                ApiKeyConfig {
                    name: "ops".into(),
                    sha256: hex(&sha256(b"admin-key")),
                    scopes: vec![Scope::Admin],
                },
                ApiKeyConfig {
                    name: "shipper".into(),
                    sha256: hex(&sha256(b"ingest-key")),
                    scopes: vec![Scope::Ingest],
                },
            ],
            anonymous_scopes: None,
            allow_open: false,
        }
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn a_key_is_taken_in_every_form_a_shipper_sends() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let a = Authenticator::new(&settings()).unwrap();
        let with = |value: String| {
            let mut h = HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            a.authorize(&h, Scope::Ingest).map(|p| p.key_name)
        };
        let shipper = Ok(Some("shipper".to_owned()));
        assert_eq!(with("bearer ingest-key".into()), shipper);
        assert_eq!(
            with(format!("Basic {}", b64("elastic:ingest-key"))),
            shipper
        );
        assert_eq!(with(format!("Basic {}", b64("ingest-key:"))), shipper);
        assert_eq!(
            with(format!("ApiKey {}", b64("shipper:ingest-key"))),
            shipper
        );
        assert_eq!(with("ApiKey ingest-key".into()), shipper);
        assert_eq!(
            with(format!("Basic {}", b64("ingest-key:wrong"))),
            Err(AuthError::Invalid)
        );
        assert_eq!(with("Basic %%%".into()), Err(AuthError::Missing));
    }

    #[test]
    fn a_key_is_known_by_its_hash_and_carries_its_scopes() {
        let a = Authenticator::new(&settings()).unwrap();
        let p = a.authorize(&bearer("ingest-key"), Scope::Ingest).unwrap();
        assert_eq!(p.key_name.as_deref(), Some("shipper"));
        assert_eq!(
            a.authorize(&bearer("ingest-key"), Scope::Admin),
            Err(AuthError::Forbidden("admin"))
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "admin-key".parse().unwrap());
        assert!(a.authorize(&h, Scope::Read).is_ok(), "admin implies read");
    }

    #[test]
    fn a_wrong_or_missing_key_is_refused_when_keys_are_configured() {
        let a = Authenticator::new(&settings()).unwrap();
        assert_eq!(
            a.authorize(&bearer("guess"), Scope::Read),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            a.authorize(&HeaderMap::new(), Scope::Read),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn anonymous_scopes_let_keyless_clients_read_only() {
        let mut s = settings();
        s.anonymous_scopes = Some(vec![Scope::Read]);
        let a = Authenticator::new(&s).unwrap();
        assert!(a.authorize(&HeaderMap::new(), Scope::Read).is_ok());
        assert_eq!(
            a.authorize(&HeaderMap::new(), Scope::Ingest),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn without_keys_the_gateway_is_open() {
        let a = Authenticator::new(&AuthSettings::default()).unwrap();
        assert!(a.is_open());
        assert!(a.authorize(&bearer("anything"), Scope::Admin).is_ok());
    }

    #[test]
    fn a_malformed_hash_is_a_config_error_naming_the_key() {
        let mut s = settings();
        s.keys[1].sha256 = "abc".into();
        let err = Authenticator::new(&s).err().unwrap();
        assert!(err.to_string().contains("shipper"));
    }

    #[test]
    fn debug_output_never_shows_the_hash() {
        let s = settings();
        assert!(!format!("{s:?}").contains(&s.keys[0].sha256));
    }
}
