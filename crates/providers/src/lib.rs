//! Thin HTTP/2 clients for APNs and FCM HTTP v1 with configurable base URLs,
//! so the same code talks to Apple, Google, or Herald's simulators.
//!
//! Every answer is mapped to an [`OutcomeClass`]: the sender never looks at
//! status codes itself.

mod apns;
mod deadline;
mod fcm;

pub use apns::{ApnsCredentials, ApnsTokenCache};
pub use fcm::{FcmCredentials, FcmTokenCache, ServiceAccount};

use herald_core::{DeliveryJob, OutcomeClass, Platform};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("reading CA certificate {path}: {source}")]
    CaCert {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key: {0}")]
    Key(#[from] jsonwebtoken::errors::Error),
    #[error("{setting} is not an http(s) URL a path can follow (no query, no fragment): {url}")]
    BaseUrl { setting: &'static str, url: String },
}

/// Where to reach the providers and how long one request may take.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub apns_url: String,
    /// For tokens of development builds.
    pub apns_sandbox_url: String,
    pub fcm_url: String,
    pub ca_cert_pem: Option<Vec<u8>>,
    pub request_timeout: Duration,
    /// HTTP/2 connections per host.
    pub connections: usize,
}

/// The credentials a send needs, per platform.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub apns: Option<ApnsCredentials>,
    pub fcm: Option<FcmCredentials>,
}

/// Which connections a send may share. Apple allows one team per
/// connection under token auth (tokens of another team or key on it count
/// as provider token updates, and draw `TooManyProviderTokenUpdates`), and a
/// certificate is bound to its TLS connection; Google takes any OAuth token
/// on any connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PoolKey {
    /// FCM, every app.
    Shared,
    /// APNs token auth: (team id, key id).
    ApnsSigningKey(String, String),
    /// APNs certificate auth: the certificate's SHA-256.
    ApnsCertificate(Vec<u8>),
}

impl PoolKey {
    fn of(platform: Platform, apns: Option<&ApnsCredentials>) -> Self {
        use sha2::Digest;
        match (platform, apns) {
            (Platform::Ios, Some(c)) => match &c.certificate_pem {
                Some(pem) => Self::ApnsCertificate(sha2::Sha256::digest(pem.as_bytes()).to_vec()),
                None => Self::ApnsSigningKey(c.team_id.clone(), c.key_id.clone()),
            },
            _ => Self::Shared,
        }
    }
}

/// A few long-lived HTTP/2 connections per provider host and pool (Apple
/// treats rapid connect/disconnect as abuse), each multiplexing many
/// streams; provider tokens are cached and reused, as Apple and Google
/// require.
#[derive(Clone)]
pub struct Providers {
    /// One client per connection (reqwest keeps one HTTP/2 connection per
    /// host), `connections` of them per pool, made when a pool is first used.
    pools: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<PoolKey, std::sync::Arc<[reqwest::Client]>>>,
    >,
    settings: ProviderSettings,
    /// The settings' base URLs, parsed once: parsing a URL per request was
    /// a tenth of the sender's CPU.
    apns_base: url::Url,
    apns_sandbox_base: url::Url,
    fcm_base: url::Url,
    apns_tokens: ApnsTokenCache,
    fcm_tokens: FcmTokenCache,
}

impl Providers {
    pub fn new(settings: ProviderSettings) -> Result<Self, ProviderError> {
        let providers = Self {
            pools: Default::default(),
            apns_base: base_url("providers.apns_url", &settings.apns_url)?,
            apns_sandbox_base: base_url("providers.apns_sandbox_url", &settings.apns_sandbox_url)?,
            fcm_base: base_url("providers.fcm_url", &settings.fcm_url)?,
            settings,
            apns_tokens: ApnsTokenCache::default(),
            fcm_tokens: FcmTokenCache::default(),
        };
        // A bad CA file or TLS setting shows at start, not at the first send.
        providers.pool(&PoolKey::Shared, None)?;
        Ok(providers)
    }

