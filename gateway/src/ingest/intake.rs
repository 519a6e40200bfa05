//! What every ingest route shares, whatever its protocol (logpipe's own, OTLP, Elasticsearch bulk,
//! Loki push): the body read within its limits and decoded from its `Content-Encoding`
//! ([`read_decoded`]), the context that turns it into events ([`Intake::context`]), and the
//! delivery: charge the client's limit per event, produce, answer only once Kafka acknowledged
//! ([`Intake::deliver`]). A protocol only decodes its body and writes its own answer.

use std::io::Read;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use tracing::Instrument;

use super::{charge_events, read_limited, traceparent, ParseContext, Payload, ProduceError};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::ratelimit::{limit_identity, Decision};
use crate::state::{AppState, Charged};
use crate::telemetry;

/// Why a request's events were not delivered: an error, or the limiter's 429 (with its headers).
#[derive(Debug)]
pub enum Undelivered {
    Error(ApiError),
    Limited(Response),
}

impl From<ApiError> for Undelivered {
    fn from(e: ApiError) -> Self {
        Undelivered::Error(e)
    }
}

impl IntoResponse for Undelivered {
    fn into_response(self) -> Response {
        match self {
            Undelivered::Error(e) => e.into_response(),
            Undelivered::Limited(r) => r,
        }
    }
}

/// The body as the client meant it: read within `body_limit_bytes`, then decoded from its
/// `Content-Encoding` (`gzip`, or none). The decoded body is held to the same limit, so a small
/// compressed body cannot expand into a large one (a "zip bomb" is a 413, not a full heap).
pub async fn read_decoded(
    s: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let raw = read_limited(s, headers, body).await?;
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => gunzip(&raw, s.config.body_limit_bytes).map(Bytes::from),
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_owned())),
    }
}

/// A gzip body, decoded up to `limit` bytes.
pub fn gunzip(raw: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("the gzip body could not be decoded: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(out)
}

/// What every ingest handler takes from its request before the body: the state, who sent it, from
/// where, and what the guard already charged. One extractor, so each protocol's handler is one
/// line: `respond(run(ingress.intake(route), req).await)`.
pub struct Ingress {
    pub state: AppState,
    pub principal: Principal,
    pub peer: SocketAddr,
    pub charged: Option<Charged>,
}

impl axum::extract::FromRequestParts<AppState> for Ingress {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        // The guard puts the principal on every API route; without it the route was served
        // around the guard, which the route table forbids.
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Undeclared("an ingest route".into()).into_response())?;
        Ok(Ingress {
            state: state.clone(),
            principal,
            peer,
            charged: parts.extensions.get::<Charged>().copied(),
        })
    }
}

impl Ingress {
    /// This request's intake on `route` (the template, for the limiter's refusal and its metric).
    pub fn intake(&self, route: &'static str) -> Intake<'_> {
        Intake {
            s: &self.state,
            principal: &self.principal,
            peer: self.peer,
            charged: self.charged,
            route,
        }
    }
}

/// A handler's answer: its own, or the refusal in the gateway's shape (which the protocols'
/// middleware gives each protocol's shape).
pub fn respond(r: Result<Response, Undelivered>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// One ingest request on its way in: who sent it, from where, and what its guard already charged.
pub struct Intake<'a> {
    pub s: &'a AppState,
    pub principal: &'a Principal,
    pub peer: SocketAddr,
    pub charged: Option<Charged>,
    /// The route template, for the limiter's refusal and its metric.
    pub route: &'static str,
}

impl<'a> Intake<'a> {
    /// How this request's body becomes events. Events without an id of their own get ids derived
    /// from the request's `Idempotency-Key` when it sends one; with `ids_from_body`, otherwise from
    /// the body itself, so a shipper's resend of the same body (the OTLP exporters, the
    /// Elasticsearch clients and Loki clients all resend a failed batch unchanged) stores each event
    /// once. Both are scoped to the key, so no other key can collide with them.
    pub fn context(
        &self,
        headers: &HeaderMap,
        default_service: &'a str,
        body: &[u8],
        ids_from_body: bool,
    ) -> ParseContext<'a> {
        use sha2::{Digest, Sha256};
        let settings = &self.s.config.ingest;
        let namespace = self.principal.key_name.as_deref().unwrap_or("anonymous");
        let id_seed = match headers.get("idempotency-key") {
            Some(k) => Some([b"idempotency\n", namespace.as_bytes(), b"\n", k.as_bytes()].concat()),
            None if ids_from_body => Some(
                [
                    b"body\n".as_slice(),
                    namespace.as_bytes(),
                    b"\n",
                    Sha256::digest(body).as_slice(),
                ]
                .concat(),
            ),
            None => None,
        };
        // The trace events belong to: this request's span when tracing is on, else the caller's.
        let tp = logpipe_common::telemetry::traceparent_of(&tracing::Span::current())
            .or_else(|| traceparent(headers));
        ParseContext {
            received_at: Utc::now(),
            max_events: settings.max_events,
            max_future_secs: settings.max_future_secs,
            max_event_bytes: settings.max_event_bytes,
            default_service,
            id_seed,
            tenant: self.principal.key_name.clone(),
            trace_id: tp.as_deref().map(|t| t[3..35].to_owned()),
        }
    }

