//! Request-time features: computed from the event at hand (a payment being scored) plus
//! stored features read just before it. Training and serving both call
//! [`request_features`], so a model sees the same values offline and online.

use crate::events::RawEvent;

/// The request-time features, in the order [`request_features`] returns them.
pub const REQUEST_FEATURES: [&str; 6] = [
    "req_amount",
    "req_log_amount",
    "req_amount_to_user_mean_30d",
    "req_country_mismatch",
    "req_has_device",
    "req_has_ip",
];

/// The stored feature the amount ratio divides by.
pub const USER_MEAN_FEATURE: &str = "user_amount_mean_30d";

/// The least the amount ratio divides by (in the amount's currency units). Without it
/// a caller who first pays 0.01 (or 5e-324) makes any later amount look like a
/// thousand-fold or infinite jump, which a model may never have seen: card testers pay
/// tiny amounts first on purpose.
pub const RATIO_DENOMINATOR_FLOOR: f64 = 10.0;

/// Values of [`REQUEST_FEATURES`] for `event`; `user_mean` is the stored
/// `user_amount_mean_30d` read just before it. `None` where an input is missing.
/// `req_has_device` and `req_has_ip` are the missing indicators of those entities: an
/// absent entity's stored features are missing (imputed), not zero, and the indicator
/// lets the model learn what a request without one means.
/// `req_log_amount` (ln(1 + amount)) beside the amount lets a linear model see both
/// ends of the amount range as unusual (card tests are tiny, takeovers large).
/// The ratio divides by at least [`RATIO_DENOMINATOR_FLOOR`], so it is always finite.
pub fn request_features(event: &RawEvent, user_mean: Option<f64>) -> [Option<f64>; 6] {
    let amount = event.numbers.get("amount").copied();
    let ratio = match (amount, user_mean) {
        (Some(amount), Some(mean)) if mean >= 0.0 => {
            Some(amount / mean.max(RATIO_DENOMINATOR_FLOOR))
        }
        _ => None,
    };
    let mismatch = match (
        event.strings.get("billing_country"),
        event.strings.get("ip_country"),
    ) {
        // Country codes compare as the definitions normalise them: trimmed, any case.
        (Some(billing), Some(ip)) => Some(f64::from(u8::from(
            !billing.trim().eq_ignore_ascii_case(ip.trim()),
        ))),
        _ => None,
    };
    let has = |entity: &str| Some(f64::from(u8::from(event.entities.contains_key(entity))));
    let log_amount = amount.map(|a| a.max(0.0).ln_1p());
    [
        amount,
        log_amount,
        ratio,
        mismatch,
        has("device"),
        has("ip"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_features_follow_the_request() {
        let mut event = RawEvent {
            event_type: "payment".into(),
            ..RawEvent::default()
        };
        event.numbers.insert("amount".into(), 300.0);
        event.strings.insert("billing_country".into(), "DE".into());
        event.strings.insert("ip_country".into(), "NG".into());
        assert_eq!(
            request_features(&event, Some(100.0)),
            [
                Some(300.0),
                Some(301f64.ln()),
                Some(3.0),
                Some(1.0),
                Some(0.0),
                Some(0.0)
            ]
        );
        event.strings.insert("ip_country".into(), " de".into());
        event.entities.insert("ip".into(), "ip1".into());
        event.entities.insert("device".into(), "d1".into());
        // A tiny earlier mean does not make the ratio explode.
        assert_eq!(request_features(&event, Some(5e-324))[2], Some(30.0));
        assert_eq!(request_features(&event, Some(0.0))[2], Some(30.0));
        assert_eq!(
            request_features(&event, None),
            [
                Some(300.0),
                Some(301f64.ln()),
                None,
                Some(0.0),
                Some(1.0),
                Some(1.0)
            ]
        );
    }
}
