//! Deterministic identities (DESIGN.md, "Identity").
//!
//! A resubmission must carry the ids Herald has seen before, so ids are derived
//! from natural keys with UUIDv5 whenever one exists and drawn at random (UUIDv7)
//! only when the client gave no key at all.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Namespace for campaign message ids: UUIDv5(NS, campaign_id).
const CAMPAIGN_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4000_8000_6361_6d70_6169);

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// An app (tenant): every key, installation and message belongs to one.
    AppId
);
uuid_id!(
    /// One notification, whatever its number of recipients.
    MessageId
);
uuid_id!(
    /// One (message, device) pair: the unit of dedupe.
    DeliveryId
);

impl AppId {
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }
}

impl MessageId {
    /// Transactional push with an `Idempotency-Key`: UUIDv5(app_id, key).
    pub fn for_idempotency_key(app: AppId, key: &str) -> Self {
        Self(Uuid::new_v5(&app.0, key.as_bytes()))
    }

    /// The id of a key's `life`-th life. A key used again after its
    /// retention is a new request (the IETF draft lets the server expire
    /// keys): its message must be new too, or it would be taken for the first
    /// life's and dropped. Life 1 is [`Self::for_idempotency_key`]; later
    /// lives add "\0life:N" to the name, which no key can spell (keys are
    /// printable ASCII).
    pub fn for_idempotency_key_life(app: AppId, key: &str, life: u32) -> Self {
        if life <= 1 {
            return Self::for_idempotency_key(app, key);
        }
        Self(Uuid::new_v5(
            &app.0,
            format!("{key}\0life:{life}").as_bytes(),
        ))
    }

    /// Transactional push without a key: no dedupe across resubmissions.
    pub fn new_random() -> Self {
        Self(Uuid::now_v7())
    }

    /// Campaign: a relaunch keeps the id, so dedupe drops what was already sent.
    pub fn for_campaign(campaign_id: Uuid) -> Self {
        Self(Uuid::new_v5(&CAMPAIGN_NAMESPACE, campaign_id.as_bytes()))
    }

    /// Trigger: a replayed event keeps the id.
    pub fn for_trigger(trigger_id: Uuid, event_id: &str) -> Self {
        Self(Uuid::new_v5(&trigger_id, event_id.as_bytes()))
    }
}

/// What a delivery is addressed to, for the purpose of deriving its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryTarget<'a> {
    /// A registered installation: the id survives a token change of that device.
    Installation(&'a str),
    /// A raw push token supplied by the caller.
    Token(&'a str),
}

impl DeliveryId {
    /// UUIDv5(message_id, installation id or token). The prefixes keep an install
    /// id from ever colliding with a token that happens to spell the same string.
    pub fn derive(message: MessageId, target: DeliveryTarget<'_>) -> Self {
        let name = match target {
            DeliveryTarget::Installation(id) => format!("install:{id}"),
            DeliveryTarget::Token(token) => format!("token:{token}"),
        };
        Self(Uuid::new_v5(&message.0, name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_life_of_a_key_has_its_own_id() {
        let a = AppId::new_random();
        assert_eq!(
            MessageId::for_idempotency_key_life(a, "k1", 1),
            MessageId::for_idempotency_key(a, "k1")
        );
        let lives: std::collections::HashSet<_> = (1..=5)
            .map(|l| MessageId::for_idempotency_key_life(a, "k1", l))
            .collect();
        assert_eq!(lives.len(), 5);
        assert_eq!(
            MessageId::for_idempotency_key_life(a, "k1", 2),
            MessageId::for_idempotency_key_life(a, "k1", 2)
        );
    }

    #[test]
    fn idempotency_key_ids_are_stable_and_scoped_per_app() {
        let a = AppId(Uuid::from_u128(1));
        let b = AppId(Uuid::from_u128(2));
        assert_eq!(
            MessageId::for_idempotency_key(a, "k1"),
            MessageId::for_idempotency_key(a, "k1")
        );
        assert_ne!(
            MessageId::for_idempotency_key(a, "k1"),
            MessageId::for_idempotency_key(b, "k1")
        );
        assert_ne!(
            MessageId::for_idempotency_key(a, "k1"),
            MessageId::for_idempotency_key(a, "k2")
        );
    }

    #[test]
    fn random_message_ids_differ() {
        assert_ne!(MessageId::new_random(), MessageId::new_random());
    }

    #[test]
    fn delivery_ids_depend_on_message_and_target() {
        let m1 = MessageId(Uuid::from_u128(10));
        let m2 = MessageId(Uuid::from_u128(11));
        let t = DeliveryTarget::Token("abc");
        assert_eq!(DeliveryId::derive(m1, t), DeliveryId::derive(m1, t));
        assert_ne!(DeliveryId::derive(m1, t), DeliveryId::derive(m2, t));
        assert_ne!(
            DeliveryId::derive(m1, DeliveryTarget::Token("abc")),
            DeliveryId::derive(m1, DeliveryTarget::Installation("abc"))
        );
    }

    #[test]
    fn campaign_and_trigger_ids_are_deterministic() {
        let c = Uuid::from_u128(5);
        assert_eq!(MessageId::for_campaign(c), MessageId::for_campaign(c));
        assert_eq!(
            MessageId::for_trigger(c, "evt-1"),
            MessageId::for_trigger(c, "evt-1")
        );
        assert_ne!(
            MessageId::for_trigger(c, "evt-1"),
            MessageId::for_trigger(c, "evt-2")
        );
    }
}
