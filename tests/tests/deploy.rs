//! The deployment files: the Kubernetes manifests validate against the API's
//! schemas, the compose file hangs together, and every Herald setting either
//! of them sets is one Herald knows (checked by `herald check-config`).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Every YAML document of a file, as JSON (PyYAML, which the test script
/// installs with the OpenAPI validator).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `herald check-config` with exactly these settings in its environment.
fn check_config(what: &str, settings: &BTreeMap<String, String>) {
    let mut cmd = Command::new(herald_tests::herald_bin());
    cmd.arg("check-config").env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    let out = cmd.envs(settings).output().expect("herald");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `herald ARGS --help` succeeds: ARGS name a real command.
fn assert_is_command(what: &str, args: &[String]) {
    let out = Command::new(herald_tests::herald_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("herald");
    assert!(
        out.status.success(),
        "{what}: `herald {}` is not a command",
        args.join(" ")
    );
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does refuse a mistake: the same roles with a typo.
    let roles = std::fs::read_to_string(repo("deploy/kubernetes/03-roles.yaml")).expect("roles");
    let broken = std::env::temp_dir().join(format!("herald-broken-{}.yaml", std::process::id()));
    std::fs::write(&broken, roles.replacen("replicas:", "replica:", 1)).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn"])
        .arg(&broken)
        .output()
        .expect("kubernetes-validate");
    let _ = std::fs::remove_file(&broken);
    assert!(!out.status.success(), "a typo passed validation");
}

#[test]
fn every_setting_in_the_kubernetes_manifests_is_a_herald_setting() {
    let mut settings = BTreeMap::new();
    let mut roles = Vec::new();
    for file in manifests() {
        for doc in yaml_documents(&file) {
            for key in ["data", "stringData"] {
                if let Some(map) = doc[key].as_object() {
                    for (k, v) in map {
                        settings.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                    }
                }
            }
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let args: Vec<String> = c["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                roles.push(args);
            }
        }
    }
    assert!(settings
        .keys()
        .any(|k| k == "HERALD_KAFKA__BOOTSTRAP_SERVERS"));
    check_config("deploy/kubernetes", &settings);
    assert_eq!(roles.len(), 7, "five roles and two jobs: {roles:?}");
    for args in roles {
        assert_is_command("deploy/kubernetes", &args);
    }
}

#[test]
fn the_compose_file_hangs_together_and_sets_only_real_settings() {
    let docs = yaml_documents(&repo("deploy/docker-compose.yml"));
    let services = docs[0]["services"].as_object().expect("services");
    for required in [
        "postgres",
        "redis",
        "redis-replica",
        "redis-sentinel",
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "migrate",
        "topics",
        "gateway",
        "sender",
        "recorder",
        "scheduler",
        "triggers",
    ] {
        assert!(services.contains_key(required), "no `{required}` service");
    }
    for (name, service) in services {
        assert!(service["image"].is_string(), "{name} has no image");
        if let Some(deps) = service["depends_on"].as_object() {
            for dep in deps.keys() {
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown `{dep}`"
                );
            }
        }
        let Some(env) = service["environment"].as_object() else {
            continue;
        };
        if !env.keys().any(|k| k.starts_with("HERALD_")) {
            continue;
        }
        // `${VAR:?message}` is filled in by compose from the caller's environment.
        let settings: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap_or_default();
                let v = if v.starts_with("${") { "x" } else { v };
                (k.clone(), v.to_string())
            })
            .collect();
        check_config(&format!("compose service {name}"), &settings);
        let command: Vec<String> = service["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        assert_is_command(&format!("compose service {name}"), &command);
    }
}
