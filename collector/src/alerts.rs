//! Alerts: turning a batch's findings and its closed windows into alert rows (once per episode),
//! inside the batch's transaction, and publishing committed alerts to the `alerts` topic (outbox).
//!
//! - Per-event kinds (fatal_event, sql_injection, brute_force): a detection extends the open episode
//!   of its (kind, subject) when it falls within `episode_gap_secs` of it, else opens a new alert.
//!   An advisory lock per (kind, subject) keeps two collectors from opening the same episode twice.
//! - error_rate_spike: each closed window of `error_rate_window_secs` is judged against the
//!   service's baseline (an exponential average of its normal windows only, so a spike does not teach
//!   the baseline that spikes are normal). An episode lasts while consecutive windows stay anomalous.
//! - Alert ids derive from what raised them, so a batch replayed after a crash raises the same id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use logpipe_common::formats::derived_id;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::detect::{AlertKind, AlertSettings, Detection, Findings};

/// An alert as stored, served and published.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Alert {
    pub alert_id: String,
    pub kind: String,
    pub subject: String,
    pub service: String,
    pub severity: String,
    pub summary: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub occurrences: i64,
    pub details: serde_json::Value,
    pub raised_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

pub const ALERT_COLUMNS: &str = "alert_id, kind, subject, service, severity, summary, first_seen, \
     last_seen, occurrences, details, raised_at, ended_at";

pub async fn record_findings(
    tx: &mut PgConnection,
    findings: &Findings,
    settings: &AlertSettings,
    raised: &mut Vec<AlertKind>,
) -> Result<(), sqlx::Error> {
    for d in findings.detections.values().flatten() {
        if record_detection(tx, d, settings).await? {
            raised.push(d.kind);
        }
    }
    if findings.failed_logins.is_empty() {
        return Ok(());
    }
    let subjects: Vec<&str> = findings
        .failed_logins
        .values()
        .map(|f| f.subject.as_str())
        .collect();
    let starts: Vec<DateTime<Utc>> = findings
        .failed_logins
        .values()
        .map(|f| f.window_start)
        .collect();
    let hits: Vec<i64> = findings.failed_logins.values().map(|f| f.hits).collect();
    let totals: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "INSERT INTO failed_logins AS f (subject, window_start, hits)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[])
         ON CONFLICT (subject, window_start) DO UPDATE SET hits = f.hits + EXCLUDED.hits
         RETURNING subject, window_start, hits",
    )
    .bind(&subjects)
    .bind(&starts)
    .bind(&hits)
    .fetch_all(&mut *tx)
    .await?;
    for (subject, start, total) in totals {
        if total < settings.brute_force_threshold {
            continue;
        }
        let Some(f) = findings
            .failed_logins
            .get(&(subject.clone(), start.timestamp()))
        else {
            continue;
        };
        let d = Detection {
            kind: AlertKind::BruteForce,
            subject: subject.clone(),
            service: f.service.clone(),
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            count: f.hits,
            example: format!(
                "{total} failed logins for {subject} in the {}-second window from {}",
                settings.brute_force_window_secs,
                start.format("%H:%M:%S")
            ),
        };
        if record_detection(tx, &d, settings).await? {
            raised.push(d.kind);
        }
    }
    Ok(())
}

