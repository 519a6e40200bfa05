//! The generator's global budget in real Redis: several instances share one exact per-second budget,
//! and an instance without Redis falls back to its local share.

use std::time::Duration;

use logpipe_generator::engine::{RunParams, StartRequest};
use logpipe_integration_tests as it;

fn redis_url() -> String {
    std::env::var("LOGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn budgeted(
    name: &str,
    instance: &str,
    redis: String,
    global: u32,
) -> logpipe_generator::config::GeneratorConfig {
    let mut c = it::generator_config(name, 2);
    c.instance_id = format!("{name}-{instance}");
    c.budget.redis_url = redis;
    c.budget.global_rate_per_second = global;
    c.budget.key_prefix = name.to_owned();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_exact_budget_held_in_redis() {
    let name = it::unique("budget");
    let mut engines = Vec::new();
    let mut apps = Vec::new();
    for instance in ["a", "b"] {
        let config = budgeted(&name, instance, redis_url(), 1_000);
        let app = logpipe_generator::Application::build(config.clone())
            .await
            .unwrap();
        engines.push((app.engine(), config));
        apps.push(app);
    }
    // Each asks for the whole budget: together they want twice what they may have.
    let req = StartRequest {
        rate_per_second: Some(1_000),
        batch_size: Some(50),
        duration_secs: Some(5),
        ..Default::default()
    };
    for (engine, config) in &engines {
        engine
            .start(RunParams::from_request(&req, &config.defaults).unwrap())
            .unwrap();
    }
    for (engine, _) in &engines {
        it::wait_for("run finished", Duration::from_secs(30), || {
            let s = engine.status();
            async move {
                if s.state == "idle" {
                    Ok(())
                } else {
                    Err(format!("{s:?}"))
                }
            }
        })
        .await;
    }
    let statuses: Vec<_> = engines.iter().map(|(e, _)| e.status()).collect();
    let generated: u64 = statuses.iter().map(|s| s.events_generated).sum();
    let limited: u64 = statuses.iter().map(|s| s.events_rate_limited).sum();
    for s in &statuses {
        assert_eq!(s.budget.as_ref().unwrap().backend, "redis", "{s:?}");
        assert_eq!(s.budget.as_ref().unwrap().instances, 2, "{s:?}");
    }

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{name}:budget:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut granted = 0u64;
    for k in &keys {
        let used: u64 = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(used <= 1_000, "second {k} granted {used} > budget 1000");
        granted += used;
    }
    assert_eq!(
        generated, granted,
        "every generated event was granted by Redis, and only those"
    );
    assert!(
        generated >= 3_500,
        "the pair used the budget: {generated} in 5 s"
    );
    assert!(limited > 0, "demand above the budget was held back");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .arg(format!("{name}:instances"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for app in apps {
        drop(app);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_an_instance_falls_back_to_its_local_share_and_keeps_generating() {
    let name = it::unique("budgetlocal");
    let dead = format!("redis://127.0.0.1:{}", it::free_port());
    let config = budgeted(&name, "a", dead, 500);
    let req = StartRequest {
        rate_per_second: Some(1_000),
        count: Some(300),
        ..Default::default()
    };
    let (_app, engine) = it::generator_running(&config, &req).await;
    let s = it::wait_for(
        "300 events generated on the local share",
        Duration::from_secs(30),
        || {
            let s = engine.status();
            async move {
                if s.state == "idle" {
                    Ok(s)
                } else {
                    Err(format!("{s:?}"))
                }
            }
        },
    )
    .await;
    assert_eq!(s.events_generated, 300);
    assert_eq!(s.budget.as_ref().unwrap().backend, "local");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_rejoins_the_global_budget_when_redis_comes_back() {
    let name = it::unique("budgetrejoin");
    let port = it::free_port();
    let mut redis = it::start_redis(port);
    let config = budgeted(&name, "a", format!("redis://127.0.0.1:{port}"), 2_000);
    let req = StartRequest {
        rate_per_second: Some(500),
        batch_size: Some(20),
        ..Default::default()
    };
    let (_app, engine) = it::generator_running(&config, &req).await;
    let backend = |engine: &std::sync::Arc<logpipe_generator::engine::Engine>| {
        engine.status().budget.unwrap().backend
    };
    let wait = Duration::from_secs(30);
    it::wait_for("budget from Redis", wait, || {
        let b = backend(&engine);
        async move {
            if b == "redis" {
                Ok(())
            } else {
                Err(b)
            }
        }
    })
    .await;

    redis.kill().unwrap();
    redis.wait().unwrap();
    it::wait_for("local fallback", wait, || {
        let b = backend(&engine);
        async move {
            if b == "local" {
                Ok(())
            } else {
                Err(b)
            }
        }
    })
    .await;
    let on_local = engine.status().events_generated;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        engine.status().events_generated > on_local,
        "keeps generating on the local share"
    );

    let mut redis = it::start_redis(port);
    it::wait_for("back on Redis", wait, || {
        let b = backend(&engine);
        async move {
            if b == "redis" {
                Ok(())
            } else {
                Err(b)
            }
        }
    })
    .await;
    engine.stop().await;
    redis.kill().unwrap();
    let _ = redis.wait();
}
