//! Outcome classes (DESIGN.md, "The delivery protocol") and the outcome event
//! that senders publish and the recorder stores.

use crate::ids::{AppId, DeliveryId, MessageId};
use crate::job::Platform;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a provider's answer is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeClass {
    /// 2xx: the provider accepted it.
    Delivered { provider_id: Option<String> },
    /// Never retried. `invalid_token` means the device token must be pruned;
    /// `invalid_since` (APNs 410) is when it stopped being valid: an
    /// installation that registered again after that keeps its token.
    Rejected {
        reason: String,
        invalid_token: bool,
        invalid_since: Option<DateTime<Utc>>,
    },
    /// Known not delivered (429, 5xx, refused before the request was written).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request may or may not have reached the provider.
    Unknown { reason: String },
}

/// The reason a `delivered` outcome carries when the first request's outcome
/// was unknown and the delivery was sent again (`at_least_once`): the device
/// may have it twice. The reason goes on with the first request's error.
pub const RESENT_AFTER_UNKNOWN: &str = "resent once after an unknown outcome";

/// The settled state of a delivery, as recorded in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Rejected,
    Unknown,
    Expired,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Rejected => "rejected",
            DeliveryStatus::Unknown => "unknown",
            DeliveryStatus::Expired => "expired",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "rejected" => DeliveryStatus::Rejected,
            "unknown" => DeliveryStatus::Unknown,
            "expired" => DeliveryStatus::Expired,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }

    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Rejected,
        DeliveryStatus::Unknown,
        DeliveryStatus::Expired,
        DeliveryStatus::Failed,
    ];
}

/// Published by a sender once a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub delivery_id: DeliveryId,
    pub message_id: MessageId,
    pub app_id: AppId,
    pub platform: Platform,
    pub status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The token is permanently invalid: the installation must not be targeted again.
    #[serde(default)]
    pub invalid_token: bool,
    /// Since when (APNs 410 `timestamp`), if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_since: Option<DateTime<Utc>>,
    pub token: String,
    /// The installation, for deliveries (campaigns, triggers) whose row the
    /// recorder writes with the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<String>,
    pub attempts: u32,
    pub at: DateTime<Utc>,
    /// The ledger's write sequence after this settle: the recorder keeps the
    /// highest, and a Redis that later shows a lower one lost writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_mark: Option<LedgerMark>,
}

/// A point in the ledger's history: its write sequence in one scope (the
/// whole ledger on one Redis; one of the 256 buckets on a Redis Cluster,
/// whose shards can each lose their data on their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMark {
    pub scope: String,
    pub seq: u64,
}

impl DeliveryOutcome {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
