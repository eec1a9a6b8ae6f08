use crate::deadline::{answered_within, TimedOut};
use crate::{classify_transport, retry_after, unanswered};
use herald_core::{DeliveryJob, OutcomeClass};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google asks for at least a minute's pause after a quota error.
const MIN_QUOTA_BACKOFF: Duration = Duration::from_secs(60);
/// Refresh this long before the access token's stated expiry.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The fields Herald uses from a Google service-account key file.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FcmCredentials {
    pub project_id: String,
    /// A Google service-account key file (other fields of it are ignored).
    pub service_account: ServiceAccount,
}

// Never prints the key.
impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl FcmCredentials {
    /// Checks what Google would refuse later; the error names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.project_id.is_empty() {
            return Err(("project_id", "the Firebase project id".into()));
        }
        if !self.service_account.client_email.contains('@') {
            return Err((
                "service_account.client_email",
                "the service account's e-mail".into(),
            ));
        }
        match url::Url::parse(&self.service_account.token_uri) {
            Ok(u) if matches!(u.scheme(), "https" | "http") => {}
            _ => return Err(("service_account.token_uri", "an https URL".into())),
        }
        EncodingKey::from_rsa_pem(self.service_account.private_key.as_bytes()).map_err(|_| {
            (
                "service_account.private_key",
                "not an RSA private key in PEM".to_string(),
            )
        })?;
        Ok(())
    }
}

/// OAuth2 access tokens per service account, cached until shortly before they
/// expire. Each account has its own async lock, so concurrent sends of one
/// account share one token request, and a slow or hanging token endpoint
/// of one app holds up no other app's sends.
#[derive(Clone, Default)]
pub struct FcmTokenCache {
    accounts: Arc<std::sync::Mutex<HashMap<String, AccountToken>>>,
}

/// One service account's token, behind the lock its token requests share.
type AccountToken = Arc<Mutex<Option<CachedToken>>>;

struct CachedToken {
    token: String,
    use_until: Instant,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl FcmTokenCache {
    fn account(&self, sa: &ServiceAccount) -> AccountToken {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        accounts.entry(sa.client_email.clone()).or_default().clone()
    }

    async fn token(&self, http: &reqwest::Client, sa: &ServiceAccount) -> Result<String, String> {
        let account = self.account(sa);
        let mut cached = account.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.use_until {
                return Ok(c.token.clone());
            }
        }
        let (token, expires_in) = fetch_token(http, sa).await?;
        *cached = Some(CachedToken {
            token: token.clone(),
            use_until: use_until(Instant::now(), expires_in),
        });
        Ok(token)
    }

    async fn forget(&self, sa: &ServiceAccount) {
        *self.account(sa).lock().await = None;
    }
}

/// When a token fetched at `fetched_at`, valid `expires_in` seconds, stops
/// being used: five minutes early, so no request carries an expiring token.
fn use_until(fetched_at: Instant, expires_in: u64) -> Instant {
    fetched_at + Duration::from_secs(expires_in).saturating_sub(REFRESH_MARGIN)
}

/// The JWT-bearer grant: a self-signed RS256 assertion traded for an access token.
async fn fetch_token(http: &reqwest::Client, sa: &ServiceAccount) -> Result<(String, u64), String> {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut header = Header::new(Algorithm::RS256);
    header.kid = sa.private_key_id.clone();
    let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
        .map_err(|e| format!("service account key unusable: {e}"))?;
    let assertion = jsonwebtoken::encode(
        &header,
        &AssertionClaims {
            iss: &sa.client_email,
            scope: SCOPE,
            aud: &sa.token_uri,
            iat,
            exp: iat + 3600,
        },
        &key,
    )
    .map_err(|e| format!("signing the token request: {e}"))?;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", &assertion)
        .finish();
    let response = http
        .post(&sa.token_uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("token endpoint answered {status}: {text}"));
    }
    let t: TokenResponse = response
        .json()
        .await
        .map_err(|e| format!("token endpoint answer: {e}"))?;
    Ok((t.access_token, t.expires_in))
}