/// Extend the open episode of this detection's (kind, subject), or open a new alert. True when a
/// new alert was raised.
async fn record_detection(
    tx: &mut PgConnection,
    d: &Detection,
    settings: &AlertSettings,
) -> Result<bool, sqlx::Error> {
    let kind = d.kind.as_str();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("{kind}/{}", d.subject))
        .execute(&mut *tx)
        .await?;
    let gap = f64::from(settings.episode_gap_secs);
    let extended = sqlx::query(
        "UPDATE alerts SET last_seen = GREATEST(last_seen, $4), first_seen = LEAST(first_seen, $3),
                           occurrences = occurrences + $5
          WHERE alert_id = (
                SELECT alert_id FROM alerts
                 WHERE kind = $1 AND subject = $2
                   AND last_seen >= $3 - make_interval(secs => $6)
                   AND first_seen <= $4 + make_interval(secs => $6)
                 ORDER BY last_seen DESC LIMIT 1)",
    )
    .bind(kind)
    .bind(&d.subject)
    .bind(d.first_seen)
    .bind(d.last_seen)
    .bind(d.count)
    .bind(gap)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if extended > 0 {
        return Ok(false);
    }
    let summary = match d.kind {
        AlertKind::FatalEvent => format!("FATAL event in {}: {}", d.service, d.example),
        AlertKind::SqlInjection => format!(
            "SQL-injection signature in requests to {}: {}",
            d.service, d.example
        ),
        AlertKind::BruteForce => format!("brute-force login attempts: {}", d.example),
        AlertKind::ErrorRateSpike => d.example.clone(),
    };
    let id = derived_id(
        d.first_seen,
        format!("{kind}/{}/{}", d.subject, d.first_seen.timestamp_micros()).as_bytes(),
    );
    let inserted = sqlx::query(
        "INSERT INTO alerts (alert_id, kind, subject, service, severity, summary, first_seen,
                             last_seen, occurrences, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (alert_id) DO NOTHING",
    )
    .bind(&id)
    .bind(kind)
    .bind(&d.subject)
    .bind(&d.service)
    .bind(d.kind.severity())
    .bind(&summary)
    .bind(d.first_seen)
    .bind(d.last_seen)
    .bind(d.count)
    .bind(json!({ "example": d.example }))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

#[derive(sqlx::FromRow)]
struct RateState {
    last_window_start: Option<DateTime<Utc>>,
    baseline: f64,
    baseline_windows: i64,
    open_alert_id: Option<String>,
}

