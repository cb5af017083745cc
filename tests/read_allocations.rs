//! The read behind every `Score` (the model's input vector from the warm feature store,
//! exact as of the event's time) allocates nothing once the thread is warm: a counting
//! allocator around the reads of 300 payments' vectors, some of whose entities still
//! have events pending (not yet sealed into tiles).
//!
//! One test in this binary: the allocator counts per thread, and a test of its own keeps
//! the count free of other work.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use streamscore::config::Settings;
use streamscore::definitions::Definitions;
use streamscore::events::RawEvent;
use streamscore::log::FsyncPolicy;
use streamscore::registry::Registry;
use streamscore::simulate::{SimConfig, Simulator};
use streamscore::store::FeatureStore;
use streamscore::time::{HOUR_MS, MINUTE_MS, now_ms};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is handed to the system allocator unchanged; the thread-local
// counter is a const-initialised Cell (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: the caller's contract is passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn reading_a_scores_input_vector_allocates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.log.fsync = FsyncPolicy::Never;
    let definitions = Arc::new(Definitions::default_shop());
    let (store, _) = FeatureStore::open(&settings, Arc::clone(&definitions)).expect("store");
    let end = now_ms() - MINUTE_MS;
    let history: Vec<RawEvent> = Simulator::new(SimConfig {
        start_ms: end - 3 * HOUR_MS,
        ..SimConfig::default()
    })
    .take_while(|event| event.event_time_ms <= end)
    .collect();
    for batch in history.chunks(1_000) {
        store.submit(batch).expect("history applies");
    }
    let registry = Registry::new(
        Arc::clone(&definitions),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
    );
    registry.scan().expect("models dir");
    let model = registry.resolve("fraud").expect("the shipped fraud model");

    // Payments of warm entities, read as of now: the newest of them still have events
    // pending (not yet sealed into tiles), the older ones none.
    let payments: Vec<RawEvent> = history
        .iter()
        .rev()
        .filter(|event| event.event_type == "payment")
        .take(300)
        .map(|event| RawEvent {
            event_time_ms: end,
            ..event.clone()
        })
        .collect();
    assert_eq!(payments.len(), 300, "the history has payments");
    let mut vector = Vec::with_capacity(model.plan.width());
    // A first pass warms this thread's scratch space (distinct counts sort in a buffer
    // kept per thread, grown to the largest series met): serving threads live long.
    store.with_engine(|engine| {
        for payment in &payments {
            model
                .plan
                .read(&definitions, engine, payment, &mut vector)
                .expect("reads");
        }
    });
    let (mut reads, mut allocated, mut known) = (0, 0, 0);
    store.with_engine(|engine| {
        for payment in &payments {
            let before = allocations();
            let source = model
                .plan
                .read(&definitions, engine, payment, &mut vector)
                .expect("reads");
            allocated += allocations() - before;
            reads += 1;
            known += usize::from(source.unknown.is_empty() && source.absent.is_empty());
            drop(source);
        }
    });
    assert!(
        known > 100,
        "most payments read known entities: {known} of {reads}"
    );
    assert!(
        vector.iter().any(Option::is_some),
        "the reads found features"
    );
    assert_eq!(
        allocated, 0,
        "{allocated} allocations over {reads} vector reads"
    );
}
