//! Logging, tracing export and metrics setup shared by the services.
//!
//! Spans go to Zipkin (v2 JSON over HTTP) when `zipkin_endpoint` is set, sampled parent-based: a
//! request or record that arrives with a `traceparent` follows its sampled flag, a new trace is
//! sampled with `sample_ratio`. Unset, nothing is exported and nothing complains. The helpers at the
//! end turn a span into a W3C `traceparent` and back, for HTTP and Kafka headers.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// Zipkin's span endpoint, e.g. `http://127.0.0.1:9411/api/v2/spans`; unset = no export.
    pub zipkin_endpoint: Option<String>,
    /// Share of new traces that are sampled (0.0-1.0); traces started upstream keep their decision.
    pub sample_ratio: f64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            zipkin_endpoint: None,
            sample_ratio: 0.01,
        }
    }
}

/// Flushes and stops the span exporter when dropped (end of `main`).
#[must_use]
pub struct TracingGuard(Option<SdkTracerProvider>);

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn,sqlx=warn"))
}

fn fmt_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_target(false)
        // Colour only on a terminal: the scripts send logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
}

/// Logs only (tests, tools). `RUST_LOG` overrides the default `info`. Safe to call twice.
pub fn init_tracing() {
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(fmt_layer())
        .try_init();
}

/// Logs, plus span export to Zipkin as `service` when the settings name an endpoint. A bad endpoint
/// is reported once and tracing stays off.
pub fn init_tracing_for(service: &str, settings: &TracingSettings) -> TracingGuard {
    let Some(endpoint) = settings
        .zipkin_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    else {
        init_tracing();
        return TracingGuard(None);
    };
    let client = NamedZipkinClient {
        inner: reqwest::blocking::Client::new(),
        service: service.to_owned(),
    };
    let exporter = match opentelemetry_zipkin::ZipkinExporter::builder()
        .with_http_client(client)
        .with_collector_endpoint(endpoint)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            init_tracing();
            tracing::error!(error = %e, endpoint, "Zipkin exporter not started; tracing is off");
            return TracingGuard(None);
        }
    };
    let ratio = settings.sample_ratio.clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("logpipe");
    // Only spans go to Zipkin; the fmt layer still decides what is logged.
    // Only what the semantic conventions name: no code locations, threads or busy/idle timings.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(fmt_layer().with_filter(env_filter()))
        .with(otel)
        .try_init();
    tracing::info!(endpoint, sample_ratio = ratio, "exporting spans to Zipkin");
    TracingGuard(Some(provider))
}

/// The HTTP client the Zipkin exporter posts through. opentelemetry-zipkin 0.31 sends
/// `localEndpoint` without `serviceName` (the resource's `service.name` is not mapped), which leaves
/// every span in Zipkin under an empty service; this client fills it in before posting.
#[derive(Debug)]
struct NamedZipkinClient {
    inner: reqwest::blocking::Client,
    service: String,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for NamedZipkinClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let body = with_service_name(&body, &self.service)
            .map(bytes::Bytes::from)
            .unwrap_or(body);
        self.inner
            .send_bytes(http::Request::from_parts(parts, body))
            .await
    }
}

/// Zipkin v2 JSON spans with `localEndpoint.serviceName` set; `None` if the body is not such JSON.
fn with_service_name(body: &[u8], service: &str) -> Option<Vec<u8>> {
    let mut spans: serde_json::Value = serde_json::from_slice(body).ok()?;
    for span in spans.as_array_mut()? {
        let endpoint = span
            .as_object_mut()?
            .entry("localEndpoint")
            .or_insert_with(|| serde_json::json!({}));
        endpoint
            .as_object_mut()?
            .insert("serviceName".into(), service.into());
    }
    serde_json::to_vec(&spans).ok()
}

/// The span one batch is produced to Kafka in, under `parent` (`None`: a trace of its own), named
/// as OpenTelemetry's messaging conventions name it. Every producer of events uses it (the
/// generator's workers, the gateway's ingest and syslog), so one trace looks alike wherever it
/// starts.
pub fn publish_span(topic: &str, messages: u64, parent: Option<tracing::Id>) -> tracing::Span {
    tracing::info_span!(
        parent: parent,
        "kafka.publish",
        otel.name = %format!("publish {topic}"),
        otel.kind = "producer",
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
        messaging.batch.message_count = messages,
    )
}

/// The W3C `traceparent` of `span`, when it belongs to a trace (tracing export on).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The remote parent a `traceparent` header names, if well formed.
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// `tp` trimmed and lower-cased when it is a well-formed W3C `traceparent` (version 00, non-zero
/// ids): the one check for a traceparent arriving in an HTTP or a Kafka header.
pub fn well_formed_traceparent(tp: &str) -> Option<String> {
    let tp = tp.trim();
    // `from_str_radix` would take a leading `+`; a header is hex digits and dashes only.
    if !tp.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()) {
        return None;
    }
    parse_traceparent(tp).map(|_| tp.to_ascii_lowercase())
}

/// The route template axum matched for `req` (`unmatched` when none): the bounded label metrics and
/// spans use, never the raw path.
pub fn matched_route(req: &axum::extract::Request) -> String {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into())
}

/// The server span of one HTTP request (OpenTelemetry HTTP conventions; named by its route
/// template), continuing the caller's trace when it sent a `traceparent`. The caller records
/// `http.response.status_code` (and `otel.status_code` on a 5xx) with [`record_http_status`].
pub fn http_server_span(req: &axum::extract::Request, route: &str) -> tracing::Span {
    let method = req.method().as_str();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    set_remote_parent(&span, traceparent);
    span
}

