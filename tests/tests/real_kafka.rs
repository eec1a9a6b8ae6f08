//! The incident on real Apache Kafka (KRaft, from Maven Central): the
//! cluster Herald produces to is wiped and started again, empty, at the same
//! address, while traffic of all three kinds flows. Herald's roles run as
//! separate processes and none is restarted: each must notice that the
//! cluster was replaced, build its Kafka clients anew, put back from
//! PostgreSQL what the old cluster held, and deliver every accepted
//! notification exactly once. librdkafka's mock cluster cannot play this:
//! it cannot come back at the same address.

use herald_tests::clusters::{create_topics, ONE_BROKER};
use herald_tests::incident::{Incident, Settings, LONG};
use herald_tests::kafka::RealKafka;
use herald_tests::wait_until;
use std::time::Instant;
use uuid::Uuid;

/// `campaign_rate`: slow enough that the campaign is still being sent once
/// the cluster is back.
async fn start(
    name: &'static str,
    failover_after_ms: u64,
    failback_after_ms: u64,
    campaign_rate: u32,
) -> (RealKafka, Incident) {
    let dir = std::env::temp_dir().join(format!("herald-{name}-{}", Uuid::new_v4().simple()));
    let kafka = RealKafka::start(1, &dir).await;
    kafka.create_topics(1, 1).await;
    let inc = Incident::start(Settings {
        name,
        failover_after_ms,
        failback_after_ms,
        extra: ONE_BROKER,
        primary: Some(kafka.bootstrap_servers().to_string()),
        standby: None,
        redis: None,
        senders: 1,
        campaign_rate,
    })
    .await;
    (kafka, inc)
}

/// Wipes the primary mid-campaign, with pushes and events accepted while it
/// is away; `operator_recovers`: an operator also runs `herald recover`,
/// twice, as the incident's runbook once said to.
async fn wiped_and_reborn(name: &'static str, operator_recovers: bool) {
    let (mut kafka, mut inc) = start(name, 600_000, 0, 150).await;
    inc.launch_campaign().await;
    inc.traffic().await;
    inc.wait_all_ready().await;
    inc.wait_campaign_a_third_through().await;

    kafka.stop().await;
    // Accepted while the cluster is gone: the outbox and the events table
    // keep it.
    inc.traffic().await;
    for role in ["sender", "scheduler", "triggers"] {
        wait_until(
            &format!("the {role} unready while Kafka is away"),
            LONG,
            || async {
                let (status, body) = inc.readiness(role).await;
                status == 503 && body.contains("cluster primary")
            },
        )
        .await;
    }
    kafka.start_wiped().await;
    create_topics(&inc, "primary").await;
    let back = Instant::now();
    if operator_recovers {
        for _ in 0..2 {
            let out = inc.cli(&["recover"]).await;
            assert!(
                out.contains("recovered into Kafka cluster primary"),
                "{out}"
            );
        }
    }
    inc.first_delivery_of_each_kind(back, name).await;
    inc.wait_all_ready().await;
    println!(
        "{name}: every role ready again {:.1} s after the cluster was back",
        back.elapsed().as_secs_f64()
    );
    let mut procs = vec![&inc.gateway, &inc.scheduler, &inc.triggers];
    procs.extend(inc.senders.iter());
    for p in procs {
        let what = format!("the {} to replace the old cluster's producer", p.name);
        wait_until(&what, LONG, || async {
            p.logged("rebuilt the Kafka producer")
        })
        .await;
    }
    inc.traffic().await;
    inc.resubmit_everything().await;
    inc.wait_campaign_produced().await;
    inc.launch_campaign().await;
    let a = inc.primary.clone();
    inc.assert_exactly_once(&[&a]).await;
    inc.finish().await;
    drop(kafka);
}

#[tokio::test]
async fn the_cluster_wiped_and_reborn_at_the_same_address_heals_with_no_operator() {
    wiped_and_reborn("kwipe", false).await;
}

#[tokio::test]
async fn the_cluster_wiped_and_reborn_with_herald_recover_run_twice() {
    wiped_and_reborn("kwiperec", true).await;
}

