//! One app's key never reaches another app's data; a revoked key stops
//! working everywhere within a second; oversize, slow and malformed requests
//! are cut off with problem+json, and write nothing.

use herald_tests::{free_address, ios_token, wait_until, HeraldProcess, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_apps_key_reaches_only_its_own_data() {
    let env = TestEnv::start("tenants").await;
    let a = env.create_app().await;
    let b = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let http = &env.http;

    // App A's resources.
    let r = http
        .put(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&a.sdk_key)
        .json(&json!({"platform": "ios", "token": ios_token(1), "custom_id": "shared-user"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let (_, m) = env
        .push(
            &gw,
            &a.server_key,
            Some("same-key"),
            &json!({"to": {"install_ids": ["a-phone"]}, "notification": {"title": "a"}}),
        )
        .await;
    let a_message = m["message_id"].as_str().expect("id").to_string();
    let a_key: Value = http
        .post(format!("{gw}/v1/keys"))
        .bearer_auth(&a.server_key)
        .json(&json!({"kind": "sdk"}))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let a_key_id = a_key["id"].as_str().expect("id").to_string();
    let r = http
        .put(format!("{gw}/v1/webhook"))
        .bearer_auth(&a.server_key)
        .json(&json!({"url": "http://127.0.0.1:9/a"}))
        .send()
        .await
        .expect("hook");
    assert_eq!(r.status(), 200);
    wait_until("A's push delivered", Duration::from_secs(60), || async {
        env.message(&gw, &a.server_key, &a_message).await["counts"]["delivered"] == 1
    })
    .await;

    // App B's server key, against every endpoint that names A's resources.
    let b_key = &b.server_key;
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "GET message",
            http.get(format!("{gw}/v1/messages/{a_message}")),
            404,
        ),
        (
            "GET deliveries",
            http.get(format!("{gw}/v1/messages/{a_message}/deliveries")),
            404,
        ),
        (
            "GET installation",
            http.get(format!("{gw}/v1/installations/a-phone")),
            404,
        ),
        (
            "DELETE installation",
            http.delete(format!("{gw}/v1/installations/a-phone")),
            404,
        ),
        (
            "DELETE key",
            http.delete(format!("{gw}/v1/keys/{a_key_id}")),
            404,
        ),
        ("GET webhook", http.get(format!("{gw}/v1/webhook")), 404),
        (
            "DELETE webhook",
            http.delete(format!("{gw}/v1/webhook")),
            404,
        ),
    ];
    for (case, request, status) in cases {
        let r = request.bearer_auth(b_key).send().await.expect(case);
        assert_eq!(r.status().as_u16(), status, "{case}");
        let body = r.text().await.expect(case);
        // The detail may echo the id B asked for; none of A's data may appear.
        assert!(
            !body.contains(&ios_token(1)) && !body.contains("shared-user"),
            "{case} leaked: {body}"
        );
    }
    let keys: Value = http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(b_key)
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(2),
        "only B's own keys: {keys}"
    );
    assert!(!keys.to_string().contains(&a_key_id));

    // B's targets never resolve to A's installations, and the same
    // Idempotency-Key in B is a different message.
    let (_, m) = env
        .push(&gw, b_key, Some("same-key"), &json!({"to": {"install_ids": ["a-phone"], "custom_ids": ["shared-user"]}, "notification": {"title": "b"}}))
        .await;
    assert_ne!(m["message_id"], a_message.as_str());
    assert_eq!(m["recipients"], 0, "{m}");
    // B registering the same install id makes B's own installation.
    let r = http
        .put(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&b.sdk_key)
        .json(&json!({"platform": "android", "token": "b-token"}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let a_view: Value = http
        .get(format!("{gw}/v1/installations/a-phone"))
        .bearer_auth(&a.server_key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        a_view["token"],
        ios_token(1),
        "A's installation is untouched"
    );
    // A's key B tried to revoke still works; A's webhook is still set.
    let r = http
        .get(format!("{gw}/v1/keys"))
        .bearer_auth(a_key["secret"].as_str().expect("secret"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        403,
        "an SDK key, alive, but not allowed to list keys"
    );
    let r = http
        .get(format!("{gw}/v1/webhook"))
        .bearer_auth(&a.server_key)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    env.finish().await;
}

#[tokio::test]
async fn oversize_slow_and_misdirected_requests_are_cut_off() {
    let env = TestEnv::start_with(
        "limits",
        &[
            ("HERALD_GATEWAY__MAX_BODY_BYTES", "10000"),
            ("HERALD_GATEWAY__REQUEST_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");

    let big = json!({"to": {"install_ids": (0..1000).map(|i| format!("install-{i:08}")).collect::<Vec<_>>()},
                     "notification": {"title": "t"}});
    let r = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .json(&big)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    let r = env
        .http
        .patch(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // A body that never finishes arriving.
    let addr = gw.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/push HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"to\":",
        app.server_key
    );
    socket.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("the gateway answers a stalled request")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:herald:problem:request-timeout"),
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    env.assert_nothing_accepted().await;
    env.finish().await;
}

/// A valid body for each write endpoint, so that a refusal is about whose
/// resource it is, never about the body. An endpoint added to the API
/// without a body here fails the matrix below.
fn body_for(method: &str, path: &str) -> Option<Value> {
    let campaign = json!({"name": "b's", "notification": {"title": "b"}});
    let trigger = json!({"name": "b's", "entry_event": "ping", "notification": {"title": "b"}});
    Some(match (method, path) {
        ("post", "/v1/push") => {
            json!({"to": {"custom_ids": ["a-user"], "install_ids": ["a-only"]}, "notification": {"title": "b"}})
        }
        ("post", "/v1/events") => json!({"event_id": "b-1", "name": "ping", "custom_id": "a-user"}),
        ("post", "/v1/campaigns") | ("put", "/v1/campaigns/{campaign_id}") => campaign,
        ("post", "/v1/triggers") | ("put", "/v1/triggers/{trigger_id}") => trigger,
        ("post", "/v1/audiences/estimate") => json!({"type": "custom_ids", "ids": ["a-user"]}),
        ("put", "/v1/installations/{install_id}") => {
            json!({"platform": "android", "token": "b-token"})
        }
        ("post", "/v1/keys") => json!({"kind": "sdk"}),
        ("put", "/v1/webhook") => json!({"url": "http://127.0.0.1:9/b"}),
        ("put", "/v1/campaign-settings") => json!({"rate_limit_per_second": 10}),
        ("put", "/v1/trigger-settings") => json!({"quiet_hours": null}),
        ("put", "/v1/credentials/apns") | ("put", "/v1/credentials/fcm") => json!({}),
        ("put", "/v1/campaigns/{campaign_id}/audience/ids") => Value::Null,
        (_, _)
            if matches!(method, "get" | "delete")
                || path.ends_with("/launch")
                || path.ends_with("/pause")
                || path.ends_with("/resume")
                || path.ends_with("/cancel") =>
        {
            Value::Null
        }
        _ => return None,
    })
}

#[tokio::test]
async fn every_endpoint_of_the_openapi_document_keeps_apps_apart_and_sdk_keys_in_scope() {
    let env = TestEnv::start("tenantmatrix").await;
    let a = env.create_app().await;
    let b = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let _sender = env.sender().await;
    let http = &env.http;
    let call = |method: &str, path: &str, key: &str, body: Option<Value>| {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let mut r = http
            .request(method, format!("{gw}{path}"))
            .bearer_auth(key.to_string());
        if path.ends_with("/audience/ids") {
            r = r.header("content-type", "text/plain").body("b-user\n");
        } else if let Some(b) = body.filter(|b| !b.is_null()) {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.expect("request");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    // A's resources, one of each.
    let ok = |(status, body): (u16, String)| {
        assert!((200..300).contains(&status), "{status} {body}");
        serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
    };
    ok(call(
        "put",
        "/v1/installations/a-only",
        &a.sdk_key,
        Some(json!({"platform": "ios", "token": ios_token(7), "custom_id": "a-user"})),
    )
    .await);
    let message = ok(call(
        "post",
        "/v1/push",
        &a.server_key,
        Some(json!({"to": {"install_ids": ["a-only"]}, "notification": {"title": "a"}})),
    )
    .await);
    let a_message = message["message_id"].as_str().expect("id").to_string();
    let campaign = ok(call(
        "post",
        "/v1/campaigns",
        &a.server_key,
        Some(json!({"name": "a's", "notification": {"title": "a"}})),
    )
    .await);
    let a_campaign = campaign["id"].as_str().expect("id").to_string();
    let trigger = ok(call(
        "post",
        "/v1/triggers",
        &a.server_key,
        Some(json!({"name": "a's", "entry_event": "ping", "notification": {"title": "a-trigger"}})),
    )
    .await);
    let a_trigger = trigger["id"].as_str().expect("id").to_string();
    let key = ok(call(
        "post",
        "/v1/keys",
        &a.server_key,
        Some(json!({"kind": "sdk"})),
    )
    .await);
    let a_key = key["id"].as_str().expect("id").to_string();
    ok(call(
        "put",
        "/v1/webhook",
        &a.server_key,
        Some(json!({"url": "http://127.0.0.1:9/a-hook"})),
    )
    .await);
    wait_until("A's push delivered", Duration::from_secs(60), || async {
        env.message(&gw, &a.server_key, &a_message).await["counts"]["delivered"] == 1
    })
    .await;
    let a_secrets = [
        a_message.clone(),
        a_campaign.clone(),
        a_trigger.clone(),
        a_key.clone(),
        ios_token(7),
        "a-user".to_string(),
        "a-hook".to_string(),
    ];

    let doc: Value =
        serde_json::from_str(&call("get", "/v1/openapi.json", &a.server_key, None).await.1)
            .expect("openapi");
    let mut endpoints = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("ops").keys() {
            endpoints.push((method.clone(), path.clone()));
        }
    }
    assert!(endpoints.len() >= 40, "{} endpoints", endpoints.len());
    let concrete = |path: &str| {
        path.replace("{message_id}", &a_message)
            .replace("{campaign_id}", &a_campaign)
            .replace("{trigger_id}", &a_trigger)
            .replace("{key_id}", &a_key)
            .replace("{install_id}", "a-only")
    };

    // B's server key on every endpoint: A's resources are not found, B's
    // own answers never show anything of A's.
    for (method, path) in &endpoints {
        let body = body_for(method, path)
            .unwrap_or_else(|| panic!("no body for {method} {path}: add one to body_for"));
        let sent = format!("{} {body}", concrete(path));
        let (status, answer) = call(method, &concrete(path), &b.server_key, Some(body)).await;
        // Install ids are names within an app: B may register its own
        // `a-only` (and does, above), so those paths answer for B's.
        let names_a = path.contains('{') && !path.contains("{install_id}");
        if names_a {
            assert_eq!(status, 404, "B {method} {path}: {answer}");
        }
        assert!(status < 500, "B {method} {path}: {status} {answer}");
        for secret in &a_secrets {
            // An answer may echo what B itself sent; nothing else of A's.
            if sent.contains(secret.as_str()) {
                continue;
            }
            assert!(
                !answer.contains(secret.as_str()),
                "B {method} {path} shows A's {secret}: {answer}"
            );
        }
    }

    // A's SDK key: installations and events only.
    for (method, path) in &endpoints {
        let allowed = (path == "/v1/installations/{install_id}"
            && (method == "put" || method == "delete"))
            || (path == "/v1/events" && method == "post")
            || path == "/v1/openapi.json";
        if allowed {
            continue;
        }
        let body = body_for(method, path).expect("body");
        let (status, answer) = call(method, &concrete(path), &a.sdk_key, Some(body)).await;
        assert_eq!(status, 403, "SDK key {method} {path}: {answer}");
    }

    // Nothing of A's changed, and B's event and push reached no device of A's.
    let c = ok(call(
        "get",
        &format!("/v1/campaigns/{a_campaign}"),
        &a.server_key,
        None,
    )
    .await);
    assert_eq!(c["status"], "draft");
    assert_eq!(c["name"], "a's");
    let t = ok(call(
        "get",
        &format!("/v1/triggers/{a_trigger}"),
        &a.server_key,
        None,
    )
    .await);
    assert_eq!(t["name"], "a's");
    let i = ok(call("get", "/v1/installations/a-only", &a.server_key, None).await);
    assert_eq!(i["token"], ios_token(7));
    let keys = ok(call("get", "/v1/keys", &a.server_key, None).await);
    assert!(
        keys.as_array()
            .expect("keys")
            .iter()
            .all(|k| k["revoked_at"].is_null()),
        "{keys}"
    );
    let hook = ok(call("get", "/v1/webhook", &a.server_key, None).await);
    assert!(hook["url"]
        .as_str()
        .unwrap_or_default()
        .ends_with("/a-hook"));
    let creds = ok(call("get", "/v1/credentials", &a.server_key, None).await);
    assert!(
        !creds["apns"].is_null() && !creds["fcm"].is_null(),
        "{creds}"
    );
    // B's push named A's user and install id: it resolved to none of A's
    // devices, so the record holds A's one push only.
    let to_a = env
        .sim_deliveries()
        .await
        .into_iter()
        .filter(|d| d["token"] == ios_token(7))
        .count();
    assert_eq!(to_a, 1, "A's device got A's push and nothing of B's");
    env.finish().await;
}

#[tokio::test]
async fn the_gateway_speaks_tls_when_given_a_certificate() {
    let env = TestEnv::start("gatewaytls").await;
    let app = env.create_app().await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("certificate");
    let cert_path = env.log_dir.join("gateway.pem");
    let key_path = env.log_dir.join("gateway.key");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
    let gateway = env
        .gateway_with(&[
            (
                "HERALD_GATEWAY__TLS_CERT_PATH",
                cert_path.to_str().expect("path"),
            ),
            (
                "HERALD_GATEWAY__TLS_KEY_PATH",
                key_path.to_str().expect("path"),
            ),
        ])
        .await;
    let url = gateway.url.clone().expect("url");
    assert!(url.starts_with("https://"), "{url}");
    let _sender = env.sender().await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("pem"),
        )
        .build()
        .expect("client");
    let r = client
        .post(format!("{url}/v1/push"))
        .bearer_auth(&app.server_key)
        .header("Idempotency-Key", "\"over-tls\"")
        .json(&json!({"to": {"tokens": [{"platform": "ios", "token": ios_token(1)}]}, "notification": {"title": "tls"}}))
        .send()
        .await
        .expect("push over TLS");
    assert_eq!(r.status(), 202);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picks HTTP/2");
    wait_until("delivered", Duration::from_secs(60), || async {
        env.sim_deliveries()
            .await
            .iter()
            .any(|d| d["token"] == ios_token(1))
    })
    .await;
    // Plain HTTP to the TLS port gets no answer.
    let plain = url.replacen("https://", "http://", 1);
    assert!(env
        .http
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .is_err());
    // A client that does not trust the certificate is refused.
    assert!(env.http.get(format!("{url}/healthz")).send().await.is_err());

    // Half a setting is refused at start, by name.
    let out = env
        .command(&["gateway"])
        .env(
            "HERALD_GATEWAY__TLS_CERT_PATH",
            cert_path.to_str().expect("path"),
        )
        .env("HERALD_GATEWAY__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .expect("herald");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.tls_key_path"));
    env.finish().await;
}

/// A gateway with a metrics endpoint, and that endpoint.
async fn gateway_with_metrics(env: &TestEnv) -> (HeraldProcess, String, String) {
    let ops = free_address();
    let gateway = env.gateway_with(&[("HERALD_METRICS__LISTEN", &ops)]).await;
    let url = gateway.url.clone().expect("url");
    (gateway, url, format!("http://{ops}/metrics"))
}

async fn counter(env: &TestEnv, metrics: &str, name: &str) -> f64 {
    let text = env
        .http
        .get(metrics)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The status a gateway answers a request made with this key.
async fn status_with(env: &TestEnv, gateway: &str, secret: &str) -> u16 {
    env.http
        .get(format!("{gateway}/v1/keys"))
        .bearer_auth(secret)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A new server key, used on every gateway until each answers it from its
/// cache (so that what follows tests the cache, not a lookup).
async fn cached_key(env: &TestEnv, app_key: &str, gateways: &[(&str, &str)]) -> (String, String) {
    let created: Value = env
        .http
        .post(format!("{}/v1/keys", gateways[0].0))
        .bearer_auth(app_key)
        .json(&json!({"kind": "server"}))
        .send()
        .await
        .expect("create key")
        .json()
        .await
        .expect("json");
    let secret = created["secret"].as_str().expect("secret").to_string();
    for (gateway, metrics) in gateways {
        let hits = counter(env, metrics, "herald_api_key_cache_hits_total").await;
        wait_until(
            "the key answered from the cache",
            Duration::from_secs(10),
            || async {
                assert_eq!(status_with(env, gateway, &secret).await, 200);
                counter(env, metrics, "herald_api_key_cache_hits_total").await > hits
            },
        )
        .await;
    }
    (created["id"].as_str().expect("id").to_string(), secret)
}

/// Polls every gateway until each refuses the key; returns the longest wait.
async fn refused_everywhere(env: &TestEnv, gateways: &[(&str, &str)], secret: &str) -> Duration {
    let revoked = Instant::now();
    let mut slowest = Duration::ZERO;
    for (gateway, _) in gateways {
        loop {
            let status = status_with(env, gateway, secret).await;
            if status == 401 {
                slowest = slowest.max(revoked.elapsed());
                break;
            }
            assert_eq!(status, 200);
            assert!(
                revoked.elapsed() < Duration::from_secs(5),
                "{gateway} still takes a revoked key"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    slowest
}

/// Gateways keep the keys they have seen in memory; a key revoked through
/// the API, by hand in PostgreSQL, or while a gateway's announcements
/// connection is cut, is refused by every gateway within a second.
#[tokio::test]
async fn a_revoked_key_stops_working_within_a_second_on_every_gateway() {
    let env = TestEnv::start("keycache").await;
    let app = env.create_app().await;
    let (_a, a, a_metrics) = gateway_with_metrics(&env).await;
    let (_b, b, b_metrics) = gateway_with_metrics(&env).await;
    let gateways = [
        (a.as_str(), a_metrics.as_str()),
        (b.as_str(), b_metrics.as_str()),
    ];

    // Revoked through gateway A's API: A refuses it at once.
    let (id, secret) = cached_key(&env, &app.server_key, &gateways).await;
    let r = env
        .http
        .delete(format!("{a}/v1/keys/{id}"))
        .bearer_auth(&app.server_key)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    assert_eq!(
        status_with(&env, &a, &secret).await,
        401,
        "at once where revoked"
    );
    let waited = refused_everywhere(&env, &gateways, &secret).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    // Revoked by an operator in SQL: announced by the table's trigger.
    let (id, secret) = cached_key(&env, &app.server_key, &gateways).await;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid")
        .bind(&id)
        .execute(&env.db)
        .await
        .expect("revoke in SQL");
    let waited = refused_everywhere(&env, &gateways, &secret).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    // The announcements connections cut, and a key deleted at once: no
    // gateway may trust what it cached while it could not hear.
    let (id, secret) = cached_key(&env, &app.server_key, &gateways).await;
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&env.db)
    .await
    .expect("cutting the listeners");
    assert_eq!(cut, 2, "one announcements connection per gateway");
    sqlx::query("DELETE FROM api_keys WHERE id = $1::uuid")
        .bind(&id)
        .execute(&env.db)
        .await
        .expect("delete in SQL");
    let waited = refused_everywhere(&env, &gateways, &secret).await;
    assert!(waited < Duration::from_secs(1), "took {waited:?}");

    // And the caches come back once the gateways listen again.
    cached_key(&env, &app.server_key, &gateways).await;
    env.finish().await;
}