/// Axum middleware: each request runs inside its [`http_server_span`], named by the matched route
/// template, and the span gets the response status. Gateway and generator both use it.
pub async fn trace_http(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = matched_route(&req);
    let span = http_server_span(&req, &route);
    let resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    record_http_status(&span, resp.status().as_u16());
    resp
}

/// Record the response status on a span made by [`http_server_span`].
pub fn record_http_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Make `span` a child of the trace `traceparent` names (no-op when absent or malformed).
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// True when the `traceparent` says its trace is sampled (worth spans downstream).
/// A record's `traceparent` header when it asks for sampling, well formed and lower-cased; None
/// otherwise. Most records carry a trace nobody samples (flags `00`): their flags field is read
/// first and the header goes no further, so an unsampled record costs no parse and no allocation.
pub fn sampled_traceparent(header: &[u8]) -> Option<String> {
    let flags = header.trim_ascii().split(|b| *b == b'-').nth(3)?;
    let flags = std::str::from_utf8(flags).ok()?;
    match u8::from_str_radix(flags, 16) {
        // The sampled flag is bit 0 (W3C Trace Context); a field that is not hex falls through to
        // the full check, which refuses it.
        Ok(f) if f & 1 == 0 && flags.len() == 2 => None,
        _ => {
            let tp = well_formed_traceparent(std::str::from_utf8(header).ok()?)?;
            is_sampled(&tp).then_some(tp)
        }
    }
}

pub fn is_sampled(traceparent: &str) -> bool {
    parse_traceparent(traceparent).is_some_and(|sc| sc.is_sampled())
}

pub use opentelemetry::Context as TraceContext;

/// The trace context of the current span (what a task started now should continue).
pub fn current_context() -> TraceContext {
    tracing::Span::current().context()
}

/// Make `span` a child of `cx` (a context captured with [`current_context`]).
pub fn set_parent_context(span: &tracing::Span, cx: TraceContext) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id part of `span`'s context, for storing with an event.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use. One process has one recorder, so
/// services started together in a test share it; their metric names do not overlap.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                // Seconds-valued histograms: from 0.5 ms to 10 s covers HTTP calls and DB batches.
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .expect("bucket list is not empty")
                // Batch sizes, in events: from one (an idle pipeline) to the largest batch limit.
                .set_buckets_for_metric(
                    Matcher::Suffix("_batch_events".into()),
                    &[
                        1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                        25000.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `sampled_traceparent` must equal: the full check, then the flag.
    fn slow_path(header: &[u8]) -> Option<String> {
        well_formed_traceparent(std::str::from_utf8(header).ok()?).filter(|tp| is_sampled(tp))
    }

    /// Traceparents near the valid form: each part a hex run of any length (the right one most of
    /// the time), any flags, sometimes upper case, padded, with extra parts, or a foreign byte.
    fn near_traceparent() -> impl Strategy<Value = Vec<u8>> {
        let hex =
            |n: usize| proptest::string::string_regex(&format!("[0-9a-fA-F]{{{n}}}")).unwrap();
        (
            prop_oneof![Just("00".to_owned()), hex(2), "[0-9a-z+ ]{0,3}"],
            prop_oneof![4 => hex(32), 1 => "[0-9a-f]{0,40}"],
            prop_oneof![4 => hex(16), 1 => "[0-9a-f]{0,20}"],
            prop_oneof![4 => hex(2), 1 => "[0-9a-zA-Z+ -]{0,4}"],
            prop_oneof![4 => Just(String::new()), 1 => "-[0-9a-f]{0,6}"],
            prop_oneof![4 => Just(String::new()), 1 => Just(" ".to_owned())],
        )
            .prop_map(|(v, t, s, f, extra, pad)| {
                format!("{pad}{v}-{t}-{s}-{f}{extra}{pad}").into_bytes()
            })
    }

    proptest! {
        #[test]
        fn the_fast_path_answers_as_the_full_check_does(
            header in prop_oneof![4 => near_traceparent(), 1 => proptest::collection::vec(any::<u8>(), 0..70)]
        ) {
            prop_assert_eq!(sampled_traceparent(&header), slow_path(&header));
        }
    }

    #[test]
    fn an_unsampled_trace_is_not_parsed_and_a_sampled_one_is_checked() {
        let sampled = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            sampled_traceparent(sampled).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            sampled_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None
        );
        assert_eq!(sampled_traceparent(b"00-zz-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn traceparent_parses_and_keeps_the_sampled_flag() {
        let sc =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(!is_sampled(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn only_well_formed_traceparents_are_passed_on_lower_cased() {
        assert_eq!(
            well_formed_traceparent(" 00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01 ")
                .as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        for bad in [
            "00-zz-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "",
        ] {
            assert_eq!(well_formed_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn spans_posted_to_zipkin_get_the_service_name() {
        let body = br#"[{"traceId":"a","id":"b","localEndpoint":{}},{"traceId":"a","id":"c"}]"#;
        let out: serde_json::Value =
            serde_json::from_slice(&with_service_name(body, "logpipe-gateway").unwrap()).unwrap();
        assert_eq!(out[0]["localEndpoint"]["serviceName"], "logpipe-gateway");
        assert_eq!(out[1]["localEndpoint"]["serviceName"], "logpipe-gateway");
        assert_eq!(with_service_name(b"not json", "x"), None);
    }

    #[test]
    fn without_export_a_span_has_no_traceparent() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent_of(&span), None);
    }
}
