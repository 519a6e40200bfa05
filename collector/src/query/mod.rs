//! The query API the gateway forwards to: stats (overall and per service), alerts and events, with
//! filters and cursor pagination. Counts come from the window rows (they include events the filter
//! did not store raw); messages and events come from the raw rows.
//!
//! Parameters are checked by hand so every mistake gets a 400 naming the parameter; unknown
//! parameters are refused too, since a typo'd filter silently returning everything is worse.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use logpipe_common::query::{
    self, AlertsPage, AlertsParams, LatencySummary, ServiceCount, Stats as StatsAnswer,
    StatsParams, Timeline, TimelineParams, TimelineWindow, TopMessage,
};
use logpipe_common::Level;
use serde_json::{json, Value};
use sqlx::{PgPool, QueryBuilder, Row};

use crate::alerts::{alert_row, ALERT_COLUMNS};
use crate::detect::AlertKind;
use crate::state::AppState;
use crate::windows::Stats;

mod events;
pub use events::*;

/// The page size's default and most, as the contract states them.
pub const DEFAULT_LIMIT: i64 = query::DEFAULT_LIMIT as i64;
pub const MAX_LIMIT: i64 = query::MAX_LIMIT as i64;
/// Rows read at most to rank top messages (the most recent in the range).
pub const TOP_MESSAGES_SAMPLE: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("parameter `{param}`: {reason}")]
    BadParam { param: String, reason: String },
    #[error("database unavailable: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    TooManyStreams(String),
    #[error("{0}")]
    TooManyClientStreams(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            ApiError::BadParam { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            // A row that does not decode is this service's fault, not the database's absence.
            ApiError::Db(
                sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnNotFound(_),
            )
            | ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            // PostgreSQL cancelled it at `statement_timeout` (SQLSTATE 57014).
            ApiError::Db(sqlx::Error::Database(e)) if e.code().as_deref() == Some("57014") => {
                (StatusCode::GATEWAY_TIMEOUT, "query_timeout")
            }
            // Every query connection is busy: reads wait their turn, the writer is not touched.
            ApiError::Db(sqlx::Error::PoolTimedOut) => {
                (StatusCode::SERVICE_UNAVAILABLE, "query_capacity")
            }
            // A data exception (SQLSTATE class 22): a value the database cannot take, sent by the
            // client. Its own fault, and no sign that the database is down.
            ApiError::Db(sqlx::Error::Database(e))
                if e.code().is_some_and(|c| c.starts_with("22")) =>
            {
                (StatusCode::BAD_REQUEST, "invalid_parameter")
            }
            ApiError::Db(_) => (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules"),
            ApiError::TooManyStreams(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams"),
            ApiError::TooManyClientStreams(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_client_streams")
            }
        };
        if let ApiError::Db(e) = &self {
            tracing::warn!(error = %e, "query failed");
        }
        let detail = match error {
            "query_timeout" => {
                "the query ran past its time budget (`query_statement_timeout_ms`); \
                                narrow `from`/`to` or add filters"
                    .to_owned()
            }
            "query_capacity" => "every query connection is busy; retry shortly".to_owned(),
            // The database's own message names tables and SQL: logged above, never sent.
            "invalid_parameter" if matches!(self, ApiError::Db(_)) => {
                "a parameter holds a value the database cannot take".to_owned()
            }
            "database_unavailable" => {
                "the database did not answer the query; retry shortly".to_owned()
            }
            "internal" if matches!(self, ApiError::Db(_)) => {
                "a stored row did not decode; see the collector's log".to_owned()
            }
            _ => self.to_string(),
        };
        let mut resp = logpipe_common::http::error_response(status, error, detail);
        if matches!(
            error,
            "query_capacity" | "too_many_streams" | "too_many_client_streams"
        ) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}

pub(crate) fn bad(param: &str, reason: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

/// Query parameters, checked against the names an endpoint accepts.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    pub(crate) fn new(raw: HashMap<String, String>, allowed: &[&str]) -> Result<Params, ApiError> {
        if let Some(k) = raw.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!("unknown parameter; expected one of {}", allowed.join(", ")),
            ));
        }
        // PostgreSQL refuses U+0000 in text: a 400 here, not a failed query (and a 503) later.
        if let Some(k) = raw.iter().find_map(|(k, v)| v.contains('\0').then_some(k)) {
            return Err(bad(k, "must not contain a NUL character"));
        }
        Ok(Params(raw))
    }

    /// A free-text filter or the cursor (`service`, `q`, `cursor`): empty means none.
    pub(crate) fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A typed parameter (time, number, enum): present means it must parse, even empty, as the
    /// OpenAPI document says.
    pub(crate) fn typed(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn time(&self, k: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.typed(k)
            .map(|v| {
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| bad(k, format!("not an RFC 3339 time ({e})")))
            })
            .transpose()
    }

    /// `from`/`to`, defaulting to the last hour; `from` must not be after `to` (equal is an
    /// empty range, answered with nothing).
    fn range(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let to = self.time("to")?.unwrap_or_else(Utc::now);
        let from = self.time("from")?.unwrap_or(to - Duration::hours(1));
        if from > to {
            return Err(bad("from", "must not be after `to`"));
        }
        Ok((from, to))
    }

    /// [`Params::range`], refused when longer than `max_hours`: for queries that read every row
    /// of their range.
    pub(crate) fn capped_range(
        &self,
        max_hours: u32,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
        let (from, to) = self.range()?;
        if to - from > Duration::hours(i64::from(max_hours)) {
            return Err(bad(
                "from",
                format!(
                    "the range from `from` to `to` is longer than {max_hours} hours, the longest \
                     this query may scan (`database.query_max_range_hours`); narrow it"
                ),
            ));
        }
        Ok((from, to))
    }

    pub(crate) fn level(&self, k: &str) -> Result<Option<Level>, ApiError> {
        self.typed(k)
            .map(|v| v.parse::<Level>().map_err(|e| bad(k, e.to_string())))
            .transpose()
    }

    fn limit(&self) -> Result<i64, ApiError> {
        match self.typed("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))),
        }
    }

    /// Cursor `<micros>.<id>`: the sort key of the last item of the previous page.
    fn cursor(&self) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
        let Some(c) = self.str("cursor") else {
            return Ok(None);
        };
        let invalid = || bad("cursor", "not a cursor returned by this API");
        let (micros, id) = c.split_once('.').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        let ts = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        if id.is_empty() {
            return Err(invalid());
        }
        Ok(Some((ts, id.to_owned())))
    }
}

