//! Kinesis sequence numbers.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use bytestring::ByteString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Kinesis sequence number: 1 to [`SequenceNumber::MAX_DIGITS`] decimal digits.
///
/// Kept as text because Kinesis sequence numbers do not fit any machine integer
/// (they are routinely 56 digits and may grow to 129) and lose digits in a float.
/// Ordering compares the length first, then the digits, which is numeric order
/// for digit strings without leading zeros — the only form this type accepts.
///
/// The digits of a record read from Kinesis are a view of the text of its
/// page, shared with the page's other records (cloning one is a reference
/// count, not a copy); [`detached`](Self::detached) gives a copy that holds
/// nothing else in memory, for keeping one long.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(ByteString);

impl SequenceNumber {
    /// The most digits a sequence number may have (Kinesis' own limit).
    pub const MAX_DIGITS: usize = 129;

    /// Parses a sequence number, rejecting anything but 1 to 129 decimal digits
    /// without leading zeros.
    pub fn parse(text: &str) -> Result<Self, ParseSequenceNumberError> {
        validate(text)?;
        Ok(Self(ByteString::from(text)))
    }

    /// The sequence number `text` of a page, a view of its text.
    pub(crate) fn parse_shared(text: ByteString) -> Result<Self, ParseSequenceNumberError> {
        validate(&text)?;
        Ok(Self(text))
    }

    /// Checks `text` as [`parse`](Self::parse) does, keeping nothing.
    pub(crate) fn check(text: &str) -> Result<(), ParseSequenceNumberError> {
        validate(text)
    }

    /// The sequence number `text` of a page, a view of its text, already
    /// passed by [`check`](Self::check).
    pub(crate) fn checked_shared(text: ByteString) -> Self {
        Self(text)
    }

    /// `text`, copied from a sequence number's digits, without checking.
    pub(crate) fn copied(text: &str) -> Self {
        Self(ByteString::from(text))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits, as an owned string.
    pub fn into_string(self) -> String {
        String::from(&*self.0)
    }

    /// A copy of the digits in memory of their own: a sequence number of a
    /// record read from Kinesis shares its page's text, which stays in
    /// memory as long as one of them is kept.
    pub fn detached(&self) -> Self {
        Self(ByteString::from(&*self.0))
    }
}

fn validate(text: &str) -> Result<(), ParseSequenceNumberError> {
    let error = |kind| ParseSequenceNumberError {
        kind,
        input: text.chars().take(40).collect(),
    };
    if text.is_empty() {
        return Err(error(SequenceNumberErrorKind::Empty));
    }
    if text.len() > SequenceNumber::MAX_DIGITS {
        return Err(error(SequenceNumberErrorKind::TooLong { len: text.len() }));
    }
    // Checked without stopping early, which compiles to a vector loop; the
    // position is looked for only when there is something to report.
    if !text.bytes().fold(true, |all, b| all & b.is_ascii_digit()) {
        let position = text.bytes().position(|b| !b.is_ascii_digit()).unwrap_or_default();
        return Err(error(SequenceNumberErrorKind::NotADigit { position }));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(error(SequenceNumberErrorKind::LeadingZero));
    }
    Ok(())
}

impl TryFrom<String> for SequenceNumber {
    type Error = ParseSequenceNumberError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        validate(&text)?;
        Ok(Self(ByteString::from(text)))
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceNumberError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for SequenceNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for SequenceNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SequenceNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = ByteString::deserialize(deserializer)?;
        SequenceNumber::parse_shared(text).map_err(serde::de::Error::custom)
    }
}

/// Why a text is not a [`SequenceNumber`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a sequence number: {kind}")]
pub struct ParseSequenceNumberError {
    kind: SequenceNumberErrorKind,
    input: String,
}

impl ParseSequenceNumberError {
    /// What is wrong with the text.
    pub fn kind(&self) -> &SequenceNumberErrorKind {
        &self.kind
    }

    /// `text` has a sequence number, the separator, and no canonical
    /// sub-sequence number after it.
    pub(crate) fn sub_sequence(text: &str) -> Self {
        Self {
            kind: SequenceNumberErrorKind::SubSequence,
            input: text.chars().take(40).collect(),
        }
    }
}

