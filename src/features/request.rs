//! Request-time features: computed from the event at hand (a payment being scored) plus
//! stored features read just before it. Training and serving both call
//! [`request_features`], so a model sees the same values offline and online.

use crate::events::RawEvent;

/// The request-time features, in the order [`request_features`] returns them.
pub const REQUEST_FEATURES: [&str; 4] = [
    "req_amount",
    "req_amount_to_user_mean_30d",
    "req_country_mismatch",
    "req_has_device",
];

/// The stored feature the amount ratio divides by.
pub const USER_MEAN_FEATURE: &str = "user_amount_mean_30d";

/// Values of [`REQUEST_FEATURES`] for `event`; `user_mean` is the stored
/// `user_amount_mean_30d` read just before it. `None` where an input is missing.
pub fn request_features(event: &RawEvent, user_mean: Option<f64>) -> [Option<f64>; 4] {
    let amount = event.numbers.get("amount").copied();
    let ratio = match (amount, user_mean) {
        (Some(amount), Some(mean)) if mean > 0.0 => Some(amount / mean),
        _ => None,
    };
    let mismatch = match (
        event.strings.get("billing_country"),
        event.strings.get("ip_country"),
    ) {
        (Some(billing), Some(ip)) => Some(f64::from(u8::from(billing != ip))),
        _ => None,
    };
    let has_device = Some(f64::from(u8::from(event.entities.contains_key("device"))));
    [amount, ratio, mismatch, has_device]
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
            [Some(300.0), Some(3.0), Some(1.0), Some(0.0)]
        );
        event.strings.insert("ip_country".into(), "DE".into());
        event.entities.insert("device".into(), "d1".into());
        assert_eq!(
            request_features(&event, None),
            [Some(300.0), None, Some(0.0), Some(1.0)]
        );
    }
}