fn cursor_of(ts: DateTime<Utc>, id: &str) -> String {
    format!("{}.{id}", ts.timestamp_micros())
}

/// `GET /api/v1/stats`
pub async fn stats(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<StatsAnswer>, ApiError> {
    let p = Params::new(raw, StatsParams::NAMES)?;
    let (from, to) = p.capped_range(s.max_range_hours)?;
    Ok(Json(stats_body(&s, from, to, None).await?))
}

/// `GET /api/v1/stats/{service}`
pub async fn service_stats(
    State(s): State<AppState>,
    Path(service): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<StatsAnswer>, ApiError> {
    let p = Params::new(raw, StatsParams::NAMES)?;
    if service.contains('\0') {
        return Err(bad("service", "must not contain a NUL character"));
    }
    let (from, to) = p.capped_range(s.max_range_hours)?;
    Ok(Json(stats_body(&s, from, to, Some(&service)).await?))
}

async fn stats_body(
    s: &AppState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    service: Option<&str>,
) -> Result<StatsAnswer, ApiError> {
    let pool = s.db.query_pool();
    let width = stats_width(&s.stats_windows_secs, to - from);
    let rows = sqlx::query(STATS_SQL)
        .bind(width)
        .bind(from)
        .bind(to)
        .bind(service)
        .fetch_all(pool)
        .await?;
    let mut by_level: HashMap<&'static str, i64> =
        Level::ALL.iter().map(|l| (l.as_str(), 0)).collect();
    let mut per_service: HashMap<String, (i64, i64)> = HashMap::new();
    let mut latency = Stats::default();
    let mut total = 0i64;
    for r in &rows {
        // `try_get`: a row that does not decode is an error answer (500), never a panic.
        let level: String = r.try_get("level")?;
        let n: i64 = r.try_get("n")?;
        let svc: String = r.try_get("service")?;
        total += n;
        let lvl = level.parse::<Level>().unwrap_or(Level::Info);
        *by_level.entry(lvl.as_str()).or_default() += n;
        let e = per_service.entry(svc).or_default();
        e.0 += n;
        if lvl >= Level::Error {
            e.1 += n;
        }
        if service.is_some() {
            latency.merge(&Stats {
                count: n,
                latency_count: r.try_get("lc")?,
                latency_sum_ms: r.try_get::<Option<f64>, _>("ls")?.unwrap_or(0.0),
                latency_max_ms: r.try_get("lm")?,
                hist: Vec::new(),
            });
        }
    }
    if let Some(svc) = service {
        // Histograms of different lengths cannot be aggregated as one array: summed per bucket.
        latency.hist = merged_hist(pool, width, from, to, svc).await?;
    }
    let errors = by_level["ERROR"] + by_level["FATAL"];
    let mut services: Vec<ServiceCount> = per_service
        .into_iter()
        .map(|(service, (total, errors))| ServiceCount {
            error_rate: ratio(errors, total),
            service,
            total,
            errors,
        })
        .collect();
    services.sort_by(|a, b| b.total.cmp(&a.total).then(a.service.cmp(&b.service)));
    let top_messages = top_messages(pool, from, to, service).await?;
    Ok(StatsAnswer {
        from,
        to,
        window_secs: width,
        total,
        by_level: by_level
            .into_iter()
            .map(|(level, n)| (level.to_owned(), n))
            .collect(),
        errors,
        error_rate: ratio(errors, total),
        top_messages,
        service: service.map(str::to_owned),
        latency_ms: service.map(|_| LatencySummary {
            count: latency.latency_count,
            avg: (latency.latency_count > 0)
                .then(|| latency.latency_sum_ms / latency.latency_count as f64),
            p50: latency.quantile_ms(0.5),
            p95: latency.quantile_ms(0.95),
            max: latency.latency_max_ms,
        }),
        services: service.is_none().then_some(services),
    })
}

/// `GET /api/v1/timeline`: window counts per service and level over the range, oldest first, from
/// the narrowest tumbling width that gives at most 400 windows (the console's charts and window
/// table read it).
pub async fn timeline(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<Timeline>, ApiError> {
    let p = Params::new(raw, TimelineParams::NAMES)?;
    let (from, to) = p.capped_range(s.max_range_hours)?;
    let secs = (to - from).num_seconds();
    let width = s
        .stats_windows_secs
        .iter()
        .copied()
        .find(|w| secs <= 400 * i64::from(*w))
        .or_else(|| s.stats_windows_secs.last().copied())
        .unwrap_or(10);
    let rows: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "SELECT window_start, service, level, event_count FROM window_stats
          WHERE width_secs = $1 AND slide_secs = $1 AND window_start >= $2 AND window_start < $3
            AND ($4::text IS NULL OR service = $4)
          ORDER BY window_start, service, level",
    )
    .bind(width)
    .bind(from)
    .bind(to)
    .bind(p.str("service"))
    .fetch_all(s.db.query_pool())
    .await?;
    let windows = rows
        .into_iter()
        .map(|(start, service, level, count)| TimelineWindow {
            start,
            service,
            level,
            count,
        })
        .collect();
    Ok(Json(Timeline {
        from,
        to,
        window_secs: width,
        windows,
    }))
}

/// Counts come from tumbling windows (their rows partition the range without overlap): the widest
/// width the range holds at least 360 of, so a day reads minute rows, not 10-second ones (a sixth
/// of the rows); a short range keeps the narrowest. Windows are counted by their start, so the
/// range's edges are as precise as the width, which the answer's `window_secs` states.
pub fn stats_width(widths_narrowest_first: &[i32], range: Duration) -> i32 {
    let narrowest = widths_narrowest_first.first().copied().unwrap_or(10);
    widths_narrowest_first
        .iter()
        .rev()
        .copied()
        .find(|w| range.num_seconds() >= 360 * i64::from(*w))
        .unwrap_or(narrowest)
}

/// The stats endpoints' counts: `$1` width, `$2`..`$3` range, `$4` service or NULL. Public, as
/// the events page's SQL is, for the storage benchmark's `EXPLAIN`.
pub const STATS_SQL: &str =
    "SELECT service, level, SUM(event_count)::int8 AS n, SUM(latency_count)::int8 AS lc,
            SUM(latency_sum_ms) AS ls, MAX(latency_max_ms) AS lm
       FROM window_stats
      WHERE width_secs = $1 AND slide_secs = $1 AND window_start >= $2 AND window_start < $3
        AND ($4::text IS NULL OR service = $4)
      GROUP BY service, level";

/// The stats endpoints' top messages, among the newest `$4` rows of the range.
pub const TOP_MESSAGES_SQL: &str = "SELECT message, COUNT(*)::int8 AS n FROM (
         SELECT message FROM log_events
          WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR service = $3)
          ORDER BY ts DESC LIMIT $4) recent
      GROUP BY message ORDER BY n DESC, message LIMIT 10";

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Element-wise sum of a service's histograms over the range, done in SQL.
async fn merged_hist(
    pool: &PgPool,
    width: i32,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    service: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT COALESCE(SUM(x), 0)::int8
           FROM window_stats w, unnest(w.latency_hist) WITH ORDINALITY AS h(x, i)
          WHERE w.width_secs = $1 AND w.slide_secs = $1 AND w.window_start >= $2
            AND w.window_start < $3 AND w.service = $4
          GROUP BY i ORDER BY i",
    )
    .bind(width)
    .bind(from)
    .bind(to)
    .bind(service)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

