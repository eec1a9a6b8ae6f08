//! The delivery job: what travels on the deliveries topic, one per (message, device).

use crate::ids::{AppId, DeliveryId, MessageId};
use crate::payload::Notification;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Ios,
    Android,
}

impl Platform {
    pub fn as_str(&self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ios" => Ok(Platform::Ios),
            "android" => Ok(Platform::Android),
            other => Err(format!("unknown platform `{other}`")),
        }
    }
}

/// What to do when a send's outcome is unknown (timeout or reset after the
/// request was written): the provider may or may not have delivered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryPolicy {
    /// Record `unknown`, never resend. The default for campaigns.
    AtMostOnce,
    /// Resend once with the same collapse id. The default for transactional push.
    #[default]
    AtLeastOnce,
}

impl DeliveryPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryPolicy::AtMostOnce => "at_most_once",
            DeliveryPolicy::AtLeastOnce => "at_least_once",
        }
    }
}

impl FromStr for DeliveryPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "at_most_once" => Ok(DeliveryPolicy::AtMostOnce),
            "at_least_once" => Ok(DeliveryPolicy::AtLeastOnce),
            other => Err(format!("unknown delivery policy `{other}`")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub delivery_id: DeliveryId,
    pub message_id: MessageId,
    pub app_id: AppId,
    pub platform: Platform,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_id: Option<String>,
    pub notification: Notification,
    pub policy: DeliveryPolicy,
    /// Past this instant the notification is dropped as expired, never sent late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The installation's locale: picks the localized content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The token belongs to a development build (APNs sandbox host).
    #[serde(default)]
    pub apns_sandbox: bool,
    /// Provider sends already made (0 for a new job).
    #[serde(default)]
    pub attempt: u32,
    /// A retry waits until this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Set on a campaign's jobs: senders drop them while it is paused or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<crate::campaign::CampaignRef>,
    /// The W3C `traceparent` of the work that made the job (the API request,
    /// the campaign page, the trigger), so the send joins its trace; retries
    /// keep it. Never part of a delivery's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// A job that could not be processed, on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    /// The job, when it could be decoded: `herald dlq replay` publishes it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<DeliveryJob>,
    /// The record as received, when it could not be decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    pub source_topic: String,
    pub at: DateTime<Utc>,
}

impl DeadLetter {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl DeliveryJob {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Seconds left before expiry, for the providers' own TTL fields.
    pub fn ttl_seconds(&self, now: DateTime<Utc>) -> Option<u64> {
        self.expires_at
            .map(|at| (at - now).num_seconds().max(0).unsigned_abs())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A job is plain data; serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
