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
    /// Known not sent by its last attempt (the provider refused before
    /// delivering): free to claim again, keeping the epoch so that the old
    /// owner stays fenced, and the doubts of earlier attempts in `takeovers`.
    Released { epoch: u64, takeovers: u32 },
    /// Final: sent, rejected, unknown, expired or failed. Never claimed again.
    Settled { state: String },
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to send, fenced by `epoch`.
    Claimed { epoch: u64 },
    /// Ours, but an earlier attempt may have reached the device: a previous
    /// owner's lease expired mid-send, or an owner resent after an unknown
    /// outcome (see [`doubt`]). `takeovers` counts such doubts; it never goes
    /// down, so a delivery gets one resend in its whole life.
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

/// Claims a delivery for `owner`. An owner that claims again while its lease
/// is live gets its own claim back (its first answer was lost: a connection
/// reset after Redis ran the claim), with the same epoch and the same doubt.
pub fn claim(
    entry: Option<&LedgerEntry>,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
) -> (Claim, Option<LedgerEntry>) {
    let claimed = |epoch: u64, takeovers: u32| {
        let answer = if takeovers > 0 {
            Claim::TakenOver { epoch, takeovers }
        } else {
            Claim::Claimed { epoch }
        };
        let entry = LedgerEntry::Inflight {
            owner: owner.to_string(),
            epoch,
            lease_until_ms: now_ms + lease_ms,
            takeovers,
        };
        (answer, Some(entry))
    };
    match entry {
        None => claimed(1, 0),
        Some(LedgerEntry::Released { epoch, takeovers }) => claimed(epoch + 1, *takeovers),
        Some(LedgerEntry::Settled { state }) => (
            Claim::Settled {
                state: state.clone(),
            },
            entry.cloned(),
        ),
        Some(LedgerEntry::Inflight {
            owner: holder,
            lease_until_ms,
            epoch,
            takeovers,
        }) => {
            if *lease_until_ms > now_ms && holder == owner {
                claimed(*epoch, *takeovers)
            } else if *lease_until_ms > now_ms {
                (
                    Claim::Busy {
                        retry_in_ms: lease_until_ms - now_ms,
                    },
                    entry.cloned(),
                )
            } else {
                claimed(epoch + 1, takeovers + 1)
            }
        }
    }
}

/// Extends a live claim while its send is outstanding. A claim the ledger
/// lost (Redis restarted empty) is written back: its send may reach the
/// device, and a later copy must find it held, not free. False: a newer
/// owner took over, or the delivery was settled.
pub fn renew(
    entry: Option<&LedgerEntry>,
    owner: &str,
    epoch: u64,
    now_ms: i64,
    lease_ms: i64,
) -> (bool, Option<LedgerEntry>) {
    match entry {
        None => (
            true,
            Some(LedgerEntry::Inflight {
                owner: owner.to_string(),
                epoch,
                lease_until_ms: now_ms + lease_ms,
                takeovers: 0,
            }),
        ),
        Some(LedgerEntry::Inflight {
            owner: holder,
            epoch: current,
            takeovers,
            ..
        }) if holder == owner && *current == epoch => (
            true,
            Some(LedgerEntry::Inflight {
                owner: owner.to_string(),
                epoch,
                lease_until_ms: now_ms + lease_ms,
                takeovers: *takeovers,
            }),
        ),
        _ => (false, entry.cloned()),
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
        // Settling again in the same words (the first answer was lost) is
        // the same settle.
        Some(LedgerEntry::Settled { state: current }) if current == state => (true, entry.cloned()),
        _ => (false, entry.cloned()),
    }
}

/// Records, before an owner resends a send whose outcome was unknown, that
/// an attempt may have reached the device: whoever claims the delivery after
/// this owner (it stalled past its lease, it died, its resend was refused and
/// released) gets a takeover, and no resend of its own. False: the claim is
/// no longer this owner's, and it must not resend.
pub fn doubt(entry: Option<&LedgerEntry>, owner: &str, epoch: u64) -> (bool, Option<LedgerEntry>) {
    match entry {
        Some(LedgerEntry::Inflight {
            owner: holder,
            epoch: current,
            lease_until_ms,
            takeovers,
        }) if holder == owner && *current == epoch => (
            true,
            Some(LedgerEntry::Inflight {
                owner: owner.to_string(),
                epoch,
                lease_until_ms: *lease_until_ms,
                takeovers: takeovers + 1,
            }),
        ),
        _ => (false, entry.cloned()),
    }
}