pub(crate) async fn send(
    http: &reqwest::Client,
    base: &url::Url,
    tokens: &FcmTokenCache,
    creds: &FcmCredentials,
    job: &DeliveryJob,
    timeout: Duration,
) -> OutcomeClass {
    // The access token has its own deadline: until the request is made,
    // nothing reached FCM and retrying is safe.
    let token = answered_within(timeout, tokens.token(http, &creds.service_account))
        .await
        .unwrap_or_else(|TimedOut| {
            Err(format!(
                "token endpoint: no answer within {} ms",
                timeout.as_millis()
            ))
        });
    let token = match token {
        Ok(token) => token,
        Err(reason) => {
            return OutcomeClass::Retry {
                reason,
                retry_after: None,
            }
        }
    };
    let url = crate::url_with_path(
        base,
        &["v1", "projects", &creds.project_id, "messages:send"],
    );
    let now = chrono::Utc::now();
    let body = job
        .notification
        .for_locale(job.locale.as_deref())
        .fcm_message(&job.token, job.message_id, job.ttl_seconds(now));
    let request = http.post(url).bearer_auth(token).json(&body);
    // One deadline for the request and its answer. The head, once it came,
    // is the verdict: a body that does not follow only leaves the message
    // or the error unnamed.
    let mut head = None;
    let exchange = async {
        let response = request.send().await.map_err(|e| classify_transport(&e))?;
        head = Some((response.status().as_u16(), retry_after(response.headers())));
        Ok(response.json::<Value>().await.unwrap_or(Value::Null))
    };
    let json = match answered_within(timeout, exchange).await {
        Ok(Ok(json)) => json,
        Ok(Err(class)) => return class,
        Err(TimedOut) => Value::Null,
    };
    let Some((status, after)) = head else {
        return unanswered(timeout);
    };
    if status == 200 {
        return OutcomeClass::Delivered {
            provider_id: json["name"].as_str().map(str::to_string),
        };
    }
    let code = error_code(&json).unwrap_or_else(|| format!("HTTP {status}"));
    if status == 401 && code != "THIRD_PARTY_AUTH_ERROR" {
        tokens.forget(&creds.service_account).await;
    }
    classify(status, code, after)
}

/// `details[].errorCode` of a google.rpc.Status, else its `status`.
fn error_code(json: &Value) -> Option<String> {
    let error = json.get("error")?;
    error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find_map(|x| x.get("errorCode")?.as_str()))
        .or_else(|| error.get("status")?.as_str())
        .map(str::to_string)
}

