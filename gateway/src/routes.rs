//! The route table: every route with its [`Access`], one list that builds the router, the OpenAPI
//! document (each operation's security and refusals) and the guard's table; and the router itself,
//! its layers in order (request id → span, metrics and JSON errors → browser checks → body limit →
//! for API routes, load shedding at the concurrency limit → guard → handler).

use std::collections::HashMap;
use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::middleware;
use axum::{BoxError, Router};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody};
use crate::ingest::{IngestAccepted, Rejected};
use crate::middleware::{guard, observe, scope_for, Access, TraceTrust};
use crate::ops::not_found;
use crate::ratelimit::RouteClass;
use crate::state::AppState;
use crate::{control, ingest, protocols, query};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "logpipe gateway",
        description = "The public entry of logpipe: generator control, log ingest and queries. \
            Send the API key as `Authorization: Bearer <key>` or `X-API-Key`. Limited routes answer with \
            `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refusal is 429 with `Retry-After`. \
            Every error is `{\"error\": \"...\", \"detail\": \"...\"}`."
    ),
    components(schemas(ErrorBody, Rejected, IngestAccepted)),
    modifiers(&KeySchemes)
)]
struct ApiDoc;

/// The two ways a key is sent, named by each operation's security requirement.
struct KeySchemes;

impl utoipa::Modify for KeySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <key>`; the requirement lists the scope the key needs"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "x_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The routes this gateway serves, each with its [`Access`]. One table drives the router, the
/// OpenAPI document (each operation's security and refusals) and the guard, and the guard refuses
/// any matched route the table does not hold: a route cannot be served open by omission.
pub struct Routes {
    router: OpenApiRouter<AppState>,
    access: HashMap<String, Access>,
}

impl Routes {
    fn new(doc: utoipa::openapi::OpenApi) -> Routes {
        Routes {
            router: OpenApiRouter::with_openapi(doc),
            access: HashMap::new(),
        }
    }

    /// Register a handler (from `routes!`) under `access`.
    fn add(mut self, access: Access, route: UtoipaMethodRouter<AppState>) -> Routes {
        let (schemas, mut paths, method_router) = route;
        for (path, item) in paths.paths.iter_mut() {
            let before = self.access.insert(path.clone(), access);
            assert!(
                before.is_none_or(|a| a == access),
                "{path} is declared twice with different access"
            );
            document_access(access, item);
        }
        self.router = self.router.routes((schemas, paths, method_router));
        self
    }

    /// The access each served path template was declared with.
    pub fn access(&self) -> &HashMap<String, Access> {
        &self.access
    }
}

/// Every route the gateway serves. Only API routes shed load: /health, /ready and /metrics must
/// answer while the API is busy.
pub fn routes() -> (Routes, Routes) {
    let api = Routes::new(ApiDoc::openapi())
        .add(Access::Api(RouteClass::Control), routes!(control::start))
        .add(Access::Api(RouteClass::Control), routes!(control::stop))
        .add(Access::Api(RouteClass::Query), routes!(control::status))
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(ingest::ingest_logs),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::stats))
        .add(
            Access::Api(RouteClass::Query),
            routes!(query::service_stats),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::alerts))
        .add(Access::Api(RouteClass::Query), routes!(query::events))
        .add(
            Access::Api(RouteClass::Query),
            routes!(crate::console::events_stream),
        )
        .add(Access::Api(RouteClass::Query), routes!(query::timeline))
        .add(
            Access::Api(RouteClass::Query),
            routes!(crate::console::pipeline),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::otlp::export_logs),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::elastic::bulk),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::elastic::bulk_index),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::elastic::template),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::elastic::legacy_template),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::elastic::ilm_policy),
        )
        .add(
            Access::Api(RouteClass::Ingest),
            routes!(protocols::loki::push),
        );
    let ops = Routes::new(utoipa::openapi::OpenApi::default())
        .add(Access::Public, routes!(crate::ops::health))
        .add(Access::Public, routes!(crate::ops::ready))
        .add(Access::Public, routes!(crate::ops::metrics))
        .add(Access::Public, routes!(crate::ops::openapi_json))
        .add(Access::Public, routes!(crate::console::index))
        .add(Access::Public, routes!(crate::console::file))
        .add(Access::Public, routes!(protocols::elastic::license))
        .add(Access::Public, routes!(protocols::elastic::cluster_health));
    (api, ops)
}

/// What the table says of an operation, written into the document: the scope its key needs, the
/// limit it spends, and the refusals that follow from both.
fn document_access(access: Access, item: &mut utoipa::openapi::PathItem) {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let Access::Api(class) = access else {
        return;
    };
    let scope = scope_for(class).as_str();
    let refusals = [
        ("401", "Missing or invalid API key"),
        ("403", "The key lacks the route's scope"),
        (
            "429",
            "The client's limit for this route class is spent; see `Retry-After`",
        ),
    ];
    for op in [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.patch,
        &mut item.delete,
        &mut item.head,
    ]
    .into_iter()
    .flatten()
    {
        op.security = Some(vec![
            SecurityRequirement::new("bearer", [scope]),
            SecurityRequirement::new("x_api_key", [scope]),
        ]);
        for (status, description) in refusals {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| {
                    RefOr::T(
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(RefOr::Ref(
                                        utoipa::openapi::Ref::from_schema_name("ErrorBody"),
                                    )))
                                    .build(),
                            )
                            .build(),
                    )
                });
        }
        let ext = ExtensionsBuilder::new()
            .add("x-logpipe-limit-class", class.as_str())
            .build();
        match &mut op.extensions {
            Some(e) => e.merge(ext),
            None => op.extensions = Some(ext),
        }
    }
}

/// The OpenAPI document of every route this gateway serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (api, ops) = routes();
    let (_, mut doc) = api.router.split_for_parts();
    let (_, ops) = ops.router.split_for_parts();
    doc.merge(ops);
    doc
}

pub fn router(state: AppState) -> Router {
    let x_request_id = header::HeaderName::from_static("x-request-id");
    let (api, ops) = routes();
    let table: Arc<HashMap<String, Access>> = Arc::new(
        api.access
            .iter()
            .chain(ops.access.iter())
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    );
    let (api, mut doc) = api.router.split_for_parts();
    let (ops, ops_doc) = ops.router.split_for_parts();
    doc.merge(ops_doc);
    let doc = Arc::new(doc);
    let guard = middleware::from_fn_with_state((state.clone(), table), guard);
    let api = api.layer(guard.clone()).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: BoxError| async {
                ApiError::Overloaded
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(
                state.config.max_concurrent_requests.max(1),
            )),
    );
    api.merge(ops.layer(guard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(axum::Extension(doc))
        .layer(middleware::from_fn_with_state(
            state.browser.clone(),
            crate::browser::guard,
        ))
        .layer(middleware::from_fn_with_state(
            TraceTrust::of(&state.config),
            observe,
        ))
        .layer(middleware::from_fn(protocols::protocol_errors))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(
            x_request_id,
            SequentialRequestId::new(),
        ))
        .with_state(state)
}

/// Request ids: a random 64-bit prefix per process and a counter, as 32 hex digits. Unique across
/// instances like a UUID, without a `getrandom` system call per request.
#[derive(Clone)]
struct SequentialRequestId {
    prefix: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> SequentialRequestId {
        SequentialRequestId {
            prefix: rand::random(),
            next: Arc::default(),
        }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:016x}{n:016x}", self.prefix);
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}
