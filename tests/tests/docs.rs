//! The documentation is part of the product: the OpenAPI document validates
//! and covers every route, and every example in docs/api.md runs.

use herald_tests::TestEnv;
use serde_json::Value;
use std::path::PathBuf;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[tokio::test]
async fn the_openapi_document_validates_and_covers_every_route() {
    let env = TestEnv::start("openapi").await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let doc: Value = env
        .http
        .get(format!("{gw}/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/push",
        "/v1/messages/{message_id}",
        "/v1/messages/{message_id}/deliveries",
        "/v1/installations/{install_id}",
        "/v1/installations",
        "/v1/installations/{install_id}/deliveries",
        "/v1/stats",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let file = env.log_dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 (the test script installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "the OpenAPI document does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    env.finish().await;
}

/// Real responses satisfy the document's schemas, as a generated client
/// checks them: an installation, a campaign and a trigger, each as stored
/// (their views add the server's fields to the input's).
#[tokio::test]
async fn stored_installations_campaigns_and_triggers_satisfy_their_schemas() {
    let env = TestEnv::start("openapiviews").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let doc: Value = env
        .http
        .get(format!("{gw}/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let call = |method: &'static str, path: &'static str, key: String, body: Value| {
        let (env, gw) = (&env, gw.clone());
        async move {
            let (status, v) = env
                .api(method, &format!("{gw}{path}"), &key, Some(&body))
                .await;
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {v}"
            );
            v
        }
    };
    let installation = call(
        "PUT",
        "/v1/installations/phone",
        app.sdk_key.clone(),
        serde_json::json!({"platform": "ios", "token": herald_tests::ios_token(1),
                           "custom_id": "u1", "locale": "en-GB", "attributes": {"plan": "pro"}}),
    )
    .await;
    let campaign = call(
        "POST",
        "/v1/campaigns",
        app.server_key.clone(),
        serde_json::json!({"name": "Sale", "notification": {"title": "Sale"}}),
    )
    .await;
    let trigger = call(
        "POST",
        "/v1/triggers",
        app.server_key.clone(),
        serde_json::json!({"name": "welcome", "entry_event": "signup", "delay_seconds": 60,
                           "notification": {"title": "Hi"}}),
    )
    .await;
    let cases = serde_json::json!([
        ["InstallationView", installation],
        ["CampaignView", campaign],
        ["TriggerView", trigger],
    ]);
    let dir = env.log_dir.clone();
    std::fs::write(dir.join("openapi.json"), doc.to_string()).expect("write");
    std::fs::write(dir.join("responses.json"), cases.to_string()).expect("write");
    let script = r##"
import json, sys
from openapi_schema_validator import validate, OAS31Validator
doc = json.load(open(sys.argv[1]))
failed = 0
for name, instance in json.load(open(sys.argv[2])):
    schema = {"$ref": "#/components/schemas/" + name, "components": doc["components"]}
    try:
        validate(instance, schema, cls=OAS31Validator)
    except Exception as e:
        failed += 1
        print(name, "does not validate:", str(e).splitlines()[0])
sys.exit(1 if failed else 0)
"##;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join("openapi.json"))
        .arg(dir.join("responses.json"))
        .output()
        .expect("python3 (the test script installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    env.finish().await;
}

/// The ```sh blocks of a Markdown file that call curl.
fn curl_examples(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                if block.contains("curl ") {
                    blocks.push(block.clone());
                }
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test]
async fn every_example_in_the_api_guide_runs() {
    let env = TestEnv::start("apidocs").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let gw = gateway.url.clone().expect("url");
    let guide = std::fs::read_to_string(repo_file("docs/api.md")).expect("docs/api.md");
    let examples = curl_examples(&guide);
    assert!(
        examples.len() >= 6,
        "found only {} examples",
        examples.len()
    );
    let mut message_id = String::new();
    let mut campaign_id = String::new();
    let mut trigger_id = String::new();
    for example in &examples {
        // Any HTTP error fails the example.
        let script =
            format!("set -e\ncurl() {{ command curl --fail-with-body \"$@\"; }}\n{example}");
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("HERALD", &gw)
            .env("KEY", &app.server_key)
            .env("SDK_KEY", &app.sdk_key)
            .env("MESSAGE_ID", &message_id)
            .env("CAMPAIGN_ID", &campaign_id)
            .env("TRIGGER_ID", &trigger_id)
            .output()
            .await
            .expect("bash");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "example failed:\n{example}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
            if let Some(id) = v["message_id"].as_str() {
                message_id = id.to_string();
            }
            if let (Some(id), Some(_)) = (v["id"].as_str(), v.get("generation")) {
                campaign_id = id.to_string();
            }
            if let (Some(id), Some(_)) = (v["id"].as_str(), v.get("entry_event")) {
                trigger_id = id.to_string();
            }
        }
    }
    assert!(
        !message_id.is_empty(),
        "the push example printed a message id"
    );
    env.finish().await;
}

/// Every setting, with its default and environment variable, is in
/// docs/configuration.md: a setting added or a default changed without the
/// docs fails here.
#[test]
fn every_setting_is_documented_with_its_default() {
    fn leaves(path: &mut Vec<String>, v: &Value, out: &mut Vec<(Vec<String>, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    leaves(path, x, out);
                    path.pop();
                }
            }
            other => out.push((path.clone(), other.clone())),
        }
    }
    let doc =
        std::fs::read_to_string(repo_file("docs/configuration.md")).expect("configuration.md");
    let config = serde_json::to_value(herald_config::Config::default()).expect("json");
    let mut all = Vec::new();
    leaves(&mut Vec::new(), &config, &mut all);
    assert!(all.len() > 50, "found only {} settings", all.len());
    for (path, default) in all {
        let key = path.join(".");
        let env = format!(
            "HERALD_{}",
            path.iter()
                .map(|p| p.to_uppercase())
                .collect::<Vec<_>>()
                .join("__")
        );
        let shown = match &default {
            Value::Null => "(none)".to_string(),
            Value::String(s) if s.is_empty() => "`\"\"`".to_string(),
            other => format!("`{other}`"),
        };
        let row = format!("| `{key}` | {shown} | `{env}` |");
        assert!(doc.contains(&row), "docs/configuration.md lacks: {row}");
    }
}

/// Every metric the code records is listed in docs/observability.md.
#[test]
fn every_metric_is_documented() {
    let docs = std::fs::read_to_string(repo_file("docs/observability.md")).expect("docs");
    let mut files = Vec::new();
    let mut dirs = vec![repo_file("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = text[at + macro_name.len()..].trim_start();
                if let Some(quoted) = rest.strip_prefix('"') {
                    if let Some(end) = quoted.find('"') {
                        names.insert(quoted[..end].to_string());
                    }
                }
            }
        }
    }
    assert!(names.len() >= 25, "found only {names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !docs.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/observability.md: {missing:?}"
    );
}

