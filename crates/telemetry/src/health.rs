//! What a process's long-running loops say about themselves: each loop that
//! settles, records or produces work reports every round's result, and
//! `/readyz` names a loop that has failed for too long. A loop that retries
//! forever is alive but cannot do its job; only this tells the two apart.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// One loop's latest run of failures.
#[derive(Debug)]
pub struct LoopHealth {
    name: String,
    failing: Mutex<Option<(Instant, String)>>,
}

/// Loops are held weakly: a loop that ended (its `LoopHealth` dropped) is
/// reported no more, whatever its last round said.
fn registry() -> &'static Mutex<Vec<Weak<LoopHealth>>> {
    static LOOPS: OnceLock<Mutex<Vec<Weak<LoopHealth>>>> = OnceLock::new();
    LOOPS.get_or_init(Mutex::default)
}

/// A loop of this process, reported on by `failing_for` while the returned
/// handle lives.
pub fn register(name: impl Into<String>) -> Arc<LoopHealth> {
    let health = Arc::new(LoopHealth {
        name: name.into(),
        failing: Mutex::new(None),
    });
    if let Ok(mut loops) = registry().lock() {
        loops.retain(|l| l.strong_count() > 0);
        loops.push(Arc::downgrade(&health));
    }
    health
}

/// Retrying one piece of work: failures count while it lives, and however
/// the retrying ends (success, a stop, an error handed up), the loop is no
/// longer failing.
pub struct Retrying<'a>(&'a LoopHealth);

impl Retrying<'_> {
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        self.0.failed(error);
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.ok();
    }
}

impl LoopHealth {
    /// Starts retrying a piece of work (see [`Retrying`]).
    pub fn retrying(&self) -> Retrying<'_> {
        Retrying(self)
    }

    /// A round succeeded.
    pub fn ok(&self) {
        if let Ok(mut f) = self.failing.lock() {
            *f = None;
        }
    }

    /// A round failed; the loop will try again.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if let Ok(mut f) = self.failing.lock() {
            match &mut *f {
                Some((_, last)) => *last = error.to_string(),
                None => *f = Some((Instant::now(), error.to_string())),
            }
        }
    }

    /// How long the loop has failed without a success in between.
    pub fn failed_for(&self) -> Option<Duration> {
        let f = self.failing.lock().ok()?;
        f.as_ref().map(|(since, _)| since.elapsed())
    }

    fn failing_for(&self, at_least: Duration) -> Option<String> {
        let f = self.failing.lock().ok()?;
        let (since, error) = f.as_ref()?;
        (since.elapsed() >= at_least).then(|| {
            format!(
                "{} has failed for {} s: {error}",
                self.name,
                since.elapsed().as_secs()
            )
        })
    }
}

/// Every loop of this process that has failed without a success for at
/// least `at_least`, described.
pub fn failing_for(at_least: Duration) -> Vec<String> {
    let loops: Vec<Arc<LoopHealth>> = registry()
        .lock()
        .map(|l| l.iter().filter_map(Weak::upgrade).collect())
        .unwrap_or_default();
    loops
        .iter()
        .filter_map(|l| l.failing_for(at_least))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_reported_once_it_has_failed_long_enough_and_cleared_by_a_success() {
        let health = register("test loop");
        health.failed(&"broker away");
        let after_first = Instant::now();
        assert!(health.failing_for(Duration::from_secs(3600)).is_none());
        let now = health.failing_for(Duration::ZERO).expect("failing");
        assert!(
            now.contains("test loop") && now.contains("broker away"),
            "{now}"
        );
        // Later than the first failure by more than a clock's tick.
        std::thread::sleep(Duration::from_millis(20));
        health.failed(&"still away");
        assert!(health
            .failing_for(Duration::ZERO)
            .is_some_and(|d| d.contains("still away")));
        // A further failure does not restart the clock: it still counts
        // from the first one.
        let at_least = after_first.elapsed();
        assert!(health.failed_for().expect("failing") >= at_least);
        health.ok();
        assert!(health.failing_for(Duration::ZERO).is_none());
        assert_eq!(health.failed_for(), None);
        assert!(!failing_for(Duration::ZERO)
            .iter()
            .any(|d| d.contains("test loop")));
    }

    #[test]
    fn retrying_clears_however_it_ends_and_an_ended_loop_is_forgotten() {
        let health = register("retrying loop");
        {
            let retrying = health.retrying();
            retrying.failed(&"away");
            assert!(failing_for(Duration::ZERO)
                .iter()
                .any(|d| d.contains("retrying loop")));
        }
        assert!(health.failing_for(Duration::ZERO).is_none());
        health.failed(&"away again");
        // Another test's `failing_for` can hold the loop for an instant
        // (it upgrades every registered loop): wait until it is gone.
        let weak = Arc::downgrade(&health);
        drop(health);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.strong_count() > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!failing_for(Duration::ZERO)
            .iter()
            .any(|d| d.contains("retrying loop")));
    }
}
