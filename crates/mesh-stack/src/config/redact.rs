//! Parse errors that never repeat a secret.
//!
//! A config file holds secrets: the Consul token, an inline API key. A
//! parser's error message is written for a human fixing the file, so it
//! quotes the offending line (toml prints it under the message with a
//! caret) or the offending value (`invalid type: string "..."`, `unknown
//! variant `...``). A typo on the token line would put the token into the
//! error, and from there into logs and crash reports. The messages built
//! here keep what locates the mistake (line, column, what was expected,
//! field names) and drop every quoted value.

/// The error message of a parse failure at `span` of `text`, without the
/// source snippet and with every quoted value replaced by `"…"`.
pub(crate) fn message(parser_message: &str, location: Option<(usize, usize)>) -> String {
    let scrubbed = scrub(parser_message.trim());
    match location {
        Some((line, column)) => format!("line {line}, column {column}: {scrubbed}"),
        None => scrubbed,
    }
}

/// The 1-based line and column of byte offset `at` in `text`.
pub(crate) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Replaces the contents of every `"..."` (a value serde or the parser
/// quotes) and of the backticks after `variant ` (serde's unknown variant
/// echoes the value there) with `…`. Field names, in backticks after
/// `field `, stay: they are what tells the reader which line is wrong.
pub(crate) fn scrub(message: &str) -> String {
    const VARIANT: &str = "variant `";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        // The next value to hide: a quoted one, or an unknown variant.
        let next = match (rest.find('"'), rest.find(VARIANT)) {
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(q), Some(v)) if v < q => (v + VARIANT.len(), '`'),
            (Some(q), _) => (q + 1, '"'),
            (None, Some(v)) => (v + VARIANT.len(), '`'),
        };
        let (open, close) = next;
        out.push_str(&rest[..open]);
        out.push('…');
        rest = &rest[open..];
        // Skip to the closing quote, past escaped ones.
        let mut escaped = false;
        let end = rest.char_indices().find_map(|(i, c)| {
            let found = c == close && !escaped;
            escaped = c == '\\' && !escaped;
            found.then_some(i)
        });
        let Some(end) = end else { return out };
        out.push(close);
        rest = &rest[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_go_and_field_names_stay() {
        assert_eq!(
            scrub(r#"invalid type: string "hunter2", expected a duration"#),
            r#"invalid type: string "…", expected a duration"#
        );
        assert_eq!(scrub(r#"a "b\"c" d "e"#), r#"a "…" d "…"#);
        assert_eq!(
            scrub("unknown variant `hunter2`, expected `static` or `consul`"),
            "unknown variant `…`, expected `static` or `consul`"
        );
        assert_eq!(
            scrub("unknown field `tokn`, expected one of `address`, `token`"),
            "unknown field `tokn`, expected one of `address`, `token`"
        );
        assert_eq!(line_column("a\nbc\ndef", 6), (3, 2));
        assert_eq!(line_column("", 0), (1, 1));
    }

    proptest::proptest! {
        #[test]
        fn scrub_never_panics_and_never_keeps_a_quoted_value(
            before in "[a-z `]{0,12}",
            value in "[a-zA-Z0-9]{8,16}",
            after in "[a-z `\"]{0,12}",
        ) {
            let m = format!("{before}\"{value}\"{after}");
            proptest::prop_assert!(!scrub(&m).contains(&value));
            let m = format!("{before}variant `{value}`{after}");
            proptest::prop_assert!(!scrub(&m).contains(&value));
        }
    }
}