/// An outsider's API fuzzer (schemathesis, pinned by the test script) run
/// against a live gateway over every operation, statefully where the
/// document's links allow: no 5xx, no response outside its schema, no status
/// or content type the document does not list, no schema-valid request
/// refused (except where tests/schemathesis.toml names a rule the schema
/// cannot state). A fixed seed and a bounded number of examples keep it
/// reproducible and to about half a minute.
#[tokio::test]
async fn an_api_fuzzer_finds_nothing_wrong() {
    let env = TestEnv::start("fuzz").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let gw = gateway.url.clone().expect("url");
    let out = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(repo_file("tests/schemathesis.toml"))
        .args(["run", &format!("{gw}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {}", app.server_key)])
        .args([
            "--checks",
            "all",
            "--seed",
            "20261202",
            "--max-examples",
            "30",
        ])
        // See tests/schemathesis.toml: a replayed create may name a thing
        // deleted since.
        .args(["--exclude-checks", "ensure_resource_availability"])
        .args(["--workers", "1", "--no-color"])
        .output()
        .await
        .expect("python3 (the test script installs schemathesis)");
    let report = String::from_utf8_lossy(&out.stdout);
    std::fs::write(env.log_dir.join("schemathesis.txt"), report.as_bytes()).expect("write");
    assert!(
        out.status.success(),
        "the fuzzer found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    env.finish().await;
}

/// A client generated from `/v1/openapi.json` by openapi-python-client
/// (pinned by the test script), with no edits to the generated code, runs
/// the README's quick start, a campaign and a trigger end to end against
/// real processes (tests/generated_client.py); the simulator's record shows
/// each delivered once.
#[tokio::test]
async fn a_generated_client_runs_the_quick_start_a_campaign_and_a_trigger() {
    let env = TestEnv::start("genclient").await;
    let app = env.create_app().await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let _scheduler = env.scheduler().await;
    let _engine = env.spawn("triggers", &["triggers"], false).await;
    let gw = gateway.url.clone().expect("url");
    let doc = env
        .http
        .get(format!("{gw}/v1/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .text()
        .await
        .expect("text");
    let dir = env.log_dir.join("generated-client");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("openapi.json"), doc).expect("write");
    let generated = tokio::process::Command::new("python3")
        .args(["-m", "openapi_python_client", "generate", "--meta", "none"])
        .args(["--path", "openapi.json", "--overwrite"])
        .current_dir(&dir)
        .output()
        .await
        .expect("python3 (the test script installs openapi-python-client)");
    assert!(
        generated.status.success() && dir.join("herald_client").is_dir(),
        "generating the client failed:\n{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let run = tokio::process::Command::new("python3")
        .arg(repo_file("tests/generated_client.py"))
        .args([gw.as_str(), app.server_key.as_str(), env.sim_url()])
        .env("PYTHONPATH", &dir)
        .output()
        .await
        .expect("python3");
    assert!(
        run.status.success(),
        "the generated client's run failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    env.finish().await;
}
