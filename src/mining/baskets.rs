//! Baskets from the event history: a basket is the distinct products a user added to
//! the cart since their previous order and at most `window_ms` before the order that
//! closes it. Carts never followed by an order make no basket; an order with nothing
//! carted before it makes none either.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};

use crate::events::RawEvent;

/// Baskets as item ids, and the product id of each item id.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Baskets {
    pub baskets: Vec<Vec<u32>>,
    pub products: Vec<String>,
    /// The time of the order that closed each basket.
    pub times: Vec<i64>,
    /// The user of each basket.
    pub users: Vec<String>,
}

/// Builds the baskets of `events` (in time order, as logged; streamed, so memory holds
/// only the open carts). Item ids are given in order of first appearance in a basket.
pub fn baskets(events: impl IntoIterator<Item = impl Borrow<RawEvent>>, window_ms: i64) -> Baskets {
    let mut open: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut out = Baskets::default();
    for event in events {
        let event = event.borrow();
        let Some(user) = event.entities.get("user") else {
            continue;
        };
        match event.event_type.as_str() {
            "add_to_cart" => {
                if let Some(product) = event.entities.get("product") {
                    match open.get_mut(user.as_str()) {
                        Some(cart) => cart.push((event.event_time_ms, product.clone())),
                        None => {
                            open.insert(user.clone(), vec![(event.event_time_ms, product.clone())]);
                        }
                    }
                }
            }
            "order" => {
                let carted = open.remove(user.as_str()).unwrap_or_default();
                let start = event.event_time_ms.saturating_sub(window_ms);
                let products: BTreeSet<&str> = carted
                    .iter()
                    .filter(|(time, _)| *time >= start && *time <= event.event_time_ms)
                    .map(|(_, product)| product.as_str())
                    .collect();
                if products.is_empty() {
                    continue;
                }
                let mut basket: Vec<u32> = products
                    .into_iter()
                    .map(|product| {
                        let next = ids.len() as u32;
                        *ids.entry(product.to_string()).or_insert_with(|| {
                            out.products.push(product.to_string());
                            next
                        })
                    })
                    .collect();
                basket.sort_unstable();
                out.baskets.push(basket);
                out.times.push(event.event_time_ms);
                out.users.push(user.clone());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, user: &str, product: Option<&str>, time_ms: i64) -> RawEvent {
        let mut event = RawEvent {
            event_type: kind.into(),
            event_time_ms: time_ms,
            ..RawEvent::default()
        };
        event.entities.insert("user".into(), user.into());
        if let Some(product) = product {
            event.entities.insert("product".into(), product.into());
        }
        event
    }

    #[test]
    fn a_basket_is_what_was_carted_since_the_last_order_within_the_window() {
        let events = vec![
            event("add_to_cart", "u1", Some("p1"), 0),
            event("add_to_cart", "u1", Some("p2"), 10),
            event("add_to_cart", "u2", Some("p3"), 15),
            event("add_to_cart", "u1", Some("p1"), 20),
            event("page_view", "u1", Some("p9"), 25),
            event("order", "u1", None, 30),
            // After the order: a new basket; p4 is too old for the 100 ms window.
            event("add_to_cart", "u1", Some("p4"), 40),
            event("add_to_cart", "u1", Some("p5"), 200),
            event("order", "u1", None, 210),
            // An order with nothing carted, and u2's cart that never ends in an order.
            event("order", "u3", None, 220),
        ];
        let found = baskets(&events, 100);
        assert_eq!(found.products, vec!["p1", "p2", "p5"]);
        assert_eq!(found.baskets, vec![vec![0, 1], vec![2]]);
        assert_eq!(found.times, vec![30, 210]);
        assert_eq!(found.users, vec!["u1", "u1"]);
    }
}
