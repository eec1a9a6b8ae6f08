use crate::deadline::{answered_within, TimedOut};
use crate::{classify_transport, retry_after, unanswered};
use herald_core::payload::{apns_id, collapse_id};
use herald_core::{DeliveryJob, OutcomeClass};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Apple refuses tokens older than an hour and throttles refreshes more often
/// than every 20 minutes; 40 minutes sits safely between.
const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(40 * 60);
/// Never sign a new token sooner than this after the last one, even when
/// Apple calls it expired (TooManyProviderTokenUpdates would follow).
const TOKEN_MIN_AGE: Duration = Duration::from_secs(20 * 60);

/// APNs credentials: token auth (a .p8 signing key with its key and team
/// ids) or certificate auth (a client certificate and its key, in PEM).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApnsCredentials {
    /// Token auth: the Apple team id, 10 letters and digits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(pattern = "^([A-Za-z0-9]{10})?$")]
    pub team_id: String,
    /// Token auth: the key id, 10 letters and digits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(pattern = "^([A-Za-z0-9]{10})?$")]
    pub key_id: String,
    /// Token auth: the .p8 file's contents (PKCS#8 PEM, P-256).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key_pem: String,
    /// Certificate auth: the certificate and its private key, both PEM, one
    /// after the other (e.g. `openssl pkcs12 -in cert.p12 -nodes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// The app's bundle id, sent as `apns-topic`.
    #[schema(pattern = r"^\S+$")]
    pub topic: String,
}

/// (team id, key id): Apple issues one signing key per team and key id.
type SigningKeyId = (String, String);

/// A signed provider token and when it was signed (its `iat`).
struct ProviderToken {
    jwt: String,
    signed_at: SystemTime,
}

// Never prints the key.
impl std::fmt::Debug for ApnsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsCredentials")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ApnsCredentials {
    /// Checks what Apple would refuse later; the error names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.topic.is_empty() || self.topic.contains(char::is_whitespace) {
            return Err(("topic", "the app's bundle id, e.g. com.example.shop".into()));
        }
        if let Some(pem) = &self.certificate_pem {
            if !self.private_key_pem.is_empty() {
                return Err((
                    "certificate_pem",
                    "use token auth (private_key_pem) or certificate auth, not both".into(),
                ));
            }
            let has_cert = pem.contains("BEGIN CERTIFICATE");
            let has_key = pem.contains("PRIVATE KEY");
            if !has_cert || !has_key || reqwest::Identity::from_pem(pem.as_bytes()).is_err() {
                return Err((
                    "certificate_pem",
                    "a certificate and its private key, in PEM".into(),
                ));
            }
            return Ok(());
        }
        let id_ok = |s: &str| s.len() == 10 && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok(&self.team_id) {
            return Err((
                "team_id",
                "an Apple team id is 10 letters and digits".into(),
            ));
        }
        if !id_ok(&self.key_id) {
            return Err(("key_id", "an APNs key id is 10 letters and digits".into()));
        }
        EncodingKey::from_ec_pem(self.private_key_pem.as_bytes()).map_err(|_| {
            (
                "private_key_pem",
                "not a P-256 private key in PEM (the .p8 file)".to_string(),
            )
        })?;
        Ok(())
    }
}

/// One provider token per (team, key), reused until it is due for refresh.
#[derive(Clone, Default)]
pub struct ApnsTokenCache {
    tokens: Arc<Mutex<HashMap<SigningKeyId, ProviderToken>>>,
}

impl ApnsTokenCache {
    fn token(&self, c: &ApnsCredentials) -> Result<String, jsonwebtoken::errors::Error> {
        self.token_at(c, SystemTime::now())
    }

    /// The token to use at `now`: the cached one until it is 40 minutes old.
    pub fn token_at(
        &self,
        c: &ApnsCredentials,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let key = (c.team_id.clone(), c.key_id.clone());
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tokens.get(&key) {
            if age(t, now) < TOKEN_REFRESH_AFTER {
                return Ok(t.jwt.clone());
            }
        }
        let jwt = sign(c, now)?;
        tokens.insert(
            key,
            ProviderToken {
                jwt: jwt.clone(),
                signed_at: now,
            },
        );
        Ok(jwt)
    }

