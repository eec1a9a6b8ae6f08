//! The request deadline (`gateway.request_timeout_ms`) and the one thing it
//! must not cut off: a request already handed over to be written. Its
//! outcome is then PostgreSQL's, not the clock's; answering 408 ("nothing
//! was accepted") while the write goes on would be a lie whenever it commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set by a handler once the request's write may commit; the deadline then
/// waits for the handler's own answer instead of answering 408.
#[derive(Clone, Default)]
pub struct Committing(Arc<AtomicBool>);

impl Committing {
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn started(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
