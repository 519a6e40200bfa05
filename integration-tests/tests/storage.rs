//! Storage against the real PostgreSQL: the upgrade of an unpartitioned install holding rows,
//! partitions made ahead and retention by dropping them, rows dated outside every partition, the
//! text index of sealed partitions, and the query range cap.

use std::borrow::Cow;

use chrono::{DateTime, Duration, TimeDelta, Utc};
use logpipe_collector::config::StorageSettings;
use logpipe_collector::db::Db;
use logpipe_collector::storage;
use logpipe_integration_tests as it;
use sqlx::{Connection, PgPool};

fn settings() -> StorageSettings {
    StorageSettings {
        retention_days: 7,
        window_retention_days: 7,
        failed_login_retention_days: 7,
        alert_retention_days: 7,
        ..StorageSettings::default()
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Insert `n` events from `ts` back, `step_secs` apart, straight into `log_events`.
async fn insert_events(pool: &PgPool, prefix: &str, ts: DateTime<Utc>, n: i64, step_secs: i64) {
    sqlx::query(
        "INSERT INTO log_events (event_id, ts, level, service, message, kafka_partition, kafka_offset)
         SELECT $1 || i, $2 - interval '1 second' * $4 * i, 'INFO', 'svc', 'message ' || i, 0, i
           FROM generate_series(1, $3) AS i",
    )
    .bind(prefix)
    .bind(ts)
    .bind(n)
    .bind(step_secs)
    .execute(pool)
    .await
    .unwrap();
}

/// A schema of its own holding an install as it was before migration `version`: the `count`
/// migrations older than it, applied. Returns its pool and every migration, to apply the rest.
async fn installed_before(
    name: &str,
    version: i64,
    count: usize,
) -> (PgPool, &'static sqlx::migrate::Migrator) {
    let pool = it::schema_pool(name).await;
    sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
        .execute(&pool)
        .await
        .unwrap();
    let all = logpipe_collector::db::migrator();
    let old = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            all.iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    assert_eq!(old.iter().count(), count);
    old.run(&pool).await.unwrap();
    (pool, all)
}

#[tokio::test]
async fn the_upgrade_moves_every_row_of_an_unpartitioned_install_into_partitions() {
    let name = it::unique("upgrade");
    // The layout of the install before time partitions: the first three migrations only.
    let (pool, _) = installed_before(&name, 20261130000000, 3).await;
    let relkind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'log_events'::regclass")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(relkind, "r", "the old layout is a plain table");
    // Ten days of events (three of them past the default retention), window rows, counters.
    let now = Utc::now();
    insert_events(&pool, "old-", now, 86_400, 10).await;
    sqlx::query(
        "INSERT INTO window_stats (width_secs, slide_secs, window_start, service, level, event_count)
         SELECT 10, 10, date_trunc('minute', now()) - interval '10 seconds' * i, 'svc', 'INFO', i
           FROM generate_series(1, 5000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO failed_logins VALUES ('ip:10.0.0.1', now(), 3)")
        .execute(&pool)
        .await
        .unwrap();
    let events_before = scalar(&pool, "SELECT count(*) FROM log_events").await;
    let windows_before = scalar(&pool, "SELECT sum(event_count)::int8 FROM window_stats").await;

    // The collector's own start: every migration, then the first maintenance pass.
    let mut config = it::collector_config(&name, 1);
    config.storage = settings();
    let db = Db::connect(&config.database).await.unwrap();
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events").await,
        events_before,
        "no row lost by the upgrade"
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events_default").await,
        0,
        "every old row found a partition of its day"
    );
    assert_eq!(
        scalar(&pool, "SELECT sum(event_count)::int8 FROM window_stats").await,
        windows_before
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM failed_logins").await, 1);
    let days = scalar(
        &pool,
        "SELECT count(*) FROM time_partitions WHERE parent = 'log_events'",
    )
    .await;
    assert!((10..=11).contains(&days), "one partition per day: {days}");
    assert_eq!(
        scalar(
            &pool,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%unpartitioned%'
                AND relnamespace = current_schema()::regnamespace"
        )
        .await,
        0,
        "the old tables are gone"
    );

    // Then retention: the three days past seven go, as whole partitions.
    let report = storage::first_pass(&db, &config.storage).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.dropped.len() >= 3, "{:?}", report.dropped);
    let horizon = now - Duration::days(7);
    let kept = scalar(&pool, "SELECT count(*) FROM log_events").await;
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM generate_series(1, 86400) AS i
          WHERE $1 - interval '10 seconds' * i >= date_trunc('day', $2::timestamptz, 'UTC')",
    )
    .bind(now)
    .bind(horizon)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        kept, expected,
        "exactly the rows of the dropped days are gone"
    );
    it::drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn retention_drops_backdated_partitions_and_keeps_the_rest() {
    let name = it::unique("retention");
    let mut config = it::collector_config(&name, 1);
    config.storage = settings();
    let db = Db::connect(&config.database).await.unwrap();
    let pool = it::schema_pool(&name).await;
    let now = Utc::now();
    let first = storage::first_pass(&db, &config.storage).await.unwrap();
    // A fresh install: every day from the horizon to two days ahead, for each partitioned table.
    assert_eq!(first.created.len(), 3 * 10, "{:?}", first.created);
    assert!(first.dropped.is_empty());

    // A backdated partition (as an older install would hold) with rows, rows of today, and a
    // row older than any partition, which lands in the default partition.
    let old_day = storage::slot_start(now - Duration::days(20), TimeDelta::hours(24));
    sqlx::query("SELECT ensure_time_partition('log_events', 'ts', $1, $2)")
        .bind(old_day)
        .bind(old_day + Duration::days(1))
        .execute(&pool)
        .await
        .unwrap();
    insert_events(&pool, "backdated-", old_day + Duration::hours(12), 1000, 1).await;
    insert_events(&pool, "today-", now, 500, 1).await;
    insert_events(&pool, "ancient-", now - Duration::days(400), 3, 1).await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events_default").await,
        3
    );
    // An old alert episode, published, and a recent one.
    sqlx::query(
        "INSERT INTO alerts (alert_id, kind, subject, service, severity, summary, first_seen,
                             last_seen, occurrences, published_at)
         VALUES ('old', 'fatal_event', 's', 's', 'critical', 'x', now() - interval '30 days',
                 now() - interval '30 days', 1, now()),
                ('new', 'fatal_event', 's', 's', 'critical', 'x', now(), now(), 1, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Error-rate state of a service gone quiet past the window retention (a one-off name a client
    // sent), of a current one, and of a quiet one whose episode is still open.
    sqlx::query(
        "INSERT INTO error_rate_state (service, last_window_start, baseline, baseline_windows,
                                       open_alert_id)
         VALUES ('gone', now() - interval '40 days', 0.05, 1, NULL),
                ('current', now(), 0.05, 1, NULL),
                ('quiet-open', now() - interval '40 days', 0.05, 1, 'new')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let report = storage::first_pass(&db, &config.storage).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let states: Vec<String> =
        sqlx::query_scalar("SELECT service FROM error_rate_state ORDER BY service")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, vec!["current".to_owned(), "quiet-open".to_owned()]);
    let dropped_day = format!("log_events_p{}", old_day.format("%Y%m%d"));
    assert_eq!(report.dropped, vec![dropped_day.clone()]);
    assert_eq!(report.alerts_deleted, 1);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events").await,
        500,
        "today's rows stay; the backdated day and the expired default rows are gone"
    );
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&dropped_day)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!exists, "the partition was dropped, not emptied");
    let alerts: Vec<String> = sqlx::query_scalar("SELECT alert_id FROM alerts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(alerts, vec!["new".to_owned()]);
    // A second pass changes nothing.
    let again = storage::first_pass(&db, &config.storage).await.unwrap();
    assert_eq!(again, storage::PassReport::default());
    it::drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn rows_dated_past_the_partitions_move_into_their_partition_when_it_is_made() {
    let name = it::unique("ahead");
    let mut config = it::collector_config(&name, 1);
    config.storage = settings();
    let db = Db::connect(&config.database).await.unwrap();
    storage::first_pass(&db, &config.storage).await.unwrap();
    let pool = it::schema_pool(&name).await;
    // Ten days ahead: past the two days made in advance.
    let ahead = Utc::now() + Duration::days(10);
    insert_events(&pool, "ahead-", ahead, 20, 1).await;
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events_default").await,
        20
    );
    // Maintenance at a time ten days on makes that day's partition and takes the rows with it.
    let mut conn = db.maintenance_connection().await.unwrap();
    let report = storage::run_pass(&mut conn, &config.storage, ahead)
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM log_events_default").await,
        0
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM log_events").await, 20);
    conn.close().await.unwrap();
    it::drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn a_sealed_partition_gets_a_text_index_that_the_q_search_uses() {
    let name = it::unique("textidx");
    let mut config = it::collector_config(&name, 1);
    // Sealed as soon as it ends (the default waits ten minutes past midnight).
    config.storage = StorageSettings {
        text_index_delay_secs: 0,
        ..settings()
    };
    let db = Db::connect(&config.database).await.unwrap();
    storage::first_pass(&db, &config.storage).await.unwrap();
    let pool = it::schema_pool(&name).await;
    let yesterday = storage::slot_start(Utc::now() - Duration::days(1), TimeDelta::hours(24));
    insert_events(&pool, "y-", yesterday + Duration::hours(23), 20_000, 1).await;
    sqlx::query(
        "UPDATE log_events SET message = 'payment declined: card expired' WHERE event_id = 'y-77'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let partition = format!("log_events_p{}", yesterday.format("%Y%m%d"));
    // The pass of the collector's start already built it: yesterday ended hours ago.
    let report = storage::first_pass(&db, &config.storage).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let indexed: bool =
        sqlx::query_scalar("SELECT text_indexed FROM time_partitions WHERE partition = $1")
            .bind(&partition)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(indexed);
    sqlx::query(&format!("ANALYZE \"{partition}\""))
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT event_id FROM log_events
          WHERE ts >= $1 AND ts < $2 AND message ILIKE '%card expired%'",
    )
    .bind(yesterday)
    .bind(yesterday + Duration::days(1))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("_message_trgm"), "{plan}");
    drop(conn);

    // And through the API.
    let (collector, _) = it::start_collector(config).await;
    let client = reqwest::Client::new();
    let page = it::get_json(
        &client,
        &collector.url(&format!(
            "/api/v1/events?q=card%20expired&from={}&to={}",
            yesterday.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (yesterday + Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
    )
    .await;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["y-77"]);
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}

#[tokio::test]
async fn a_scanning_query_over_a_range_past_the_cap_is_400_naming_the_setting() {
    let name = it::unique("rangecap");
    let mut config = it::collector_config(&name, 1);
    config.database.query_max_range_hours = 48;
    let (collector, _) = it::start_collector(config).await;
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/events?q=x&from=2026-01-01T00:00:00Z&to=2026-01-04T00:00:00Z",
        "/api/v1/stats?from=2026-01-01T00:00:00Z&to=2026-01-04T00:00:00Z",
        "/api/v1/stats/api?from=2026-01-01T00:00:00Z&to=2026-01-04T00:00:00Z",
    ] {
        let r = client.get(collector.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_parameter");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("query_max_range_hours"), "{detail}");
    }
    // Within the cap, and pages without `q` (newest first, stopped at `limit`) have none.
    for path in [
        "/api/v1/events?q=x&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
        "/api/v1/events?from=1970-01-01T00:00:00Z",
        "/api/v1/stats?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
    ] {
        let r = client.get(collector.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let pool = it::schema_pool(&name).await;
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}

/// A window row an older version poisoned (two latencies near f64's maximum: a sum no upsert can
/// add to) is cut by the migration `bounded_window_values`, so the upgrade heals it.
#[tokio::test]
async fn the_upgrade_cuts_window_rows_an_unbounded_latency_poisoned() {
    let name = it::unique("poisoned_row");
    let (pool, all) = installed_before(&name, 20261205000000, 6).await;
    sqlx::query(
        "INSERT INTO window_stats (width_secs, slide_secs, window_start, service, level,
                                   event_count, latency_count, latency_sum_ms, latency_max_ms)
         VALUES (10, 10, date_trunc('minute', now()), 'poisoned', 'INFO', 2, 2, 1.7e308, 1.7e308),
                (10, 10, date_trunc('minute', now()), 'fine', 'INFO', 2, 2, 30, 20)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let overflow = sqlx::query("SELECT latency_sum_ms + 1.7e308::float8 FROM window_stats")
        .execute(&pool)
        .await;
    assert!(overflow.is_err(), "the row is poisoned before the upgrade");
    all.run(&pool).await.unwrap();
    let rows: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT service, latency_sum_ms, latency_max_ms FROM window_stats ORDER BY service",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("fine".to_owned(), 30.0, 20.0),
            ("poisoned".to_owned(), 2.0 * 86_400_000.0, 86_400_000.0)
        ]
    );
    it::drop_schema(&pool, &name).await;
}

/// The first definition of `hist_add` (migration `windows_alerts`), kept to compare against.
const HIST_ADD_FIRST: &str = "CREATE FUNCTION pg_temp.hist_add_first(a BIGINT[], b BIGINT[])
    RETURNS BIGINT[] LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(array_agg(COALESCE(x, 0) + COALESCE(y, 0) ORDER BY i), '{}')
      FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) $$";

/// A generated histogram as an SQL literal: NULL, empty, or up to 90 elements (some NULL, some
/// near BIGINT's ends, where a sum must fail), now and then with a lower bound other than 1.
fn histogram(rng: &mut rand::rngs::StdRng) -> String {
    use rand::Rng;
    match rng.random_range(0..10) {
        0 => "NULL".into(),
        1 => "'{}'".into(),
        _ => {
            let len: i32 = rng.random_range(1..=90);
            let lower: i32 = if rng.random_bool(0.1) {
                rng.random_range(-3..=3)
            } else {
                1
            };
            let elements: Vec<String> = (0..len)
                .map(|_| match rng.random_range(0..20) {
                    0 => "NULL".into(),
                    1 => (i64::MAX - rng.random_range(0..3)).to_string(),
                    2 => (i64::MIN + rng.random_range(0..3)).to_string(),
                    _ => rng.random_range(0..1_000i64).to_string(),
                })
                .collect();
            format!("'[{lower}:{}]={{{}}}'", lower + len - 1, elements.join(","))
        }
    }
}

/// `hist_add` (the window upsert's histogram sum, rewritten in migration `window_upserts_hot`
/// to cost half as much) answers generated histograms exactly as its first definition did: the same
/// array, or the same SQLSTATE where the sum overflows. `LOGPIPE_FUZZ_SEED` replays a run.
#[tokio::test]
async fn hist_add_sums_generated_histograms_exactly_as_its_first_definition_did() {
    use rand::SeedableRng;
    let name = it::unique("hist_add");
    let pool = it::schema_pool(&name).await;
    sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
        .execute(&pool)
        .await
        .unwrap();
    logpipe_collector::db::migrator().run(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(HIST_ADD_FIRST)
        .execute(&mut *conn)
        .await
        .unwrap();
    let seed = logpipe_integration_tests::fuzz::seed_from_env();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut overflows = 0;
    for case in 0..800 {
        let (a, b) = (histogram(&mut rng), histogram(&mut rng));
        let mut answers = Vec::new();
        for f in ["hist_add", "pg_temp.hist_add_first"] {
            let sql = format!("SELECT {f}({a}::int8[], {b}::int8[])::text");
            let answer: Result<Option<String>, Option<String>> = sqlx::query_scalar(&sql)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| {
                    e.as_database_error()
                        .and_then(|d| d.code().map(|c| c.into_owned()))
                });
            answers.push(answer);
        }
        overflows += usize::from(answers[1].is_err());
        assert_eq!(
            answers[0], answers[1],
            "seed {seed} (LOGPIPE_FUZZ_SEED replays it), case {case}: hist_add({a}, {b})"
        );
    }
    // The generator reaches the overflow path, or the comparison there proves nothing.
    assert!(overflows > 0, "seed {seed}: no case overflowed");
    drop(conn);
    it::drop_schema(&pool, &name).await;
}

/// An install upgraded to migration `window_upserts_hot`: the counter partitions it already had
/// (and the defaults) get the room new ones are made with; the others keep full pages.
#[tokio::test]
async fn the_upgrade_gives_the_counter_partitions_already_made_room_for_updates() {
    const VERSION: i64 = 20261206000002;
    let name = it::unique("upgrade_room");
    let before = logpipe_collector::db::migrator()
        .iter()
        .filter(|m| m.version < VERSION)
        .count();
    let (pool, all) = installed_before(&name, VERSION, before).await;
    let day = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    for (parent, key) in [
        ("log_events", "ts"),
        ("window_stats", "window_start"),
        ("failed_logins", "window_start"),
    ] {
        sqlx::query("SELECT ensure_time_partition($1, $2, $3, $4)")
            .bind(parent)
            .bind(key)
            .bind(day)
            .bind(day + TimeDelta::days(1))
            .execute(&pool)
            .await
            .unwrap();
    }
    all.run(&pool).await.unwrap();
    let options: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT relname::text, reloptions FROM pg_class
          WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'
            AND (relname LIKE '%\\_p2%' OR relname LIKE '%\\_default')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(options.len(), 6, "{options:?}");
    for (table, options) in &options {
        let room = options.iter().flatten().any(|o| o == "fillfactor=50");
        let counters = table.starts_with("window_stats") || table.starts_with("failed_logins");
        assert_eq!(room, counters, "{table}: {options:?}");
    }
    it::drop_schema(&pool, &name).await;
}
