//! `herald sim` as Apple's and Google's services, tried the way a developer
//! would: with widely used clients Herald did not write (@parse/node-apn and
//! Google's Firebase Admin SDK for Python, installed pinned by the test
//! script, changed in nothing but their endpoint), and with raw HTTP/2
//! requests for the rules those clients never break.

use herald_tests::{ios_token, start_simulator, target_dir, HeraldProcess};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const TOPIC: &str = "dev.herald.demo";

/// Apple's error reasons and their statuses, as Apple's documentation lists
/// them (kept here, not read from the simulator, so that a wrong table in the
/// simulator fails these tests).
const APNS_REASONS: &[(&str, u16)] = &[
    ("BadCollapseId", 400),
    ("BadDeviceToken", 400),
    ("BadExpirationDate", 400),
    ("BadMessageId", 400),
    ("BadPriority", 400),
    ("BadTopic", 400),
    ("DeviceTokenNotForTopic", 400),
    ("DuplicateHeaders", 400),
    ("IdleTimeout", 400),
    ("InvalidPushType", 400),
    ("MissingDeviceToken", 400),
    ("MissingTopic", 400),
    ("PayloadEmpty", 400),
    ("TopicDisallowed", 400),
    ("BadCertificate", 403),
    ("BadCertificateEnvironment", 403),
    ("ExpiredProviderToken", 403),
    ("Forbidden", 403),
    ("InvalidProviderToken", 403),
    ("MissingProviderToken", 403),
    ("BadPath", 404),
    ("MethodNotAllowed", 405),
    ("ExpiredToken", 410),
    ("Unregistered", 410),
    ("PayloadTooLarge", 413),
    ("TooManyProviderTokenUpdates", 429),
    ("TooManyRequests", 429),
    ("InternalServerError", 500),
    ("ServiceUnavailable", 503),
    ("Shutdown", 503),
];

/// FCM's error codes: (errorCode, HTTP status, google.rpc status).
const FCM_ERRORS: &[(&str, u16, &str)] = &[
    ("UNSPECIFIED_ERROR", 500, "UNKNOWN"),
    ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
    ("UNREGISTERED", 404, "NOT_FOUND"),
    ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
    ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED"),
    ("UNAVAILABLE", 503, "UNAVAILABLE"),
    ("INTERNAL", 500, "INTERNAL"),
    ("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED"),
];

/// A running `herald sim`, its credential files written out as a developer
/// would save them.
struct Sim {
    _process: HeraldProcess,
    url: String,
    tls_url: String,
    dir: PathBuf,
    credentials: Value,
    /// One provider token for the raw requests: a token per request would
    /// be refused as TooManyProviderTokenUpdates, as on Apple.
    token: String,
}