/// The primary is lost mid-campaign and producers fail over to the standby;
/// the primary is rebuilt empty at the same address, and producers fail back
/// to it by themselves. Their old clients know a cluster that no longer
/// exists: they must be replaced, not retried.
#[tokio::test]
async fn producers_fail_back_to_a_rebuilt_primary() {
    let (mut kafka, mut inc) = start("kfailback", 1_500, 3_000, 40).await;
    inc.launch_campaign().await;
    inc.traffic().await;
    inc.wait_campaign_a_third_through().await;

    kafka.stop().await;
    let lost = Instant::now();
    inc.wait_all_producing_to("standby").await;
    inc.first_delivery_after(lost, "kfailback (to the standby)")
        .await;
    inc.traffic().await;

    kafka.start_wiped().await;
    create_topics(&inc, "primary").await;
    let back = Instant::now();
    inc.wait_all_producing_to("primary").await;
    println!(
        "kfailback: producers back on the rebuilt primary {:.1} s after it returned",
        back.elapsed().as_secs_f64()
    );
    inc.first_delivery_of_each_kind(back, "kfailback").await;
    inc.traffic().await;
    inc.resubmit_everything().await;
    inc.wait_all_ready().await;
    inc.wait_campaign_produced().await;
    inc.launch_campaign().await;
    let (a, b) = (inc.primary.clone(), inc.standby.clone());
    inc.assert_exactly_once(&[&a, &b]).await;
    inc.finish().await;
    drop(kafka);
}

/// Three brokers, each topic replicated three times with
/// `min.insync.replicas` 2 and Herald producing with `acks=all`: the node
/// that is both the active controller and a partition leader is killed -9
/// mid-traffic. Leadership moves to the in-sync replicas, the quorum elects
/// another controller, no process is restarted, and nothing acknowledged is
/// lost or sent twice.
#[tokio::test]
async fn three_brokers_losing_the_active_controller_and_a_partition_leader_lose_nothing() {
    let dir = std::env::temp_dir().join(format!("herald-k3-{}", Uuid::new_v4().simple()));
    let kafka = RealKafka::start(3, &dir).await;
    kafka.create_topics(3, 2).await;
    let mut inc = Incident::start(Settings {
        name: "k3",
        // No failover: the cluster itself must carry on.
        failover_after_ms: 600_000,
        failback_after_ms: 0,
        extra: &[
            ("HERALD_KAFKA__REPLICATION_FACTOR", "3"),
            ("HERALD_KAFKA__MIN_INSYNC_REPLICAS", "2"),
        ],
        primary: Some(kafka.bootstrap_servers().to_string()),
        standby: None,
        redis: None,
        senders: 1,
        // Slow enough that two thirds of the campaign, twenty seconds of
        // it, is still owed when the fault lands.
        campaign_rate: 50,
    })
    .await;
    // Eight partitions over three brokers: every broker leads some, so the
    // controller's node takes both roles down at once. Asked before the
    // campaign starts: each question starts a JVM, seconds on a loaded
    // machine, and the fault must land mid-campaign. Nothing moves
    // leadership until the kill.
    let controller = kafka.active_controller().await;
    let leaders = kafka.partition_leaders("herald.deliveries").await;
    assert!(leaders.contains(&controller), "{controller} {leaders:?}");
    inc.launch_campaign().await;
    inc.traffic().await;
    inc.wait_campaign_a_third_through().await;
    inc.assert_campaign_still_producing().await;
    let victim = controller;
    kafka.kill_node(victim);
    let fault = Instant::now();
    println!(
        "k3: killed node {victim} (active controller: {controller}; deliveries partition leaders: {leaders:?})"
    );
    inc.traffic().await;
    inc.first_delivery_of_each_kind(fault, "k3").await;
    let after = kafka.partition_leaders("herald.deliveries").await;
    assert!(
        !after.contains(&victim),
        "leadership stayed on the dead node: {after:?}"
    );
    assert_ne!(kafka.active_controller().await, victim);
    inc.traffic().await;
    inc.resubmit_everything().await;
    inc.wait_campaign_produced().await;
    inc.launch_campaign().await;
    let a = inc.primary.clone();
    inc.assert_exactly_once(&[&a]).await;
    inc.finish().await;
    drop(kafka);
}
