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

/// One order and what its user carted for it: each distinct product once, in the order
/// first carted within the window, with when.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedCart {
    pub user: String,
    pub order_ms: i64,
    pub carted: Vec<(i64, String)>,
}

/// Walks `events` (in time order, as logged; streamed, so memory holds only the open
/// carts) and hands `closed` every order that closes a non-empty cart: the products
/// added to the cart since the user's previous order and at most `window_ms` before
/// this one.
pub fn closed_carts(
    events: impl IntoIterator<Item = impl Borrow<RawEvent>>,
    window_ms: i64,
    mut closed: impl FnMut(ClosedCart),
) {
    let mut open: HashMap<String, Vec<(i64, String)>> = HashMap::new();
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
                let mut distinct: Vec<(i64, String)> = Vec::new();
                for (time, product) in carted {
                    if time >= start
                        && time <= event.event_time_ms
                        && !distinct.iter().any(|(_, p)| *p == product)
                    {
                        distinct.push((time, product));
                    }
                }
                if !distinct.is_empty() {
                    closed(ClosedCart {
                        user: user.clone(),
                        order_ms: event.event_time_ms,
                        carted: distinct,
                    });
                }
            }
            _ => {}
        }
    }
}

/// Builds the baskets of `events` (see [`closed_carts`]).
pub fn baskets(events: impl IntoIterator<Item = impl Borrow<RawEvent>>, window_ms: i64) -> Baskets {
    let mut builder = BasketsBuilder::default();
    closed_carts(events, window_ms, |cart| builder.push(cart));
    builder.finish()
}

/// Baskets from closed carts, one at a time. Item ids are given in order of first
/// appearance in a basket, a basket's new products taken by product id.
#[derive(Debug, Default)]
pub struct BasketsBuilder {
    ids: HashMap<String, u32>,
    out: Baskets,
}

impl BasketsBuilder {
    pub fn push(&mut self, cart: ClosedCart) {
        let products: BTreeSet<&str> = cart.carted.iter().map(|(_, p)| p.as_str()).collect();
        let mut basket: Vec<u32> = products
            .into_iter()
            .map(|product| {
                let next = self.ids.len() as u32;
                *self.ids.entry(product.to_string()).or_insert_with(|| {
                    self.out.products.push(product.to_string());
                    next
                })
            })
            .collect();
        basket.sort_unstable();
        self.out.baskets.push(basket);
        self.out.times.push(cart.order_ms);
        self.out.users.push(cart.user);
    }

    /// How many baskets so far.
    pub fn len(&self) -> usize {
        self.out.baskets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.baskets.is_empty()
    }

    pub fn finish(self) -> Baskets {
        self.out
    }
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

    #[test]
    fn a_closed_cart_keeps_the_order_products_were_first_carted() {
        let events = vec![
            event("add_to_cart", "u1", Some("p9"), 0),
            event("add_to_cart", "u1", Some("p2"), 10),
            event("add_to_cart", "u1", Some("p9"), 20),
            event("add_to_cart", "u1", Some("p5"), 25),
            event("order", "u1", None, 30),
        ];
        let mut closed = Vec::new();
        closed_carts(&events, 100, |cart| closed.push(cart));
        assert_eq!(
            closed,
            vec![ClosedCart {
                user: "u1".into(),
                order_ms: 30,
                carted: vec![(0, "p9".into()), (10, "p2".into()), (25, "p5".into())],
            }]
        );
    }
}
