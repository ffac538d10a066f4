//! How far this machine's clock is from Kinesis's, as the `Date` header of
//! its answers shows it.
//!
//! SigV4 signatures carry the time they were made, and Kinesis refuses one
//! made more than five minutes from its own clock. The SDK measures the
//! difference from every answer and signs its next call at local time plus
//! that difference; GetRecords calls that go direct must do the same, or a
//! drifting clock fails them while SDK calls still work.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};

/// Past this, a refused signature is taken for a clock problem (the SDK's
/// threshold: Kinesis's limit is five minutes).
pub(crate) const SKEW_THRESHOLD: Duration = Duration::from_secs(4 * 60);

/// Round trips slower than this say too little about when the server read
/// its clock.
const MAX_TRUSTED_ROUND_TRIP: Duration = Duration::from_secs(15 * 60);

/// Error codes with which Kinesis refuses a signature made at the wrong time.
pub(crate) const SKEW_CODES: [&str; 5] = [
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "AccessDeniedException",
];

/// Kinesis's clock minus this machine's, in milliseconds; shared by every
/// call that goes direct.
#[derive(Debug, Default)]
pub(crate) struct Skew(AtomicI64);

impl Skew {
    fn millis(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// `local` as Kinesis's clock would read it.
    pub(crate) fn apply(&self, local: SystemTime) -> SystemTime {
        shift(local, self.millis())
    }

    /// Learns the skew from an answer's `Date` header, read by the server
    /// about halfway between `sent` and `received` (both local times).
    /// Returns how far the signing time of that call (`sent` plus the skew
    /// it was signed with) was from the server's clock.
    pub(crate) fn measure(&self, date: Option<&str>, sent: SystemTime, received: SystemTime) -> Option<Duration> {
        let server = server_time(date?)?;
        let round_trip = received.duration_since(sent).unwrap_or_default();
        if round_trip > MAX_TRUSTED_ROUND_TRIP {
            return None;
        }
        let midpoint = sent + round_trip / 2;
        let used = self.millis();
        let skew = signed_millis(server, midpoint);
        self.0.store(skew, Ordering::Relaxed);
        Some(Duration::from_millis(skew.abs_diff(used)))
    }
}

/// The time an HTTP `Date` header gives.
pub(crate) fn server_time(date: &str) -> Option<SystemTime> {
    SystemTime::try_from(DateTime::from_str(date, Format::HttpDate).ok()?).ok()
}

/// Whether a call refused with `code` was refused for the time it was
/// signed at, `off` from the server's clock.
pub(crate) fn is_skew_refusal(code: Option<&str>, off: Option<Duration>) -> bool {
    code.is_some_and(|code| SKEW_CODES.contains(&code)) && off.is_some_and(|off| off > SKEW_THRESHOLD)
}

fn signed_millis(later: SystemTime, earlier: SystemTime) -> i64 {
    match later.duration_since(earlier) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn shift(time: SystemTime, millis: i64) -> SystemTime {
    let by = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        time.checked_add(by)
    } else {
        time.checked_sub(by)
    }
    .unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(time: SystemTime) -> String {
        DateTime::from(time).fmt(Format::HttpDate).expect("formats")
    }

    #[test]
    fn a_server_ten_minutes_ahead_is_signed_for_ten_minutes_ahead_after_one_answer() {
        let skew = Skew::default();
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let received = sent + Duration::from_millis(200);
        let server = sent + Duration::from_secs(600);

        let off = skew.measure(Some(&date(server)), sent, received).expect("a date");
        assert!(off > SKEW_THRESHOLD, "the call was signed 10 minutes off: {off:?}");
        let signed = skew.apply(sent);
        let error = signed_millis(signed, server).abs();
        assert!(
            error <= 1_000,
            "signed within the header's one-second resolution: {error} ms"
        );

        let off = skew
            .measure(
                Some(&date(server + Duration::from_secs(5))),
                sent + Duration::from_secs(5),
                received + Duration::from_secs(5),
            )
            .expect("a date");
        assert!(off <= Duration::from_secs(1), "the next call was signed right: {off:?}");
    }

    #[test]
    fn a_server_behind_gives_a_negative_skew() {
        let skew = Skew::default();
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        skew.measure(Some(&date(sent - Duration::from_secs(3600))), sent, sent);
        let signed = skew.apply(sent);
        assert_eq!(sent.duration_since(signed).expect("earlier"), Duration::from_secs(3600));
    }

    #[test]
    fn answers_without_a_usable_date_or_after_a_very_slow_round_trip_teach_nothing() {
        let skew = Skew::default();
        let sent = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(skew.measure(None, sent, sent), None);
        assert_eq!(skew.measure(Some("yesterday"), sent, sent), None);
        let server = date(sent + Duration::from_secs(600));
        assert_eq!(
            skew.measure(Some(&server), sent, sent + Duration::from_secs(3600)),
            None
        );
        assert_eq!(skew.apply(sent), sent);
    }

    #[test]
    fn only_a_signature_refusal_with_a_far_off_clock_is_a_skew_refusal() {
        let far = Some(Duration::from_secs(600));
        let near = Some(Duration::from_secs(2));
        assert!(is_skew_refusal(Some("InvalidSignatureException"), far));
        assert!(!is_skew_refusal(Some("InvalidSignatureException"), near));
        assert!(!is_skew_refusal(Some("InvalidSignatureException"), None));
        assert!(!is_skew_refusal(Some("ResourceNotFoundException"), far));
        assert!(!is_skew_refusal(None, far));
    }
}