    /// The connections of a pool, made once.
    fn pool(
        &self,
        key: &PoolKey,
        certificate_pem: Option<&str>,
    ) -> Result<std::sync::Arc<[reqwest::Client]>, ProviderError> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(key) {
            return Ok(pool.clone());
        }
        let pool: std::sync::Arc<[reqwest::Client]> = match certificate_pem {
            // One identity, one TLS connection.
            Some(pem) => {
                let identity = reqwest::Identity::from_pem(pem.as_bytes())?;
                vec![build_client(&self.settings, Some(identity))?].into()
            }
            None => (0..self.settings.connections.max(1))
                .map(|_| build_client(&self.settings, None))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
        };
        pools.insert(key.clone(), pool.clone());
        Ok(pool)
    }

    /// The connection for a delivery: spread over its pool, and a resend of
    /// one delivery takes the same connection.
    fn client(
        &self,
        job: &DeliveryJob,
        apns: Option<&ApnsCredentials>,
    ) -> Result<reqwest::Client, ProviderError> {
        let key = PoolKey::of(job.platform, apns);
        let certificate = match key {
            PoolKey::ApnsCertificate(_) => apns.and_then(|c| c.certificate_pem.as_deref()),
            _ => None,
        };
        let pool = self.pool(&key, certificate)?;
        let i = (job.delivery_id.as_uuid().as_u128() % pool.len() as u128) as usize;
        Ok(pool[i].clone())
    }

    /// Sends one delivery and classifies the answer.
    pub async fn send(&self, job: &DeliveryJob, creds: &Credentials) -> OutcomeClass {
        match job.platform {
            Platform::Ios => match &creds.apns {
                Some(c) => {
                    let base = if job.apns_sandbox {
                        &self.apns_sandbox_base
                    } else {
                        &self.apns_base
                    };
                    let client = match self.client(job, Some(c)) {
                        Ok(client) => client,
                        Err(e) if c.certificate_pem.is_some() => {
                            return OutcomeClass::Rejected {
                                reason: format!("APNs certificate unusable: {e}"),
                                invalid_token: false,
                                invalid_since: None,
                            }
                        }
                        Err(e) => return unconnected("APNs", &e),
                    };
                    apns::send(
                        &client,
                        base,
                        &self.apns_tokens,
                        c,
                        job,
                        self.settings.request_timeout,
                    )
                    .await
                }
                None => missing_credentials("APNs"),
            },
            Platform::Android => match &creds.fcm {
                Some(c) => {
                    let client = match self.client(job, None) {
                        Ok(client) => client,
                        Err(e) => return unconnected("FCM", &e),
                    };
                    fcm::send(
                        &client,
                        &self.fcm_base,
                        &self.fcm_tokens,
                        c,
                        job,
                        self.settings.request_timeout,
                    )
                    .await
                }
                None => missing_credentials("FCM"),
            },
        }
    }

    #[cfg(test)]
    fn pools(&self) -> usize {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A provider's base URL, which request paths are appended to.
fn base_url(setting: &'static str, url: &str) -> Result<url::Url, ProviderError> {
    let bad = || ProviderError::BaseUrl {
        setting,
        url: url.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https")
        || parsed.cannot_be_a_base()
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(parsed)
}

/// `base` with `segments` appended to its path (each percent-encoded as a
/// path segment), as `{base}/{segments…}` with the base's trailing slash
/// dropped.
pub(crate) fn url_with_path(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn build_client(
    settings: &ProviderSettings,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        // No client-wide timeout: reqwest's fires ahead of an answer already
        // read, after this process was stopped; requests run under
        // `deadline::answered_within` instead.
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(true)
        // APNs and FCM answer; they do not redirect. Following one would send
        // a notification to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &settings.ca_cert_pem {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

/// No connection could be made ready: nothing was sent.
fn unconnected(provider: &str, e: &ProviderError) -> OutcomeClass {
    OutcomeClass::Retry {
        reason: format!("{provider} connection not made: {e}"),
        retry_after: None,
    }
}

fn missing_credentials(provider: &str) -> OutcomeClass {
    OutcomeClass::Rejected {
        reason: format!("the app has no {provider} credentials"),
        invalid_token: false,
        invalid_since: None,
    }
}

/// The longest one send may take while the sender runs: the request
/// timeout, and the grace a stop of the process inside it adds to read the
/// answers that came meanwhile.
pub fn longest_send(request_timeout: Duration) -> Duration {
    request_timeout + deadline::GRACE.min(request_timeout)
}

/// No answer within the request timeout: the request may have reached the
/// provider.
fn unanswered(timeout: Duration) -> OutcomeClass {
    OutcomeClass::Unknown {
        reason: format!("transport: no answer within {} ms", timeout.as_millis()),
    }
}

/// A transport failure: refused before the request left is a safe retry;
/// anything later (timeout, reset) may have reached the provider.
fn classify_transport(e: &reqwest::Error) -> OutcomeClass {
    if e.is_connect() {
        OutcomeClass::Retry {
            reason: format!("connect: {}", with_causes(e)),
            retry_after: None,
        }
    } else {
        OutcomeClass::Unknown {
            reason: format!("transport: {}", with_causes(e)),
        }
    }
}

/// The error and every cause under it: reqwest's own message ("error sending
/// request for url …") says nothing of what happened (a timeout, a reset).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `Retry-After` in seconds (the only form APNs and FCM use).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apns(team_id: &str, key_id: &str, certificate_pem: Option<&str>) -> ApnsCredentials {
        ApnsCredentials {
            team_id: team_id.into(),
            key_id: key_id.into(),
            private_key_pem: String::new(),
            certificate_pem: certificate_pem.map(str::to_string),
            topic: "com.example.app".into(),
        }
    }

    #[test]
    fn request_paths_follow_the_base_url_with_its_own_path_kept() {
        let path = |base: &str, segments: &[&str]| {
            let base = base_url("providers.apns_url", base).expect("base");
            url_with_path(&base, segments).to_string()
        };
        assert_eq!(
            path("https://api.push.apple.com", &["3", "device", "ab12"]),
            "https://api.push.apple.com/3/device/ab12"
        );
        assert_eq!(
            path("http://127.0.0.1:9443/", &["3", "device", "ab12"]),
            "http://127.0.0.1:9443/3/device/ab12"
        );
        assert_eq!(
            path(
                "http://sim/fcm/",
                &["v1", "projects", "p-1", "messages:send"]
            ),
            "http://sim/fcm/v1/projects/p-1/messages:send"
        );
        // A token can never reach another path or the query.
        assert_eq!(
            path("http://sim", &["3", "device", "a/../b?c"]),
            "http://sim/3/device/a%2F..%2Fb%3Fc"
        );
        for bad in [
            "not a url",
            "mailto:ops@example.com",
            "ftp://example.com",
            "https://example.com/?key=1",
            "https://example.com/#top",
        ] {
            let e = base_url("providers.fcm_url", bad).expect_err(bad);
            assert!(e.to_string().contains("providers.fcm_url"), "{e}");
        }
    }

    #[test]
    fn apns_connections_are_never_shared_between_teams_keys_or_certificates() {
        let a = apns("TEAMAAAAAA", "KEYAAAAAAA", None);
        let key = |platform, c: Option<&ApnsCredentials>| PoolKey::of(platform, c);
        assert_eq!(
            key(Platform::Ios, Some(&a)),
            key(Platform::Ios, Some(&apns("TEAMAAAAAA", "KEYAAAAAAA", None))),
            "two apps of one team and key share their connections"
        );
        for other in [
            apns("TEAMBBBBBB", "KEYAAAAAAA", None),
            apns("TEAMAAAAAA", "KEYBBBBBBB", None),
            apns("", "", Some("cert one")),
        ] {
            assert_ne!(
                key(Platform::Ios, Some(&a)),
                key(Platform::Ios, Some(&other))
            );
        }
        assert_ne!(
            key(Platform::Ios, Some(&apns("", "", Some("cert one")))),
            key(Platform::Ios, Some(&apns("", "", Some("cert two"))))
        );
        assert_eq!(key(Platform::Android, None), PoolKey::Shared);
        assert_ne!(key(Platform::Ios, Some(&a)), PoolKey::Shared, "never FCM's");
    }

    #[test]
    fn each_signing_key_gets_its_own_pool_of_connections() {
        let providers = Providers::new(ProviderSettings {
            apns_url: "http://127.0.0.1:1".into(),
            apns_sandbox_url: "http://127.0.0.1:1".into(),
            fcm_url: "http://127.0.0.1:1".into(),
            ca_cert_pem: None,
            request_timeout: Duration::from_secs(1),
            connections: 3,
        })
        .expect("providers");
        assert_eq!(providers.pools(), 1, "FCM's, made at start");
        let job = |platform| {
            use herald_core::ids::DeliveryTarget;
            use herald_core::{AppId, DeliveryId, DeliveryPolicy, MessageId};
            let message_id = MessageId::new_random();
            DeliveryJob {
                delivery_id: DeliveryId::derive(message_id, DeliveryTarget::Token("t")),
                message_id,
                app_id: AppId::new_random(),
                platform,
                token: "t".into(),
                install_id: None,
                notification: serde_json::from_value(serde_json::json!({"title": "t"}))
                    .expect("notification"),
                policy: DeliveryPolicy::AtLeastOnce,
                expires_at: None,
                locale: None,
                apns_sandbox: false,
                attempt: 0,
                not_before: None,
                campaign: None,
                trace_parent: None,
            }
        };
        let a = apns("TEAMAAAAAA", "KEYAAAAAAA", None);
        let b = apns("TEAMBBBBBB", "KEYAAAAAAA", None);
        providers.client(&job(Platform::Ios), Some(&a)).expect("a");
        providers
            .client(&job(Platform::Ios), Some(&a))
            .expect("a again");
        assert_eq!(providers.pools(), 2);
        providers.client(&job(Platform::Ios), Some(&b)).expect("b");
        providers
            .client(&job(Platform::Android), None)
            .expect("fcm");
        assert_eq!(providers.pools(), 3);
        let pools = providers.pools.lock().expect("pools");
        assert!(pools.values().all(|p| p.len() == 3));
    }

    #[test]
    fn error_text_carries_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "operation timed out",
        ));
        assert_eq!(
            with_causes(&e),
            "error sending request: operation timed out"
        );
    }
}
