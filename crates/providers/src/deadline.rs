//! The provider's deadline, counted in time this process was running to
//! read an answer.
//!
//! A sender that stops running while its requests are at the provider (a
//! SIGSTOP, a paused VM, a starved runtime) finds, when it runs again, both
//! the provider's answers waiting in its sockets and its deadlines long
//! past. A plain timeout fires first: the answered request counts as
//! unknown and, under `at_least_once`, is sent again — a second copy on the
//! device that the provider had already taken. So a deadline whose timer
//! fires late (the process was not running when it was due) is not taken as
//! the provider's silence: the request gets a full timeout more, from when
//! the process runs again, to read what is already there.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How late a deadline's timer may fire before the wait counts as this
/// process stalled rather than the provider silent. A busy runtime wakes a
/// timer within milliseconds; a quarter second late means it did not run.
const STALL: Duration = Duration::from_millis(250);

/// How many times one request's deadline moves for stalls. A process that
/// keeps stalling still gets a verdict.
const MAX_STALLS: u32 = 3;

/// The exchange did not finish within its deadline while this process ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut;

/// Runs `exchange` (a request and the reading of its answer) until it
/// finishes or `timeout` passes with this process running; a deadline the
/// process slept through is moved a full `timeout` on from its wake-up, up
/// to [`MAX_STALLS`] times. An answer that is ready wins over a deadline
/// that has passed.
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
                if now.saturating_duration_since(deadline) < STALL || stalls == MAX_STALLS {
                    return Err(TimedOut);
                }
                stalls += 1;
                tracing::debug!(
                    late = ?now.saturating_duration_since(deadline),
                    "the provider's deadline passed while this process was stalled; waiting once more"
                );
                deadline = now + timeout;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_secs(2);

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

    /// The process stops (time jumps past the deadline with no task run),
    /// the answer is there when it runs again: it is read, not timed out.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_slept_through_does_not_beat_the_answer() {
        let (tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        tokio::task::yield_now().await;
        // Five seconds pass in one step: the waiting task is not polled
        // until after it, as if the process had been stopped.
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "timed out on the stall");
        tx.send(7).expect("send");
        assert_eq!(waiting.await.expect("join"), Ok(Ok(7)));
    }

    /// After a stall the provider gets a full timeout of running time, and
    /// its silence then is a time-out.
    #[tokio::test(start_paused = true)]
    async fn silence_after_a_stall_times_out_a_timeout_later() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        let woke = Instant::now();
        assert_eq!(waiting.await.expect("join"), Err(TimedOut));
        let took = woke.elapsed();
        assert!(
            took >= TIMEOUT - STALL && took <= TIMEOUT + STALL,
            "{took:?}"
        );
    }

    /// A process that keeps stalling still gets a verdict.
    #[tokio::test(start_paused = true)]
    async fn stalls_move_the_deadline_a_bounded_number_of_times() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let waiting = tokio::spawn(answered_within(TIMEOUT, rx));
        tokio::task::yield_now().await;
        for _ in 0..=MAX_STALLS {
            assert!(!waiting.is_finished());
            tokio::time::advance(Duration::from_secs(5)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(waiting.await.expect("join"), Err(TimedOut));
    }
}
