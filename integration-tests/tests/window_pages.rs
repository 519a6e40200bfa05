//! Window rows stay in their pages when every batch updates them (migration
//! `window_upserts_hot`). Its own test binary: a transaction another test holds open keeps a page
//! from pruning its dead versions, and the updates then leave the page whatever its fill factor
//! (three in four stayed beside the storage tests, against 7,956 of 7,960 alone).

use chrono::Utc;
use logpipe_collector::db::Db;
use logpipe_collector::storage;
use logpipe_integration_tests as it;

/// Window rows are counters every batch updates in place. Made with room in their pages (migration
/// `window_upserts_hot`), their updates are HOT: the new version stays in the page and no index
/// gets an entry, where before none was and a row updated every batch spread its dead versions over
/// ever more pages. Partitions of tables only inserted into keep full pages.
#[tokio::test]
async fn window_rows_updated_by_every_batch_stay_in_their_pages() {
    use logpipe_collector::db::BatchWrite;
    use logpipe_collector::windows::{Latency, Spec, Stats, WindowKey};
    let name = it::unique("hot_windows");
    let config = it::collector_config(&name, 1);
    let pool = it::schema_pool(&name).await;
    let db = Db::connect(&config.database).await.unwrap();
    storage::first_pass(&db, &config.storage).await.unwrap();
    let made: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT t.parent, c.reloptions FROM time_partitions t
           JOIN pg_class c ON c.relname = t.partition
                          AND c.relnamespace = current_schema()::regnamespace",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(made.len() >= 3, "{made:?}");
    for (parent, options) in &made {
        let room = options.iter().flatten().any(|o| o == "fillfactor=50");
        let counters = parent == "window_stats" || parent == "failed_logins";
        assert_eq!(room, counters, "{parent}: {options:?}");
    }

    // 200 batches, each adding to the same 40 window rows (8 services, 5 levels), as a busy
    // pipeline's batches do for as long as a window is open.
    let start = Utc::now().timestamp() / 10 * 10;
    let windows: Vec<(WindowKey, Stats)> = (0..40)
        .map(|i| {
            let mut stats = Stats::default();
            for ms in [3.0, 40.0, 900.0] {
                stats.add_event(Latency::bounded(ms));
            }
            let key = WindowKey {
                spec: Spec {
                    width: 10,
                    slide: 10,
                },
                start_secs: start,
                service: format!("svc-{}", i % 8),
                level: logpipe_common::Level::ALL[i / 8],
            };
            (key, stats)
        })
        .collect();
    let alerts = logpipe_collector::detect::AlertSettings::default();
    for _ in 0..200 {
        let write = BatchWrite {
            events: Vec::new(),
            windows: windows.clone(),
            findings: Default::default(),
            moves: Vec::new(),
            closed: Vec::new(),
        };
        db.write_batch("hot-group", "hot.raw", &write, &alerts, 10)
            .await
            .unwrap();
    }
    let counted: i64 = sqlx::query_scalar("SELECT sum(event_count)::int8 FROM window_stats")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(counted, 200 * 40 * 3, "every batch added its counts");
    // The statistics reach pg_stat_user_tables within a second or so of each transaction.
    let (hot, updated) = it::wait_for("the updates counted", it::WAIT, || async {
        let (hot, updated): (i64, i64) = sqlx::query_as(
            "SELECT sum(n_tup_hot_upd)::int8, sum(n_tup_upd)::int8 FROM pg_stat_user_tables
              WHERE schemaname = current_schema() AND relname LIKE 'window_stats%'",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
        if updated >= 199 * 40 {
            Ok((hot, updated))
        } else {
            Err(format!("{updated} updates counted"))
        }
    })
    .await;
    // 7,956 of 7,960 were HOT here. With full pages none was.
    assert!(
        hot * 10 >= updated * 9,
        "{hot} of {updated} window row updates stayed in their page"
    );
    it::drop_schema(&pool, &name).await;
}