/// Google's documented FcmError codes, mapped to Herald's outcome classes.
pub(crate) fn classify(status: u16, code: String, after: Option<Duration>) -> OutcomeClass {
    match (status, code.as_str()) {
        (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") | (404, _) => OutcomeClass::Rejected {
            reason: code,
            invalid_token: true,
            invalid_since: None,
        },
        // Herald validates payloads before accepting them, so an
        // INVALID_ARGUMENT on a send is about the token.
        (400, "INVALID_ARGUMENT") => OutcomeClass::Rejected {
            reason: code,
            invalid_token: true,
            invalid_since: None,
        },
        (429, _) | (_, "QUOTA_EXCEEDED") => OutcomeClass::Retry {
            reason: code,
            retry_after: Some(after.unwrap_or(MIN_QUOTA_BACKOFF).max(MIN_QUOTA_BACKOFF)),
        },
        (_, "THIRD_PARTY_AUTH_ERROR") => OutcomeClass::Rejected {
            reason: code,
            invalid_token: false,
            invalid_since: None,
        },
        // Our access token expired or was revoked: refreshed, then retried.
        (401, _) | (500..=599, _) => OutcomeClass::Retry {
            reason: code,
            retry_after: after,
        },
        _ => OutcomeClass::Rejected {
            reason: code,
            invalid_token: false,
            invalid_since: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service_account(email: &str, token_uri: String) -> ServiceAccount {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        ServiceAccount {
            client_email: email.into(),
            private_key: key.serialize_pem(),
            token_uri,
            private_key_id: None,
            project_id: None,
        }
    }

    /// One app's token endpoint takes connections and never answers; another
    /// app's cached token is still handed out at once.
    #[tokio::test]
    async fn a_hanging_token_endpoint_holds_up_no_other_account() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (connected, mut reached) = tokio::sync::mpsc::channel(1);
        let endpoint = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                held.push(c);
                let _ = connected.try_send(());
            }
        });
        let cache = FcmTokenCache::default();
        let http = reqwest::Client::new();
        let hanging = service_account("a@example.iam", format!("http://{addr}/token"));
        let cached = service_account("b@example.iam", "http://127.0.0.1:1/token".into());
        *cache.account(&cached).lock().await = Some(CachedToken {
            token: "token-b".into(),
            use_until: Instant::now() + Duration::from_secs(600),
        });
        let stuck = {
            let (cache, http) = (cache.clone(), http.clone());
            tokio::spawn(async move { cache.token(&http, &hanging).await })
        };
        reached.recv().await.expect("the hanging endpoint reached");
        let other = tokio::time::timeout(Duration::from_secs(5), cache.token(&http, &cached))
            .await
            .expect("held up by another account's token request");
        assert_eq!(other, Ok("token-b".to_string()));
        assert!(!stuck.is_finished());
        stuck.abort();
        endpoint.abort();
    }

    #[test]
    fn error_code_comes_from_details_then_status() {
        let j = json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
        assert_eq!(error_code(&j).as_deref(), Some("UNREGISTERED"));
        let j = json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}});
        assert_eq!(error_code(&j).as_deref(), Some("UNAUTHENTICATED"));
    }

    #[test]
    fn every_documented_code_has_its_class() {
        assert!(matches!(
            classify(404, "UNREGISTERED".into(), None),
            OutcomeClass::Rejected {
                invalid_token: true,
                ..
            }
        ));
        assert!(matches!(
            classify(403, "SENDER_ID_MISMATCH".into(), None),
            OutcomeClass::Rejected {
                invalid_token: true,
                ..
            }
        ));
        assert!(matches!(
            classify(400, "INVALID_ARGUMENT".into(), None),
            OutcomeClass::Rejected {
                invalid_token: true,
                ..
            }
        ));
        assert!(matches!(
            classify(401, "THIRD_PARTY_AUTH_ERROR".into(), None),
            OutcomeClass::Rejected {
                invalid_token: false,
                ..
            }
        ));
        assert!(matches!(
            classify(401, "UNAUTHENTICATED".into(), None),
            OutcomeClass::Retry { .. }
        ));
        assert!(matches!(
            classify(500, "INTERNAL".into(), None),
            OutcomeClass::Retry { .. }
        ));
        assert!(matches!(
            classify(503, "UNAVAILABLE".into(), None),
            OutcomeClass::Retry { .. }
        ));
        assert!(matches!(
            classify(400, "UNSPECIFIED_ERROR".into(), None),
            OutcomeClass::Rejected {
                invalid_token: false,
                ..
            }
        ));
    }

    #[test]
    fn access_tokens_are_replaced_five_minutes_before_they_expire() {
        let t0 = Instant::now();
        assert_eq!(use_until(t0, 3600), t0 + Duration::from_secs(55 * 60));
        // A token that lives less than the margin is never reused.
        assert_eq!(use_until(t0, 120), t0);
    }

    #[test]
    fn quota_errors_wait_at_least_a_minute() {
        match classify(429, "QUOTA_EXCEEDED".into(), Some(Duration::from_secs(5))) {
            OutcomeClass::Retry {
                retry_after: Some(d),
                ..
            } => assert_eq!(d, MIN_QUOTA_BACKOFF),
            other => panic!("{other:?}"),
        }
        match classify(429, "QUOTA_EXCEEDED".into(), Some(Duration::from_secs(120))) {
            OutcomeClass::Retry {
                retry_after: Some(d),
                ..
            } => assert_eq!(d, Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
    }
}
