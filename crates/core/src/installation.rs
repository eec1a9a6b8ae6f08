//! An installation (one app on one device) as the API receives it.

use crate::job::Platform;
use crate::push::{validate_install_id, validate_token, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::str::FromStr;

pub const MAX_TAGS: usize = 100;
pub const MAX_ATTRIBUTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    #[default]
    Production,
    /// Development builds: their tokens only work against APNs's sandbox host.
    Sandbox,
}

impl ApnsEnvironment {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApnsEnvironment::Production => "production",
            ApnsEnvironment::Sandbox => "sandbox",
        }
    }
}

impl FromStr for ApnsEnvironment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "production" => Ok(Self::Production),
            "sandbox" => Ok(Self::Sandbox),
            other => Err(format!("unknown APNs environment `{other}`")),
        }
    }
}

fn yes() -> bool {
    true
}

/// `PUT /v1/installations/{install_id}`: the whole installation (fields left
/// out take their defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallationInput {
    pub platform: Platform,
    /// The push token; absent until the user allowed notifications.
    #[serde(default)]
    pub token: Option<String>,
    /// The app's own user id: `to.custom_ids` reaches every installation of a user.
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub apns_environment: ApnsEnvironment,
    #[serde(default)]
    pub app_version: Option<String>,
    /// BCP 47 language tag, e.g. `fr` or `pt-BR`: picks localized content.
    #[serde(default)]
    pub locale: Option<String>,
    /// IANA time zone, e.g. `Europe/Paris`.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Flat key/value pairs (string, number or boolean values).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    /// False: the user opted out; the installation is never targeted.
    #[serde(default = "yes")]
    pub opted_in: bool,
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !s.is_empty()
}

/// `en`, `fr-CA`, `zh-Hant-TW`: letters, then subtags of letters and digits.
pub fn validate_locale(locale: &str) -> Result<(), String> {
    let mut parts = locale.split(['-', '_']);
    let lang_ok = parts
        .next()
        .is_some_and(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic()));
    let rest_ok =
        parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if lang_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "`{locale}` is not a language tag such as `en` or `pt-BR`"
        ))
    }
}

pub fn validate_time_zone(tz: &str) -> Result<(), String> {
    chrono_tz::Tz::from_str(tz)
        .map(|_| ())
        .map_err(|_| format!("`{tz}` is not an IANA time zone such as `Europe/Paris`"))
}

impl InstallationInput {
    pub fn validate(&self, install_id: &str) -> Result<(), FieldError> {
        validate_install_id(install_id).map_err(|d| FieldError::new("install_id", d))?;
        if let Some(token) = &self.token {
            validate_token(self.platform, token).map_err(|d| FieldError::new("token", d))?;
        }
        if let Some(c) = &self.custom_id {
            if c.len() > 128 || !printable(c) {
                return Err(FieldError::new(
                    "custom_id",
                    "1 to 128 printable characters",
                ));
            }
        }
        if let Some(v) = &self.app_version {
            if v.len() > 64 || !printable(v) {
                return Err(FieldError::new(
                    "app_version",
                    "1 to 64 printable characters",
                ));
            }
        }
        if let Some(l) = &self.locale {
            validate_locale(l).map_err(|d| FieldError::new("locale", d))?;
        }
        if let Some(tz) = &self.time_zone {
            validate_time_zone(tz).map_err(|d| FieldError::new("time_zone", d))?;
        }
        if self.tags.len() > MAX_TAGS {
            return Err(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.len() > 64 || !printable(t) {
                return Err(FieldError::new(
                    format!("tags[{i}]"),
                    "1 to 64 printable characters",
                ));
            }
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(FieldError::new(
                "attributes",
                format!("at most {MAX_ATTRIBUTES} attributes"),
            ));
        }
        for (k, v) in &self.attributes {
            if k.len() > 64 || !printable(k) {
                return Err(FieldError::new(
                    "attributes",
                    format!("key `{k}`: 1 to 64 printable characters"),
                ));
            }
            let ok = match v {
                Value::String(s) => s.len() <= 1024,
                Value::Number(_) | Value::Bool(_) => true,
                _ => false,
            };
            if !ok {
                return Err(FieldError::new(
                    format!("attributes.{k}"),
                    "a string (up to 1024 bytes), a number or a boolean",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> InstallationInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_opted_in_production() {
        let i = input(r#"{"platform":"android"}"#);
        assert!(i.opted_in);
        assert_eq!(i.apns_environment, ApnsEnvironment::Production);
        assert!(i.validate("i1").is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        for (json, field) in [
            (r#"{"platform":"ios","token":"zz"}"#, "token"),
            (r#"{"platform":"ios","locale":"english please"}"#, "locale"),
            (
                r#"{"platform":"ios","time_zone":"Mars/Olympus"}"#,
                "time_zone",
            ),
            (r#"{"platform":"ios","tags":["ok",""]}"#, "tags[1]"),
            (
                r#"{"platform":"ios","attributes":{"nested":{"a":1}}}"#,
                "attributes.nested",
            ),
        ] {
            assert_eq!(
                input(json).validate("i1").unwrap_err().field,
                field,
                "{json}"
            );
        }
        assert_eq!(
            input(r#"{"platform":"ios"}"#)
                .validate("has space")
                .unwrap_err()
                .field,
            "install_id"
        );
    }

    #[test]
    fn real_locales_and_zones_pass() {
        for l in ["en", "pt-BR", "zh-Hant-TW", "fr_CA"] {
            assert!(validate_locale(l).is_ok(), "{l}");
        }
        for tz in ["Europe/Paris", "America/Los_Angeles", "UTC"] {
            assert!(validate_time_zone(tz).is_ok(), "{tz}");
        }
    }
}
