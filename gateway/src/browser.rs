//! What keeps a web page the operator happens to open from driving the gateway: the `Host` a
//! request names must be one of this gateway's names (DNS rebinding makes a page's own origin
//! resolve to 127.0.0.1, but it cannot change the `Host` the browser sends); a state-changing
//! request a browser sends from another origin is refused (browsers send `Origin` on every
//! cross-origin POST, `no-cors` ones included); and every answer carries headers that keep the
//! console out of frames and scripts to its own files.
//!
//! Clients that are not browsers (curl, shippers, SDKs) send no `Origin` and are not affected.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrowserSettings {
    /// Host names (no port) requests may name in `Host`, besides `localhost`, the loopback
    /// addresses and the address the gateway binds: the names a proxy or DNS gives this gateway.
    /// `["*"]` turns the check off (a proxy in front checks `Host` itself).
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://console.example.com`) whose pages may send state-changing requests,
    /// besides the gateway's own origin.
    pub allowed_origins: Vec<String>,
}

/// The policy, built once from the settings and the bind address.
#[derive(Debug, Clone)]
pub struct BrowserPolicy {
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
}

/// The console loads only its own files; nothing may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl BrowserPolicy {
    pub fn new(settings: &BrowserSettings, bind_host: &str) -> BrowserPolicy {
        let hosts = if settings.allowed_hosts.iter().any(|h| h == "*") {
            None
        } else {
            let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
                .into_iter()
                .map(str::to_owned)
                .chain(settings.allowed_hosts.iter().map(|h| normalize_host(h)))
                .collect();
            let bound = normalize_host(bind_host);
            if !bound.is_empty() && bound != "0.0.0.0" && bound != "::" {
                hosts.push(bound);
            }
            Some(hosts)
        };
        BrowserPolicy {
            hosts,
            origins: settings
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// `None` when the request may go on; else the refusal.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Option<ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| h.to_ascii_lowercase());
        if let (Some(allowed), Some(h)) = (&self.hosts, &host) {
            let name = normalize_host(strip_port(h));
            if !allowed.contains(&name) {
                return Some(ApiError::HostNotAllowed(name));
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let origin = headers.get(header::ORIGIN).map(|v| {
            v.to_str()
                .unwrap_or("null")
                .trim_end_matches('/')
                .to_ascii_lowercase()
        });
        let from_page = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site" || v == "same-site");
        match origin {
            Some(o) if same_origin(&o, host.as_deref()) || self.origins.contains(&o) => None,
            Some(o) => Some(ApiError::CrossOrigin(o)),
            None if from_page => Some(ApiError::CrossOrigin("(not sent)".into())),
            None => None,
        }
    }
}

/// The page's origin names the host and port this request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |a: &str| {
        if has_port(a) {
            a.to_owned()
        } else {
            format!("{a}:{default_port}")
        }
    };
    with_port(authority) == with_port(host)
}

fn has_port(authority: &str) -> bool {
    match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    }
}

fn strip_port(authority: &str) -> &str {
    if has_port(authority) {
        &authority[..authority.rfind(':').unwrap_or(authority.len())]
    } else {
        authority
    }
}

