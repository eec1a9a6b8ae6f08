//! Query strings: parsed as axum's `Query` would, except that every error is
//! an `application/problem+json` naming the parameter at fault (axum's own
//! rejection is `text/plain`), and a NUL character is refused before it can
//! reach PostgreSQL.

use crate::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A handler's query parameters.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        parse_query(parts.uri.query().unwrap_or_default()).map(ApiQuery)
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Problem> {
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name.contains('\0') || value.contains('\0') {
            return Err(Problem::invalid_field(
                name.into_owned(),
                "must not contain the NUL character (U+0000)",
            ));
        }
    }
    let parameters = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(parameters).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "query".to_string()
        } else {
            path
        };
        Problem::invalid_field(field, e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Page {
        limit: Option<i64>,
        token: Option<String>,
    }

    fn field(query: &str) -> Option<String> {
        parse_query::<Page>(query).expect_err(query).field
    }

    #[test]
    fn errors_name_the_parameter() {
        assert_eq!(field("limit=abc").as_deref(), Some("limit"));
        assert_eq!(field("token=a%00b").as_deref(), Some("token"));
        assert_eq!(field("colour=red").as_deref(), Some("colour"));
        let page: Page = parse_query("limit=5&token=x%20y").expect("valid");
        assert_eq!((page.limit, page.token.as_deref()), (Some(5), Some("x y")));
        let empty: Page = parse_query("").expect("valid");
        assert!(empty.limit.is_none());
    }
}