    /// Apple said the token expired: the next send signs a new one, unless
    /// the current one is younger than 20 minutes (then the clocks disagree,
    /// and signing again would only earn TooManyProviderTokenUpdates).
    pub fn expired_at(&self, c: &ApnsCredentials, now: SystemTime) {
        let key = (c.team_id.clone(), c.key_id.clone());
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(&key) {
            Some(t) if age(t, now) < TOKEN_MIN_AGE => {
                tracing::warn!(team_id = %c.team_id, key_id = %c.key_id,
                    "APNs calls a provider token under 20 minutes old expired; check this host's clock");
            }
            _ => {
                tokens.remove(&key);
            }
        }
    }
}

fn age(t: &ProviderToken, now: SystemTime) -> Duration {
    now.duration_since(t.signed_at).unwrap_or_default()
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

fn sign(c: &ApnsCredentials, now: SystemTime) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(c.key_id.clone());
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let key = EncodingKey::from_ec_pem(c.private_key_pem.as_bytes())?;
    jsonwebtoken::encode(
        &header,
        &Claims {
            iss: &c.team_id,
            iat,
        },
        &key,
    )
}

#[derive(Deserialize)]
struct ApnsError {
    reason: String,
    /// With 410: milliseconds since the epoch when the token became invalid.
    #[serde(default)]
    timestamp: Option<i64>,
}

pub(crate) async fn send(
    http: &reqwest::Client,
    base: &url::Url,
    tokens: &ApnsTokenCache,
    creds: &ApnsCredentials,
    job: &DeliveryJob,
    timeout: Duration,
) -> OutcomeClass {
    // Certificate auth proves itself in the TLS handshake: no token.
    let token = if creds.certificate_pem.is_some() {
        None
    } else {
        match tokens.token(creds) {
            Ok(t) => Some(t),
            Err(e) => {
                return OutcomeClass::Rejected {
                    reason: format!("APNs signing key unusable: {e}"),
                    invalid_token: false,
                    invalid_since: None,
                }
            }
        }
    };
    let notification = job.notification.for_locale(job.locale.as_deref());
    let body = notification.apns_payload().to_string();
    let url = crate::url_with_path(base, &["3", "device", &job.token]);
    let mut request = http.post(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("bearer {token}"));
    }
    request = request
        .header(
            "apns-topic",
            format!(
                "{}{}",
                creds.topic,
                notification.apns_push_type_kind().topic_suffix()
            ),
        )
        .header("apns-push-type", notification.apns_push_type())
        .header("apns-priority", notification.apns_priority().to_string())
        .header("apns-id", apns_id(job.delivery_id))
        .header(
            "apns-collapse-id",
            collapse_id(&notification, job.message_id),
        )
        .body(body);
    if let Some(at) = job.expires_at {
        request = request.header("apns-expiration", at.timestamp().max(0).to_string());
    }
    // One deadline for the request and its answer. The head, once it came,
    // is the verdict: an error body that does not follow only leaves the
    // reason at the status.
    let mut head = None;
    let exchange = async {
        let response = request.send().await.map_err(|e| classify_transport(&e))?;
        let status = response.status().as_u16();
        let provider_id = response
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        head = Some((status, provider_id, retry_after(response.headers())));
        if status == 200 {
            return Ok(None);
        }
        Ok(response.json::<ApnsError>().await.ok())
    };
    let error = match answered_within(timeout, exchange).await {
        Ok(Ok(error)) => error,
        Ok(Err(class)) => return class,
        Err(TimedOut) => None,
    };
    let Some((status, provider_id, after)) = head else {
        return unanswered(timeout);
    };
    if status == 200 {
        return OutcomeClass::Delivered { provider_id };
    }
    let (reason, timestamp) = match error {
        Some(e) => (e.reason, e.timestamp),
        None => (format!("HTTP {status}"), None),
    };
    if reason == "ExpiredProviderToken" {
        tokens.expired_at(creds, SystemTime::now());
    }
    let mut class = classify(status, reason, after);
    if let OutcomeClass::Rejected { invalid_since, .. } = &mut class {
        *invalid_since = timestamp.and_then(chrono::DateTime::from_timestamp_millis);
    }
    class
}