    /// Charge the events to the client's ingest limit, produce them, and return once Kafka
    /// acknowledged every one (the limiter's decision, for the answer's headers). Counted in
    /// `ingest_events_total` by outcome.
    pub async fn deliver(
        self,
        headers: &HeaderMap,
        events: &[impl Payload + Sync],
    ) -> Result<Option<Decision>, Undelivered> {
        let s = self.s;
        let identity = limit_identity(self.principal, self.peer.ip());
        let decision =
            match charge_events(s, self.route, &identity, events.len(), self.charged).await? {
                Ok(decision) => decision,
                Err(refusal) => return Err(Undelivered::Limited(refusal)),
            };
        let publish = logpipe_common::telemetry::publish_span(
            &s.config.kafka.raw_topic,
            events.len() as u64,
            tracing::Span::current().id(),
        );
        let tp = logpipe_common::telemetry::traceparent_of(&tracing::Span::current())
            .or_else(|| traceparent(headers));
        let header_tp = logpipe_common::telemetry::traceparent_of(&publish).or(tp);
        let produced = s
            .producer
            .produce_all(events, header_tp.as_deref())
            .instrument(publish)
            .await;
        match produced {
            Ok(()) => {
                telemetry::ingest_events("accepted", events.len());
                Ok(decision)
            }
            Err(e @ ProduceError::TooLarge { .. }) => {
                telemetry::ingest_events("rejected", events.len());
                Err(
                    ApiError::EventTooLarge(format!("{e} (the index counts accepted events only)"))
                        .into(),
                )
            }
            Err(e) => {
                telemetry::ingest_events("failed", events.len());
                tracing::warn!(error = %e, "ingest not acknowledged by Kafka");
                Err(ApiError::KafkaUnavailable(e.to_string()).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_body_is_decoded_and_held_to_the_limit_after_decoding() {
        let text = b"line one\nline two\n".repeat(100);
        assert_eq!(gunzip(&gzip(&text), 10_000).unwrap(), text);
        // 1 MB of zeros compresses to about 1 KB: refused as too large once decoded, not before.
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 8 << 10);
        assert!(matches!(
            gunzip(&bomb, 64 << 10),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(ApiError::BadRequest(_))
        ));
        // Concatenated members are one body (what `gzip a b` and some shippers send).
        let two = [gzip(b"a\n"), gzip(b"b\n")].concat();
        assert_eq!(gunzip(&two, 100).unwrap(), b"a\nb\n");
    }

    proptest::proptest! {
        /// Whatever arrives as "gzip", decoding answers or refuses within the limit.
        #[test]
        fn any_gzip_body_decodes_or_is_refused_within_the_limit(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            cut in 0usize..300,
        ) {
            let _ = gunzip(&bytes, 4096);
            let good = gzip(&bytes);
            let truncated = &good[..cut.min(good.len())];
            if let Ok(out) = gunzip(truncated, 4096) {
                proptest::prop_assert!(out.len() <= 4096);
            }
        }
    }
}
