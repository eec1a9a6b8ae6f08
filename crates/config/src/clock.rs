use chrono::{DateTime, Utc};
use std::path::PathBuf;

/// Where the scheduler and the trigger engine read "now": the system clock,
/// or, in tests of local-time waves and trigger delays, a file holding an
/// RFC 3339 instant.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    File(PathBuf),
}

impl Clock {
    /// `scheduler.clock_file` or `triggers.clock_file`: empty means the system clock.
    pub fn from_config(clock_file: &str) -> Self {
        if clock_file.trim().is_empty() {
            Clock::System
        } else {
            Clock::File(PathBuf::from(clock_file))
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::File(path) => {
                let read = std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        DateTime::parse_from_rfc3339(s.trim()).map_err(|e| e.to_string())
                    });
                match read {
                    Ok(t) => t.with_timezone(&Utc),
                    Err(e) => {
                        // A test clock that cannot be read must not make
                        // every wave due: stand still at the earliest time.
                        tracing::warn!(path = %path.display(), error = %e, "cannot read the clock file");
                        DateTime::<Utc>::MIN_UTC
                    }
                }
            }
        }
    }
}
