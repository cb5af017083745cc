//! Point-in-time training sets. The history is replayed in order through the same
//! [`Engine`] the server uses; at each observation (fraud: a payment; purchase: a page
//! view; order value: an order) the features are read as of the event's time *before*
//! the event is applied, so the event itself and anything after it never leak in.
//! Request-time features come from [`request_features`], the function serving calls.
//!
//! Labels arrive late and are found in a first pass over the history:
//! - fraud: a chargeback naming the payment (`payment_id`) within `label_window` of it;
//!   a payment younger than `label_window` at the end of the history is left out, not
//!   labelled 0;
//! - purchase: the user puts the viewed product in the cart and then places an order,
//!   both within `horizon` after the view (views younger than `horizon` at the end are
//!   left out). Product-specific, so the model can rank candidate products for a user;
//!   "any order by the user" would only say whether the user is a buyer;
//! - order value: the order's own amount.

use std::collections::HashMap;
use std::sync::Arc;

use crate::definitions::Definitions;
use crate::events::{COMPOSITE_SEPARATOR, Limits, RawEvent, validate};
use crate::features::request::{REQUEST_FEATURES, USER_MEAN_FEATURE};
use crate::features::vector::VectorPlan;
use crate::features::{Admission, Engine, EngineSettings};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Fraud {
        label_window_ms: i64,
    },
    Purchase {
        horizon_ms: i64,
    },
    OrderValue,
    /// A table's 0/1 (true/false, yes/no) label column: only with `--table`.
    Binary,
    /// A table's numeric label column: only with `--table`.
    Regression,
}

impl Target {
    /// The event type observed; `None` for the table targets.
    pub fn observed_event(&self) -> Option<&'static str> {
        match self {
            Target::Fraud { .. } => Some("payment"),
            Target::Purchase { .. } => Some("page_view"),
            Target::OrderValue => Some("order"),
            Target::Binary | Target::Regression => None,
        }
    }

    /// Whether the label is 0/1 (a classifier learns it) rather than a value.
    pub fn classifier(&self) -> bool {
        !matches!(self, Target::OrderValue | Target::Regression)
    }

    /// Whether the target is a table's label column rather than derived from events.
    pub fn from_table(&self) -> bool {
        matches!(self, Target::Binary | Target::Regression)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub target: Target,
    /// Entity types whose stored features are columns, in this order (each entity's
    /// features in definition order).
    pub entities: Vec<String>,
    /// Append the request-time features.
    pub request_features: bool,
    /// The build fails when a larger share of the history's events is refused
    /// (invalid, duplicate or late): a run that quietly trains on what is left of a
    /// broken export is worse than no run.
    pub max_refused_share: f64,
}

/// How often the replay frees expired entities and old dedup ids.
const EVICT_EVERY_EVENTS: usize = 500_000;

/// The default of [`DatasetSpec::max_refused_share`]: 1%.
pub const DEFAULT_MAX_REFUSED_SHARE: f64 = 0.01;

impl DatasetSpec {
    /// The default purchase model's inputs, observed at each page view: user, product and
    /// user x product features.
    pub fn purchase(horizon_ms: i64) -> DatasetSpec {
        DatasetSpec {
            target: Target::Purchase { horizon_ms },
            entities: ["user", "product", "user_product"]
                .map(String::from)
                .to_vec(),
            request_features: false,
            max_refused_share: DEFAULT_MAX_REFUSED_SHARE,
        }
    }

    /// The default order-value model's inputs: user, card and device features (no
    /// request-time features: the order's amount is the label).
    pub fn order_value() -> DatasetSpec {
        DatasetSpec {
            target: Target::OrderValue,
            entities: ["user", "card", "device"].map(String::from).to_vec(),
            request_features: false,
            max_refused_share: DEFAULT_MAX_REFUSED_SHARE,
        }
    }

    /// A table target's spec: the columns come from the table, not from entities.
    pub fn table(target: Target) -> DatasetSpec {
        DatasetSpec {
            target,
            entities: Vec::new(),
            request_features: false,
            max_refused_share: DEFAULT_MAX_REFUSED_SHARE,
        }
    }

