//! Thin HTTP/2 clients for APNs and FCM HTTP v1 with configurable base URLs,
//! so the same code talks to Apple, Google, or Herald's simulators.
//!
//! Every answer is mapped to an [`OutcomeClass`]: the sender never looks at
//! status codes itself.

mod apns;
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

/// A few long-lived HTTP/2 connections per provider host (Apple treats rapid
/// connect/disconnect as abuse), each multiplexing many streams; provider
/// tokens are cached and reused, as Apple and Google require.
#[derive(Clone)]
pub struct Providers {
    /// One client per connection: reqwest keeps one HTTP/2 connection per host.
    http: Vec<reqwest::Client>,
    /// Apps on APNs certificate auth: a client (TLS identity) per certificate.
    cert_clients:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, reqwest::Client>>>,
    settings: ProviderSettings,
    apns_tokens: ApnsTokenCache,
    fcm_tokens: FcmTokenCache,
}

impl Providers {
    pub fn new(settings: ProviderSettings) -> Result<Self, ProviderError> {
        let http = (0..settings.connections.max(1))
            .map(|_| build_client(&settings, None))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            http,
            cert_clients: Default::default(),
            settings,
            apns_tokens: ApnsTokenCache::default(),
            fcm_tokens: FcmTokenCache::default(),
        })
    }

    /// The client holding an app's APNs client certificate, made once.
    fn cert_client(&self, pem: &str) -> Result<reqwest::Client, ProviderError> {
        use sha2::Digest;
        let id = sha2::Sha256::digest(pem.as_bytes()).to_vec();
        let mut clients = self.cert_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let identity = reqwest::Identity::from_pem(pem.as_bytes())?;
        let client = build_client(&self.settings, Some(identity))?;
        clients.insert(id, client.clone());
        Ok(client)
    }

    /// Spreads deliveries over the connections; a resend of one delivery
    /// takes the same connection.
    fn client(&self, job: &DeliveryJob) -> &reqwest::Client {
        let i = (job.delivery_id.as_uuid().as_u128() % self.http.len() as u128) as usize;
        &self.http[i]
    }

    /// Sends one delivery and classifies the answer.
    pub async fn send(&self, job: &DeliveryJob, creds: &Credentials) -> OutcomeClass {
        match job.platform {
            Platform::Ios => match &creds.apns {
                Some(c) => {
                    let base = if job.apns_sandbox {
                        &self.settings.apns_sandbox_url
                    } else {
                        &self.settings.apns_url
                    };
                    let client = match &c.certificate_pem {
                        Some(pem) => match self.cert_client(pem) {
                            Ok(client) => client,
                            Err(e) => {
                                return OutcomeClass::Rejected {
                                    reason: format!("APNs certificate unusable: {e}"),
                                    invalid_token: false,
                                    invalid_since: None,
                                }
                            }
                        },
                        None => self.client(job).clone(),
                    };
                    apns::send(&client, base, &self.apns_tokens, c, job).await
                }
                None => missing_credentials("APNs"),
            },
            Platform::Android => match &creds.fcm {
                Some(c) => {
                    fcm::send(
                        self.client(job),
                        &self.settings.fcm_url,
                        &self.fcm_tokens,
                        c,
                        job,
                    )
                    .await
                }
                None => missing_credentials("FCM"),
            },
        }
    }
}

fn build_client(
    settings: &ProviderSettings,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(settings.request_timeout)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(true);
    if let Some(pem) = &settings.ca_cert_pem {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    Ok(builder.build()?)
}

fn missing_credentials(provider: &str) -> OutcomeClass {
    OutcomeClass::Rejected {
        reason: format!("the app has no {provider} credentials"),
        invalid_token: false,
        invalid_since: None,
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
