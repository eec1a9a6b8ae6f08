//! The ledger and the rate limits on Redis as production deploys it: a
//! primary and replica behind Sentinel, through a failover, and a Redis
//! Cluster of three shards, one of which loses its data. Real redis-server
//! processes; the end-to-end tests run real Herald processes on them and
//! check the simulators' record.

use herald_core::dedupe::Claim;
use herald_core::DeliveryId;
use herald_ledger::{
    Ledger, LedgerError, RateLimiter, RedisEndpoint, RedisTarget, Replication, Settle,
};
use herald_tests::redis_deployments::{count_keys, ClusterRedis, SentinelRedis, SENTINEL_MASTER};
use herald_tests::{ios_token, TestEnv};
use serde_json::json;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);
const HORIZON: Duration = Duration::from_secs(3600);

fn ids(n: usize) -> Vec<DeliveryId> {
    (0..n).map(|_| DeliveryId(uuid::Uuid::new_v4())).collect()
}

fn prefix() -> String {
    format!("herald-test:{}:", uuid::Uuid::new_v4().simple())
}

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn sentinel_endpoint(set: &SentinelRedis) -> RedisEndpoint {
    RedisEndpoint {
        target: RedisTarget::Sentinel {
            sentinels: vec![set.sentinel_url()],
            master_name: SENTINEL_MASTER.into(),
            url: "redis://127.0.0.1".into(),
        },
        ca_cert_pem: None,
    }
}

fn cluster_endpoint(cluster: &ClusterRedis) -> RedisEndpoint {
    RedisEndpoint {
        target: RedisTarget::Cluster {
            nodes: cluster.node_urls()[..1].to_vec(),
        },
        ca_cert_pem: None,
    }
}