/// Apple's documented answers, mapped to Herald's outcome classes.
pub(crate) fn classify(status: u16, reason: String, after: Option<Duration>) -> OutcomeClass {
    match (status, reason.as_str()) {
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => OutcomeClass::Rejected {
            reason,
            invalid_token: true,
            invalid_since: None,
        },
        // Our provider token: refreshed (or throttled), then retried.
        (403, "ExpiredProviderToken") | (429, _) | (500..=599, _) => OutcomeClass::Retry {
            reason,
            retry_after: after,
        },
        _ => OutcomeClass::Rejected {
            reason,
            invalid_token: false,
            invalid_since: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> ApnsCredentials {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        ApnsCredentials {
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
            private_key_pem: key.serialize_pem(),
            certificate_pem: None,
            topic: "com.example.app".into(),
        }
    }

    fn iat(jwt: &str) -> u64 {
        let data = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(jwt).unwrap();
        data.claims["iat"].as_u64().unwrap()
    }

    #[test]
    fn a_token_is_reused_for_40_minutes_then_refreshed() {
        let (cache, c) = (ApnsTokenCache::default(), creds());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = cache.token_at(&c, t0).unwrap();
        assert_eq!(iat(&first), 1_800_000_000);
        let header = jsonwebtoken::decode_header(&first).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
        for minutes in [1, 20, 39] {
            let t = t0 + Duration::from_secs(minutes * 60);
            assert_eq!(cache.token_at(&c, t).unwrap(), first, "at {minutes} min");
        }
        let later = cache
            .token_at(&c, t0 + Duration::from_secs(40 * 60))
            .unwrap();
        assert_ne!(later, first);
        assert_eq!(iat(&later), 1_800_000_000 + 40 * 60);
    }

    #[test]
    fn an_expired_answer_refreshes_only_a_token_over_20_minutes_old() {
        let (cache, c) = (ApnsTokenCache::default(), creds());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let first = cache.token_at(&c, t0).unwrap();
        let five = t0 + Duration::from_secs(5 * 60);
        cache.expired_at(&c, five);
        assert_eq!(
            cache.token_at(&c, five).unwrap(),
            first,
            "no refresh under 20 minutes"
        );
        let twenty_one = t0 + Duration::from_secs(21 * 60);
        cache.expired_at(&c, twenty_one);
        assert_ne!(cache.token_at(&c, twenty_one).unwrap(), first);
    }

    #[test]
    fn every_documented_reason_has_its_class() {
        let invalid = ["BadDeviceToken", "DeviceTokenNotForTopic"];
        for r in invalid {
            assert!(matches!(
                classify(400, r.into(), None),
                OutcomeClass::Rejected {
                    invalid_token: true,
                    ..
                }
            ));
        }
        for r in ["Unregistered", "ExpiredToken"] {
            assert!(matches!(
                classify(410, r.into(), None),
                OutcomeClass::Rejected {
                    invalid_token: true,
                    ..
                }
            ));
        }
        for r in [
            "BadCollapseId",
            "BadPriority",
            "BadTopic",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
            "InvalidPushType",
            "BadExpirationDate",
        ] {
            assert!(matches!(
                classify(400, r.into(), None),
                OutcomeClass::Rejected {
                    invalid_token: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            classify(413, "PayloadTooLarge".into(), None),
            OutcomeClass::Rejected {
                invalid_token: false,
                ..
            }
        ));
        assert!(matches!(
            classify(403, "InvalidProviderToken".into(), None),
            OutcomeClass::Rejected { .. }
        ));
        assert!(matches!(
            classify(403, "ExpiredProviderToken".into(), None),
            OutcomeClass::Retry { .. }
        ));
        assert!(matches!(
            classify(429, "TooManyRequests".into(), Some(Duration::from_secs(3))),
            OutcomeClass::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        for (s, r) in [
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
            (503, "Shutdown"),
        ] {
            assert!(matches!(
                classify(s, r.into(), None),
                OutcomeClass::Retry { .. }
            ));
        }
    }
}
