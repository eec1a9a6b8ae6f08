//! Herald's domain core: identities, payloads, delivery jobs, outcomes and the
//! dedupe state machine. Nothing here does I/O, so all of it is tested on its own.

pub mod audience;
pub mod campaign;
pub mod dedupe;
pub mod failover;
pub mod fuzz;
pub mod ids;
pub mod installation;
pub mod job;
pub mod outcome;
pub mod payload;
pub mod push;
pub mod template;
pub mod trigger;

pub use campaign::{CampaignRef, CampaignStatus};
pub use ids::{AppId, DeliveryId, MessageId};
pub use job::{DeadLetter, DeliveryJob, DeliveryPolicy, Platform};
pub use outcome::{
    DeliveryOutcome, DeliveryStatus, LedgerMark, OutcomeClass, RESENT_AFTER_UNKNOWN,
};
pub use payload::{Notification, PayloadError};
pub use push::{FieldError, PushRequest};
