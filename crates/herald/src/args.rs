//! Values the command line takes in more than one place.

/// A span of time like `90s`, `30m`, `6h` or `2d`.
pub fn parse_span(s: &str) -> Result<chrono::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a span of time like 90s, 30m, 6h or 2d"))?;
    match unit {
        "s" => Ok(chrono::Duration::seconds(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "d" => Ok(chrono::Duration::days(n)),
        _ => Err(format!("`{s}`: a span of time ends in s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_take_a_number_and_a_unit() {
        assert_eq!(parse_span("90m"), Ok(chrono::Duration::minutes(90)));
        assert_eq!(parse_span("2d"), Ok(chrono::Duration::days(2)));
        assert!(parse_span("h").is_err());
        assert!(parse_span("5w").is_err());
    }
}