async fn top_messages(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    service: Option<&str>,
) -> Result<Vec<TopMessage>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(TOP_MESSAGES_SQL)
        .bind(from)
        .bind(to)
        .bind(service)
        .bind(TOP_MESSAGES_SAMPLE)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(message, count)| TopMessage { message, count })
        .collect())
}

/// `GET /api/v1/alerts`
pub async fn alerts(
    State(s): State<AppState>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Json<AlertsPage>, ApiError> {
    let p = Params::new(raw, AlertsParams::NAMES)?;
    let (from, to) = p.range()?;
    let kind = p
        .typed("kind")
        .map(|k| {
            AlertKind::parse(k).ok_or_else(|| {
                let names: Vec<_> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
                bad("kind", format!("expected one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    let limit = p.limit()?;
    let cursor = p.cursor()?;
    let mut q = QueryBuilder::new(format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE first_seen >= "
    ));
    q.push_bind(from).push(" AND first_seen < ").push_bind(to);
    if let Some(k) = kind {
        q.push(" AND kind = ").push_bind(k.as_str());
    }
    if let Some(svc) = p.str("service") {
        q.push(" AND service = ").push_bind(svc.to_owned());
    }
    if let Some((ts, id)) = cursor {
        q.push(" AND (first_seen, alert_id) < (")
            .push_bind(ts)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY first_seen DESC, alert_id DESC LIMIT ")
        .push_bind(limit + 1);
    let mut rows = q
        .build()
        .fetch_all(s.db.query_pool())
        .await?
        .iter()
        .map(alert_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last()
            .map(|a| cursor_of(a.first_seen, &a.alert_id))
            .unwrap_or_default()
    });
    Ok(Json(AlertsPage {
        alerts: rows,
        next_cursor: next,
    }))
}

/// `GET /admin/filters`
pub async fn filter_rules(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "rules": s.filter.current().rules() }))
}

/// `POST /admin/filters/reload`
pub async fn reload_filters(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    use crate::filter::FilterError;
    match s.filter.reload() {
        Ok(rules) => Ok(Json(json!({ "reloaded": true, "rules": rules }))),
        Err(e @ FilterError::NoFile) => Err(ApiError::Conflict(e.to_string())),
        Err(e) => Err(ApiError::Unprocessable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_term_is_a_substring_not_a_pattern() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(contains_pattern("plain"), "%plain%");
    }

    #[test]
    fn stats_read_the_widest_window_a_range_holds_360_of() {
        assert_eq!(stats_width(&[10, 60], Duration::hours(1)), 10);
        assert_eq!(stats_width(&[10, 60], Duration::days(1)), 60);
        assert_eq!(stats_width(&[10, 60], Duration::seconds(5)), 10);
    }
}
