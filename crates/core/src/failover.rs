//! When producers move to another Kafka cluster (DESIGN.md, "Failover and
//! recovery"). Every process observes each cluster's health; this decides,
//! from those observations alone, whether to leave the active cluster.
//! Consumers are not part of it: they read every cluster all the time.

use std::time::Duration;

/// What a process has seen of one cluster: healthy or not, and since when
/// (milliseconds on any monotonic clock) it has been so without a break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterHealth {
    pub healthy: bool,
    pub since_ms: u64,
}

impl ClusterHealth {
    /// A cluster not yet checked counts as healthy from `now_ms`: a process
    /// that just started does not fail over before it has looked.
    pub fn unknown(now_ms: u64) -> Self {
        Self {
            healthy: true,
            since_ms: now_ms,
        }
    }

    /// The next observation; the clock restarts only when the state changes.
    pub fn observe(self, healthy: bool, now_ms: u64) -> Self {
        if healthy == self.healthy {
            self
        } else {
            Self {
                healthy,
                since_ms: now_ms,
            }
        }
    }

    fn for_at_least(&self, healthy: bool, span: Duration, now_ms: u64) -> bool {
        self.healthy == healthy && now_ms.saturating_sub(self.since_ms) >= span.as_millis() as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// How long the active cluster may be unhealthy before producers leave it.
    pub failover_after: Duration,
    /// How long a more preferred cluster must be healthy before producers
    /// return to it; None: only an operator moves them back.
    pub failback_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Stay,
    /// Move producers to the cluster at this index of the preference order.
    SwitchTo {
        index: usize,
        reason: String,
    },
}

/// `clusters` is in order of preference, with the names for the reason.
/// `held`: an operator chose the active cluster and the choice still holds,
/// so producers do not fail back from it; they still leave it if it fails,
/// since staying on a dead cluster is never what the operator asked for.
pub fn decide(
    clusters: &[(&str, ClusterHealth)],
    active: usize,
    now_ms: u64,
    policy: FailoverPolicy,
    held: bool,
) -> Decision {
    let Some((active_name, active_health)) = clusters.get(active) else {
        return match clusters.iter().position(|(_, h)| h.healthy) {
            Some(index) => Decision::SwitchTo {
                index,
                reason: "the active cluster is no longer configured".into(),
            },
            None => Decision::Stay,
        };
    };
    if active_health.for_at_least(false, policy.failover_after, now_ms) {
        // Prefer the most preferred healthy cluster, wherever it stands.
        return match clusters
            .iter()
            .enumerate()
            .find(|(i, (_, h))| *i != active && h.healthy)
        {
            Some((index, (name, _))) => Decision::SwitchTo {
                index,
                reason: format!(
                    "cluster {active_name} failed its health checks for {} s; moving to {name}",
                    now_ms.saturating_sub(active_health.since_ms) / 1000
                ),
            },
            // Nowhere better to go: stay, and the outbox keeps the work.
            None => Decision::Stay,
        };
    }
    if let (true, Some(after), false) = (active_health.healthy, policy.failback_after, held) {
        if let Some((index, (name, _))) = clusters[..active]
            .iter()
            .enumerate()
            .find(|(_, (_, h))| h.for_at_least(true, after, now_ms))
        {
            return Decision::SwitchTo {
                index,
                reason: format!(
                    "cluster {name} has been healthy for {} s; moving back from {active_name}",
                    after.as_secs()
                ),
            };
        }
    }
    Decision::Stay
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: FailoverPolicy = FailoverPolicy {
        failover_after: Duration::from_secs(10),
        failback_after: Some(Duration::from_secs(60)),
    };

    fn h(healthy: bool, since_ms: u64) -> ClusterHealth {
        ClusterHealth { healthy, since_ms }
    }

    #[test]
    fn a_failing_cluster_is_left_only_after_the_configured_time() {
        let clusters = [("a", h(false, 1_000)), ("b", h(true, 0))];
        assert_eq!(decide(&clusters, 0, 10_999, POLICY, false), Decision::Stay);
        assert!(matches!(
            decide(&clusters, 0, 11_000, POLICY, false),
            Decision::SwitchTo { index: 1, .. }
        ));
    }

    #[test]
    fn with_no_healthy_cluster_producers_stay() {
        let clusters = [("a", h(false, 0)), ("b", h(false, 0))];
        assert_eq!(decide(&clusters, 0, 100_000, POLICY, false), Decision::Stay);
    }

    #[test]
    fn the_most_preferred_healthy_cluster_is_chosen() {
        let clusters = [("a", h(true, 0)), ("b", h(false, 0)), ("c", h(true, 0))];
        assert!(matches!(
            decide(&clusters, 1, 20_000, POLICY, false),
            Decision::SwitchTo { index: 0, .. }
        ));
    }

    #[test]
    fn failback_waits_for_a_steady_preferred_cluster_and_can_be_off() {
        let clusters = [("a", h(true, 50_000)), ("b", h(true, 0))];
        assert_eq!(decide(&clusters, 1, 109_999, POLICY, false), Decision::Stay);
        assert!(matches!(
            decide(&clusters, 1, 110_000, POLICY, false),
            Decision::SwitchTo { index: 0, .. }
        ));
        let manual = FailoverPolicy {
            failback_after: None,
            ..POLICY
        };
        assert_eq!(
            decide(&clusters, 1, 1_000_000, manual, false),
            Decision::Stay
        );
    }

    #[test]
    fn an_operators_choice_is_not_undone_by_failback_but_a_dead_cluster_is_left() {
        let clusters = [("a", h(true, 0)), ("b", h(true, 0))];
        assert_eq!(
            decide(&clusters, 1, 1_000_000, POLICY, true),
            Decision::Stay
        );
        assert!(matches!(
            decide(&clusters, 1, 1_000_000, POLICY, false),
            Decision::SwitchTo { index: 0, .. }
        ));
        let chosen_dies = [("a", h(true, 0)), ("b", h(false, 0))];
        assert!(matches!(
            decide(&chosen_dies, 1, 20_000, POLICY, true),
            Decision::SwitchTo { index: 0, .. }
        ));
    }

    #[test]
    fn health_keeps_its_start_until_it_changes() {
        let x = ClusterHealth::unknown(0).observe(true, 5).observe(false, 7);
        assert_eq!(x, h(false, 7));
        assert_eq!(x.observe(false, 9), h(false, 7));
    }

    #[test]
    fn an_unconfigured_active_cluster_gives_way() {
        let clusters = [("a", h(true, 0))];
        assert!(matches!(
            decide(&clusters, 3, 0, POLICY, false),
            Decision::SwitchTo { index: 0, .. }
        ));
    }
}
