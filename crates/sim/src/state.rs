use crate::SimError;
use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the simulator accepts, in the JSON shape Herald stores per app
/// (`apns`: token-auth key; `fcm`: project and service account).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimCredentials {
    pub apns: serde_json::Value,
    /// APNs certificate auth: a client certificate the TLS listener accepts.
    pub apns_certificate: serde_json::Value,
    pub fcm: serde_json::Value,
}

/// One accepted delivery, as the device would have received it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedDelivery {
    pub seq: u64,
    /// `apns` or `fcm`.
    pub provider: String,
    pub token: String,
    /// `apns-id` (APNs) or the message name Herald was given (FCM).
    pub provider_id: String,
    /// `apns-collapse-id`, or the Android notification `tag`.
    pub collapse_id: Option<String>,
    pub payload_sha256: String,
    pub payload: serde_json::Value,
    pub received_at: DateTime<Utc>,
}

/// Faults applied to every provider request, set through `PUT /sim/faults`.
/// Per-token faults are chosen by token prefix (see the docs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before each request is judged and recorded.
    pub latency_ms: u64,
    /// Plus a uniformly random extra of up to this much, per request.
    pub latency_jitter_ms: u64,
    /// Hold every provider request, unrecorded, until stall is lifted.
    pub stall: bool,
    /// Let this many provider requests through (counted from when the faults
    /// were set), then hold the rest like `stall`.
    pub stall_after: Option<u64>,
    /// Record each accepted delivery, then hold its answer until lifted: the
    /// provider has it, the sender never hears so.
    pub hang_after_accept: bool,
    /// Send GOAWAY on a connection once it has carried this many provider
    /// requests: streams begun finish, later ones are refused.
    pub goaway_after: Option<u64>,
    /// Record each accepted delivery, then drop its connection without an
    /// answer (a reset after the request was written: outcome unknown).
    pub reset_after_accept: bool,
    /// Answer the first this-many provider requests (since the faults were
    /// set) with `fail_status` instead of judging them.
    pub fail_first: u64,
    /// 429, 500 or 503 (default 503).
    pub fail_status: Option<u16>,
    /// With `fail_first`: the APNs reason failed APNs requests get, with the
    /// status Apple answers it with (any documented reason).
    pub apns_reason: Option<String>,
    /// With `fail_first`: the FCM error code failed FCM requests get, with
    /// Google's status for it (any documented code).
    pub fcm_error: Option<String>,
    /// Send `Retry-After: N` (seconds) with every 429 and 503 answer, injected
    /// or chosen by token prefix.
    pub retry_after_secs: Option<u64>,
}

impl Faults {
    fn holding(&self) -> bool {
        self.stall || self.stall_after.is_some()
    }

