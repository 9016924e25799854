//! The page a request gets: the shop's answer and the three versions that made it, as
//! `{"answer":…,"versions":{"handled":"1.0.0","row":"1.0.0","rendered":"1.0.0"}}`. `handled`
//! is the shop that answered the first call (and awaited the database), `row` the version the
//! visit's row in the database records, `rendered` the shop that answered the second call; the
//! `x-shop-version` header names the version the host pinned.

/// The versions a page records, in the order the request met them.
pub const VERSIONS: [&str; 3] = ["handled", "row", "rendered"];

/// The page for `answer` (a JSON value) made by `versions` (handled, row, rendered).
pub fn render(answer: &str, versions: [&str; 3]) -> String {
    format!(
        r#"{{"answer":{answer},"versions":{{"handled":"{}","row":"{}","rendered":"{}"}}}}"#,
        versions[0], versions[1], versions[2]
    )
}

/// Whether `body` is a page every version of which is `version`: both calls and the row of
/// the request came from the version its header names. A body that is not a page is not whole.
pub fn whole(body: &str, version: &str) -> bool {
    !version.is_empty() && VERSIONS.iter().all(|k| field(body, k) == Some(version))
}

/// The string value of `"key":"…"` in `body`.
pub fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let tag = format!("\"{key}\":\"");
    let start = body.find(&tag)? + tag.len();
    let end = body[start..].find('"')? + start;
    Some(&body[start..end])
}

/// The number value of `"key":N` in `body`.
pub fn number(body: &str, key: &str) -> Option<u64> {
    let tag = format!("\"{key}\":");
    let start = body.find(&tag)? + tag.len();
    let digits: String = body[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_from_one_version_is_whole() {
        let page = render(r#"{"visits":3}"#, ["2.0.0"; 3]);
        assert!(whole(&page, "2.0.0"));
        assert_eq!(number(&page, "visits"), Some(3));
        assert!(!whole(&page, "1.0.0"));
        assert!(!whole(&page, ""));
    }

    #[test]
    fn any_other_version_in_it_is_not() {
        for i in 0..3 {
            let mut versions = ["2.0.0"; 3];
            versions[i] = "1.0.0";
            let page = render("{}", versions);
            assert!(!whole(&page, "2.0.0"), "{page}");
            assert!(!whole(&page, "1.0.0"), "{page}");
        }
        assert!(!whole(r#"{"version":"2.0.0"}"#, "2.0.0"));
        assert!(!whole("not a page", "2.0.0"));
    }
}
