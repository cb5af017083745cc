//! A seeded generator of a realistic shop event stream, used by `streamscore simulate`,
//! the tests, training and the benches.
//!
//! Ordinary users browse in sessions (page views, carts), pay and order, now and then
//! refund. Fraud, about `fraud_rate` of payments, comes in known patterns: card-testing
//! bursts of small payments, a device (or ip) cycling through many cards, brand-new
//! accounts paying large amounts at once, and stolen cards used from abroad for unusual
//! amounts. Fraudulent payments draw a chargeback 1-60 days later (most of them; some
//! fraud goes unreported, and a few honest payments are disputed too). Events come out
//! in event-time order; the same seed gives the same stream.
//!
//! Legitimate traffic looks like a real shop's, so a model cannot learn that "new" or
//! "incomplete" means fraud: new customers pay minutes after signing up or check out as
//! guests with no history at all; a share of requests carry no device or no ip; some
//! users come back after months; people travel; and clients send country codes in any
//! case (`de`, ` DE`).

mod population;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::events::RawEvent;
use crate::time::{DAY_MS, SECOND_MS};
use population::{Population, Product, User};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Event time of the first session.
    pub start_ms: i64,
    /// Users at the start (more sign up over time).
    pub users: usize,
    pub products: usize,
    /// Share of payments that are fraudulent.
    pub fraud_rate: f64,
    /// Mean gap between session starts.
    pub mean_session_gap_ms: f64,
    /// Chance that a view after the first goes to a product bought with the one viewed
    /// before it (its bundle of [`BUNDLE`] products), so baskets have patterns to mine.
    /// 0 (the default) leaves the stream as it was before bundles existed.
    pub affinity: f64,
}

/// Products `p{4k}` to `p{4k+3}` go together (a bundle).
pub const BUNDLE: usize = 4;

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            users: 5_000,
            products: 1_000,
            fraud_rate: 0.015,
            mean_session_gap_ms: 4_000.0,
            affinity: 0.0,
        }
    }
}

/// What the simulator produced, for the summary line.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimStats {
    pub events: u64,
    pub payments: u64,
    pub fraud_payments: u64,
    pub chargebacks: u64,
}

struct Scheduled {
    time_ms: i64,
    order: u64,
    event: RawEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time_ms, self.order) == (other.time_ms, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time_ms, self.order).cmp(&(other.time_ms, other.order))
    }
}

/// Who pays, with what, from where: the parties of one payment.
#[derive(Clone, Copy)]
struct Payer<'a> {
    user: &'a str,
    card: &'a str,
    /// Absent when the client did not send one (legitimate requests only).
    device: Option<&'a str>,
    ip: Option<&'a str>,
    billing_country: &'a str,
    ip_country: &'a str,
}

const FOREIGN_COUNTRIES: [&str; 5] = ["NG", "RU", "VN", "ID", "RO"];

/// Where honest travellers pay from.
const TRAVEL_COUNTRIES: [&str; 8] = ["US", "GB", "ES", "IT", "FR", "TR", "TH", "MX"];

/// Shares of legitimate payment requests without a device, and without an ip.
const NO_DEVICE_SHARE: f64 = 0.15;
const NO_IP_SHARE: f64 = 0.2;

/// Share of sessions by brand-new customers (half sign up, half check out as guests).
const NEW_CUSTOMER_SHARE: f64 = 0.03;

/// A country code as clients send it: mostly as is, now and then lower-case or padded.
fn as_sent(rng: &mut ChaCha8Rng, code: &str) -> String {
    match rng.random_range(0..20) {
        0 => code.to_ascii_lowercase(),
        1 => format!(" {code}"),
        2 => format!("{}{}", &code[..1], code[1..].to_ascii_lowercase()),
        _ => code.to_string(),
    }
}

pub struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    clock_ms: i64,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    next_event: u64,
    population: Population,
    stats: SimStats,
    /// Probability that a session start is a fraud attack instead.
    attack_probability: f64,
}

