//! The text formats' strict reader: a header line, then `name: value` lines in a fixed order,
//! nothing else. Anything unexpected is an error, never skipped: a signature file means exactly
//! what its signed lines say.

use crate::TrustError;

/// The largest key or signature file read: far above any real one.
pub const MAX_TEXT: usize = 16 << 10;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes from `2N` hex digits.
pub fn unhex<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], TrustError> {
    let bad = |reason: String| TrustError::Malformed { what, reason };
    if text.len() != 2 * N {
        return Err(bad(format!(
            "expected {} hex digits, found {} characters",
            2 * N,
            text.len()
        )));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text
            .get(2 * i..2 * i + 2)
            .ok_or_else(|| bad("not hex".into()))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad(format!("`{pair}` is not hex")))?;
    }
    Ok(out)
}

/// The fields of one file, read in order.
pub struct Fields<'a> {
    lines: std::str::Lines<'a>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// Checks the size and the header line.
    pub fn parse(
        text: &'a str,
        header: &str,
        what: &'static str,
    ) -> Result<Fields<'a>, TrustError> {
        if text.len() > MAX_TEXT {
            return Err(TrustError::Malformed {
                what,
                reason: format!("{} bytes, more than any real one ({MAX_TEXT})", text.len()),
            });
        }
        let mut lines = text.lines();
        match lines.next() {
            Some(first) if first == header => Ok(Fields { lines, what }),
            first => Err(TrustError::Malformed {
                what,
                reason: format!(
                    "it starts with {:?}, not {header:?}",
                    first.unwrap_or_default()
                ),
            }),
        }
    }

    /// The value of the next line, which must be field `name`.
    pub fn next(&mut self, name: &str) -> Result<&'a str, TrustError> {
        let line = self.lines.next().ok_or_else(|| TrustError::Malformed {
            what: self.what,
            reason: format!("it ends before field `{name}`"),
        })?;
        let value = line
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(": "))
            .ok_or_else(|| TrustError::Malformed {
                what: self.what,
                reason: format!("expected field `{name}`, found {line:?}"),
            })?;
        if !writable(value) {
            return Err(TrustError::Malformed {
                what: self.what,
                reason: format!("field `{name}` is empty, padded or holds a control character"),
            });
        }
        Ok(value)
    }

    /// Checks that nothing follows.
    pub fn end(mut self) -> Result<(), TrustError> {
        match self.lines.next() {
            None => Ok(()),
            Some(extra) => Err(TrustError::Malformed {
                what: self.what,
                reason: format!("unexpected line {extra:?}"),
            }),
        }
    }
}

/// Whether `value` can be a field's value: not empty, not padded, no control character (so no
/// line break either). Reading and writing apply the same rule, so what reads writes back
/// as the same text (the fuzz target `signature` found a `\r` that read but did not write).
fn writable(value: &str) -> bool {
    !value.is_empty() && value.trim() == value && !value.chars().any(char::is_control)
}

/// A value that can be written as one field: see [`writable`].
pub fn field_value(name: &str, value: &str) -> Result<(), TrustError> {
    if !writable(value) {
        return Err(TrustError::Malformed {
            what: "signature",
            reason: format!("field `{name}` cannot be written as one line: {value:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_anything_else() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex::<4>(&hex(&bytes), "x").unwrap(), bytes);
        for bad in ["0001abf", "0001abfff", "0001abfg", "0001ab f", "é001abff"] {
            assert!(unhex::<4>(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_come_in_order_and_nothing_else() {
        let text = "head\na: 1\nb: two\n";
        let mut f = Fields::parse(text, "head", "t").unwrap();
        assert_eq!(f.next("a").unwrap(), "1");
        assert_eq!(f.next("b").unwrap(), "two");
        f.end().unwrap();
        let mut f = Fields::parse(text, "head", "t").unwrap();
        assert!(f.next("b").is_err(), "out of order");
        let mut f = Fields::parse("head\na: 1\nextra\n", "head", "t").unwrap();
        f.next("a").unwrap();
        assert!(f.end().is_err());
        assert!(Fields::parse("other\n", "head", "t").is_err());
        let mut f = Fields::parse("head\na:  padded\n", "head", "t").unwrap();
        assert!(f.next("a").is_err());
        let mut f = Fields::parse("head\na: x\ry\n", "head", "t").unwrap();
        assert!(f.next("a").is_err(), "a carriage return inside a value");
    }
}
