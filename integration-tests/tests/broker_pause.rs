//! A broker frozen (SIGSTOP) past the consumer group's session timeout, then resumed (SIGCONT):
//! the group must form again by itself and every record produced before and after is stored.
//! Tansu 0.6 could keep as the group's leader a member it had already dropped, so every member
//! that joined after was told to follow a leader that never synced, and nothing was assigned
//! again (logpipe patched it until the move to nisshi, deploy/nisshi/README.md). Each freeze is a race between the
//! collector's old connection (its last heartbeat) and its new one (its join), so the test freezes
//! the broker several times.
//!
//! Its own test binary: it runs a private broker and freezes it.

use std::time::Duration;

use chrono::Utc;
use logpipe_generator::events::Profile;
use logpipe_integration_tests as it;

/// The private broker, resumed and killed when dropped.
struct Broker(std::process::Child);

impl Broker {
    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{sig}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_gets_its_partitions_back_after_the_broker_was_frozen_past_its_session_timeout()
{
    const FREEZES: u64 = 3;
    const PER_ROUND: usize = 100;
    let name = it::unique("pause");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = it::free_port();
    let broker = Broker(it::start_broker(port, &dir, it::BrokerLog::Memory));
    let mut config = it::collector_config(&name, 2);
    config.kafka.brokers = format!("127.0.0.1:{port}");
    let kafka = config.kafka.clone();
    let (collector, _) = it::start_collector(config).await;
    let pool = it::schema_pool(&name).await;
    let producer = it::producer(&kafka);
    let mut want = 0;
    for round in 0..=FREEZES {
        if round > 0 {
            // Past the collector's 10 s session timeout: the broker must drop the member and the
            // collector must join again.
            broker.signal("STOP");
            tokio::time::sleep(Duration::from_secs(14)).await;
            broker.signal("CONT");
        }
        let events = it::profile_events(
            Profile::Steady,
            round,
            Utc::now() - chrono::Duration::seconds(30),
            Duration::from_secs(30),
            PER_ROUND,
        );
        it::produce_events(&producer, &kafka.raw_topic, &events).await;
        want += PER_ROUND as i64;
        it::wait_scalar(
            &pool,
            "SELECT count(*) FROM log_events",
            want,
            Duration::from_secs(90),
        )
        .await;
    }
    it::wait_status(&collector.url("/ready"), 200, Duration::from_secs(30)).await;
    collector.stop().await;
    drop(broker);
    it::drop_schema(&pool, &name).await;
    let _ = std::fs::remove_dir_all(&dir);
}