impl Simulator {
    pub fn new(config: SimConfig) -> Simulator {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let population = Population::new(&mut rng, config.users, config.products);
        // Ordinary sessions pay about 0.4 times, attacks about 5 times: solve for the
        // attack rate that makes `fraud_rate` of all payments fraudulent.
        let fraud = config.fraud_rate.clamp(0.0, 0.5);
        let attack_probability = fraud * 0.4 / (5.0 * (1.0 - fraud) + fraud * 0.4);
        Simulator {
            clock_ms: config.start_ms,
            config,
            rng,
            scheduled: BinaryHeap::new(),
            next_order: 0,
            next_event: 0,
            population,
            stats: SimStats::default(),
            attack_probability,
        }
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    fn schedule(
        &mut self,
        time_ms: i64,
        event_type: &str,
        build: impl FnOnce(&mut RawEvent),
    ) -> String {
        self.next_event += 1;
        let event_id = format!("e{}-{}", self.config.seed, self.next_event);
        let mut event = RawEvent {
            event_id: event_id.clone(),
            event_type: event_type.into(),
            event_time_ms: time_ms,
            ..Default::default()
        };
        build(&mut event);
        self.next_order += 1;
        self.scheduled.push(Reverse(Scheduled {
            time_ms,
            order: self.next_order,
            event,
        }));
        event_id
    }

    fn payment(&mut self, time_ms: i64, payer: &Payer<'_>, amount: f64, fraud: bool) -> String {
        let Payer {
            user,
            card,
            device,
            ip,
            billing_country,
            ip_country,
        } = *payer;
        let amount = (amount * 100.0).round() / 100.0;
        let billing_country = as_sent(&mut self.rng, billing_country);
        let ip_country = as_sent(&mut self.rng, ip_country);
        let payment_id = self.schedule(time_ms, "payment", |e| {
            e.entities.insert("user".into(), user.into());
            e.entities.insert("card".into(), card.into());
            if let Some(device) = device {
                e.entities.insert("device".into(), device.into());
            }
            if let Some(ip) = ip {
                e.entities.insert("ip".into(), ip.into());
                e.strings.insert("ip_country".into(), ip_country);
            }
            e.numbers.insert("amount".into(), amount);
            e.strings.insert("currency".into(), "EUR".into());
            e.strings.insert("billing_country".into(), billing_country);
        });
        self.stats.payments += 1;
        self.stats.fraud_payments += u64::from(fraud);
        let disputed = if fraud {
            self.rng.random_bool(0.9)
        } else {
            self.rng.random_bool(0.002)
        };
        if disputed {
            let delay = self.rng.random_range(DAY_MS..=60 * DAY_MS);
            let (user, card, payment) = (user.to_string(), card.to_string(), payment_id.clone());
            self.schedule(time_ms + delay, "chargeback", |e| {
                e.entities.insert("card".into(), card);
                e.entities.insert("user".into(), user);
                e.numbers.insert("amount".into(), amount);
                e.strings.insert("payment_id".into(), payment);
            });
            self.stats.chargebacks += 1;
        }
        payment_id
    }

    fn login(&mut self, time_ms: i64, user: &str, device: &str, ip: &str) {
        self.schedule(time_ms, "login", |e| {
            e.entities.insert("user".into(), user.into());
            e.entities.insert("device".into(), device.into());
            e.entities.insert("ip".into(), ip.into());
            e.numbers.insert("success".into(), 1.0);
        });
    }

    /// A brand-new customer's first purchase: signed up minutes before (a login, a few
    /// views), or a guest checkout with no history at all; their own new card and device,
    /// ordinary amounts, often without a device or ip on the request.
    fn new_customer(&mut self) {
        let start = self.clock_ms;
        let user = self.population.sign_up(&mut self.rng);
        let card = user.cards[0].clone();
        let device = user.devices[0].clone();
        let mut time = start;
        if self.rng.random_bool(0.5) {
            self.login(time, &user.id, &device, &user.ip);
            for _ in 0..self.rng.random_range(1..=4) {
                time += self.rng.random_range(10 * SECOND_MS..=120 * SECOND_MS);
                let product = self.population.pick_product(&mut self.rng).id;
                self.schedule(time, "page_view", |e| {
                    e.entities.insert("user".into(), user.id.clone());
                    e.entities.insert("product".into(), product);
                    e.entities.insert("device".into(), device.clone());
                });
            }
        }
        time += self.rng.random_range(30 * SECOND_MS..=600 * SECOND_MS);
        let amount = self.rng.random_range(5.0..120.0);
        let with_device = self.rng.random_bool(1.0 - 2.0 * NO_DEVICE_SHARE);
        let with_ip = self.rng.random_bool(0.5);
        let payer = Payer {
            user: &user.id,
            card: &card,
            device: with_device.then_some(device.as_str()),
            ip: with_ip.then_some(user.ip.as_str()),
            billing_country: &user.country,
            ip_country: &user.country,
        };
        self.payment(time, &payer, amount, false);
    }

    fn session(&mut self) {
        if self.rng.random_bool(NEW_CUSTOMER_SHARE) {
            return self.new_customer();
        }
        let start = self.clock_ms;
        let user: User = self.population.pick_user(&mut self.rng);
        let device = user.devices[self.rng.random_range(0..user.devices.len())].clone();
        let ip = if self.rng.random_bool(0.9) {
            user.ip.clone()
        } else {
            self.population.fresh_ip()
        };
        let mut time = start;
        if self.rng.random_bool(0.3) {
            self.login(time, &user.id, &device, &ip);
        }
        let session_id = format!("s{}", self.next_event);
        let views = self.rng.random_range(1..=10);
        let mut cart_total = 0.0;
        let mut seen: Vec<Product> = Vec::new();
        for _ in 0..views {
            time += self.rng.random_range(5 * SECOND_MS..=120 * SECOND_MS);
            // People come back to what they looked at, and a second look is warmer.
            let revisit = !seen.is_empty() && self.rng.random_bool(0.3);
            // Drawn only when bundles are on, so a stream without them is unchanged.
            let bundled = !revisit
                && self.config.affinity > 0.0
                && !seen.is_empty()
                && self.rng.random_bool(self.config.affinity.min(1.0));
            let picked = if revisit {
                seen[self.rng.random_range(0..seen.len())].clone()
            } else if let (true, Some(last)) = (bundled, seen.last()) {
                self.population.pick_bundle_mate(&mut self.rng, &last.id)
            } else {
                self.population.pick_product(&mut self.rng)
            };
            seen.push(picked.clone());
            let Product {
                id: product,
                price,
                appeal,
            } = picked;
            let warmth = if revisit { 1.5 } else { 1.0 };
            let cart_chance = (user.cart_propensity * appeal * warmth).min(0.95);
            self.schedule(time, "page_view", |e| {
                e.entities.insert("user".into(), user.id.clone());
                e.entities.insert("product".into(), product.clone());
                e.entities.insert("device".into(), device.clone());
                e.entities.insert("ip".into(), ip.clone());
                e.strings.insert("session_id".into(), session_id.clone());
            });
            if self.rng.random_bool(cart_chance) {
                time += self.rng.random_range(2 * SECOND_MS..=30 * SECOND_MS);
                let quantity = f64::from(self.rng.random_range(1..=3));
                cart_total += price * quantity;
                self.schedule(time, "add_to_cart", |e| {
                    e.entities.insert("user".into(), user.id.clone());
                    e.entities.insert("product".into(), product.clone());
                    e.entities.insert("device".into(), device.clone());
                    e.entities.insert("ip".into(), ip.clone());
                    e.numbers.insert("quantity".into(), quantity);
                    e.numbers.insert("price".into(), price);
                });
            }
        }
        if cart_total > 0.0 && self.rng.random_bool(0.65) {
            time += self.rng.random_range(10 * SECOND_MS..=90 * SECOND_MS);
            let card = user.cards[self.rng.random_range(0..user.cards.len())].clone();
            // Honest customers travel too: some pay from an ip abroad.
            let ip_country = if self.rng.random_bool(0.02) {
                FOREIGN_COUNTRIES[self.rng.random_range(0..FOREIGN_COUNTRIES.len())].to_string()
            } else if self.rng.random_bool(0.06) {
                TRAVEL_COUNTRIES[self.rng.random_range(0..TRAVEL_COUNTRIES.len())].to_string()
            } else {
                user.country.clone()
            };
            let with_device = !self.rng.random_bool(NO_DEVICE_SHARE);
            let with_ip = !self.rng.random_bool(NO_IP_SHARE);
            // The order is placed first and paid a few seconds later, so a model of the
            // order's value cannot read it off the payment.
            let order_id = self.schedule(time, "order", |e| {
                e.entities.insert("user".into(), user.id.clone());
                e.entities.insert("card".into(), card.clone());
                e.entities.insert("device".into(), device.clone());
                e.numbers
                    .insert("amount".into(), (cart_total * 100.0).round() / 100.0);
            });
            time += self.rng.random_range(SECOND_MS..=10 * SECOND_MS);
            let payer = Payer {
                user: &user.id,
                card: &card,
                device: with_device.then_some(device.as_str()),
                ip: with_ip.then_some(ip.as_str()),
                billing_country: &user.country,
                ip_country: &ip_country,
            };
            self.payment(time, &payer, cart_total, false);
            if self.rng.random_bool(0.03) {
                let refund_time = time + self.rng.random_range(2 * DAY_MS..=20 * DAY_MS);
                self.schedule(refund_time, "refund", |e| {
                    e.entities.insert("user".into(), user.id.clone());
                    e.entities.insert("card".into(), card.clone());
                    e.numbers
                        .insert("amount".into(), (cart_total * 100.0).round() / 100.0);
                    e.strings.insert("order_id".into(), order_id);
                });
            }
        }
    }

    fn attack(&mut self) {
        let start = self.clock_ms;
        // Most attacks come from abroad, but a quarter hide behind a local proxy.
        let foreign = if self.rng.random_bool(0.75) {
            FOREIGN_COUNTRIES[self.rng.random_range(0..FOREIGN_COUNTRIES.len())].to_string()
        } else {
            "DE".to_string()
        };
        match self.rng.random_range(0..4) {
            // Card testing: a burst of tiny payments on a fresh card, then a real one.
            0 => {
                let user = self.population.new_user(&mut self.rng);
                let card = self.population.fresh_card();
                let device = self.population.fresh_device();
                let ip = self.population.fresh_ip();
                let payer = Payer {
                    user: &user.id,
                    card: &card,
                    device: Some(&device),
                    ip: Some(&ip),
                    billing_country: &user.country,
                    ip_country: &foreign,
                };
                let mut time = start;
                for _ in 0..self.rng.random_range(6..=15) {
                    time += self.rng.random_range(3 * SECOND_MS..=40 * SECOND_MS);
                    let amount = self.rng.random_range(0.5..5.0);
                    self.payment(time, &payer, amount, true);
                }
                time += self.rng.random_range(30 * SECOND_MS..=300 * SECOND_MS);
                let amount = self.rng.random_range(200.0..1500.0);
                self.payment(time, &payer, amount, true);
            }
            // One device (and ip) cycling through stolen cards under throwaway accounts.
            1 => {
                let device = self.population.fresh_device();
                let ip = self.population.fresh_ip();
                let mut time = start;
                for _ in 0..self.rng.random_range(3..=8) {
                    let user = self.population.new_user(&mut self.rng);
                    let card = self.population.fresh_card();
                    time += self.rng.random_range(20 * SECOND_MS..=600 * SECOND_MS);
                    let amount = self.rng.random_range(50.0..600.0);
                    let payer = Payer {
                        user: &user.id,
                        card: &card,
                        device: Some(&device),
                        ip: Some(&ip),
                        billing_country: &user.country,
                        ip_country: &foreign,
                    };
                    self.payment(time, &payer, amount, true);
                }
            }
            // A brand-new account paying a large amount at once, from abroad.
            2 => {
                let user = self.population.new_user(&mut self.rng);
                let card = self.population.fresh_card();
                let device = self.population.fresh_device();
                let ip = self.population.fresh_ip();
                self.login(start, &user.id, &device, &ip);
                let payer = Payer {
                    user: &user.id,
                    card: &card,
                    device: Some(&device),
                    ip: Some(&ip),
                    billing_country: &user.country,
                    ip_country: &foreign,
                };
                let mut time = start;
                for _ in 0..self.rng.random_range(1..=3) {
                    time += self.rng.random_range(10 * SECOND_MS..=90 * SECOND_MS);
                    let amount = self.rng.random_range(300.0..2500.0);
                    self.payment(time, &payer, amount, true);
                }
            }
            // A stolen card of an existing user, used from a new device abroad for
            // amounts far above the owner's habit.
            _ => {
                let victim = self.population.pick_user(&mut self.rng);
                let card = victim.cards[0].clone();
                let device = self.population.fresh_device();
                let ip = self.population.fresh_ip();
                let payer = Payer {
                    user: &victim.id,
                    card: &card,
                    device: Some(&device),
                    ip: Some(&ip),
                    billing_country: &victim.country,
                    ip_country: &foreign,
                };
                let mut time = start;
                for _ in 0..self.rng.random_range(2..=6) {
                    time += self.rng.random_range(60 * SECOND_MS..=1800 * SECOND_MS);
                    let amount = victim.typical_amount * self.rng.random_range(5.0..15.0);
                    self.payment(time, &payer, amount, true);
                }
            }
        }
    }
}

impl Iterator for Simulator {
    type Item = RawEvent;

