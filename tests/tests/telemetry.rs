//! Trace export: a gateway and a sender export their spans over OTLP/HTTP to
//! a collector (an HTTP server of the test's own that keeps what it is sent),
//! and one trace runs from the caller's request to the provider's answer.

use axum::routing::post;
use herald_tests::{ios_token, TestEnv};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the collector was sent: each body of `POST /v1/traces`.
#[derive(Clone, Default)]
struct Collector {
    bodies: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<String>>,
}

impl Collector {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: String| {
                let me = me.clone();
                async move {
                    me.raw.lock().expect("lock").push_str(&body);
                    if let Ok(v) = serde_json::from_str(&body) {
                        me.bodies.lock().expect("lock").push(v);
                    }
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    /// Every span received, with its service's name beside it.
    fn spans(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().expect("lock").iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = attribute(&resource["resource"], "service.name").unwrap_or_default();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

fn attribute(holder: &Value, key: &str) -> Option<String> {
    holder["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| match &a["value"] {
            v if v["stringValue"].is_string() => {
                v["stringValue"].as_str().unwrap_or_default().into()
            }
            v if !v["intValue"].is_null() => v["intValue"].to_string().trim_matches('"').into(),
            v => v.to_string(),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_callers_request_to_the_providers_answer() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mut env = TestEnv::start("otel").await;
    for (k, v) in [
        ("HERALD_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("HERALD_TELEMETRY__OTLP_PROTOCOL", "http/json"),
        // Export every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ] {
        env.extra_env.insert(k.into(), v.into());
    }
    let app = env.create_app().await;
    let _sender = env.sender().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");

    // The caller's own trace: Herald's spans join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = env
        .http
        .post(format!("{gw}/v1/push"))
        .bearer_auth(&app.server_key)
        .header("Idempotency-Key", "\"traced\"")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({
            "to": {"tokens": [
                {"platform": "ios", "token": ios_token(1)},
                {"platform": "ios", "token": ios_token(2)}
            ]},
            "notification": {"title": "traced"}
        }))
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 202);
    let message: Value = response.json().await.expect("json");
    let message_id = message["message_id"].as_str().expect("id").to_string();
    env.wait_message(&gw, &app.server_key, &message_id, |m| {
        m["counts"]["delivered"] == 2
    })
    .await;

    let in_trace = |name: &str| {
        collector
            .spans()
            .into_iter()
            .filter(|(_, s)| s["traceId"] == trace_id && s["name"] == name)
            .collect::<Vec<_>>()
    };
    herald_tests::wait_until(
        "the sender's spans are exported",
        Duration::from_secs(30),
        || {
            let done = in_trace("deliver").len() == 2 && in_trace("POST /v1/push").len() == 1;
            async move { done }
        },
    )
    .await;

    let (service, request) = in_trace("POST /v1/push").remove(0);
    assert_eq!(service, "herald-gateway");
    assert_eq!(
        request["parentSpanId"], caller_span,
        "the request joins the caller's span"
    );
    assert_eq!(
        attribute(&request, "message_id").as_deref(),
        Some(message_id.as_str())
    );
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("202")
    );
    let mut delivered = Vec::new();
    for (service, deliver) in in_trace("deliver") {
        assert_eq!(service, "herald-sender");
        assert_eq!(
            deliver["parentSpanId"], request["spanId"],
            "the send is a child of the request that accepted it, across Kafka"
        );
        assert_eq!(
            attribute(&deliver, "message_id").as_deref(),
            Some(message_id.as_str())
        );
        assert_eq!(attribute(&deliver, "outcome").as_deref(), Some("delivered"));
        delivered.push(attribute(&deliver, "delivery_id").expect("delivery_id"));
    }
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 2, "one span per delivery");

    // What went to the collector carries no secret.
    let raw = collector.raw.lock().expect("lock").clone();
    assert!(!raw.contains(&app.server_key), "an API key was exported");
    assert!(!raw.contains(herald_tests::TEST_CREDENTIALS_KEY));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_telemetry_settings_are_refused_at_start_with_their_name() {
    let env = TestEnv::start("otelbad").await;
    for (setting, value, named) in [
        (
            "HERALD_TELEMETRY__OTLP_PROTOCOL",
            "grpc",
            "telemetry.otlp_protocol `grpc`",
        ),
        (
            "HERALD_TELEMETRY__SAMPLE_RATIO",
            "2.5",
            "telemetry.sample_ratio 2.5",
        ),
    ] {
        let out = env
            .command(&["sender"])
            .env("HERALD_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:1")
            .env(setting, value)
            .output()
            .await
            .expect("herald");
        assert!(!out.status.success(), "{setting}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{stderr}");
    }
    env.finish().await;
}
