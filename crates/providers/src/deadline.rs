//! The provider's deadline, and a stop of this process inside it.
//!
//! A sender that stops running while its requests are at the provider (a
//! SIGSTOP, a paused VM, a frozen host) finds, when it runs again, the
//! provider's answers waiting in its sockets and its deadlines long past.
//! HTTP/2 answers are read off the socket by the connection's own task, so
//! the woken deadline may run before it: a plain timeout takes an answered
//! request for unknown and, under `at_least_once`, sends it again, a second
//! copy on a device the provider had already reached. So a deadline whose
//! timer fires late (the process was not running when it was due) gets a
//! short grace to read what is already there.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How late a deadline's timer may fire before the wait counts as this
/// process stopped rather than the provider silent. A busy runtime wakes a
/// timer within milliseconds; a quarter second late means it did not run.
const STALL: Duration = Duration::from_millis(250);

/// What a deadline slept through adds: reading answers already in the
/// socket takes milliseconds. Capped by the request timeout itself.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// How many graces one exchange gets. One covers a stop; the bound keeps
/// an exchange within `timeout + GRACE` of running time, which the sender's
/// shutdown deadline is sized for (preflight's `sender_timing`).
const MAX_STALLS: u32 = 1;

/// The exchange did not finish within its deadline while this process ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut;

/// Runs `exchange` (the requests of one send and the reading of their
/// answers) until it finishes or `timeout` passes; a deadline this process
/// slept through is moved to [`GRACE`] after its wake-up, once. An
/// exchange that is ready when its deadline fires wins over it.
pub(crate) async fn answered_within<F: Future>(
    timeout: Duration,
    exchange: F,
) -> Result<F::Output, TimedOut> {
    tokio::pin!(exchange);
    let mut deadline = Instant::now() + timeout;
    let mut stalls = 0;
    loop {
        tokio::select! {
            biased;
            out = &mut exchange => return Ok(out),
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                let late = now.saturating_duration_since(deadline);
                if late < STALL || stalls == MAX_STALLS {
                    return Err(TimedOut);
                }
                stalls += 1;
                tracing::debug!(
                    ?late,
                    "the provider's deadline passed while this process was stopped; reading what came meanwhile"
                );
                deadline = now + GRACE.min(timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// Lets every woken task run, on tokio's paused clock: the runtime only
    /// moves the clock on once every task waits.
    async fn run_others() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// The process stops for `d`: the clock jumps with no task run, and
    /// the tasks whose timers it passed run after it.
    async fn stopped_for(d: Duration) {
        tokio::time::advance(d).await;
        run_others().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_is_returned() {
        let (tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(7).expect("send");
        assert_eq!(waiting.await.expect("join"), Ok(Ok(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_while_running_times_out_at_the_deadline() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let started = Instant::now();
        let out = answered_within(TIMEOUT, rx).await;
        assert_eq!(out, Err(TimedOut));
        let took = started.elapsed();
        assert!(took >= TIMEOUT && took < TIMEOUT + STALL, "{took:?}");
    }

    /// An exchange that is ready when the deadline fires (its answer came
    /// with the same wake-up) is not timed out.
    #[tokio::test(start_paused = true)]
    async fn an_answer_ready_at_the_deadline_wins() {
        let due = Instant::now() + TIMEOUT;
        let ready_at_deadline = std::future::poll_fn(|_| {
            if Instant::now() >= due {
                std::task::Poll::Ready(7)
            } else {
                std::task::Poll::Pending
            }
        });
        assert_eq!(answered_within(TIMEOUT, ready_at_deadline).await, Ok(7));
    }

    /// The process stops past the deadline; the answer is there when it
    /// runs again: it is read, not timed out.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_slept_through_does_not_beat_the_answer() {
        let (tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        run_others().await;
        stopped_for(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "timed out on the stop");
        tx.send(7).expect("send");
        assert_eq!(waiting.await.expect("join"), Ok(Ok(7)));
    }

    /// After a stop the provider's silence is a time-out one grace later.
    #[tokio::test(start_paused = true)]
    async fn silence_after_a_stop_times_out_a_grace_later() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        run_others().await;
        stopped_for(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        let woke = Instant::now();
        assert_eq!(waiting.await.expect("join"), Err(TimedOut));
        let took = woke.elapsed();
        assert!(took <= GRACE, "{took:?}");
    }

    /// A second stop ends the exchange: its running time stays within the
    /// timeout and one grace.
    #[tokio::test(start_paused = true)]
    async fn a_second_stop_is_a_time_out() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        run_others().await;
        stopped_for(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        stopped_for(Duration::from_secs(5)).await;
        assert!(waiting.is_finished(), "a second grace");
        assert_eq!(waiting.await.expect("join"), Err(TimedOut));
    }
}