/// Judge every closed, not yet judged error-rate window of `service` up to window start `upto`.
pub async fn judge_error_rate(
    tx: &mut PgConnection,
    s: &AlertSettings,
    service: &str,
    upto: DateTime<Utc>,
    raised: &mut Vec<AlertKind>,
) -> Result<(), sqlx::Error> {
    let width = i64::from(s.error_rate_window_secs);
    sqlx::query(
        "INSERT INTO error_rate_state (service, last_window_start, baseline, baseline_windows)
         VALUES ($1, NULL, $2, 0) ON CONFLICT DO NOTHING",
    )
    .bind(service)
    .bind(s.error_rate_default_baseline)
    .execute(&mut *tx)
    .await?;
    let mut st: RateState = sqlx::query_as(
        "SELECT last_window_start, baseline, baseline_windows, open_alert_id
           FROM error_rate_state WHERE service = $1 FOR UPDATE",
    )
    .bind(service)
    .fetch_one(&mut *tx)
    .await?;
    if st.last_window_start.is_some_and(|last| upto <= last) {
        return Ok(());
    }
    let windows: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
        "SELECT window_start, SUM(event_count)::int8,
                COALESCE(SUM(event_count) FILTER (WHERE level IN ('ERROR', 'FATAL')), 0)::int8
           FROM window_stats
          WHERE width_secs = $1 AND slide_secs = $1 AND service = $2
            AND ($3::timestamptz IS NULL OR window_start > $3) AND window_start <= $4
          GROUP BY window_start ORDER BY window_start",
    )
    .bind(width as i32)
    .bind(service)
    .bind(st.last_window_start)
    .bind(upto)
    .fetch_all(&mut *tx)
    .await?;
    let step = chrono::Duration::seconds(width);
    let mut prev_end: Option<DateTime<Utc>> = None;
    for (start, total, errors) in windows {
        // A window without events between two judged ones ends an open episode.
        if let (Some(id), Some(end)) = (&st.open_alert_id, prev_end) {
            if start > end {
                end_episode(tx, id, end).await?;
                st.open_alert_id = None;
            }
        }
        let rate = errors as f64 / total.max(1) as f64;
        let threshold =
            (st.baseline * s.error_rate_factor).max(st.baseline + s.error_rate_min_increase);
        let anomalous = errors >= s.error_rate_min_errors && rate >= threshold;
        let end = start + step;
        if anomalous {
            match &st.open_alert_id {
                Some(id) => {
                    sqlx::query(
                        "UPDATE alerts SET last_seen = $2, occurrences = occurrences + 1,
                                details = jsonb_set(details, '{peak_error_rate}',
                                    to_jsonb(GREATEST((details->>'peak_error_rate')::float8, $3)))
                          WHERE alert_id = $1",
                    )
                    .bind(id)
                    .bind(end)
                    .bind(rate)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    let id = derived_id(
                        start,
                        format!("error_rate_spike/{service}/{}", start.timestamp()).as_bytes(),
                    );
                    let summary = format!(
                        "error rate of {service} at {:.0}% ({errors} of {total}) in the {width}-second window from {}; baseline {:.1}%",
                        rate * 100.0,
                        start.format("%H:%M:%S"),
                        st.baseline * 100.0
                    );
                    let inserted = sqlx::query(
                        "INSERT INTO alerts (alert_id, kind, subject, service, severity, summary,
                                             first_seen, last_seen, occurrences, details)
                         VALUES ($1, 'error_rate_spike', $2, $2, 'warning', $3, $4, $5, 1, $6)
                         ON CONFLICT (alert_id) DO NOTHING",
                    )
                    .bind(&id)
                    .bind(service)
                    .bind(&summary)
                    .bind(start)
                    .bind(end)
                    .bind(json!({
                        "error_rate": rate, "peak_error_rate": rate, "errors": errors,
                        "events": total, "baseline": st.baseline, "window_secs": width,
                    }))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        raised.push(AlertKind::ErrorRateSpike);
                    }
                    st.open_alert_id = Some(id);
                }
            }
        } else {
            if let Some(id) = st.open_alert_id.take() {
                end_episode(tx, &id, start).await?;
            }
            // Learn only from windows with enough events to say something.
            if total >= s.error_rate_min_errors {
                st.baseline = s.error_rate_baseline_alpha * rate
                    + (1.0 - s.error_rate_baseline_alpha) * st.baseline;
                st.baseline_windows += 1;
            }
        }
        prev_end = Some(end);
    }
    // Trailing windows without events end the episode too.
    if let (Some(id), Some(end)) = (&st.open_alert_id, prev_end) {
        if upto >= end {
            end_episode(tx, id, end).await?;
            st.open_alert_id = None;
        }
    }
    sqlx::query(
        "UPDATE error_rate_state SET last_window_start = $2, baseline = $3, baseline_windows = $4,
                open_alert_id = $5 WHERE service = $1",
    )
    .bind(service)
    .bind(upto)
    .bind(st.baseline)
    .bind(st.baseline_windows)
    .bind(&st.open_alert_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn end_episode(
    tx: &mut PgConnection,
    alert_id: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE alerts SET ended_at = $2 WHERE alert_id = $1 AND ended_at IS NULL")
        .bind(alert_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Publish committed, unpublished alerts to the alerts topic (keyed by alert id, so consumers can
/// drop the rare duplicate after a crash between produce and mark), until cancelled.
pub async fn run_outbox(
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = publish_pending(&pool, &producer, &topic).await {
            tracing::warn!(error = %e, "alert outbox: publish failed; will retry");
        }
    }
    // One last pass so alerts of the final batch go out before exit.
    if let Err(e) = publish_pending(&pool, &producer, &topic).await {
        tracing::warn!(error = %e, "alert outbox: last publish failed; left for the next start");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("produce to the alerts topic failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

async fn publish_pending(
    pool: &PgPool,
    producer: &FutureProducer,
    topic: &str,
) -> Result<(), OutboxError> {
    let mut tx = pool.begin().await?;
    let alerts: Vec<Alert> = sqlx::query_as(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE published_at IS NULL
          ORDER BY raised_at LIMIT 200 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_all(&mut *tx)
    .await?;
    if alerts.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(alerts.len());
    for a in &alerts {
        let payload = serde_json::to_vec(a).expect("alert serializes");
        producer
            .send(
                FutureRecord::to(topic)
                    .key(a.alert_id.as_str())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        ids.push(a.alert_id.as_str());
    }
    sqlx::query("UPDATE alerts SET published_at = now() WHERE alert_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(count = ids.len(), "alerts published");
    Ok(())
}