/// What is wrong with a text that should be a [`SequenceNumber`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SequenceNumberErrorKind {
    /// The text is empty.
    #[error("it is empty")]
    Empty,
    /// The text has more than [`SequenceNumber::MAX_DIGITS`] characters.
    #[error("it has {len} characters, more than the 129 digits allowed")]
    TooLong {
        /// The length of the text, in bytes.
        len: usize,
    },
    /// A character is not a decimal digit.
    #[error("byte {position} is not a decimal digit")]
    NotADigit {
        /// Byte offset of the first non-digit.
        position: usize,
    },
    /// The number has a leading zero.
    #[error("it has a leading zero")]
    LeadingZero,
    /// After the sequence number and `:`, no sub-sequence number (1 to 20
    /// digits without a leading zero, at most `u64::MAX`).
    #[error("what follows the ':' is not a sub-sequence number")]
    SubSequence,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(text: &str) -> SequenceNumber {
        SequenceNumber::parse(text).expect("valid sequence number")
    }

    #[test]
    fn order_is_numeric_across_lengths() {
        assert!(seq("9") < seq("10"));
        assert!(seq("99") < seq("100"));
        assert!(
            seq("49590338271490256608559692538361571095921575989136588898")
                > seq("49590338271490256608559692538361571095921575989136588897")
        );
        let big = "9".repeat(128);
        assert!(seq(&big) < seq(&format!("1{}", "0".repeat(128))));
        assert_eq!(seq("42").cmp(&seq("42")), Ordering::Equal);
    }

    #[test]
    fn accepts_one_to_129_digits() {
        assert_eq!(seq("0").as_str(), "0");
        let max = format!("1{}", "0".repeat(128));
        assert_eq!(seq(&max).as_str().len(), 129);
    }

    #[test]
    fn rejects_anything_that_is_not_plain_digits() {
        let kind = |text: &str| SequenceNumber::parse(text).map(|_| ()).map_err(|e| e.kind().clone());
        assert_eq!(kind(""), Err(SequenceNumberErrorKind::Empty));
        assert_eq!(kind("abc"), Err(SequenceNumberErrorKind::NotADigit { position: 0 }));
        assert_eq!(
            kind("4.95e+55"),
            Err(SequenceNumberErrorKind::NotADigit { position: 1 })
        );
        assert_eq!(kind(" 1"), Err(SequenceNumberErrorKind::NotADigit { position: 0 }));
        assert_eq!(kind("-1"), Err(SequenceNumberErrorKind::NotADigit { position: 0 }));
        assert_eq!(kind("007"), Err(SequenceNumberErrorKind::LeadingZero));
        assert_eq!(
            kind(&"1".repeat(130)),
            Err(SequenceNumberErrorKind::TooLong { len: 130 })
        );
    }

    #[test]
    fn serde_round_trips_as_a_string_and_validates() {
        let original = seq("49590338271490256608559692538361571095921575989136588898");
        let json = serde_json::to_string(&original).expect("serialize");
        assert_eq!(json, "\"49590338271490256608559692538361571095921575989136588898\"");
        let back: SequenceNumber = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, original);
        assert!(serde_json::from_str::<SequenceNumber>("\"4.95e+55\"").is_err());
        assert!(serde_json::from_str::<SequenceNumber>("4.95e+55").is_err());
    }

    #[test]
    fn a_detached_copy_shares_nothing_with_its_page() {
        let page = ByteString::from("1234512");
        let shared = SequenceNumber::parse_shared(page.slice_ref(&page[..5])).expect("digits");
        let detached = shared.detached();
        assert_eq!(detached, seq("12345"));
        assert_eq!(shared, detached);
        assert_ne!(shared.0.as_bytes().as_ptr(), detached.0.as_bytes().as_ptr());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn canonical(text: &str) -> bool {
            let digits = text.bytes().all(|b| b.is_ascii_digit());
            digits && (1..=129).contains(&text.len()) && (text == "0" || !text.starts_with('0'))
        }

        proptest! {
            #[test]
            fn parsing_accepts_exactly_canonical_digit_strings(text in "[0-9a.e+ -]{0,140}|[0-9]{0,140}") {
                let parsed = SequenceNumber::parse(&text);
                prop_assert_eq!(parsed.is_ok(), canonical(&text), "{:?}", text);
                if let Ok(seq) = parsed {
                    prop_assert_eq!(seq.to_string(), text.clone());
                    let json = serde_json::to_string(&seq).expect("serialize");
                    prop_assert_eq!(serde_json::from_str::<SequenceNumber>(&json).expect("deserialize"), seq);
                }
            }

            #[test]
            fn order_is_numeric_order(a in 0u128..=u128::MAX / 4, b in 0u128..=u128::MAX / 4) {
                let (x, y) = (seq(&a.to_string()), seq(&b.to_string()));
                prop_assert_eq!(x.cmp(&y), a.cmp(&b));
                prop_assert_eq!(x == y, a == b);
            }

            #[test]
            fn order_is_length_then_digits_up_to_129_digits(a in "0|[1-9][0-9]{0,128}", b in "0|[1-9][0-9]{0,128}") {
                let (x, y) = (seq(&a), seq(&b));
                prop_assert_eq!(x.cmp(&y), (a.len(), &a).cmp(&(b.len(), &b)));
                prop_assert_eq!(y.cmp(&x), x.cmp(&y).reverse());
            }
        }
    }
}
