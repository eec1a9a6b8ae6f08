//! The fuzz entry points on generated inputs, on the stable toolchain: raw
//! bytes, JSON shaped like what each parser expects, and valid examples with
//! bytes flipped. Any panic fails. (`fuzz/` runs the same entry points under
//! libFuzzer, which needs a nightly toolchain.)

use herald_core::fuzz;
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON built from the words the parsers look for, nested a few levels.
fn shaped_json() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "to",
        "tokens",
        "install_ids",
        "custom_ids",
        "platform",
        "ios",
        "android",
        "token",
        "notification",
        "title",
        "body",
        "localizations",
        "fr",
        "pt-BR",
        "data",
        "badge",
        "priority",
        "high",
        "ios",
        "android",
        "push_type",
        "voip",
        "relevance_score",
        "interruption_level",
        "color",
        "image",
        "sound",
        "and",
        "or",
        "not",
        "field",
        "op",
        "value",
        "eq",
        "in",
        "gte",
        "version_gte",
        "exists",
        "tags_any",
        "tags_all",
        "attributes.plan",
        "app_version",
        "language",
        "send_at",
        "ttl_seconds",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        words.clone().prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 200, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(words.clone().prop_map(String::from), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn examples() -> Vec<Vec<u8>> {
    [
        json!({"to": {"tokens": [{"platform": "ios", "token": "a".repeat(64)}], "custom_ids": ["u"]},
               "notification": {"title": "Hi", "body": "There", "badge": 1, "data": {"k": "v"},
                                "localizations": {"fr": {"title": "Salut"}},
                                "ios": {"push_type": "voip", "relevance_score": 0.5},
                                "android": {"color": "#ff8800", "image": "https://x.example/i.png"}},
               "ttl_seconds": 60}),
        json!({"and": [{"field": "attributes.plan", "op": "in", "value": ["gold"]},
                       {"or": [{"field": "app_version", "op": "version_gte", "value": "2.9"},
                               {"not": {"tags_any": ["churned"]}}]}]}),
        json!("{{event.item|Your cart}} is waiting, {{user.first_name}}"),
    ]
    .iter()
    .map(|v| match v {
        Value::String(s) => s.clone().into_bytes(),
        v => v.to_string().into_bytes(),
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz::push_request(&data);
        fuzz::audience_filter(&data);
        fuzz::template(&data);
    }

    #[test]
    fn shaped_json_never_panics(value in shaped_json()) {
        let data = value.to_string().into_bytes();
        fuzz::push_request(&data);
        fuzz::audience_filter(&data);
        fuzz::template(&data);
    }

    #[test]
    fn valid_examples_with_bytes_flipped_never_panic(
        which in 0usize..3,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut data = examples()[which].clone();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        fuzz::push_request(&data);
        fuzz::audience_filter(&data);
        fuzz::template(&data);
    }
}

#[test]
fn the_examples_are_valid_so_the_mutations_start_deep() {
    let e = examples();
    let push: herald_core::push::PushRequest = serde_json::from_slice(&e[0]).expect("push parses");
    push.validate().expect("push is valid");
    let filter: Value = serde_json::from_slice(&e[1]).expect("json");
    herald_core::audience::Filter::from_value(&filter).expect("filter is valid");
    herald_core::template::Template::parse(std::str::from_utf8(&e[2]).expect("utf8"))
        .expect("template");
}