impl Sim {
    async fn start(name: &str) -> Self {
        let dir = target_dir().join("test-logs").join(format!(
            "conformance-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let process = start_simulator(&dir).await;
        let url = process.url.clone().expect("the simulator's address");
        let tls_url = process.tls_url.clone().expect("the simulator serves TLS");
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{url}{path}")).send();
        let credentials: Value = get("/sim/credentials").await.unwrap().json().await.unwrap();
        for (file, path) in [
            ("ca.pem", "/sim/tls-certificate"),
            ("service-account.json", "/sim/service-account.json"),
            ("AuthKey.p8", "/sim/apns-key.p8"),
            ("apns-client.pem", "/sim/apns-client.pem"),
        ] {
            let answer = get(path).await.unwrap();
            assert_eq!(answer.status(), 200, "GET {path}");
            std::fs::write(dir.join(file), answer.bytes().await.unwrap()).unwrap();
        }
        let mut sim = Self {
            _process: process,
            url,
            tls_url,
            dir,
            credentials,
            token: String::new(),
        };
        sim.token = sim.provider_token(chrono::Utc::now().timestamp());
        sim
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    async fn set_faults(&self, faults: Value) -> reqwest::Response {
        reqwest::Client::new()
            .put(format!("{}/sim/faults", self.url))
            .json(&faults)
            .send()
            .await
            .unwrap()
    }

    async fn deliveries_to(&self, token: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/sim/deliveries", self.url),
            [("token", token)],
        )
        .unwrap();
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A provider token signed with the simulator's APNs key, issued at `iat`.
    fn provider_token(&self, iat: i64) -> String {
        let apns = &self.credentials["apns"];
        let mut header = Header::new(Algorithm::ES256);
        header.kid = apns["key_id"].as_str().map(str::to_string);
        let key =
            EncodingKey::from_ec_pem(apns["private_key_pem"].as_str().unwrap().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &json!({"iss": apns["team_id"], "iat": iat}), &key).unwrap()
    }

    /// A JWT-bearer grant for the simulator's service account.
    async fn grant(&self, claims: Value) -> reqwest::Response {
        let account = &self.credentials["fcm"]["service_account"];
        let key =
            EncodingKey::from_rsa_pem(account["private_key"].as_str().unwrap().as_bytes()).unwrap();
        let assertion =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
        reqwest::Client::new()
            .post(account["token_uri"].as_str().unwrap())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .unwrap()
    }

    /// An FCM access token, obtained as Google's libraries obtain one.
    async fn access_token(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        let answer = self
            .grant(json!({
                "iss": self.credentials["fcm"]["service_account"]["client_email"],
                "aud": "https://oauth2.googleapis.com/token",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "iat": now,
                "exp": now + 3600,
            }))
            .await;
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A raw APNs request on `client`'s connection.
    async fn apns(
        &self,
        client: &reqwest::Client,
        path: &str,
        headers: HeaderMap,
        body: &str,
    ) -> (u16, HeaderMap, Value) {
        let answer = client
            .post(format!("{}{path}", self.url))
            .headers(headers)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        let body = answer.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// A raw FCM send with `body`.
    async fn fcm(&self, token: &str, body: Value) -> (u16, HeaderMap, Value) {
        let answer = h2c()
            .post(format!("{}/v1/projects/herald-sim/messages:send", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        (status, headers, answer.json().await.unwrap_or(Value::Null))
    }
}

/// A client with a connection of its own, speaking HTTP/2 in cleartext.
fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// The headers of a good APNs alert with token auth.
fn alert_headers(sim: &Sim) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("bearer {}", sim.token)),
        ("apns-topic", TOPIC.to_string()),
        ("apns-push-type", "alert".to_string()),
    ]
}

const ALERT: &str = r#"{"aps":{"alert":{"title":"t","body":"b"}}}"#;

/// Where the test script installed the third-party clients.
fn clients_dir() -> PathBuf {
    std::env::var("HERALD_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir().join("conformance"))
}

fn conformance_script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(name)
        .display()
        .to_string()
}

/// Runs a client script and returns the JSON document it prints.
async fn run_client(mut command: tokio::process::Command, what: &str) -> Value {
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 180 s: a client hung"))
        .unwrap_or_else(|e| panic!("running {what}: {e} (the test script installs it)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn node_apn_sends_and_hears_every_apns_reason_as_apple_gives_it() {
    let sim = Sim::start("node-apn").await;
    let modules = clients_dir().join("node/node_modules");
    assert!(
        modules.join("@parse/node-apn").exists(),
        "@parse/node-apn is not installed in {} (scripts/test installs it)",
        modules.display()
    );
    let tls = sim.tls_url.trim_start_matches("https://").to_string();
    let (host, port) = tls.rsplit_once(':').unwrap();
    let token = ios_token(1);
    let reasons: Vec<&str> = APNS_REASONS.iter().map(|r| r.0).collect();
    let mut node = tokio::process::Command::new("node");
    node.arg(conformance_script("node_apn_client.js"))
        .env("NODE_PATH", &modules)
        .env("SIM_HOST", host)
        .env("SIM_PORT", port)
        .env("SIM_CONTROL", &sim.url)
        .env("CA_FILE", sim.file("ca.pem"))
        .env("KEY_FILE", sim.file("AuthKey.p8"))
        .env(
            "KEY_ID",
            sim.credentials["apns"]["key_id"].as_str().unwrap(),
        )
        .env(
            "TEAM_ID",
            sim.credentials["apns"]["team_id"].as_str().unwrap(),
        )
        .env("TOPIC", TOPIC)
        .env("CERT_FILE", sim.file("apns-client.pem"))
        .env("TOKEN", &token)
        .env("REASONS", reasons.join(","));
    let report = run_client(node, "node-apn").await;

    assert_eq!(report["normal"], json!({"sent": true}), "{report}");
    for (reason, status) in APNS_REASONS {
        let heard = &report["reasons"][reason];
        assert_eq!(heard["sent"], false, "{reason}: {heard}");
        assert_eq!(heard["status"], *status, "{reason}: {heard}");
        // node-apn turns a 500 into an error of its own ("stream ended
        // unexpectedly") and drops the reason; every other answer keeps it.
        if *status != 500 {
            assert_eq!(heard["reason"], *reason, "{reason}: {heard}");
        }
    }
    assert_eq!(
        report["certificate_without_topic"],
        json!({"sent": true}),
        "certificate auth takes the certificate's topic: {report}"
    );
    // The normal send and the certificate send; no injected failure recorded.
    let delivered = sim.deliveries_to(&token).await;
    assert_eq!(delivered.len(), 2, "{delivered:?}");
}

#[tokio::test]
async fn the_firebase_admin_sdk_loads_the_served_key_and_sends_as_to_google() {
    let sim = Sim::start("firebase-admin").await;
    let python = clients_dir().join("venv/bin/python");
    assert!(
        python.exists(),
        "firebase-admin is not installed in {} (scripts/test installs it)",
        clients_dir().display()
    );
    let faults: &[(&str, &str, &str, u16, Option<&str>)] = &[
        (
            "bad-1",
            "InvalidArgumentError",
            "INVALID_ARGUMENT",
            400,
            None,
        ),
        ("unreg-1", "UnregisteredError", "NOT_FOUND", 404, None),
        (
            "mismatch-1",
            "SenderIdMismatchError",
            "PERMISSION_DENIED",
            403,
            None,
        ),
        (
            "quota-1",
            "QuotaExceededError",
            "RESOURCE_EXHAUSTED",
            429,
            Some("1"),
        ),
        (
            "unavail-1",
            "UnavailableError",
            "UNAVAILABLE",
            503,
            Some("1"),
        ),
        ("internal-1", "InternalError", "INTERNAL", 500, None),
        (
            "thirdparty-1",
            "ThirdPartyAuthError",
            "UNAUTHENTICATED",
            401,
            None,
        ),
        ("unspecified-1", "UnknownError", "UNKNOWN", 500, None),
    ];
    let tokens: Vec<&str> = faults.iter().map(|f| f.0).collect();
    let mut command = tokio::process::Command::new(python);
    command
        .arg(conformance_script("fcm_admin_sdk.py"))
        .env("SIM_TLS", &sim.tls_url)
        .env("SIM_CONTROL", &sim.url)
        .env("SERVICE_ACCOUNT", sim.file("service-account.json"))
        .env("FAULT_TOKENS", tokens.join(","))
        .env("REQUESTS_CA_BUNDLE", sim.file("ca.pem"))
        .env("SSL_CERT_FILE", sim.file("ca.pem"))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
    let report = run_client(command, "the Firebase Admin SDK").await;

    assert_eq!(report["project_id"], "herald-sim", "{report}");
    let name = |key: &str| report[key].as_str().unwrap_or_default().to_string();
    assert!(
        name("normal").starts_with("projects/herald-sim/messages/"),
        "{report}"
    );
    assert_eq!(sim.deliveries_to("conformance-normal").await.len(), 1);
    assert_eq!(
        name("dry_run"),
        "projects/herald-sim/messages/fake_message_id"
    );
    assert!(
        sim.deliveries_to("conformance-dry-run").await.is_empty(),
        "a dry run reaches no device"
    );
    assert!(
        name("topic").starts_with("projects/herald-sim/messages/"),
        "{report}"
    );
    assert_eq!(sim.deliveries_to("/topics/news").await.len(), 1);
    assert!(
        name("condition").starts_with("projects/herald-sim/messages/"),
        "{report}"
    );
    for (i, sent) in report["async"].as_array().unwrap().iter().enumerate() {
        assert!(sent.as_str().is_some(), "async send {i}: {sent}");
    }
    for (token, class, code, status, retry_after) in faults {
        let heard = &report["faults"][token];
        assert_eq!(heard["type"], *class, "{token}: {heard}");
        assert_eq!(heard["code"], *code, "{token}: {heard}");
        assert_eq!(heard["status"], *status, "{token}: {heard}");
        assert_eq!(
            heard["retry_after"].as_str(),
            *retry_after,
            "{token}: {heard}"
        );
    }
    assert_eq!(
        report["configured"]["type"], "ThirdPartyAuthError",
        "{report}"
    );
}

#[tokio::test]
async fn every_apns_answer_names_its_request_in_apns_id() {
    let sim = Sim::start("apns-id").await;
    let client = h2c();
    let id = uuid::Uuid::new_v4().to_string();
    let mut good = alert_headers(&sim);
    good.push(("apns-id", id.clone()));
    let device = format!("/3/device/{}", ios_token(2));

    sim.set_faults(json!({"fail_first": 1, "fail_status": 503}))
        .await;
    let (status, answer, _) = sim.apns(&client, &device, headers(&good), ALERT).await;
    assert_eq!(status, 503);
    assert_eq!(answer["apns-id"], id.as_str(), "an injected failure");

    let (status, answer, body) = sim
        .apns(&client, "/3/devices/x", headers(&good), ALERT)
        .await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("BadPath")));
    assert_eq!(answer["apns-id"], id.as_str(), "BadPath");

    let answer = client
        .get(format!("{}{device}", sim.url))
        .header("apns-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    assert_eq!(answer.headers()["apns-id"], id.as_str(), "MethodNotAllowed");

    let mut bad_id = alert_headers(&sim);
    bad_id.push(("apns-id", "not-a-uuid".to_string()));
    let (status, answer, body) = sim.apns(&client, &device, headers(&bad_id), ALERT).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("BadMessageId"))
    );
    let given = answer["apns-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(given).is_ok(),
        "a UUID of Apple's own, not {given:?}"
    );
}

#[tokio::test]
async fn a_provider_token_replaced_within_20_minutes_on_a_connection_is_refused() {
    let sim = Sim::start("token-updates").await;
    let now = chrono::Utc::now().timestamp();
    let device = format!("/3/device/{}", ios_token(3));
    let send = |client: reqwest::Client, iat: i64| {
        let sim = &sim;
        let device = device.clone();
        async move {
            let auth = format!("bearer {}", sim.provider_token(iat));
            let pairs = [("authorization", auth), ("apns-topic", TOPIC.to_string())];
            let (status, _, body) = sim.apns(&client, &device, headers(&pairs), ALERT).await;
            (
                status,
                body["reason"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let ok = (200, String::new());
    let refused = (429, "TooManyProviderTokenUpdates".to_string());

    // A token refreshed 25 minutes after the last one is taken; one signed a
    // minute later again is not.
    let connection = h2c();
    assert_eq!(send(connection.clone(), now - 25 * 60).await, ok);
    assert_eq!(send(connection.clone(), now).await, ok);
    assert_eq!(send(connection.clone(), now - 60).await, refused);
    // A client signing a new token for every request fails on its second.
    let per_request = h2c();
    assert_eq!(send(per_request.clone(), now).await, ok);
    assert_eq!(send(per_request.clone(), now + 1).await, refused);
    // The rule is per connection: another connection may use any valid token.
    assert_eq!(send(h2c(), now + 1).await, ok);
}

#[tokio::test]
async fn rate_limits_and_unavailability_carry_retry_after_when_asked() {
    let sim = Sim::start("retry-after").await;
    let client = h2c();
    let fcm_token = sim.access_token().await;
    let fcm_body = json!({"message": {"token": "quota-1"}});
    let apns = |n: usize| format!("/3/device/0429{}", &ios_token(n)[4..]);

    // By default no Retry-After, as most answers have none.
    let (status, answer, body) = sim
        .apns(&client, &apns(4), headers(&alert_headers(&sim)), ALERT)
        .await;
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!((status, answer.get("retry-after")), (429, None));

    let set = sim.set_faults(json!({"retry_after_secs": 7})).await;
    assert_eq!(set.status(), 200);
    let (status, answer, body) = sim
        .apns(&client, &apns(5), headers(&alert_headers(&sim)), ALERT)
        .await;
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        (
            status,
            answer.get("retry-after").map(|v| v.to_str().unwrap())
        ),
        (429, Some("7"))
    );
    let (status, answer, _) = sim.fcm(&fcm_token, fcm_body.clone()).await;
    assert_eq!(
        (
            status,
            answer.get("retry-after").map(|v| v.to_str().unwrap())
        ),
        (429, Some("7"))
    );

    sim.set_faults(json!({"retry_after_secs": 3, "fail_first": 2, "fail_status": 503}))
        .await;
    let (status, answer, body) = sim
        .apns(
            &client,
            &format!("/3/device/{}", ios_token(6)),
            headers(&alert_headers(&sim)),
            ALERT,
        )
        .await;
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert_eq!(
        (
            status,
            answer.get("retry-after").map(|v| v.to_str().unwrap())
        ),
        (503, Some("3"))
    );
    let (status, answer, _) = sim
        .fcm(&fcm_token, json!({"message": {"token": "fine"}}))
        .await;
    assert_eq!(
        (
            status,
            answer.get("retry-after").map(|v| v.to_str().unwrap())
        ),
        (503, Some("3"))
    );

    // A 500 is not a rate limit: never a Retry-After.
    sim.set_faults(json!({"retry_after_secs": 3, "fail_first": 1, "fail_status": 500}))
        .await;
    let (status, answer, _) = sim
        .fcm(&fcm_token, json!({"message": {"token": "fine"}}))
        .await;
    assert_eq!((status, answer.get("retry-after")), (500, None));
}

#[tokio::test]
async fn every_documented_error_can_be_injected_and_nothing_else() {
    let sim = Sim::start("injection").await;
    let client = h2c();
    let device = format!("/3/device/{}", ios_token(7));
    for (reason, status) in APNS_REASONS {
        let set = sim
            .set_faults(json!({"fail_first": 1, "apns_reason": reason}))
            .await;
        assert_eq!(set.status(), 200, "{reason}");
        let (got, answer, body) = sim
            .apns(&client, &device, headers(&alert_headers(&sim)), ALERT)
            .await;
        assert_eq!((got, body["reason"].as_str()), (*status, Some(*reason)));
        assert!(answer.contains_key("apns-id"), "{reason}");
        if *status == 410 {
            assert!(
                body["timestamp"].is_i64(),
                "{reason} says since when: {body}"
            );
        }
    }
    let token = sim.access_token().await;
    for (code, status, rpc) in FCM_ERRORS {
        sim.set_faults(json!({"fail_first": 1, "fcm_error": code}))
            .await;
        let (got, _, body) = sim.fcm(&token, json!({"message": {"token": "fine"}})).await;
        assert_eq!(got, *status, "{code}: {body}");
        assert_eq!(body["error"]["status"], *rpc, "{code}: {body}");
        assert_eq!(
            body["error"]["details"][0]["errorCode"], *code,
            "{code}: {body}"
        );
    }
    // A name neither provider documents is refused, not silently ignored.
    for faults in [
        json!({"fail_first": 1, "apns_reason": "Unregisterd"}),
        json!({"fail_first": 1, "fcm_error": "NOT_A_CODE"}),
        json!({"fail_first": 1, "fail_status": 418}),
    ] {
        let answer = sim.set_faults(faults.clone()).await;
        assert_eq!(answer.status(), 400, "{faults}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{faults}"
        );
    }
    // Nothing injected was recorded as a delivery.
    assert!(sim.deliveries_to(&ios_token(7)).await.is_empty());
}

#[tokio::test]
async fn apns_refuses_the_requests_apple_refuses() {
    let sim = Sim::start("apns-rules").await;
    let client = h2c();
    let reason = |(status, _, body): (u16, HeaderMap, Value)| {
        (
            status,
            body["reason"].as_str().unwrap_or_default().to_string(),
        )
    };
    let device = format!("/3/device/{}", ios_token(8));

    let answer = sim
        .apns(&client, "/3/device/", headers(&alert_headers(&sim)), ALERT)
        .await;
    assert_eq!(reason(answer), (400, "MissingDeviceToken".into()));

    let mut twice = alert_headers(&sim);
    twice.push(("apns-topic", TOPIC.to_string()));
    let answer = sim.apns(&client, &device, headers(&twice), ALERT).await;
    assert_eq!(reason(answer), (400, "DuplicateHeaders".into()));

    let voip = |topic: &str| {
        let mut h = alert_headers(&sim);
        h.retain(|(name, _)| !name.starts_with("apns-"));
        h.push(("apns-topic", topic.to_string()));
        h.push(("apns-push-type", "voip".to_string()));
        headers(&h)
    };
    let answer = sim.apns(&client, &device, voip(TOPIC), ALERT).await;
    assert_eq!(reason(answer), (400, "DeviceTokenNotForTopic".into()));
    let answer = sim
        .apns(&client, &device, voip(&format!("{TOPIC}.voip")), ALERT)
        .await;
    assert_eq!(reason(answer), (200, String::new()));
    // Without apns-push-type, the topic's suffix says what the push is.
    let untyped = |topic: &str| {
        let mut h = alert_headers(&sim);
        h.retain(|(name, _)| !name.starts_with("apns-"));
        h.push(("apns-topic", topic.to_string()));
        headers(&h)
    };
    for topic in [TOPIC.to_string(), format!("{TOPIC}.voip")] {
        let answer = sim.apns(&client, &device, untyped(&topic), ALERT).await;
        assert_eq!(reason(answer), (200, String::new()), "{topic}");
    }

    // apns-id in Apple's 8-4-4-4-12 form only.
    let mut simple_id = alert_headers(&sim);
    simple_id.push(("apns-id", uuid::Uuid::new_v4().simple().to_string()));
    let answer = sim.apns(&client, &device, headers(&simple_id), ALERT).await;
    assert_eq!(reason(answer), (400, "BadMessageId".into()));
    // A header that is there but unreadable is a bad value, not a missing one.
    let mut garbled = headers(&alert_headers(&sim));
    garbled.insert("apns-priority", HeaderValue::from_bytes(b"\xff10").unwrap());
    let answer = sim.apns(&client, &device, garbled, ALERT).await;
    assert_eq!(reason(answer), (400, "BadPriority".into()));
    // An auth scheme's name is case-insensitive.
    let mut capitalised = alert_headers(&sim);
    capitalised[0].1 = format!("Bearer {}", sim.token);
    let answer = sim
        .apns(&client, &device, headers(&capitalised), ALERT)
        .await;
    assert_eq!(reason(answer), (200, String::new()));

    // The client certificate names its topic as Apple's do (subject UID),
    // which lets certificate auth go without apns-topic (the node-apn test
    // sends so).
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(sim.file("apns-client.pem"))
        .output()
        .expect("openssl");
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(subject.contains(&format!("UID={TOPIC}")), "{subject}");
}

#[tokio::test]
async fn the_token_endpoint_takes_what_google_takes_and_refuses_the_rest() {
    let sim = Sim::start("oauth").await;
    let account = sim.credentials["fcm"]["service_account"].clone();
    // The key file as Google issues it: the official SDKs insist on `type`.
    let served: Value =
        serde_json::from_str(&std::fs::read_to_string(sim.file("service-account.json")).unwrap())
            .unwrap();
    assert_eq!(served, account);
    for field in [
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
        "token_uri",
    ] {
        assert!(account[field].is_string(), "{field} in {account}");
    }
    assert_eq!(account["type"], "service_account");

    let now = chrono::Utc::now().timestamp();
    let claims = |aud: &Value, scope: &str, iat: i64, exp: i64| json!({"iss": account["client_email"], "aud": aud, "scope": scope, "iat": iat, "exp": exp});
    let google = json!("https://oauth2.googleapis.com/token");
    let own = account["token_uri"].clone();
    let fcm_scope = "https://www.googleapis.com/auth/firebase.messaging";
    let cloud = "https://www.googleapis.com/auth/cloud-platform";
    for (what, c, status, error) in [
        (
            "Google's audience, cloud-platform",
            claims(&google, cloud, now, now + 3600),
            200,
            "",
        ),
        (
            "the file's token_uri, firebase.messaging",
            claims(&own, fcm_scope, now, now + 3600),
            200,
            "",
        ),
        (
            "a lifetime over an hour",
            claims(&google, cloud, now, now + 7200),
            400,
            "invalid_grant",
        ),
        (
            "iat in the future",
            claims(&google, cloud, now + 600, now + 1200),
            400,
            "invalid_grant",
        ),
        (
            "expired",
            claims(&google, cloud, now - 7200, now - 3600),
            400,
            "invalid_grant",
        ),
        (
            "another audience",
            claims(&json!("https://example.com/token"), cloud, now, now + 600),
            400,
            "invalid_grant",
        ),
        (
            "a scope without FCM",
            claims(
                &google,
                "https://www.googleapis.com/auth/devstorage.read_only",
                now,
                now + 600,
            ),
            400,
            "invalid_scope",
        ),
        (
            "no scope",
            json!({"iss": account["client_email"], "aud": google, "iat": now, "exp": now + 600}),
            400,
            "invalid_scope",
        ),
    ] {
        let answer = sim.grant(c).await;
        assert_eq!(answer.status(), status, "{what}");
        let body: Value = answer.json().await.unwrap();
        if status == 200 {
            assert!(body["access_token"].is_string(), "{what}: {body}");
        } else {
            assert_eq!(body["error"], error, "{what}: {body}");
        }
        // Lifetime refusals say so in Google's words, not "bad signature".
        if ["a lifetime over an hour", "iat in the future", "expired"].contains(&what) {
            let says = body["error_description"].as_str().unwrap_or_default();
            assert!(says.contains("short-lived token"), "{what}: {body}");
        }
    }
}

#[tokio::test]
async fn fcm_refuses_what_google_refuses_and_takes_what_it_takes() {
    let sim = Sim::start("fcm-rules").await;
    let token = sim.access_token().await;
    let refused = |(status, _, body): (u16, HeaderMap, Value)| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{body}");
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for (what, body, says) in [
        (
            "an empty token",
            json!({"message": {"token": ""}}),
            "not a valid FCM registration token",
        ),
        (
            "a token and a topic",
            json!({"message": {"token": "a", "topic": "news"}}),
            "Exactly one",
        ),
        (
            "no target",
            json!({"message": {"notification": {"title": "t"}}}),
            "Exactly one",
        ),
        (
            "an unknown field",
            json!({"message": {"token": "a", "andriod": {}}}),
            "Unknown name \"andriod\" at 'message'",
        ),
        (
            "a nested unknown field",
            json!({"message": {"token": "a", "android": {"notification": {"colour": "red"}}}}),
            "Unknown name \"colour\" at 'message.android.notification'",
        ),
        (
            "a bad android.priority",
            json!({"message": {"token": "a", "android": {"priority": "urgent"}}}),
            "message.android.priority",
        ),
        (
            "a bad ttl",
            json!({"message": {"token": "a", "android": {"ttl": "60"}}}),
            "message.android.ttl",
        ),
        (
            "a number in data",
            json!({"message": {"token": "a", "data": {"n": 1}}}),
            "message.data",
        ),
        (
            "a bad topic",
            json!({"message": {"topic": "two words"}}),
            "Invalid topic",
        ),
    ] {
        let says_what = refused(sim.fcm(&token, body).await);
        assert!(says_what.contains(says), "{what}: {says_what}");
    }

    // A dry run is judged as a send is, and reaches no device.
    let (status, _, body) = sim
        .fcm(&token, json!({"validate_only": true, "message": {"token": "dry-1", "android": {"priority": "HIGH", "ttl": "3.5s"}}}))
        .await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("projects/herald-sim/messages/fake_message_id"))
    );
    refused(
        sim.fcm(
            &token,
            json!({"validateOnly": true, "message": {"token": ""}}),
        )
        .await,
    );
    assert!(sim.deliveries_to("dry-1").await.is_empty());

    // Topics and conditions are sent, and recorded by what they name.
    let (status, _, _) = sim
        .fcm(
            &token,
            json!({"message": {"topic": "news", "notification": {"title": "t"}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sim.deliveries_to("/topics/news").await.len(), 1);
    let condition = "'news' in topics && 'sport' in topics";
    let (status, _, _) = sim
        .fcm(&token, json!({"message": {"condition": condition}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        sim.deliveries_to(&format!("condition:{condition}"))
            .await
            .len(),
        1
    );
    // A Firebase installation id is a target too (the Admin SDKs send `fid`).
    let (status, _, body) = sim
        .fcm(
            &token,
            json!({"message": {"fid": "fid-1", "notification": {"title": "t"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.deliveries_to("fid:fid-1").await.len(), 1);
    refused(
        sim.fcm(&token, json!({"message": {"fid": "fid-1", "token": "a"}}))
            .await,
    );
    // Both JSON spellings of a field are Google's.
    let (status, _, body) = sim
        .fcm(&token, json!({"message": {"token": "camel-1", "android": {"collapseKey": "k", "notification": {"clickAction": "open"}}, "fcmOptions": {"analyticsLabel": "l"}}}))
        .await;
    assert_eq!(status, 200, "{body}");
}