/// Gives a claim back when its attempt is known not to have been sent (a
/// retry will claim it afresh), keeping its doubts. Fenced by epoch like
/// `complete`. Releasing twice is the same as once.
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
        Some(LedgerEntry::Released { epoch: current, .. }) if *current == epoch => {
            (true, entry.cloned())
        }
        _ => (false, entry.cloned()),
    }
}

/// The sender's decision for a claim. After a takeover, `at_least_once` resends
/// once; a second doubt means the resend's fate is unknown too, so it stops.
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

    #[test]
    fn an_owner_claiming_again_gets_its_own_live_claim_back() {
        let (_, e) = claim(None, "a", 0, 100);
        let (c, e) = claim(e.as_ref(), "a", 10, 100);
        assert_eq!(c, Claim::Claimed { epoch: 1 }, "not busy to itself");
        let (c, _) = claim(e.as_ref(), "b", 105, 100);
        assert_eq!(c, Claim::Busy { retry_in_ms: 5 }, "the lease was renewed");
        // A taken-over claim comes back as a takeover: the doubt stays.
        let (_, e) = claim(None, "a", 0, 100);
        let (_, e) = claim(e.as_ref(), "b", 200, 100);
        let (c, _) = claim(e.as_ref(), "b", 210, 100);
        assert_eq!(
            c,
            Claim::TakenOver {
                epoch: 2,
                takeovers: 1
            }
        );
    }

    #[test]
    fn renewing_keeps_a_claim_from_being_taken_over() {
        let (_, e) = claim(None, "a", 0, 100);
        let (ok, e) = renew(e.as_ref(), "a", 1, 90, 100);
        assert!(ok);
        let (c, e) = claim(e.as_ref(), "b", 150, 100);
        assert_eq!(c, Claim::Busy { retry_in_ms: 40 });
        let (ok, _) = renew(e.as_ref(), "b", 1, 150, 100);
        assert!(!ok, "only the owner renews");
        // A claim Redis forgot is written back by its renewal.
        let (ok, e) = renew(None, "a", 1, 0, 100);
        assert!(ok);
        assert_eq!(
            claim(e.as_ref(), "b", 50, 100).0,
            Claim::Busy { retry_in_ms: 50 }
        );
    }

    #[test]
    fn a_resend_after_an_unknown_outcome_is_the_deliverys_only_one() {
        let (_, e) = claim(None, "a", 0, 100);
        assert!(
            !doubt(e.as_ref(), "b", 1).0,
            "only the owner records a doubt"
        );
        let (ok, e) = doubt(e.as_ref(), "a", 1);
        assert!(ok);
        // The owner stalls past its lease: the next owner may not resend.
        let (c, _) = claim(e.as_ref(), "b", 100, 100);
        assert_eq!(
            c,
            Claim::TakenOver {
                epoch: 2,
                takeovers: 2
            }
        );
        assert_eq!(
            action(&c, DeliveryPolicy::AtLeastOnce),
            ClaimAction::RecordUnknown
        );
        // The resend is refused (503) and released, twice over.
        let (ok, e) = release(e.as_ref(), 1);
        assert!(ok);
        let (ok, e) = release(e.as_ref(), 1);
        assert!(ok, "releasing again is the same release");
        let (c, e) = claim(e.as_ref(), "b", 1, 100);
        assert_eq!(
            c,
            Claim::TakenOver {
                epoch: 2,
                takeovers: 1
            }
        );
        assert_eq!(action(&c, DeliveryPolicy::AtLeastOnce), ClaimAction::Send);
        let (_, e) = release(e.as_ref(), 2);
        let (c, _) = claim(e.as_ref(), "c", 2, 100);
        assert_eq!(
            c,
            Claim::TakenOver {
                epoch: 3,
                takeovers: 1
            },
            "the doubt never goes"
        );
    }

    #[test]
    fn settling_again_in_the_same_words_is_the_same_settle() {
        let (_, e) = claim(None, "a", 0, 100);
        let (_, e) = complete(e.as_ref(), 1, "delivered");
        assert!(complete(e.as_ref(), 1, "delivered").0);
        assert!(!complete(e.as_ref(), 1, "unknown").0);
    }
}