    /// Refuses names neither provider documents, so a typo is not a fault
    /// that silently never fires.
    pub fn check(&self) -> Result<(), String> {
        if let Some(status) = self.fail_status {
            if ![429, 500, 503].contains(&status) {
                return Err(format!("fail_status must be 429, 500 or 503, not {status}"));
            }
        }
        if let Some(reason) = &self.apns_reason {
            if crate::errors::apns_status(reason).is_none() {
                let known: Vec<_> = crate::errors::APNS_REASONS.iter().map(|r| r.0).collect();
                return Err(format!(
                    "apns_reason {reason:?} is not an APNs reason; one of {}",
                    known.join(", ")
                ));
            }
        }
        if let Some(code) = &self.fcm_error {
            if crate::errors::fcm_status(code).is_none() {
                let known: Vec<_> = crate::errors::FCM_ERRORS.iter().map(|e| e.0).collect();
                return Err(format!(
                    "fcm_error {code:?} is not an FCM error code; one of {}",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// What to do with a provider request, decided before it is judged.
pub(crate) enum Verdict {
    Judge,
    /// Fail it as these faults say (`fail_status`, `apns_reason`, `fcm_error`).
    Fail(Faults),
}

pub(crate) const APNS_TEAM_ID: &str = "HERALDSIM1";
pub(crate) const APNS_KEY_ID: &str = "SIMKEY0001";
pub(crate) const APNS_TOPIC: &str = "dev.herald.demo";
pub(crate) const FCM_PROJECT: &str = "herald-sim";
pub(crate) const FCM_CLIENT_EMAIL: &str = "sender@herald-sim.iam.gserviceaccount.com";

/// What the simulator keeps of each accepted delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// Every delivery with its payload: the ground truth of tests.
    #[default]
    Full,
    /// Counts, duplicates and a bounded sample, for benchmarks: no payload is
    /// kept past the sample, so memory grows only by a 16-byte digest per
    /// distinct (token, collapse id).
    Counts,
}

/// How many deliveries a counting record keeps whole: the first ones, and as
/// many again of the duplicates.
pub(crate) const SAMPLE: usize = 1_000;

/// The accepted deliveries (all of them, or a sample), and the counts kept
/// as they arrive.
#[derive(Default)]
struct Record {
    mode: RecordMode,
    accepted: u64,
    deliveries: Vec<RecordedDelivery>,
    sampled_duplicates: usize,
    per_provider: HashMap<String, u64>,
    /// Deliveries per (token, collapse id), by a digest of the pair.
    seen: HashMap<[u8; 16], u32>,
    /// Deliveries of a (token, collapse id) pair after its first.
    duplicates: u64,
    first_received_at: Option<DateTime<Utc>>,
    last_received_at: Option<DateTime<Utc>>,
}

impl Record {
    fn new(mode: RecordMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// Whether a delivery is kept whole.
    fn keeps(&self, duplicate: bool) -> bool {
        match self.mode {
            RecordMode::Full => true,
            RecordMode::Counts if duplicate => self.sampled_duplicates < SAMPLE,
            RecordMode::Counts => self.deliveries.len() - self.sampled_duplicates < SAMPLE,
        }
    }
}

fn pair_digest(token: &str, collapse_id: Option<&str>) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    // A separator no token contains, and a mark for "no collapse id" that no
    // collapse id can be.
    match collapse_id {
        Some(c) => {
            hasher.update([0u8, 1]);
            hasher.update(c.as_bytes());
        }
        None => hasher.update([0u8, 0]),
    }
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&hasher.finalize()[..16]);
    digest
}

/// Counts over the record.
pub(crate) struct Tally {
    pub mode: RecordMode,
    pub accepted: u64,
    pub apns: u64,
    pub fcm: u64,
    pub duplicates: u64,
    pub kept: usize,
    pub first_received_at: Option<DateTime<Utc>>,
    pub last_received_at: Option<DateTime<Utc>>,
}

pub(crate) struct SimState {
    pub credentials: SimCredentials,
    pub apns_key: DecodingKey,
    pub fcm_key: DecodingKey,
    pub token_uri: String,
    /// The CA that signs APNs client certificates (DER), for the TLS listener.
    pub client_ca_der: Vec<u8>,
    access_tokens: Mutex<HashMap<String, Instant>>,
    /// Provider tokens whose signature has been checked, with their `iat`.
    /// A provider sends the same token for up to an hour; checking its ES256
    /// signature on every request cost the simulator more CPU than
    /// everything else it does, on a machine it shares with Herald.
    provider_tokens: Mutex<HashMap<String, i64>>,
    deliveries: Mutex<Record>,
    faults: watch::Sender<Faults>,
    /// Requests currently held by a stall.
    pub stalled: std::sync::atomic::AtomicU64,
    /// Requests let through since the faults were last set (for `stall_after`).
    admitted: std::sync::atomic::AtomicU64,
    /// Requests failed since the faults were last set (for `fail_first`).
    failed: std::sync::atomic::AtomicU64,
}

impl SimState {
    pub fn new(token_uri: String, mode: RecordMode) -> Result<Self, SimError> {
        let apns = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let fcm = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
        let apns_key = DecodingKey::from_ec_pem(apns.public_key_pem().as_bytes())
            .map_err(|e| rcgen::Error::PemError(e.to_string()))?;
        let fcm_key = DecodingKey::from_rsa_pem(fcm.public_key_pem().as_bytes())
            .map_err(|e| rcgen::Error::PemError(e.to_string()))?;
        let (client_ca_der, client_cert_pem) = client_certificate()?;
        let private_key_id = {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(fcm.public_key_pem().as_bytes())[..20])
        };
        let credentials = SimCredentials {
            apns: serde_json::json!({
                "team_id": APNS_TEAM_ID,
                "key_id": APNS_KEY_ID,
                "private_key_pem": apns.serialize_pem(),
                "topic": APNS_TOPIC,
            }),
            apns_certificate: serde_json::json!({
                "certificate_pem": client_cert_pem,
                "topic": APNS_TOPIC,
            }),
            fcm: serde_json::json!({
                "project_id": FCM_PROJECT,
                // Every field of the key file Google issues: the official
                // SDKs refuse a file without `type`.
                "service_account": {
                    "type": "service_account",
                    "project_id": FCM_PROJECT,
                    "private_key_id": private_key_id,
                    "private_key": fcm.serialize_pem(),
                    "client_email": FCM_CLIENT_EMAIL,
                    "client_id": "100000000000000000001",
                    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                    "token_uri": token_uri,
                    "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                    "client_x509_cert_url": format!(
                        "https://www.googleapis.com/robot/v1/metadata/x509/{}",
                        FCM_CLIENT_EMAIL.replace('@', "%40")
                    ),
                    "universe_domain": "googleapis.com",
                },
            }),
        };
        Ok(Self {
            credentials,
            apns_key,
            fcm_key,
            token_uri,
            client_ca_der,
            access_tokens: Mutex::new(HashMap::new()),
            provider_tokens: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(Record::new(mode)),
            faults: watch::Sender::new(Faults::default()),
            stalled: std::sync::atomic::AtomicU64::new(0),
            admitted: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The `iat` of a provider token already verified.
    pub fn verified_provider_token(&self, jwt: &str) -> Option<i64> {
        let tokens = self
            .provider_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tokens.get(jwt).copied()
    }

    /// Remembers a verified provider token; tokens past `max_age_secs` are
    /// forgotten once many are kept.
    pub fn remember_provider_token(&self, jwt: &str, iat: i64, max_age_secs: i64) {
        const KEPT: usize = 1024;
        let mut tokens = self
            .provider_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= KEPT {
            let now = Utc::now().timestamp();
            tokens.retain(|_, iat| now - *iat <= max_age_secs);
            if tokens.len() >= KEPT {
                tokens.clear();
            }
        }
        tokens.insert(jwt.to_string(), iat);
    }

    pub fn record(
        &self,
        provider: &str,
        token: &str,
        provider_id: String,
        collapse_id: Option<String>,
        payload: serde_json::Value,
        body: &[u8],
    ) {
        use sha2::{Digest, Sha256};
        let now = Utc::now();
        let mut record = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        record.accepted += 1;
        let seq = record.accepted;
        *record.per_provider.entry(provider.to_string()).or_default() += 1;
        let times = record
            .seen
            .entry(pair_digest(token, collapse_id.as_deref()))
            .or_default();
        *times += 1;
        let duplicate = *times > 1;
        if duplicate {
            record.duplicates += 1;
        }
        record.first_received_at.get_or_insert(now);
        record.last_received_at = Some(now);
        if !record.keeps(duplicate) {
            return;
        }
        if duplicate && record.mode == RecordMode::Counts {
            record.sampled_duplicates += 1;
        }
        record.deliveries.push(RecordedDelivery {
            seq,
            provider: provider.to_string(),
            token: token.to_string(),
            provider_id,
            collapse_id,
            payload_sha256: hex::encode(Sha256::digest(body)),
            payload,
            received_at: now,
        });
    }

    pub fn deliveries(&self) -> Vec<RecordedDelivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deliveries
            .clone()
    }

    /// The counts of [`Tally`], read without copying the record (polled
    /// often while a million deliveries arrive).
    pub fn tally(&self) -> Tally {
        let record = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        Tally {
            mode: record.mode,
            accepted: record.accepted,
            apns: record.per_provider.get("apns").copied().unwrap_or(0),
            fcm: record.per_provider.get("fcm").copied().unwrap_or(0),
            duplicates: record.duplicates,
            kept: record.deliveries.len(),
            first_received_at: record.first_received_at,
            last_received_at: record.last_received_at,
        }
    }

    pub fn clear(&self) {
        let mut record = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        *record = Record::new(record.mode);
    }

    pub fn issue_access_token(&self, lifetime: Duration) -> String {
        use rand::distr::{Alphanumeric, SampleString};
        let token = format!(
            "ya29.sim-{}",
            Alphanumeric.sample_string(&mut rand::rng(), 48)
        );
        self.access_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), Instant::now() + lifetime);
        token
    }

    pub fn access_token_valid(&self, token: &str) -> bool {
        self.access_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|until| Instant::now() < *until)
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.admitted.store(0, std::sync::atomic::Ordering::SeqCst);
        self.failed.store(0, std::sync::atomic::Ordering::SeqCst);
        self.faults.send_replace(faults);
    }

    /// Counts a provider request on its connection, and sends GOAWAY when
    /// `goaway_after` is reached.
    pub fn count_request(&self, conn: Option<&crate::serve::ConnectionControl>) {
        if let (Some(n), Some(conn)) = (self.faults.borrow().goaway_after, conn) {
            let seen = conn
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if seen == n {
                conn.goaway.notify_one();
            }
        }
    }

    /// After a delivery was recorded: drops the connection for
    /// `reset_after_accept` (never returning), or waits while
    /// `hang_after_accept` holds.
    pub async fn after_accepting(&self, conn: Option<&crate::serve::ConnectionControl>) {
        if self.faults.borrow().reset_after_accept {
            if let Some(conn) = conn {
                conn.kill.notify_one();
                std::future::pending::<()>().await;
            }
        }
        let mut rx = self.faults.subscribe();
        if rx.borrow().hang_after_accept {
            let _ = rx.wait_for(|f| !f.hang_after_accept).await;
        }
    }

    /// Applies latency, waits out a stall, then says whether to fail the
    /// request outright. Dropped with the request if the client goes away, so
    /// a held request is never recorded.
    pub async fn before_judging(&self) -> Verdict {
        use std::sync::atomic::Ordering;
        let latency = {
            use rand::Rng;
            let f = self.faults.borrow();
            f.latency_ms + rand::rng().random_range(0..=f.latency_jitter_ms)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut rx = self.faults.subscribe();
        let hold = {
            let f = rx.borrow();
            f.stall
                || f.stall_after
                    .is_some_and(|n| self.admitted.fetch_add(1, Ordering::SeqCst) >= n)
        };
        if hold {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            let _guard = StallGuard(&self.stalled);
            let _ = rx.wait_for(|f| !f.holding()).await;
        }
        let faults = rx.borrow().clone();
        if faults.fail_first > 0 && self.failed.fetch_add(1, Ordering::SeqCst) < faults.fail_first {
            return Verdict::Fail(faults);
        }
        Verdict::Judge
    }
}

struct StallGuard<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for StallGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A CA, and a client certificate it signed for the simulator's topic, as
/// Apple issues per app: (CA certificate DER, client certificate and key PEM).
fn client_certificate() -> Result<(Vec<u8>, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Herald simulator APNs CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Apple Push Services: {APNS_TOPIC}"),
    );
    // Apple's certificates carry the topic as the subject's UID (OID
    // 0.9.2342.19200300.100.1.1); clients derive their default topic from it.
    params.distinguished_name.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
        APNS_TOPIC,
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok((
        ca_cert.der().to_vec(),
        format!("{}{}", cert.pem(), key.serialize_pem()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(state: &SimState, token: &str, collapse_id: Option<&str>) {
        state.record(
            "fcm",
            token,
            "projects/p/messages/1".into(),
            collapse_id.map(str::to_string),
            serde_json::json!({"title": "t"}),
            b"{}",
        );
    }

    #[test]
    fn a_counting_record_counts_everything_and_keeps_a_bounded_sample() {
        let state =
            SimState::new("http://127.0.0.1:1/token".into(), RecordMode::Counts).expect("state");
        let devices = 3 * SAMPLE;
        for round in 0..2 {
            for d in 0..devices {
                // The second round repeats every pair once.
                deliver(&state, &format!("token-{d}"), Some("m1"));
            }
            assert_eq!(state.tally().accepted, ((round + 1) * devices) as u64);
        }
        // Same token, another collapse id, or none: not duplicates.
        deliver(&state, "token-0", Some("m2"));
        deliver(&state, "token-0", None);
        let tally = state.tally();
        assert_eq!(tally.accepted, 2 * devices as u64 + 2);
        assert_eq!(tally.fcm, tally.accepted);
        assert_eq!(tally.duplicates, devices as u64);
        assert_eq!(
            tally.kept,
            2 * SAMPLE,
            "the first ones and as many duplicates"
        );
        let kept = state.deliveries();
        assert_eq!(kept.len(), 2 * SAMPLE);
        assert_eq!(kept[0].seq, 1);
        assert_eq!(
            kept[SAMPLE].seq,
            devices as u64 + 1,
            "the sample goes on with the first duplicate"
        );
        assert!(tally.first_received_at <= tally.last_received_at);
        state.clear();
        assert_eq!(state.tally().accepted, 0);
        assert_eq!(
            state.tally().mode,
            RecordMode::Counts,
            "a reset keeps the mode"
        );
    }

    #[test]
    fn a_full_record_keeps_every_delivery() {
        let state =
            SimState::new("http://127.0.0.1:1/token".into(), RecordMode::Full).expect("state");
        for d in 0..(SAMPLE + 10) {
            deliver(&state, &format!("token-{}", d % 7), None);
        }
        let tally = state.tally();
        assert_eq!(tally.kept, SAMPLE + 10);
        assert_eq!(tally.duplicates, (SAMPLE + 10 - 7) as u64);
        assert_eq!(state.deliveries().len(), SAMPLE + 10);
    }
}
