//! The transactional push request and its validation.

use crate::job::{DeliveryPolicy, Platform};
use crate::payload::Notification;
use serde::{Deserialize, Serialize};

/// The most recipients one `POST /v1/push` may name (tokens plus install ids).
pub const MAX_TARGETS_PER_REQUEST: usize = 1000;
/// FCM's longest TTL; APNs accepts any expiration but the same bound keeps both alike.
pub const MAX_TTL_SECONDS: u64 = 28 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub to: Targets,
    pub notification: Notification,
    /// What to do when a send's outcome is unknown; transactional default is at_least_once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_policy: Option<DeliveryPolicy>,
    /// How long the providers may hold the notification for an offline device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Deliver at this time (RFC 3339) instead of now; at most 30 days ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The furthest ahead a push may be scheduled.
pub const MAX_SEND_AHEAD_DAYS: i64 = 30;

/// Who gets the push: at least one recipient among the three lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenTarget>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install_ids: Vec<String>,
    /// The app's user ids: every installation of each user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenTarget {
    pub platform: Platform,
    pub token: String,
}

/// A request field that is wrong, and why: becomes a problem+json answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FieldError {
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl PushRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        let count = self.to.tokens.len() + self.to.install_ids.len() + self.to.custom_ids.len();
        if count == 0 {
            return Err(FieldError::new(
                "to",
                "name at least one recipient in `to.tokens`, `to.install_ids` or `to.custom_ids`",
            ));
        }
        if count > MAX_TARGETS_PER_REQUEST {
            return Err(FieldError::new(
                "to",
                format!("{count} recipients; at most {MAX_TARGETS_PER_REQUEST} per request"),
            ));
        }
        for (i, t) in self.to.tokens.iter().enumerate() {
            validate_token(t.platform, &t.token)
                .map_err(|detail| FieldError::new(format!("to.tokens[{i}].token"), detail))?;
        }
        for (i, id) in self.to.install_ids.iter().enumerate() {
            validate_install_id(id)
                .map_err(|detail| FieldError::new(format!("to.install_ids[{i}]"), detail))?;
        }
        for (i, id) in self.to.custom_ids.iter().enumerate() {
            if id.is_empty() || id.len() > 128 {
                return Err(FieldError::new(
                    format!("to.custom_ids[{i}]"),
                    "a custom id is 1 to 128 characters",
                ));
            }
        }
        if let Some(at) = self.send_at {
            if at > chrono::Utc::now() + chrono::Duration::days(MAX_SEND_AHEAD_DAYS) {
                return Err(FieldError::new(
                    "send_at",
                    format!("at most {MAX_SEND_AHEAD_DAYS} days ahead"),
                ));
            }
        }
        self.notification
            .validate()
            .map_err(|e| FieldError::new(e.field(), e.to_string()))?;
        if let Some(ttl) = self.ttl_seconds {
            if ttl > MAX_TTL_SECONDS {
                return Err(FieldError::new(
                    "ttl_seconds",
                    format!("{ttl} is over the maximum of {MAX_TTL_SECONDS} (28 days)"),
                ));
            }
        }
        Ok(())
    }
}

/// APNs tokens are hex (32 bytes today, possibly longer); FCM tokens are opaque
/// printable strings.
pub fn validate_token(platform: Platform, token: &str) -> Result<(), String> {
    match platform {
        Platform::Ios => {
            if token.len() < 16 || token.len() > 200 || !token.len().is_multiple_of(2) {
                return Err("an APNs token is an even number (16 to 200) of hex digits".into());
            }
            if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("an APNs token is hex digits only".into());
            }
        }
        Platform::Android => {
            if token.is_empty() || token.len() > 4096 {
                return Err("an FCM token is 1 to 4096 characters".into());
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("an FCM token has no spaces or control characters".into());
            }
        }
    }
    Ok(())
}

pub fn validate_install_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("an install id is 1 to 128 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an install id has no spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> PushRequest {
        serde_json::from_str(json).unwrap()
    }

    const IOS: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    #[test]
    fn a_minimal_request_is_valid() {
        let r = req(&format!(
            r#"{{"to":{{"tokens":[{{"platform":"ios","token":"{IOS}"}}]}},"notification":{{"title":"t"}}}}"#
        ));
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn no_recipient_names_the_to_field() {
        let r = req(r#"{"to":{},"notification":{"title":"t"}}"#);
        assert_eq!(r.validate().unwrap_err().field, "to");
    }

    #[test]
    fn a_bad_token_names_its_index() {
        let r = req(&format!(
            r#"{{"to":{{"tokens":[{{"platform":"ios","token":"{IOS}"}},{{"platform":"ios","token":"zz"}}]}},"notification":{{"title":"t"}}}}"#
        ));
        assert_eq!(r.validate().unwrap_err().field, "to.tokens[1].token");
    }

    #[test]
    fn too_many_recipients_are_refused() {
        let ids: Vec<String> = (0..=MAX_TARGETS_PER_REQUEST)
            .map(|i| format!("i{i}"))
            .collect();
        let r = PushRequest {
            to: Targets {
                tokens: vec![],
                install_ids: ids,
                custom_ids: vec![],
            },
            notification: Notification {
                title: Some("t".into()),
                ..Default::default()
            },
            delivery_policy: None,
            ttl_seconds: None,
            send_at: None,
        };
        assert_eq!(r.validate().unwrap_err().field, "to");
    }

    #[test]
    fn unknown_platform_fails_to_parse() {
        let r: Result<PushRequest, _> = serde_json::from_str(
            r#"{"to":{"tokens":[{"platform":"windows","token":"x"}]},"notification":{"title":"t"}}"#,
        );
        assert!(r.unwrap_err().to_string().contains("windows"));
    }

    #[test]
    fn ttl_over_28_days_is_refused() {
        let mut r = req(&format!(
            r#"{{"to":{{"tokens":[{{"platform":"ios","token":"{IOS}"}}]}},"notification":{{"title":"t"}}}}"#
        ));
        r.ttl_seconds = Some(MAX_TTL_SECONDS + 1);
        assert_eq!(r.validate().unwrap_err().field, "ttl_seconds");
    }
}