fn normalize_host(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Middleware: refuse what [`BrowserPolicy::check`] refuses; add the protective headers to every
/// answer.
pub async fn guard(
    State(policy): State<std::sync::Arc<BrowserPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = match policy.check(req.method(), req.headers()) {
        Some(refusal) => {
            crate::telemetry::browser_refused(refusal.code());
            refusal.into_response()
        }
        None => next.run(req).await,
    };
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Is this request from a web page? Browsers send at least one of these; curl and shippers none.
pub fn from_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-mode")
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key(header::REFERER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn policy() -> BrowserPolicy {
        BrowserPolicy::new(&BrowserSettings::default(), "127.0.0.1")
    }

    #[test]
    fn loopback_names_pass_and_a_rebound_name_is_refused() {
        let p = policy();
        for host in [
            "localhost:8090",
            "127.0.0.1:8090",
            "[::1]:8090",
            "LOCALHOST",
            "127.0.0.1",
        ] {
            assert!(
                p.check(&Method::GET, &headers(&[("host", host)])).is_none(),
                "{host}"
            );
        }
        let refused = p.check(&Method::GET, &headers(&[("host", "attacker.example:8090")]));
        assert!(matches!(refused, Some(ApiError::HostNotAllowed(h)) if h == "attacker.example"));
    }

    #[test]
    fn configured_names_and_the_star_widen_the_host_check() {
        let s = BrowserSettings {
            allowed_hosts: vec!["logs.example.com".into()],
            ..Default::default()
        };
        let p = BrowserPolicy::new(&s, "0.0.0.0");
        assert!(p
            .check(&Method::GET, &headers(&[("host", "logs.example.com")]))
            .is_none());
        assert!(p
            .check(&Method::GET, &headers(&[("host", "0.0.0.0")]))
            .is_some());
        let open = BrowserPolicy::new(
            &BrowserSettings {
                allowed_hosts: vec!["*".into()],
                ..Default::default()
            },
            "0.0.0.0",
        );
        assert!(open
            .check(&Method::GET, &headers(&[("host", "any.example")]))
            .is_none());
    }

    #[test]
    fn a_cross_origin_post_is_refused_and_same_origin_or_no_origin_passes() {
        let p = policy();
        let post = |pairs: &[(&'static str, &str)]| p.check(&Method::POST, &headers(pairs));
        assert!(post(&[("host", "127.0.0.1:8090")]).is_none(), "curl");
        assert!(post(&[
            ("host", "127.0.0.1:8090"),
            ("origin", "http://127.0.0.1:8090")
        ])
        .is_none());
        assert!(post(&[("host", "localhost"), ("origin", "http://localhost:80")]).is_none());
        for origin in [
            "http://127.0.0.1:9999",
            "http://evil.example",
            "null",
            "file://",
        ] {
            assert!(
                matches!(
                    post(&[("host", "127.0.0.1:8090"), ("origin", origin)]),
                    Some(ApiError::CrossOrigin(_))
                ),
                "{origin}"
            );
        }
        assert!(post(&[("host", "127.0.0.1:8090"), ("sec-fetch-site", "cross-site")]).is_some());
        assert!(
            p.check(
                &Method::GET,
                &headers(&[
                    ("host", "127.0.0.1:8090"),
                    ("origin", "http://evil.example")
                ])
            )
            .is_none(),
            "reads are not state changes (and get no CORS headers to read with)"
        );
    }

    #[test]
    fn a_configured_origin_may_post() {
        let p = BrowserPolicy::new(
            &BrowserSettings {
                allowed_origins: vec!["https://console.example.com/".into()],
                ..Default::default()
            },
            "127.0.0.1",
        );
        assert!(p
            .check(
                &Method::POST,
                &headers(&[
                    ("host", "127.0.0.1"),
                    ("origin", "https://console.example.com")
                ])
            )
            .is_none());
    }

    proptest! {
        /// No Host value, however odd, panics the check; any name not allowed is refused.
        #[test]
        fn any_host_is_checked_without_panicking(host in "[ -~]{0,40}") {
            let p = policy();
            let Ok(v) = HeaderValue::from_str(&host) else { return Ok(()); };
            let mut h = HeaderMap::new();
            h.insert(header::HOST, v);
            h.insert(header::ORIGIN, HeaderValue::from_static("http://x.example"));
            let out = p.check(&Method::POST, &h);
            let name = normalize_host(strip_port(&host.to_ascii_lowercase()));
            if !["localhost", "127.0.0.1", "::1"].contains(&name.as_str()) {
                prop_assert!(matches!(out, Some(ApiError::HostNotAllowed(_))));
            } else {
                prop_assert!(matches!(out, Some(ApiError::CrossOrigin(_))));
            }
        }
    }
}
