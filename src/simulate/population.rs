//! The simulated shop's people and things: users with their cards, devices, home ip and
//! spending habit; products with prices; fresh ids for what fraudsters bring.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

const COUNTRIES: [&str; 8] = ["DE", "FR", "GB", "NL", "ES", "IT", "PL", "US"];

#[derive(Debug, Clone)]
pub(super) struct User {
    pub id: String,
    pub country: String,
    pub cards: Vec<String>,
    pub devices: Vec<String>,
    pub ip: String,
    pub typical_amount: f64,
    /// How readily this user puts what they look at into the cart: buyers and
    /// browsers, so a purchase model has something to learn from their history.
    pub cart_propensity: f64,
}

#[derive(Debug, Clone)]
pub(super) struct Product {
    pub id: String,
    pub price: f64,
    /// Multiplies the chance a view ends in the cart.
    pub appeal: f64,
}

pub(super) struct Population {
    users: Vec<User>,
    products: Vec<Product>,
    next_id: u64,
}

impl Population {
    pub fn new(rng: &mut ChaCha8Rng, users: usize, products: usize) -> Population {
        let mut population = Population {
            users: Vec::with_capacity(users),
            products: Vec::with_capacity(products),
            next_id: 0,
        };
        for index in 0..products.max(1) {
            // Log-normal-ish prices between about 3 and 600.
            let price = (rng.random_range(1.0f64..6.4)).exp().round();
            let appeal = rng.random_range(0.3..1.7);
            population.products.push(Product {
                id: format!("p{index}"),
                price,
                appeal,
            });
        }
        for _ in 0..users.max(1) {
            let user = population.make_user(rng);
            population.users.push(user);
        }
        population
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn make_user(&mut self, rng: &mut ChaCha8Rng) -> User {
        let id = self.id("u");
        let cards = (0..rng.random_range(1..=2)).map(|_| self.id("c")).collect();
        let devices = (0..rng.random_range(1..=2)).map(|_| self.id("d")).collect();
        let ip = self.id("ip");
        User {
            id,
            country: COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_string(),
            cards,
            devices,
            ip,
            typical_amount: rng.random_range(2.5f64..5.5).exp(),
            cart_propensity: rng.random_range(0.02f64..0.6),
        }
    }

    /// A new customer who stays: added to the regular users.
    pub fn sign_up(&mut self, rng: &mut ChaCha8Rng) -> User {
        let user = self.make_user(rng);
        self.users.push(user.clone());
        user
    }

    /// An existing user (popular ones more often, and now and then anyone at all, so
    /// some come back after months), or now and then a new sign-up.
    pub fn pick_user(&mut self, rng: &mut ChaCha8Rng) -> User {
        if rng.random_bool(0.01) {
            return self.sign_up(rng);
        }
        if rng.random_bool(0.05) {
            return self.users[rng.random_range(0..self.users.len())].clone();
        }
        let skew: f64 = rng.random_range(0.0..1.0);
        let index = ((skew * skew) * self.users.len() as f64) as usize;
        self.users[index.min(self.users.len() - 1)].clone()
    }

    /// A throwaway account, not added to the regular users.
    pub fn new_user(&mut self, rng: &mut ChaCha8Rng) -> User {
        self.make_user(rng)
    }

    pub fn pick_product(&self, rng: &mut ChaCha8Rng) -> Product {
        let skew: f64 = rng.random_range(0.0..1.0);
        let index = ((skew * skew * skew) * self.products.len() as f64) as usize;
        self.products[index.min(self.products.len() - 1)].clone()
    }

    /// Another product of `product`'s bundle (see [`super::BUNDLE`]).
    pub fn pick_bundle_mate(&self, rng: &mut ChaCha8Rng, product: &str) -> Product {
        let index: usize = product
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let first = index - index % super::BUNDLE;
        let mut mate = first + rng.random_range(0..super::BUNDLE - 1);
        if mate >= index {
            mate += 1;
        }
        self.products[mate.min(self.products.len() - 1)].clone()
    }

    pub fn fresh_card(&mut self) -> String {
        self.id("c")
    }

    pub fn fresh_device(&mut self) -> String {
        self.id("d")
    }

    pub fn fresh_ip(&mut self) -> String {
        self.id("ip")
    }
}
