//! The per-delivery dedupe state machine (DESIGN.md, "The delivery protocol").
//!
//! The ledger (Redis) runs this same machine as Lua scripts; this pure version
//! states the rules, and the property tests check that no interleaving of
//! workers sends one delivery twice under `at_most_once`.

use crate::job::DeliveryPolicy;

/// What the ledger holds for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEntry {
    Inflight {
        owner: String,
        epoch: u64,
        lease_until_ms: i64,
        /// How many times an owner's lease expired and another took over.
        takeovers: u32,
    },
    /// Known not sent (the provider refused before delivering): free to claim
    /// again, keeping the epoch so that the old owner stays fenced.
    Released { epoch: u64, takeovers: u32 },
    /// Final: sent, rejected, unknown, expired or failed. Never claimed again.
    Settled { state: String },
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to send, fenced by `epoch`.
    Claimed { epoch: u64 },
    /// A previous owner's lease expired mid-send: ours, but whether the provider
    /// got the earlier attempt is unknown. `takeovers` counts such expiries.
    TakenOver { epoch: u64, takeovers: u32 },
    /// Another owner holds a live lease: try again after it.
    Busy { retry_in_ms: i64 },
    /// Already settled: a duplicate.
    Settled { state: String },
}

/// What a sender does with a claim, given the message's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimAction {
    Send,
    /// Settle as `unknown` without sending.
    RecordUnknown,
    RetryLater,
    SkipDuplicate,
}

pub fn claim(
    entry: Option<&LedgerEntry>,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
) -> (Claim, Option<LedgerEntry>) {
    match entry {
        None => (
            Claim::Claimed { epoch: 1 },
            Some(LedgerEntry::Inflight {
                owner: owner.to_string(),
                epoch: 1,
                lease_until_ms: now_ms + lease_ms,
                takeovers: 0,
            }),
        ),
        Some(LedgerEntry::Released { epoch, takeovers }) => (
            Claim::Claimed { epoch: epoch + 1 },
            Some(LedgerEntry::Inflight {
                owner: owner.to_string(),
                epoch: epoch + 1,
                lease_until_ms: now_ms + lease_ms,
                takeovers: *takeovers,
            }),
        ),
        Some(LedgerEntry::Settled { state }) => (
            Claim::Settled {
                state: state.clone(),
            },
            entry.cloned(),
        ),
        Some(LedgerEntry::Inflight {
            lease_until_ms,
            epoch,
            takeovers,
            ..
        }) => {
            if *lease_until_ms > now_ms {
                (
                    Claim::Busy {
                        retry_in_ms: lease_until_ms - now_ms,
                    },
                    entry.cloned(),
                )
            } else {
                let epoch = epoch + 1;
                let takeovers = takeovers + 1;
                (
                    Claim::TakenOver { epoch, takeovers },
                    Some(LedgerEntry::Inflight {
                        owner: owner.to_string(),
                        epoch,
                        lease_until_ms: now_ms + lease_ms,
                        takeovers,
                    }),
                )
            }
        }
    }
}

/// Settles a delivery only if `epoch` is still the current owner's: a worker
/// whose lease expired cannot overwrite a newer owner's outcome.
pub fn complete(
    entry: Option<&LedgerEntry>,
    epoch: u64,
    state: &str,
) -> (bool, Option<LedgerEntry>) {
    match entry {
        // None: the ledger lost the claim and nobody claimed since; the
        // caller did the work, so its settle is kept.
        None => (
            true,
            Some(LedgerEntry::Settled {
                state: state.to_string(),
            }),
        ),
        Some(LedgerEntry::Inflight { epoch: current, .. }) if *current == epoch => (
            true,
            Some(LedgerEntry::Settled {
                state: state.to_string(),
            }),
        ),
        _ => (false, entry.cloned()),
    }
}