    fn next(&mut self) -> Option<RawEvent> {
        loop {
            if let Some(Reverse(next)) = self.scheduled.peek()
                && next.time_ms <= self.clock_ms
            {
                let Reverse(next) = self.scheduled.pop()?;
                self.stats.events += 1;
                return Some(next.event);
            }
            // Exponential gaps between session starts (a Poisson process).
            let uniform: f64 = self.rng.random_range(f64::EPSILON..1.0);
            self.clock_ms += (-uniform.ln() * self.config.mean_session_gap_ms).ceil() as i64;
            if self.rng.random_bool(self.attack_probability) {
                self.attack();
            } else {
                self.session();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Definitions;
    use crate::events::{Limits, validate};

    #[test]
    fn the_stream_is_ordered_valid_seeded_and_about_as_fraudulent_as_asked() {
        let definitions = Definitions::default_shop();
        let limits = Limits {
            max_future_skew_ms: 0,
            max_id_bytes: 128,
        };
        let mut simulator = Simulator::new(SimConfig::default());
        let events: Vec<RawEvent> = simulator.by_ref().take(600_000).collect();
        for pair in events.windows(2) {
            assert!(pair[0].event_time_ms <= pair[1].event_time_ms);
        }
        for event in &events {
            validate(&definitions, &limits, event, None)
                .unwrap_or_else(|r| panic!("{r} in {event:?}"));
        }
        let stats = simulator.stats();
        let share = stats.fraud_payments as f64 / stats.payments as f64;
        assert!((0.008..0.03).contains(&share), "fraud share {share}");
        let again: Vec<RawEvent> = Simulator::new(SimConfig::default()).take(1_000).collect();
        assert_eq!(again, events[..1_000]);
    }
}
