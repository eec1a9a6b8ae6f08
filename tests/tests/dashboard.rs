//! The dashboard in a real browser (headless Chromium over WebDriver) against
//! real Herald processes: an operator logs in, composes and launches a
//! campaign and watches it finish, writes a trigger and sees it fire, looks
//! messages and installations up, sends a test push, and manages keys. Every
//! delivery is checked on the simulators' record. Screenshots of each page
//! land in target/screenshots/.

use herald_tests::browser::Browser;
use herald_tests::{fixture, wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;

const OPERATOR: &str = "ops@example.com";
const PASSWORD: &str = "correct-horse-battery";
const LONG: Duration = Duration::from_secs(60);

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&env.db)
        .await
        .expect("count")
}

/// How many simulator deliveries went to `token` with `text` in their payload.
async fn delivered_with(env: &TestEnv, token: &str, text: &str) -> usize {
    env.sim_deliveries()
        .await
        .iter()
        .filter(|d| d["token"] == token && d["payload"].to_string().contains(text))
        .count()
}

async fn log_in(browser: &Browser, gateway: &str) {
    browser.goto(&format!("{gateway}/dashboard")).await;
    assert!(
        browser.url().await.contains("/dashboard/login"),
        "an anonymous visit goes to the login page"
    );
    browser.screenshot("01-login").await;
    browser.fill("#email", OPERATOR).await;
    browser.fill("#password", "wrong password").await;
    browser.click("form button[type=submit]").await;
    assert_eq!(
        browser.text("#login-error").await,
        "Wrong email or password."
    );
    browser.fill("#password", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    wait_until("the apps page after login", LONG, || async {
        browser.text_now("main h1").await.as_deref() == Some("Apps")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_runs_a_campaign_and_a_trigger_from_the_browser() {
    let env = TestEnv::start("dashboard").await;
    let app = env.create_app().await;
    fixture::seed(&env, &app.id, 40).await;
    env.run_cli_with_input(
        &["operators", "create", "--email", OPERATOR],
        &format!("{PASSWORD}\n"),
    )
    .await;
    let gateway = env.gateway().await;
    let _sender = env.sender().await;
    let _scheduler = env.scheduler().await;
    let _triggers = env.spawn("triggers", &["triggers"], false).await;
    let base = gateway.url.clone().expect("gateway url");
    let app_url = format!("{base}/dashboard/apps/{}", app.id);
    let browser = Browser::start().await;

    log_in(&browser, &base).await;
    browser.screenshot("02-apps").await;
    browser
        .click(&format!("a[href=\"/dashboard/apps/{}\"]", app.id))
        .await;
    browser.screenshot("03-overview-empty").await;

    // A bad input shows its error beside the field and saves nothing.
    browser.goto(&format!("{app_url}/campaigns/new")).await;
    browser.fill("#name", "Winter sale").await;
    browser.fill("#title", "Winter sale").await;
    browser.fill("#rate_limit_per_second", "fast").await;
    browser.click("#composer button[type=submit]").await;
    let error = browser.text("#error-rate_limit_per_second").await;
    assert!(error.contains("rate_limit_per_second"), "{error}");
    browser.screenshot("04-campaign-composer-error").await;
    assert_eq!(count(&env, "SELECT count(*) FROM campaigns").await, 0);
    // The form kept what was typed.
    assert_eq!(
        browser.attribute("#name", "value").await.as_deref(),
        Some("Winter sale")
    );

    // The iOS devices only: 20 of the 40 seeded, counted live while composing.
    browser.fill("#rate_limit_per_second", "").await;
    browser.fill("#body", "Everything 20% off").await;
    browser.fill("input[name=loc_lang]", "fr").await;
    browser
        .fill("input[name=loc_title]", "Soldes d'hiver")
        .await;
    browser.fill("input[name=cond_field]", "platform").await;
    browser.fill("input[name=cond_value]", "ios").await;
    browser
        .wait_attribute("#estimate", "data-installations", "20", LONG)
        .await;
    browser.choose("#preview-lang", "fr").await;
    assert_eq!(
        browser.text(".preview.ios .p-title").await,
        "Soldes d'hiver"
    );
    browser.screenshot("05-campaign-composer").await;
    browser.click("#composer button[type=submit]").await;
    wait_until("the campaign's page", LONG, || async {
        browser.exists("#campaign-status").await
    })
    .await;
    assert_eq!(browser.text("#campaign-status").await, "draft");

    // Edit the draft: the composer comes back filled in, and saves.
    browser.click("#edit").await;
    assert_eq!(
        browser
            .attribute("input[name=cond_value]", "value")
            .await
            .as_deref(),
        Some("ios")
    );
    browser.fill("#name", "Winter sale (iOS)").await;
    browser.click("#composer button[type=submit]").await;
    wait_until("the campaign's page after the edit", LONG, || async {
        browser.exists("#campaign-status").await
            && browser.text_now("main h1").await.as_deref() == Some("Winter sale (iOS)")
    })
    .await;
    let (_, list) = env
        .api(
            "GET",
            &format!("{base}/v1/campaigns"),
            &app.server_key,
            None,
        )
        .await;
    let campaign = &list["campaigns"][0];
    assert_eq!(
        campaign["notification"]["localizations"]["fr"]["title"],
        "Soldes d'hiver"
    );
    let message_id = campaign["message_id"]
        .as_str()
        .expect("message id")
        .to_string();

    // Launch, behind a confirmation, and watch the bar reach 100%.
    browser.click("a[data-action=launch]").await;
    let confirm = browser.text("#confirm-text").await;
    assert!(confirm.contains("20 installations"), "{confirm}");
    browser.screenshot("06-campaign-confirm").await;
    browser.click("#confirm").await;
    browser
        .wait_attribute("#progress", "data-percent", "100", LONG)
        .await;
    assert_eq!(browser.text("#campaign-status").await, "completed");
    browser.screenshot("07-campaign-done").await;
    let per_token = env.deliveries_per_token(&message_id).await;
    let expected: std::collections::HashSet<String> = (1..=40)
        .filter(|n| n % 2 == 0)
        .map(fixture::token)
        .collect();
    assert_eq!(
        per_token
            .keys()
            .cloned()
            .collect::<std::collections::HashSet<_>>(),
        expected,
        "every iOS device, and nobody else"
    );
    assert!(
        per_token.values().all(|n| *n == 1),
        "each once: {per_token:?}"
    );

    // A trigger: a broken template is refused beside its field, then fixed.
    browser.goto(&format!("{app_url}/triggers/new")).await;
    browser.fill("#name", "Cart reminder").await;
    browser.fill("#entry_event", "cart_abandoned").await;
    browser.fill("#delay_seconds", "0").await;
    browser
        .fill("#title", "{{event.item|Your cart is waiting")
        .await;
    browser.click("#trigger-editor button[type=submit]").await;
    let error = browser.text("#error-title").await;
    assert!(error.contains("never closed"), "{error}");
    browser.screenshot("08-trigger-error").await;
    assert_eq!(count(&env, "SELECT count(*) FROM triggers").await, 0);
    browser
        .fill("#title", "{{event.item|Your cart}} is waiting")
        .await;
    browser.click("#trigger-editor button[type=submit]").await;
    wait_until("the trigger list", LONG, || async {
        browser.exists("#triggers").await
    })
    .await;
    assert!(browser.text("#triggers").await.contains("Cart reminder"));
    browser.screenshot("09-triggers").await;
    let (status, _) = env
        .api(
            "POST",
            &format!("{base}/v1/events"),
            &app.sdk_key,
            Some(
                &json!({"event_id": "evt-1", "name": "cart_abandoned", "custom_id": "user-3",
                         "attributes": {"item": "Red shoes"}}),
            ),
        )
        .await;
    assert_eq!(status, 202);
    // user-3 is installations 6 (iOS) and 7 (Android).
    wait_until(
        "the trigger's push on both of user-3's devices",
        LONG,
        || async {
            delivered_with(&env, &fixture::token(6), "Red shoes is waiting").await == 1
                && delivered_with(&env, &fixture::token(7), "Red shoes is waiting").await == 1
        },
    )
    .await;

    // Look the campaign's message up.
    browser.goto(&format!("{app_url}/messages")).await;
    browser.fill("#id", &message_id).await;
    browser.click("form[role=search] button[type=submit]").await;
    assert_eq!(browser.text("#message-status").await, "completed");
    let delivered = browser
        .script(
            "return document.querySelectorAll('table.deliveries tr[data-status=delivered]').length;",
            json!([]),
        )
        .await;
    assert_eq!(delivered, json!(20));
    browser.screenshot("10-message").await;
    browser.fill("#id", "not-a-message-id").await;
    browser.click("form[role=search] button[type=submit]").await;
    assert!(browser.text("#error-id").await.contains("UUID"));

    // An installation, by its user's custom id, with its recent deliveries.
    wait_until("the trigger's outcomes recorded", LONG, || async {
        count(
            &env,
            "SELECT count(*) FROM delivery_status d JOIN messages m ON m.id = d.message_id
                      WHERE m.kind = 'trigger' AND d.status = 'delivered'",
        )
        .await
            == 2
    })
    .await;
    browser.goto(&format!("{app_url}/installations")).await;
    browser.choose("#by", "custom_id").await;
    browser.fill("#q", "user-3").await;
    browser.click("form[role=search] button[type=submit]").await;
    // The click submits; wait for the answer page rather than read the old one.
    wait_until("user-3's two installations listed", LONG, || async {
        browser
            .script(
                "return document.querySelectorAll('section.installation').length;",
                json!([]),
            )
            .await
            == json!(2)
    })
    .await;
    // Install 6 got the campaign and the trigger; install 7 the trigger.
    let rows = browser
        .script(
            "return document.querySelectorAll('section.installation tr[data-status=delivered]').length;",
            json!([]),
        )
        .await;
    assert_eq!(rows, json!(3));
    browser.screenshot("11-installation").await;

    // A test push to one installation.
    browser.goto(&format!("{app_url}/test-push")).await;
    browser.choose("#target", "install_id").await;
    browser.fill("#to", "i-0000001").await;
    browser.fill("#title", "Hello from the dashboard").await;
    browser.click("form.card button[type=submit]").await;
    assert!(browser
        .text("#sent")
        .await
        .contains("Accepted for 1 device"));
    browser.screenshot("12-test-push").await;
    wait_until("the test push delivered", LONG, || async {
        delivered_with(&env, &fixture::token(1), "Hello from the dashboard").await == 1
    })
    .await;

    // Keys: a new SDK key's secret is shown once and works.
    browser.goto(&format!("{app_url}/settings")).await;
    browser.choose("#kind", "sdk").await;
    browser
        .click("form[action$=\"/settings/keys\"] button[type=submit]")
        .await;
    let secret = browser.text("#new-secret").await;
    assert!(secret.starts_with("hk_sdk_"), "{secret}");
    let (status, _) = env
        .api(
            "PUT",
            &format!("{base}/v1/installations/from-new-key"),
            &secret,
            Some(&json!({"platform": "ios"})),
        )
        .await;
    assert_eq!(status, 200, "the new key works");
    assert!(!browser.text("main").await.contains("private_key_pem"));
    browser.screenshot("13-settings").await;

    // The overview now counts what was delivered: 20 campaign + 2 trigger +
    // 1 test push, once the recorder has stored the last outcome (the
    // simulator's record, waited for above, comes first).
    wait_until("the overview counts 23 delivered", LONG, || async {
        browser.goto(&app_url).await;
        browser
            .script(
                "return document.querySelector('tr[data-status=delivered] td.num').dataset.count;",
                json!([]),
            )
            .await
            == json!("23")
    })
    .await;
    browser.screenshot("14-overview").await;

    // Nothing the operator did sent anything twice.
    let sim: Vec<Value> = env.sim_deliveries().await;
    assert_eq!(sim.len(), 23);
    env.finish().await;
}

/// The value of `name="csrf"` (or the csrf meta tag) in a page.
fn csrf_in(html: &str) -> String {
    for marker in ["name=\"csrf\" value=\"", "name=\"csrf-token\" content=\""] {
        if let Some(start) = html.find(marker) {
            let rest = &html[start + marker.len()..];
            return rest[..rest.find('"').expect("closing quote")].to_string();
        }
    }
    panic!("no CSRF token in the page");
}

fn set_cookie(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set"))
        .to_string()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_string())
        .expect("cookie value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_the_session_token_are_refused_and_change_nothing() {
    let env = TestEnv::start("dashcsrf").await;
    let app = env.create_app().await;
    env.run_cli_with_input(
        &["operators", "create", "--email", OPERATOR],
        &format!("{PASSWORD}\n"),
    )
    .await;
    let gateway = env.gateway().await;
    let base = gateway.url.clone().expect("gateway url");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Login is protected too: its form's token must match its cookie.
    let form_page = http
        .get(format!("{base}/dashboard/login"))
        .send()
        .await
        .expect("login page");
    let login_cookie = cookie_value(&set_cookie(&form_page, "herald_login"));
    let login_token = csrf_in(&form_page.text().await.expect("html"));
    let login = |cookie: String, token: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/dashboard/login"))
                .header("cookie", format!("herald_login={cookie}"))
                .form(&[
                    ("csrf", token.as_str()),
                    ("email", OPERATOR),
                    ("password", PASSWORD),
                    ("next", "/dashboard"),
                ])
                .send()
                .await
                .expect("login")
        }
    };
    assert_eq!(
        login(login_cookie.clone(), String::new()).await.status(),
        403
    );
    assert_eq!(
        login(login_cookie.clone(), "forged".into()).await.status(),
        403
    );
    let logged_in = login(login_cookie, login_token).await;
    assert_eq!(logged_in.status(), 303);
    let session_cookie = set_cookie(&logged_in, "herald_session");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/dashboard"] {
        assert!(
            session_cookie.contains(attribute),
            "{session_cookie} lacks {attribute}"
        );
    }
    let cookie = format!("herald_session={}", cookie_value(&session_cookie));

    let apps_page = http
        .get(format!("{base}/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("apps page");
    assert_eq!(apps_page.status(), 200);
    let headers = apps_page.headers().clone();
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    let token = csrf_in(&apps_page.text().await.expect("html"));

    // Something for each change to aim at.
    let (status, draft) = env
        .api(
            "POST",
            &format!("{base}/v1/campaigns"),
            &app.server_key,
            Some(&json!({"name": "Draft", "notification": {"title": "Hi"}})),
        )
        .await;
    assert_eq!(status, 201);
    let draft_id = draft["id"].as_str().expect("id").to_string();
    let (_, keys) = env
        .api("GET", &format!("{base}/v1/keys"), &app.server_key, None)
        .await;
    let key_id = keys[0]["id"].as_str().expect("key id").to_string();
    let a = format!("/dashboard/apps/{}", app.id);
    let posts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/dashboard".into(), vec![("name", "sneaky app")]),
        (
            format!("{a}/campaigns"),
            vec![("name", "sneaky"), ("title", "x")],
        ),
        (
            format!("{a}/campaigns/{draft_id}/confirm"),
            vec![("action", "launch")],
        ),
        (
            format!("{a}/audience-estimate"),
            vec![("audience_type", "all")],
        ),
        (
            format!("{a}/triggers"),
            vec![("name", "t"), ("entry_event", "e"), ("title", "x")],
        ),
        (
            format!("{a}/test-push"),
            vec![("target", "android_token"), ("to", "fcm-1"), ("title", "x")],
        ),
        (format!("{a}/settings/keys"), vec![("kind", "server")]),
        (format!("{a}/settings/keys/{key_id}/revoke"), vec![]),
        (format!("{a}/settings/credentials/apns/delete"), vec![]),
        ("/dashboard/logout".into(), vec![]),
    ];
    let counts = || async {
        let mut c = Vec::new();
        for table in [
            "apps",
            "campaigns",
            "triggers",
            "messages",
            "api_keys",
            "provider_credentials",
        ] {
            c.push(env.count_rows(table).await);
        }
        c.push(
            count(
                &env,
                "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL",
            )
            .await,
        );
        c.push(
            count(
                &env,
                "SELECT count(*) FROM campaigns WHERE status = 'draft'",
            )
            .await,
        );
        c
    };
    let before = counts().await;
    for (path, fields) in &posts {
        for token in [None, Some("forged")] {
            let mut form = fields.clone();
            if let Some(t) = token {
                form.push(("csrf", t));
            }
            let r = http
                .post(format!("{base}{path}"))
                .header("cookie", &cookie)
                .form(&form)
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 403, "POST {path} with csrf {token:?}");
        }
    }
    assert_eq!(counts().await, before, "a refused change changed something");

    // Without a session the token alone is worth nothing.
    let r = http
        .post(format!("{base}{a}/settings/keys"))
        .form(&[("kind", "server"), ("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/dashboard/login"));
    assert_eq!(counts().await, before);

    // The same change with the session's token goes through: the refusals
    // above were about the token, not the request.
    let r = http
        .post(format!("{base}{a}/settings/keys"))
        .header("cookie", &cookie)
        .form(&[("kind", "server"), ("csrf", token.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(env.count_rows("api_keys").await, before[4] + 1);

    // An app that does not exist is not found; logging out ends the session.
    let r = http
        .get(format!("{base}/dashboard/apps/{}", uuid::Uuid::new_v4()))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{base}/dashboard/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/dashboard"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 303, "the old cookie opens nothing");
    env.finish().await;
}
