//! Entry points for fuzzing the parsers that read what apps send: a push
//! request, an audience filter, a template. Each takes arbitrary bytes and
//! must return without panicking, whatever they hold. `fuzz/` runs them under
//! libFuzzer (`cargo +nightly fuzz run push_request`); the test suite runs
//! them on generated inputs (`tests/fuzz_smoke.rs`).

use crate::audience::{Filter, InstallationFacts};
use crate::ids::MessageId;
use crate::payload::Notification;
use crate::push::PushRequest;
use crate::template::{Template, TemplateContext};
use serde_json::{Map, Value};

/// A push request as `POST /v1/push` reads it: parsed, validated, and, when
/// valid, turned into every platform's payload for every language.
pub fn push_request(data: &[u8]) {
    let Ok(request) = serde_json::from_slice::<PushRequest>(data) else {
        return;
    };
    if request.validate().is_err() {
        return;
    }
    payloads(&request.notification);
}

fn payloads(notification: &Notification) {
    let mut locales: Vec<Option<&str>> = vec![None];
    locales.extend(notification.localizations.keys().map(|l| Some(l.as_str())));
    for locale in locales {
        let n = notification.for_locale(locale);
        let _ = n.validate();
        let _ = n.apns_payload();
        let _ = n.fcm_message("token", MessageId(uuid::Uuid::nil()), Some(60));
    }
}

/// An audience filter: parsed, validated, evaluated against a few
/// installations.
pub fn audience_filter(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(filter) = Filter::from_value(&value) else {
        return;
    };
    let mut attributes = Map::new();
    attributes.insert("plan".into(), "gold".into());
    attributes.insert("orders".into(), 12.into());
    attributes.insert("beta".into(), true.into());
    let installations = [
        InstallationFacts::default(),
        InstallationFacts {
            platform: Some(crate::Platform::Ios),
            custom_id: Some("user-1".into()),
            locale: Some("pt-BR".into()),
            time_zone: Some("Europe/Paris".into()),
            app_version: Some("2.10.1-beta".into()),
            tags: vec!["vip".into()],
            attributes,
        },
    ];
    for facts in &installations {
        let _ = filter.matches(facts);
    }
    let _ = filter.to_value();
}

/// A trigger template: parsed and rendered with and without values.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = Template::parse(text) else {
        return;
    };
    let empty = Map::new();
    let mut event = Map::new();
    event.insert("item".into(), "Red shoes".into());
    event.insert("total".into(), 59.9.into());
    let _ = template.render(TemplateContext {
        event: &empty,
        user: &empty,
    });
    let _ = template.render(TemplateContext {
        event: &event,
        user: &event,
    });
}