/// A claim, retried the way a sender retries a batch whose Redis call
/// failed: a failover drops the connection once.
async fn claim_retrying(ledger: &Ledger, ids: &[DeliveryId]) -> herald_ledger::ClaimBatch {
    let mut failures = 0;
    loop {
        match ledger.claim_batch(ids, "round-1").await {
            Ok(batch) => return batch,
            Err(e) => {
                failures += 1;
                assert!(failures < 20, "the ledger never came back: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

fn count(claims: &[Claim], want: fn(&Claim) -> bool) -> usize {
    claims.iter().filter(|c| want(c)).count()
}

fn is_claimed(c: &Claim) -> bool {
    matches!(c, Claim::Claimed { .. })
}

fn is_delivered(c: &Claim) -> bool {
    matches!(c, Claim::Settled { state } if state == "delivered")
}

async fn deliver_all(ledger: &Ledger, ids: &[DeliveryId]) {
    let steps: Vec<_> = ids
        .iter()
        .map(|id| {
            (
                *id,
                1,
                Settle::Complete {
                    state: "delivered".into(),
                },
            )
        })
        .collect();
    let ours = ledger.complete_batch(&steps).await.expect("complete");
    assert!(ours.iter().all(|o| o.ours), "every epoch was still ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_follows_a_sentinel_failover_and_keeps_what_was_settled() {
    let dir = test_dir("sentinel-ledger");
    let set = SentinelRedis::start(&dir);
    let prefix = prefix();
    let ledger = Ledger::connect(&sentinel_endpoint(&set), &prefix, "owner-a", LEASE, HORIZON)
        .await
        .expect("ledger over Sentinel");
    ledger
        .mark_intact(&Default::default())
        .await
        .expect("marker");
    let before = ids(300);
    let batch = ledger.claim_batch(&before, "round-1").await.expect("claim");
    assert!(batch.ledger_intact);
    assert_eq!(count(&batch.claims, is_claimed), 300);
    deliver_all(&ledger, &before).await;
    let old_primary = set.primary_port();
    set.wait_replicated();

    let new_primary = set.failover();
    assert_ne!(new_primary, old_primary);

    // The same ledger, without a restart, now answers from the new primary:
    // what was settled before the failover is still settled.
    let again = claim_retrying(&ledger, &before).await;
    assert!(again.ledger_intact, "the marker was replicated");
    assert_eq!(
        count(&again.claims, is_delivered),
        300,
        "{:?}",
        again.claims
    );
    let after = ids(200);
    let fresh = claim_retrying(&ledger, &after).await;
    assert_eq!(count(&fresh.claims, is_claimed), 200);
    deliver_all(&ledger, &after).await;
    assert_eq!(
        count_keys(new_primary, &format!("{prefix}d:*")),
        500,
        "the writes after the failover went to the new primary"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A failover promotes the replica with what it had received: a claim it
/// had not, lost while its send is at the provider, lets a copy of the job
/// claim the delivery afresh and send it twice. So a claim is answered only
/// once the replica online holds it; a replica that is online but does not
/// acknowledge (frozen here) stops claims and settles until it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_settles_are_answered_only_once_the_replica_holds_them() {
    let dir = test_dir("sentinel-wait");
    let set = SentinelRedis::start(&dir);
    let prefix = prefix();
    let replication = Replication {
        acks: 1,
        timeout: Duration::from_millis(300),
    };
    let ledger = Ledger::connect(&sentinel_endpoint(&set), &prefix, "owner-a", LEASE, HORIZON)
        .await
        .expect("ledger over Sentinel")
        .with_replication(replication);
    let other = Ledger::connect(&sentinel_endpoint(&set), &prefix, "owner-b", LEASE, HORIZON)
        .await
        .expect("a second sender's ledger")
        .with_replication(replication);
    ledger
        .mark_intact(&Default::default())
        .await
        .expect("marker");
    let replica = set.replica_port();

    // With the replica well, claims are answered once it holds them.
    let first = ids(20);
    let batch = ledger.claim_batch(&first, "round-1").await.expect("claim");
    assert_eq!(count(&batch.claims, is_claimed), 20);
    assert_eq!(count_keys(replica, &format!("{prefix}d:*")), 20);

    // Frozen, it is still online for its primary, and holds nothing new:
    // neither claims nor settles are answered.
    set.signal(replica, "-STOP");
    let second = ids(20);
    let started = std::time::Instant::now();
    let refused = ledger.claim_batch(&second, "round-2").await;
    assert!(
        matches!(
            refused,
            Err(LedgerError::NotReplicated {
                acked: 0,
                needed: 1
            })
        ),
        "{refused:?}"
    );
    assert!(
        started.elapsed() >= replication.timeout,
        "it waited for the replica"
    );
    let settles: Vec<_> = first
        .iter()
        .map(|id| {
            (
                *id,
                1,
                Settle::Complete {
                    state: "delivered".into(),
                },
            )
        })
        .collect();
    let unsettled = ledger.complete_batch(&settles).await;
    assert!(
        matches!(unsettled, Err(LedgerError::NotReplicated { .. })),
        "{unsettled:?}"
    );

    // Thawed, the same round claims its own deliveries again, and the
    // settle said again is the same settle.
    set.signal(replica, "-CONT");
    let again = ledger
        .claim_batch(&second, "round-2")
        .await
        .expect("claim again");
    assert_eq!(count(&again.claims, is_claimed), 20, "{:?}", again.claims);
    let settled = ledger.complete_batch(&settles).await.expect("settle again");
    assert!(settled.iter().all(|s| s.ours));

    // What the sender was answered, the promoted replica has: the second
    // batch is another owner's, the first settled.
    set.failover();
    let after = claim_retrying(&other, &second).await;
    assert_eq!(
        count(&after.claims, |c| matches!(c, Claim::Busy { .. })),
        20,
        "{:?}",
        after.claims
    );
    let settled_after = claim_retrying(&other, &first).await;
    assert_eq!(count(&settled_after.claims, is_delivered), 20);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_spreads_over_a_cluster_and_notices_a_shard_that_lost_its_data() {
    let dir = test_dir("cluster-ledger");
    let cluster = ClusterRedis::start(&dir);
    let prefix = prefix();
    let ledger = Ledger::connect(
        &cluster_endpoint(&cluster),
        &prefix,
        "owner-a",
        LEASE,
        HORIZON,
    )
    .await
    .expect("ledger over a cluster");

    // A first start: no markers anywhere.
    let first = ids(50);
    let batch = ledger.claim_batch(&first, "round-1").await.expect("claim");
    assert!(!batch.ledger_intact, "a ledger never marked is not intact");
    ledger
        .mark_intact(&Default::default())
        .await
        .expect("markers");

    let all = ids(1000);
    let batch = ledger.claim_batch(&all, "round-1").await.expect("claim");
    assert!(batch.ledger_intact);
    assert_eq!(count(&batch.claims, is_claimed), 1000);
    deliver_all(&ledger, &all).await;
    for port in cluster.ports {
        let here = count_keys(port, &format!("{prefix}d:*"));
        assert!(
            here > 150,
            "shard {port} holds {here} of 1,050 delivery keys"
        );
        assert!(
            count_keys(port, &format!("{prefix}ledger-marker:*")) > 0,
            "shard {port} has markers of its own"
        );
    }
    let again = ledger.claim_batch(&all, "round-1").await.expect("claim");
    assert_eq!(count(&again.claims, is_delivered), 1000);

    // One shard restarts empty: the claims it serves say so, and only they
    // come back unclaimed; the other shards still know what was delivered.
    let lost_here = count_keys(cluster.ports[1], &format!("{prefix}d:*"));
    cluster.lose_shard_data(1);
    let after_loss = ledger.claim_batch(&all, "round-1").await.expect("claim");
    assert!(!after_loss.ledger_intact, "a shard's loss is noticed");
    let still_known = count(&after_loss.claims, is_delivered);
    assert!(
        (1000 - lost_here..=1050 - lost_here).contains(&still_known),
        "{still_known} of 1,000 still known, {lost_here} keys were on the emptied shard"
    );
    assert_eq!(count(&after_loss.claims, is_claimed), 1000 - still_known);

    // Rebuilt (as a sender does from PostgreSQL) and marked again: intact.
    let seeded: Vec<_> = all.iter().map(|id| (*id, "delivered")).collect();
    ledger.seed_settled(&seeded).await.expect("seed");
    ledger
        .mark_intact(&Default::default())
        .await
        .expect("markers");
    let rebuilt = ledger
        .claim_batch(&all[..10], "round-1")
        .await
        .expect("claim");
    assert!(rebuilt.ledger_intact);

    // Rate limits: a campaign's and its app's limits share one slot.
    let limiter = RateLimiter::connect(&cluster_endpoint(&cluster), &prefix)
        .await
        .expect("limiter over a cluster");
    let grant = limiter
        .take(
            "app-1",
            &[("campaign:1", 50), ("campaign-app:app-1", 1000)],
            100,
        )
        .await
        .expect("take");
    assert!(
        (1..=5).contains(&grant.granted),
        "50/s allows 5 per 100 ms window, granted {}",
        grant.granted
    );
    let mut allowed = 0;
    for _ in 0..12 {
        if limiter.hit("key-1", 10).await.expect("hit") == herald_ledger::RateDecision::Allow {
            allowed += 1;
        }
    }
    assert!((1..=10).contains(&allowed), "10/s allowed {allowed} of 12");
    let _ = std::fs::remove_dir_all(dir);
}

/// Pushes `n` tokens (numbered from `first`) and waits until each is delivered.
async fn push_and_wait(env: &TestEnv, gw: &str, key: &str, first: usize, n: usize) -> String {
    let tokens: Vec<_> = (first..first + n)
        .map(|i| json!({"platform": "ios", "token": ios_token(i)}))
        .collect();
    let (status, m) = env
        .push(
            gw,
            key,
            Some(&format!("\"batch-{first}\"")),
            &json!({"to": {"tokens": tokens}, "notification": {"title": "t"}}),
        )
        .await;
    assert_eq!(status, 202, "{m}");
    let id = m["message_id"].as_str().expect("id").to_string();
    env.wait_message(gw, key, &id, |s| {
        s["counts"]["delivered"] == u64::try_from(n).expect("n")
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_delivers_through_a_sentinel_failover_each_device_once() {
    let mut env = TestEnv::start("sentinel").await;
    let set = SentinelRedis::start(&env.log_dir);
    for (k, v) in [
        ("HERALD_REDIS__MODE", "sentinel".to_string()),
        (
            "HERALD_REDIS__SENTINEL__NODES",
            format!("[\"{}\"]", set.sentinel_url()),
        ),
        (
            "HERALD_REDIS__SENTINEL__MASTER_NAME",
            SENTINEL_MASTER.into(),
        ),
        // Nothing at the standalone address: only Sentinel's answer works.
        ("HERALD_REDIS__URL", "redis://127.0.0.1:1".into()),
    ] {
        env.extra_env.insert(k.into(), v);
    }
    let app = env.create_app().await;
    let _sender = env.sender().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");

    let first = push_and_wait(&env, &gw, &app.server_key, 0, 40).await;
    set.wait_replicated();
    let new_primary = set.failover();
    let second = push_and_wait(&env, &gw, &app.server_key, 40, 40).await;

    for (id, tokens) in [(&first, 0..40), (&second, 40..80)] {
        let per_token = env.deliveries_per_token(id).await;
        for i in tokens {
            assert_eq!(per_token.get(&ios_token(i)), Some(&1), "token {i}");
        }
    }
    assert!(
        count_keys(new_primary, &format!("{}d:*", env.redis_prefix)) >= 80,
        "the ledger follows the new primary"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_keeps_its_ledger_and_rate_limits_on_a_redis_cluster() {
    let mut env = TestEnv::start("rcluster").await;
    let cluster = ClusterRedis::start(&env.log_dir);
    let nodes = cluster
        .node_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(",");
    for (k, v) in [
        ("HERALD_REDIS__MODE", "cluster".to_string()),
        ("HERALD_REDIS__CLUSTER__NODES", format!("[{nodes}]")),
        ("HERALD_REDIS__URL", "redis://127.0.0.1:1".into()),
    ] {
        env.extra_env.insert(k.into(), v);
    }
    let app = env.create_app().await;
    let _sender = env.sender().await;
    let gateway = env
        .gateway_with(&[("HERALD_GATEWAY__RATE_LIMIT_PER_SECOND", "1000")])
        .await;
    let gw = gateway.url.clone().expect("url");

    let id = push_and_wait(&env, &gw, &app.server_key, 0, 120).await;
    let per_token = env.deliveries_per_token(&id).await;
    assert_eq!(per_token.len(), 120);
    assert!(per_token.values().all(|n| *n == 1), "{per_token:?}");
    for port in cluster.ports {
        assert!(
            count_keys(port, &format!("{}d:*", env.redis_prefix)) > 10,
            "shard {port} holds part of the ledger"
        );
    }
    assert!(
        cluster
            .ports
            .iter()
            .map(|p| count_keys(*p, &format!("{}rl:*", env.redis_prefix)))
            .sum::<usize>()
            > 0,
        "the gateway's rate limit counts in the cluster"
    );
    env.finish().await;
}

/// A round claims again only before it has sent anything (its claims were
/// not answered, or the replicas did not hold them in time): its own claim
/// whose lease ran out meanwhile is its own again, not a takeover, which an
/// `at_most_once` delivery would record as "unknown" though it never left.
#[tokio::test]
async fn a_round_claiming_again_after_its_lease_ran_out_is_no_takeover() {
    let short = Duration::from_millis(200);
    let (dir, _redis, ledger) = private_ledger("ledger-own-expired", short, HORIZON).await;
    let id = ids(2);
    let first = ledger.claim_batch(&id, "round-1").await.expect("claim");
    assert_eq!(first.claims, vec![Claim::Claimed { epoch: 1 }; 2]);
    tokio::time::sleep(short * 2).await;
    let again = ledger
        .claim_batch(&id[..1], "round-1")
        .await
        .expect("claim");
    assert_eq!(again.claims, vec![Claim::Claimed { epoch: 1 }], "its own");
    let other = ledger
        .claim_batch(&id[1..], "round-2")
        .await
        .expect("claim");
    assert!(
        matches!(
            other.claims[0],
            Claim::TakenOver {
                epoch: 2,
                takeovers: 1
            }
        ),
        "another round's is a takeover: {:?}",
        other.claims
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_round_gets_its_own_claims_back_and_a_doubt_outlives_a_release() {
    let (dir, redis, ledger) = private_ledger("ledger-rounds", LEASE, HORIZON).await;
    let id = ids(1);

    // The round's first answer was lost: claiming again is not "busy".
    let first = ledger.claim_batch(&id, "round-1").await.expect("claim");
    assert_eq!(first.claims, vec![Claim::Claimed { epoch: 1 }]);
    let again = ledger.claim_batch(&id, "round-1").await.expect("claim");
    assert_eq!(again.claims, vec![Claim::Claimed { epoch: 1 }]);
    let other = ledger.claim_batch(&id, "round-2").await.expect("claim");
    assert!(
        matches!(other.claims[0], Claim::Busy { .. }),
        "{:?}",
        other.claims
    );
    assert_eq!(
        ledger
            .renew_batch(&[(id[0], 1)], "round-1")
            .await
            .expect("renew"),
        vec![true]
    );
    assert_eq!(
        ledger
            .renew_batch(&[(id[0], 1)], "round-2")
            .await
            .expect("renew"),
        vec![false],
        "only the owner renews"
    );

    // An unknown outcome, its resend refused (503) and released, twice over:
    // the next claim is a takeover, with no resend of its own.
    assert!(ledger.mark_doubt(id[0], 1, "round-1").await.expect("doubt"));
    assert!(!ledger.mark_doubt(id[0], 1, "round-2").await.expect("doubt"));
    for _ in 0..2 {
        let ours = ledger
            .complete_batch(&[(id[0], 1, Settle::Release)])
            .await
            .expect("release");
        assert!(ours[0].ours, "releasing again is the same release");
    }
    let next = ledger.claim_batch(&id, "round-3").await.expect("claim");
    assert_eq!(
        next.claims,
        vec![Claim::TakenOver {
            epoch: 2,
            takeovers: 1
        }]
    );
    let delivered = || {
        vec![(
            id[0],
            2,
            Settle::Complete {
                state: "delivered".into(),
            },
        )]
    };
    for _ in 0..2 {
        let ours = ledger.complete_batch(&delivered()).await.expect("settle");
        assert!(ours[0].ours, "settling again is the same settle");
    }

    // A claim Redis forgot is written back by its renewal.
    let fresh = ids(1);
    ledger.claim_batch(&fresh, "round-4").await.expect("claim");
    redis.cli(&["FLUSHALL"]);
    assert_eq!(
        ledger
            .renew_batch(&[(fresh[0], 1)], "round-4")
            .await
            .expect("renew"),
        vec![true]
    );
    let later = ledger.claim_batch(&fresh, "round-5").await.expect("claim");
    assert!(
        matches!(later.claims[0], Claim::Busy { .. }),
        "{:?}",
        later.claims
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A declared loss keeps write sequences monotonic and is counted, so that
/// a second loss before the rebuild shows, and a rebuild begun before it
/// does not mark the ledger intact; a rebuild lock whose answer was lost is
/// still its taker's, and a failed rebuild gives it up at once.
#[tokio::test]
async fn a_declared_loss_raises_the_sequence_and_the_rebuild_lock_survives_a_lost_answer() {
    let dir = test_dir("ledger-losses");
    let redis = herald_tests::PrivateRedis::start(&dir);
    let endpoint = RedisEndpoint {
        target: RedisTarget::Standalone { url: redis.url() },
        ca_cert_pem: None,
    };
    let p = prefix();
    let ledger = Ledger::connect(&endpoint, &p, "sender-a", LEASE, HORIZON)
        .await
        .expect("ledger");
    let other = Ledger::connect(&endpoint, &p, "sender-b", LEASE, HORIZON)
        .await
        .expect("ledger");
    ledger.mark_intact(&Default::default()).await.expect("mark");
    assert!(ledger.intact().await.expect("intact"));

    // Redis went back to 3 while this process had seen 40.
    redis.cli(&["SET", &format!("{p}ledger-seq"), "3"]);
    ledger
        .declare_lost(&[(String::new(), 40)])
        .await
        .expect("declare");
    assert!(!ledger.intact().await.expect("intact"));
    assert_eq!(ledger.losses().await.expect("losses"), 1);
    assert_eq!(ledger.read_seqs().await.expect("seqs")[""], 40);
    // A sequence never goes down by a declaration.
    ledger
        .declare_lost(&[(String::new(), 10)])
        .await
        .expect("declare");
    assert_eq!(ledger.read_seqs().await.expect("seqs")[""], 40);
    assert_eq!(ledger.losses().await.expect("losses"), 2);
    // A rebuild that read the count before the second loss marks nothing.
    let floors = Default::default();
    assert!(!ledger
        .mark_intact_unless_lost_since(&floors, Some(1))
        .await
        .expect("mark"));
    assert!(!ledger.intact().await.expect("intact"));
    assert!(ledger
        .mark_intact_unless_lost_since(&floors, Some(2))
        .await
        .expect("mark"));
    assert!(ledger.intact().await.expect("intact"));

    // The lock is taken, but its answer lost: taking it again is ours.
    assert!(ledger
        .try_rebuild_lock(Duration::from_secs(60))
        .await
        .expect("lock"));
    assert!(ledger
        .try_rebuild_lock(Duration::from_secs(60))
        .await
        .expect("lock"));
    assert!(!other
        .try_rebuild_lock(Duration::from_secs(60))
        .await
        .expect("lock"));
    other.release_rebuild_lock().await.expect("release");
    assert!(
        !other
            .try_rebuild_lock(Duration::from_secs(60))
            .await
            .expect("lock"),
        "only the holder gives the lock up"
    );
    ledger.release_rebuild_lock().await.expect("release");
    assert!(other
        .try_rebuild_lock(Duration::from_secs(60))
        .await
        .expect("lock"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A ledger of sender "sender-a" on a Redis of the test's own, in a
/// directory named after the test.
async fn private_ledger(
    name: &str,
    lease: Duration,
    horizon: Duration,
) -> (std::path::PathBuf, herald_tests::PrivateRedis, Ledger) {
    let dir = test_dir(name);
    let redis = herald_tests::PrivateRedis::start(&dir);
    let endpoint = RedisEndpoint {
        target: RedisTarget::Standalone { url: redis.url() },
        ca_cert_pem: None,
    };
    let ledger = Ledger::connect(&endpoint, &prefix(), "sender-a", lease, horizon)
        .await
        .expect("ledger");
    (dir, redis, ledger)
}

/// The Lua scripts against the pure state machine of `herald_core::dedupe`:
/// a few thousand random claims, settles, releases, doubts and renewals by
/// three rounds over a handful of deliveries give the same answers from
/// Redis as from the model, and every entry keeps at least a horizon to
/// live once settled (at most its lease and a horizon).
#[tokio::test]
async fn the_ledger_scripts_answer_as_the_dedupe_model_does() {
    use herald_core::dedupe::{self, LedgerEntry};
    use rand::{Rng, SeedableRng};
    let (dir, redis, ledger) = private_ledger("ledger-model", LEASE, HORIZON).await;
    let mut ids = ids(6);
    let mut model: Vec<Option<LedgerEntry>> = vec![None; ids.len()];
    // The epoch a settled entry was settled at: settling it again in the
    // same words counts as the same settle only at that epoch in Redis
    // (the model does not keep it).
    let mut settled_at: Vec<u64> = vec![0; ids.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261203);
    let (now, lease) = (0, LEASE.as_millis() as i64);
    let states = ["delivered", "unknown"];
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for step in 0..3000 {
        let i = rng.random_range(0..ids.len());
        // A settled delivery makes way for a new one now and then: the
        // walk is not to end with every delivery settled.
        if matches!(model[i], Some(LedgerEntry::Settled { .. })) && rng.random_bool(0.2) {
            ids[i] = DeliveryId(uuid::Uuid::new_v4());
            model[i] = None;
        }
        let round = format!("r{}", rng.random_range(1..=3));
        let owner = format!("sender-a/{round}");
        // Mostly the epoch the entry holds, sometimes a stale or future one.
        let epoch = match &model[i] {
            Some(LedgerEntry::Inflight { epoch, .. } | LedgerEntry::Released { epoch, .. })
                if rng.random_bool(0.7) =>
            {
                *epoch
            }
            _ => rng.random_range(0..=4u64),
        };
        let what = format!(
            "step {step}: delivery {i}, {round}, epoch {epoch}, was {:?}",
            model[i]
        );
        match rng.random_range(0..10) {
            0..=3 => {
                // A batch of claims: this delivery and maybe the next.
                let members: Vec<usize> = if rng.random_bool(0.5) {
                    vec![i]
                } else {
                    vec![i, (i + 1) % ids.len()]
                };
                let batch: Vec<DeliveryId> = members.iter().map(|&m| ids[m]).collect();
                let got = ledger.claim_batch(&batch, &round).await.expect("claim");
                for (&m, claim) in members.iter().zip(got.claims) {
                    let (want, entry) = dedupe::claim(model[m].as_ref(), &owner, now, lease);
                    match (&want, &claim) {
                        (Claim::Busy { .. }, Claim::Busy { retry_in_ms }) => {
                            assert!(*retry_in_ms > 0 && *retry_in_ms <= lease, "{what}")
                        }
                        _ => assert_eq!(claim, want, "{what}; claim of delivery {m}"),
                    }
                    *seen
                        .entry(match claim {
                            Claim::Claimed { .. } => "claimed",
                            Claim::TakenOver { .. } => "takeover",
                            Claim::Busy { .. } => "busy",
                            Claim::Settled { .. } => "settled",
                        })
                        .or_default() += 1;
                    model[m] = entry;
                }
            }
            4..=5 => {
                let state = states[rng.random_range(0..states.len())];
                let got = ledger
                    .complete_batch(&[(
                        ids[i],
                        epoch,
                        Settle::Complete {
                            state: state.into(),
                        },
                    )])
                    .await
                    .expect("complete");
                let (ours, entry) = dedupe::complete(model[i].as_ref(), epoch, state);
                let again =
                    matches!(&model[i], Some(LedgerEntry::Settled { state: s }) if s == state);
                if again && settled_at[i] != epoch {
                    assert!(!got[0].ours, "{what}: another epoch's settle");
                    continue;
                }
                assert_eq!(got[0].ours, ours, "{what}: complete {state}");
                assert_eq!(got[0].mark.is_some(), ours && !again, "{what}: a write");
                if ours && !again {
                    settled_at[i] = epoch;
                    *seen.entry("settle").or_default() += 1;
                }
                model[i] = entry;
            }
            6 => {
                let got = ledger
                    .complete_batch(&[(ids[i], epoch, Settle::Release)])
                    .await
                    .expect("release");
                let (ours, entry) = dedupe::release(model[i].as_ref(), epoch);
                assert_eq!(got[0].ours, ours, "{what}: release");
                assert_eq!(got[0].mark, None, "{what}");
                if ours {
                    *seen.entry("release").or_default() += 1;
                }
                model[i] = entry;
            }
            7..=8 => {
                let got = ledger
                    .mark_doubt(ids[i], epoch, &round)
                    .await
                    .expect("doubt");
                let (ours, entry) = dedupe::doubt(model[i].as_ref(), &owner, epoch);
                assert_eq!(got, ours, "{what}: doubt");
                if ours {
                    *seen.entry("doubt").or_default() += 1;
                }
                model[i] = entry;
            }
            _ => {
                let got = ledger
                    .renew_batch(&[(ids[i], epoch)], &round)
                    .await
                    .expect("renew");
                let (ours, entry) = dedupe::renew(model[i].as_ref(), &owner, epoch, now, lease);
                assert_eq!(got, vec![ours], "{what}: renew");
                model[i] = entry;
            }
        }
    }
    for kind in [
        "claimed", "takeover", "busy", "settled", "settle", "release", "doubt",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) >= 10,
            "too few {kind}: {seen:?}"
        );
    }
    for (i, entry) in model.iter().enumerate() {
        let ttl: i64 = redis
            .cli(&["PTTL", &ledger.key(ids[i])])
            .trim()
            .parse()
            .expect("pttl");
        // -2: no entry, as the model has none.
        assert_eq!(ttl == -2, entry.is_none(), "{i}: {ttl} for {entry:?}");
        if entry.is_none() {
            continue;
        }
        let ttl = Duration::from_millis(u64::try_from(ttl).expect("an entry with a time to live"));
        assert!(ttl <= LEASE + HORIZON, "{i}: {ttl:?}");
        if matches!(entry, Some(LedgerEntry::Settled { .. })) {
            assert!(ttl > HORIZON - Duration::from_secs(60), "{i}: {ttl:?}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Before entries were strings, Herald kept each as a hash. A sender of
/// this release reads such an entry as it stands (a live lease stays live,
/// doubts stay doubts, settled stays settled), rewrites it as a string at
/// its next step, and refuses an entry it cannot read rather than take it
/// for absent.
#[tokio::test]
async fn entries_an_earlier_release_wrote_as_hashes_are_read_and_rewritten() {
    let (dir, redis, ledger) = private_ledger("ledger-hashes", LEASE, HORIZON).await;
    let version = ledger.server_version().await.expect("version");
    assert!(version >= (6, 2), "{version:?}");
    let id = ids(6);
    let key = |i: usize| ledger.key(id[i]);
    let live = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        + LEASE)
        .as_millis()
        .to_string();
    let hash = |i: usize, fields: &[&str]| {
        let k = key(i);
        let args: Vec<&str> = ["HSET", k.as_str()]
            .into_iter()
            .chain(fields.iter().copied())
            .collect();
        assert_ne!(redis.cli(&args), "", "HSET");
        // Ten minutes, well under a horizon: a settle that kept it shows.
        redis.cli(&["PEXPIRE", &k, "600000"]);
    };
    let inflight = |owner, epoch, lease_until, takeovers| {
        [
            "state",
            "inflight",
            "owner",
            owner,
            "epoch",
            epoch,
            "lease_until",
            lease_until,
            "takeovers",
            takeovers,
        ]
    };
    hash(0, &inflight("sender-a/round-1", "3", &live, "0"));
    hash(1, &["state", "released", "epoch", "2", "takeovers", "1"]);
    hash(2, &["state", "unknown", "epoch", "1"]);
    hash(3, &inflight("sender-a/round-9", "1", "1", "0"));
    hash(4, &inflight("sender-a/round-4", "5", &live, "0"));
    hash(5, &["state", "delivered", "epoch", "1"]);
    let more = ids(3);
    let key_of = |i: usize| ledger.key(more[i]);
    for (i, owner) in ["sender-a/round-6", "sender-a/round-7", "sender-a/round-8"]
        .into_iter()
        .enumerate()
    {
        let k = key_of(i);
        let mut args = vec!["HSET", k.as_str()];
        args.extend(inflight(owner, "2", &live, "0"));
        redis.cli(&args);
        redis.cli(&["PEXPIRE", &k, "600000"]);
    }
    let ttl_of = |k: &str| -> i64 { redis.cli(&["PTTL", k]).trim().parse().expect("pttl") };

    // Settled, released, doubted and abandoned straight from a hash.
    let complete = || {
        vec![(
            more[0],
            2,
            Settle::Complete {
                state: "delivered".into(),
            },
        )]
    };
    let first = ledger.complete_batch(&complete()).await.expect("settle");
    assert!(first[0].ours && first[0].mark.is_some(), "{first:?}");
    assert_eq!(redis.cli(&["GET", &key_of(0)]).trim(), "delivered 2");
    assert!(
        ttl_of(&key_of(0)) > HORIZON.as_millis() as i64 - 60_000,
        "a horizon from the settle"
    );
    let again = ledger.complete_batch(&complete()).await.expect("settle");
    assert!(
        again[0].ours && again[0].mark.is_none(),
        "the same settle: {again:?}"
    );
    let released = ledger
        .complete_batch(&[(more[1], 2, Settle::Release)])
        .await
        .expect("release");
    assert!(released[0].ours);
    assert_eq!(redis.cli(&["GET", &key_of(1)]).trim(), "released 2 0");
    assert!(ttl_of(&key_of(1)) > HORIZON.as_millis() as i64 - 60_000);
    assert!(ledger
        .mark_doubt(more[2], 2, "round-8")
        .await
        .expect("doubt"));
    assert!(redis
        .cli(&["GET", &key_of(2)])
        .starts_with(&format!("inflight 2 1 {live} sender-a/round-8")));
    ledger
        .abandon_batch(&[(more[2], 2)], "round-8")
        .await
        .expect("abandon");
    assert_eq!(ttl_of(&key_of(2)), -2, "abandoned");

    let other = ledger
        .claim_batch(&id[..4], "round-2")
        .await
        .expect("claim");
    assert_eq!(
        other.claims[1],
        Claim::TakenOver {
            epoch: 3,
            takeovers: 1
        }
    );
    assert_eq!(
        other.claims[2],
        Claim::Settled {
            state: "unknown".into()
        }
    );
    assert_eq!(
        other.claims[3],
        Claim::TakenOver {
            epoch: 2,
            takeovers: 1
        }
    );
    assert!(
        matches!(other.claims[0], Claim::Busy { .. }),
        "a live lease: {:?}",
        other.claims
    );
    let own = ledger
        .claim_batch(&id[..1], "round-1")
        .await
        .expect("claim");
    assert_eq!(own.claims, vec![Claim::Claimed { epoch: 3 }]);
    let settled = ledger
        .complete_batch(&[(
            id[0],
            3,
            Settle::Complete {
                state: "delivered".into(),
            },
        )])
        .await
        .expect("settle");
    assert!(settled[0].ours && settled[0].mark.is_some());
    assert_eq!(redis.cli(&["GET", &key(0)]).trim(), "delivered 3");
    let ttl: u64 = redis.cli(&["PTTL", &key(0)]).trim().parse().expect("pttl");
    assert!(
        ttl > HORIZON.as_millis() as u64 - 60_000,
        "a horizon from the settle: {ttl}"
    );
    assert!(redis.cli(&["GET", &key(1)]).starts_with("inflight 3 1 "));

    // A legacy claim renewed, doubted and released keeps its doubt.
    assert_eq!(
        ledger
            .renew_batch(&[(id[4], 5)], "round-4")
            .await
            .expect("renew"),
        vec![true]
    );
    assert!(redis.cli(&["GET", &key(4)]).starts_with("inflight 5 0 "));
    assert!(ledger.mark_doubt(id[4], 5, "round-4").await.expect("doubt"));
    let released = ledger
        .complete_batch(&[(id[4], 5, Settle::Release)])
        .await
        .expect("release");
    assert!(released[0].ours);
    let next = ledger
        .claim_batch(&id[4..5], "round-5")
        .await
        .expect("claim");
    assert_eq!(
        next.claims,
        vec![Claim::TakenOver {
            epoch: 6,
            takeovers: 1
        }]
    );

    // A seed leaves an entry of any kind as it is.
    assert_eq!(
        ledger
            .seed_settled(&[(id[5], "unknown")])
            .await
            .expect("seed"),
        0
    );
    let seen = ledger
        .claim_batch(&id[5..], "round-6")
        .await
        .expect("claim");
    assert_eq!(
        seen.claims,
        vec![Claim::Settled {
            state: "delivered".into()
        }]
    );

    // Neither a hash nor an entry (nor a claim without its lease): a claim
    // or a settle fails, nothing is taken as free or overwritten, and the
    // settles beside it in the call are written and counted.
    let strange = ids(3);
    redis.cli(&["SET", &ledger.key(strange[0]), "something else"]);
    redis.cli(&["SET", &ledger.key(strange[1]), "inflight 1 0"]);
    for i in 0..2 {
        assert!(ledger
            .claim_batch(&strange[i..i + 1], "round-7")
            .await
            .is_err());
    }
    ledger
        .claim_batch(&strange[2..], "round-7")
        .await
        .expect("claim");
    let seq_before = ledger.read_seqs().await.expect("seqs")[""];
    let settles: Vec<_> = strange
        .iter()
        .map(|id| {
            (
                *id,
                1,
                Settle::Complete {
                    state: "delivered".into(),
                },
            )
        })
        .collect();
    assert!(ledger.complete_batch(&settles).await.is_err());
    assert_eq!(
        redis.cli(&["GET", &ledger.key(strange[0])]).trim(),
        "something else"
    );
    assert_eq!(
        redis.cli(&["GET", &ledger.key(strange[1])]).trim(),
        "inflight 1 0"
    );
    assert_eq!(
        redis.cli(&["GET", &ledger.key(strange[2])]).trim(),
        "delivered 1"
    );
    assert_eq!(
        ledger.read_seqs().await.expect("seqs")[""],
        seq_before + 1,
        "the settle written is counted"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An entry lives a horizon past its settle, however late the settle came:
/// within the lease it keeps the claim's time to live (the lease's end plus
/// a horizon), after the lease it gets a new one.
#[tokio::test]
async fn a_settle_after_the_lease_ran_out_is_kept_a_horizon() {
    let (lease, horizon) = (Duration::from_millis(1000), Duration::from_millis(2000));
    let (dir, redis, ledger) = private_ledger("ledger-late-settle", lease, horizon).await;
    let id = ids(2);
    ledger.claim_batch(&id, "round-1").await.expect("claim");
    let delivered = |i: usize| {
        vec![(
            id[i],
            1,
            Settle::Complete {
                state: "delivered".into(),
            },
        )]
    };
    let ttl = |i: usize| -> u64 {
        redis
            .cli(&["PTTL", &ledger.key(id[i])])
            .trim()
            .parse()
            .expect("pttl")
    };
    // Within the lease: the claim's time to live, more than a horizon.
    assert!(ledger.complete_batch(&delivered(0)).await.expect("settle")[0].ours);
    assert!(ttl(0) > 2000, "{}", ttl(0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(ledger.complete_batch(&delivered(1)).await.expect("settle")[0].ours);
    let late = ttl(1);
    assert!(
        late > 1800 && late <= 2000,
        "a horizon from the late settle: {late}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