/// Gives a claim back when the delivery is known not to have been sent (a retry
/// will claim it afresh). Fenced by epoch like `complete`.
pub fn release(entry: Option<&LedgerEntry>, epoch: u64) -> (bool, Option<LedgerEntry>) {
    match entry {
        None => (
            true,
            Some(LedgerEntry::Released {
                epoch,
                takeovers: 0,
            }),
        ),
        Some(LedgerEntry::Inflight {
            epoch: current,
            takeovers,
            ..
        }) if *current == epoch => (
            true,
            Some(LedgerEntry::Released {
                epoch,
                takeovers: *takeovers,
            }),
        ),
        _ => (false, entry.cloned()),
    }
}

/// The sender's decision for a claim. After a takeover, `at_least_once` resends
/// once; a second expiry means the resend's fate is unknown too, so it stops.
pub fn action(claim: &Claim, policy: DeliveryPolicy) -> ClaimAction {
    match claim {
        Claim::Claimed { .. } => ClaimAction::Send,
        Claim::TakenOver { takeovers, .. } => match policy {
            DeliveryPolicy::AtMostOnce => ClaimAction::RecordUnknown,
            DeliveryPolicy::AtLeastOnce if *takeovers <= 1 => ClaimAction::Send,
            DeliveryPolicy::AtLeastOnce => ClaimAction::RecordUnknown,
        },
        Claim::Busy { .. } => ClaimAction::RetryLater,
        Claim::Settled { .. } => ClaimAction::SkipDuplicate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settle_whose_claim_the_ledger_lost_is_kept() {
        // Redis restarted empty between claim and settle: the sender did
        // send, so a later copy of the job must find it settled.
        let (ok, e) = complete(None, 1, "delivered");
        assert!(ok);
        assert_eq!(
            claim(e.as_ref(), "b", 0, 100).0,
            Claim::Settled {
                state: "delivered".into()
            }
        );
        let (ok, e) = release(None, 1);
        assert!(ok);
        assert_eq!(
            claim(e.as_ref(), "b", 0, 100).0,
            Claim::Claimed { epoch: 2 }
        );
    }

    #[test]
    fn first_claim_wins_and_second_is_busy() {
        let (c, e) = claim(None, "a", 0, 100);
        assert_eq!(c, Claim::Claimed { epoch: 1 });
        let (c2, _) = claim(e.as_ref(), "b", 50, 100);
        assert_eq!(c2, Claim::Busy { retry_in_ms: 50 });
    }

    #[test]
    fn expired_lease_is_taken_over_with_a_new_epoch_and_fences_the_old_owner() {
        let (_, e) = claim(None, "a", 0, 100);
        let (c, e) = claim(e.as_ref(), "b", 100, 100);
        assert_eq!(
            c,
            Claim::TakenOver {
                epoch: 2,
                takeovers: 1
            }
        );
        let (ok, e2) = complete(e.as_ref(), 1, "delivered");
        assert!(!ok, "the zombie's complete must be refused");
        let (ok, e3) = complete(e2.as_ref(), 2, "delivered");
        assert!(ok);
        let (c, _) = claim(e3.as_ref(), "c", 10_000, 100);
        assert_eq!(
            c,
            Claim::Settled {
                state: "delivered".into()
            }
        );
    }

    #[test]
    fn release_lets_a_retry_claim_afresh() {
        let (_, e) = claim(None, "a", 0, 100);
        let (ok, e) = release(e.as_ref(), 1);
        assert!(ok);
        let (c, e) = claim(e.as_ref(), "b", 1, 100);
        assert_eq!(c, Claim::Claimed { epoch: 2 });
        let (ok, _) = complete(e.as_ref(), 1, "delivered");
        assert!(!ok, "the releasing owner is fenced after a new claim");
    }

    #[test]
    fn policy_decides_what_a_takeover_does() {
        let t1 = Claim::TakenOver {
            epoch: 2,
            takeovers: 1,
        };
        let t2 = Claim::TakenOver {
            epoch: 3,
            takeovers: 2,
        };
        assert_eq!(
            action(&t1, DeliveryPolicy::AtMostOnce),
            ClaimAction::RecordUnknown
        );
        assert_eq!(action(&t1, DeliveryPolicy::AtLeastOnce), ClaimAction::Send);
        assert_eq!(
            action(&t2, DeliveryPolicy::AtLeastOnce),
            ClaimAction::RecordUnknown
        );
    }
}