    /// The default fraud model's inputs: card, user, device and ip features plus the
    /// request-time features.
    pub fn fraud(label_window_ms: i64) -> DatasetSpec {
        DatasetSpec {
            target: Target::Fraud { label_window_ms },
            entities: ["card", "user", "device", "ip"].map(String::from).to_vec(),
            request_features: true,
            max_refused_share: DEFAULT_MAX_REFUSED_SHARE,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event_id: String,
    pub time_ms: i64,
    /// One value per column; `None` where the feature has no value.
    pub values: Vec<Option<f64>>,
    pub label: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// Observations left out because their label could not be known yet.
    pub unlabelled: usize,
    /// Events of the history that were invalid, duplicate or too late (not applied).
    pub skipped_events: usize,
    /// Why those events were not applied: a reason and how many times it was given.
    pub refusals: std::collections::BTreeMap<String, usize>,
    /// Observations whose features could not be read exactly as of their time.
    pub unreadable_observations: usize,
    /// For a table with a binary/regression target: the inputs its columns encode
    /// (written into the model, which then scores from request fields).
    pub inputs: Option<Vec<crate::model::inputs::Input>>,
    /// The rows have no times (a table without `time_ms`): their "times" are row
    /// numbers, in file order.
    pub row_order: bool,
}

impl Dataset {
    fn refuse(&mut self, reason: String) {
        self.skipped_events += 1;
        *self.refusals.entry(reason).or_default() += 1;
    }

    /// The `most` most common refusal reasons with their counts, most common first.
    pub fn refusal_summary(&self, most: usize) -> String {
        let mut reasons: Vec<(&String, &usize)> = self.refusals.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        reasons
            .iter()
            .take(most)
            .map(|(reason, count)| format!("{count} x {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DatasetError {
    #[error("target binary/regression labels a table's column: give --table, not --events")]
    TableTarget,
    #[error("dataset entity '{0}' is not an entity with features in the definitions")]
    UnknownEntity(String),
    #[error("the request-time features need the stored feature '{USER_MEAN_FEATURE}'")]
    MissingUserMean,
    #[error(
        "{refused} of {total} events of the history were refused (more than {:.1}% allowed); most common: {top}",
        max_share * 100.0
    )]
    TooManyRefused {
        refused: usize,
        total: usize,
        max_share: f64,
        top: String,
    },
}

struct Labels {
    end_ms: i64,
    chargebacks: HashMap<String, i64>,
    orders_by_user: HashMap<String, Vec<i64>>,
    /// Cart times per `user|product`.
    carts: HashMap<String, Vec<i64>>,
}

fn user_product(event: &RawEvent) -> Option<String> {
    let user = event.entities.get("user")?;
    let product = event.entities.get("product")?;
    Some(format!("{user}{COMPOSITE_SEPARATOR}{product}"))
}

fn collect_labels(history: impl Iterator<Item = RawEvent>) -> Labels {
    let mut labels = Labels {
        end_ms: i64::MIN,
        chargebacks: HashMap::new(),
        orders_by_user: HashMap::new(),
        carts: HashMap::new(),
    };
    for event in history {
        labels.end_ms = labels.end_ms.max(event.event_time_ms);
        match event.event_type.as_str() {
            "chargeback" => {
                if let Some(payment) = event.strings.get("payment_id") {
                    let first = labels
                        .chargebacks
                        .entry(payment.clone())
                        .or_insert(event.event_time_ms);
                    *first = (*first).min(event.event_time_ms);
                }
            }
            "order" => {
                if let Some(user) = event.entities.get("user") {
                    labels
                        .orders_by_user
                        .entry(user.clone())
                        .or_default()
                        .push(event.event_time_ms);
                }
            }
            "add_to_cart" => {
                if let Some(key) = user_product(&event) {
                    labels
                        .carts
                        .entry(key)
                        .or_default()
                        .push(event.event_time_ms);
                }
            }
            _ => {}
        }
    }
    for times in labels
        .orders_by_user
        .values_mut()
        .chain(labels.carts.values_mut())
    {
        times.sort_unstable();
    }
    labels
}

/// The label of an observation, or `None` if it cannot be known from this history.
fn label_of(target: Target, labels: &Labels, event: &RawEvent) -> Option<f64> {
    let time = event.event_time_ms;
    match target {
        Target::Fraud { label_window_ms } => {
            if time > labels.end_ms - label_window_ms {
                return None;
            }
            let charged_back = labels
                .chargebacks
                .get(&event.event_id)
                .is_some_and(|at| *at >= time && *at - time <= label_window_ms);
            Some(f64::from(u8::from(charged_back)))
        }
        Target::Purchase { horizon_ms } => {
            if time > labels.end_ms - horizon_ms {
                return None;
            }
            let deadline = time + horizon_ms;
            // The first time in `times` after `from`, if it is within the horizon.
            let first_after = |times: &Vec<i64>, from: i64| {
                let after = times.partition_point(|t| *t <= from);
                times.get(after).copied().filter(|t| *t <= deadline)
            };
            let carted = user_product(event)
                .and_then(|key| labels.carts.get(&key))
                .and_then(|times| first_after(times, time));
            let bought = carted.is_some_and(|cart| {
                event
                    .entities
                    .get("user")
                    .and_then(|user| labels.orders_by_user.get(user))
                    .and_then(|orders| first_after(orders, cart - 1))
                    .is_some()
            });
            Some(f64::from(u8::from(bought)))
        }
        Target::OrderValue => event.numbers.get("amount").copied(),
        // `Dataset::build` refuses these before any event is read.
        Target::Binary | Target::Regression => None,
    }
}

/// The columns of the set: each entity's features in definition order, entities in
/// `spec` order, then the request-time features.
fn plan_columns(
    definitions: &Definitions,
    engine: &Engine,
    spec: &DatasetSpec,
) -> Result<Vec<String>, DatasetError> {
    let mut columns = Vec::new();
    for name in &spec.entities {
        let (_, features) = engine
            .resolve(name, &[])
            .map_err(|_| DatasetError::UnknownEntity(name.clone()))?;
        // List features are for Recommend, never model inputs.
        columns.extend(
            features
                .iter()
                .filter(|f| !definitions.features[**f].is_list())
                .map(|f| definitions.features[*f].name.clone()),
        );
    }
    if spec.request_features {
        if !columns.iter().any(|c| c == USER_MEAN_FEATURE) {
            return Err(DatasetError::MissingUserMean);
        }
        columns.extend(REQUEST_FEATURES.iter().map(|name| name.to_string()));
    }
    Ok(columns)
}

impl Dataset {
    /// Writes the set as CSV: `event_id, time_ms, <feature columns...>, label`, with an
    /// empty cell where a feature has no value.
    pub fn write_csv(&self, out: impl std::io::Write) -> Result<(), csv::Error> {
        let mut writer = csv::Writer::from_writer(out);
        let mut header = vec!["event_id".to_string(), "time_ms".to_string()];
        header.extend(self.columns.iter().cloned());
        header.push("label".to_string());
        writer.write_record(&header)?;
        for row in &self.rows {
            let mut record = vec![row.event_id.clone(), row.time_ms.to_string()];
            record.extend(
                row.values
                    .iter()
                    .map(|v| v.map(|v| v.to_string()).unwrap_or_default()),
            );
            record.push(row.label.to_string());
            writer.write_record(&record)?;
        }
        writer.flush()?;
        Ok(())
    }

    /// Replays `history` (called twice: once for labels, once for features) and builds
    /// the point-in-time training set described by `spec`.
    pub fn build<I: Iterator<Item = RawEvent>>(
        definitions: Arc<Definitions>,
        settings: EngineSettings,
        history: impl Fn() -> I,
        spec: &DatasetSpec,
        mut progress: impl FnMut(u64),
    ) -> Result<Dataset, DatasetError> {
        if spec.target.from_table() {
            return Err(DatasetError::TableTarget);
        }
        let labels = collect_labels(history());
        let mut engine = Engine::new(Arc::clone(&definitions), settings);
        let columns = plan_columns(&definitions, &engine, spec)?;
        let plan = VectorPlan::for_columns(&definitions, &columns)
            .map_err(|_| DatasetError::MissingUserMean)?;
        let limits = Limits {
            max_future_skew_ms: i64::MAX,
            max_id_bytes: usize::MAX,
        };
        let observed = spec.target.observed_event();
        let mut dataset = Dataset {
            columns,
            ..Dataset::default()
        };
        let mut total = 0;
        for (seq, raw) in history().enumerate() {
            total = seq + 1;
            if seq % 100_000 == 0 {
                progress(seq as u64);
            }
            // As the server does in the background: expired entities and dedup ids past
            // the horizon go, so memory follows the live set, not the history. Eviction
            // never changes a value (expiry is decided by event time alone).
            if seq > 0 && seq % EVICT_EVERY_EVENTS == 0 {
                engine.evict_expired();
            }
            let event = match validate(&definitions, &limits, &raw, None) {
                Ok(event) => event,
                Err(refusal) => {
                    dataset.refuse(format!("invalid {}: {}", refusal.field, refusal.reason));
                    continue;
                }
            };
            match engine.admit(&event) {
                Admission::Apply => {}
                Admission::Duplicate => {
                    dataset.refuse("duplicate event id".into());
                    continue;
                }
                Admission::Refused(_) => {
                    dataset.refuse(format!(
                        "later than the allowed lateness ({} ms) behind the newest event",
                        settings.allowed_lateness_ms
                    ));
                    continue;
                }
            }
            if Some(raw.event_type.as_str()) == observed {
                match label_of(spec.target, &labels, &raw) {
                    Some(label) => {
                        let mut values = Vec::new();
                        match plan.read(&definitions, &engine.view(), &raw, &mut values) {
                            Ok(_) => dataset.rows.push(Row {
                                event_id: raw.event_id.clone(),
                                time_ms: raw.event_time_ms,
                                values,
                                label,
                            }),
                            Err(_) => dataset.unreadable_observations += 1,
                        }
                    }
                    None => dataset.unlabelled += 1,
                }
            }
            engine.apply(&event, seq as u64 + 1);
        }
        let share = dataset.skipped_events as f64 / total.max(1) as f64;
        if share > spec.max_refused_share {
            return Err(DatasetError::TooManyRefused {
                refused: dataset.skipped_events,
                total,
                max_share: spec.max_refused_share,
                top: dataset.refusal_summary(3),
            });
        }
        Ok(dataset)
    }
}
