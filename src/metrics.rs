//! Process metrics in Prometheus text format, kept in atomics so that recording costs a
//! few nanoseconds and needs no lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A fixed-bucket histogram (cumulative on render).
pub struct Histogram {
    /// Upper bounds in millionths of the unit, so that no float is involved in recording.
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records a value given in millionths of the histogram's unit (micro-seconds for a
    /// latency in seconds, millionths of an event for a batch size), keeping floats out of
    /// the hot path.
    pub fn observe_micros(&self, micros: u64) {
        let index = self.bounds.iter().position(|&bound| micros <= bound).unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, output: &mut String, name: &str, help: &str) {
        let _ = writeln!(output, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[index].load(Ordering::Relaxed);
            let _ = writeln!(output, "{name}_bucket{{le=\"{}\"}} {cumulative}", format_micros(*bound));
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(output, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = format_micros(self.sum_micros.load(Ordering::Relaxed));
        let _ = writeln!(output, "{name}_sum {sum}\n{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Millionths as a decimal number: 250 -> "0.00025", 2_000_000 -> "2".
fn format_micros(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let fraction = micros % 1_000_000;
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:06}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// How this node's tailer (PostgreSQL: folding what other nodes append) is doing, for
/// `/readyz` and the metrics. Untouched on SQLite, where there is no tailer.
#[derive(Default)]
pub struct TailerHealth {
    /// Set when the tailer starts: only then do its fields mean anything.
    pub running: std::sync::atomic::AtomicBool,
    /// When a catch-up last read the log to its end.
    pub caught_up_at: parking_lot::Mutex<Option<std::time::Instant>>,
    pub failures: AtomicU64,
    /// Times the LISTEN connection was lost (notifications sent meanwhile are lost; the
    /// tailer catches up by position after each).
    pub reconnects: AtomicU64,
    /// The last failure's message, cleared by the next catch-up that succeeds.
    pub last_error: parking_lot::Mutex<Option<String>>,
}

impl TailerHealth {
    pub fn record_caught_up(&self) {
        *self.caught_up_at.lock() = Some(std::time::Instant::now());
        *self.last_error.lock() = None;
    }

    pub fn record_failure(&self, error: &dyn std::fmt::Display) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error.to_string());
    }

    /// Milliseconds since the last complete catch-up (`None`: not yet, or no tailer).
    pub fn caught_up_milliseconds_ago(&self) -> Option<u64> {
        self.caught_up_at.lock().map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

pub struct Metrics {
    pub tailer: TailerHealth,
    pub events_appended: AtomicU64,
    pub batches_committed: AtomicU64,
    pub batches_failed: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub log_head_position: AtomicI64,
    pub projection_positions: parking_lot::Mutex<Vec<(&'static str, i64)>>,
    /// Whether this node's runner folds events into the SQL read models (on PostgreSQL one
    /// node of a cluster does; the others follow its checkpoints).
    pub projection_runner: std::sync::atomic::AtomicBool,
    pub http_responses: [AtomicU64; 6],
}

const MILLION: u64 = 1_000_000;
const BATCH_BOUNDS: &[u64] = &[
    MILLION,
    2 * MILLION,
    4 * MILLION,
    8 * MILLION,
    16 * MILLION,
    32 * MILLION,
    64 * MILLION,
    128 * MILLION,
    256 * MILLION,
    512 * MILLION,
    1024 * MILLION,
];
const LATENCY_BOUNDS: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            tailer: TailerHealth::default(),
            events_appended: AtomicU64::new(0),
            batches_committed: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            commands_rejected: AtomicU64::new(0),
            batch_size: Histogram::new(BATCH_BOUNDS),
            commit_seconds: Histogram::new(LATENCY_BOUNDS),
            log_head_position: AtomicI64::new(0),
            projection_positions: parking_lot::Mutex::new(Vec::new()),
            projection_runner: std::sync::atomic::AtomicBool::new(false),
            http_responses: Default::default(),
        }
    }
}

impl Metrics {
    pub fn record_projection(&self, name: &'static str, position: i64) {
        let mut positions = self.projection_positions.lock();
        match positions.iter_mut().find(|(existing, _)| *existing == name) {
            Some(entry) => entry.1 = position,
            None => positions.push((name, position)),
        }
    }

    pub fn record_status(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.http_responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut output = String::new();
        let counter = |output: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(output, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            &mut output,
            "bahi_events_appended_total",
            "Events durably appended to the log.",
            self.events_appended.load(Ordering::Relaxed),
        );
        counter(
            &mut output,
            "bahi_batches_committed_total",
            "Writer batches committed.",
            self.batches_committed.load(Ordering::Relaxed),
        );
        counter(
            &mut output,
            "bahi_batches_failed_total",
            "Writer batches whose commit failed.",
            self.batches_failed.load(Ordering::Relaxed),
        );
        counter(
            &mut output,
            "bahi_commands_rejected_total",
            "Commands refused by the domain.",
            self.commands_rejected.load(Ordering::Relaxed),
        );
        self.batch_size.render(&mut output, "bahi_writer_batch_size", "Events per committed batch.");
        self.commit_seconds.render(&mut output, "bahi_writer_commit_seconds", "Time to commit one batch.");
        let head = self.log_head_position.load(Ordering::Relaxed);
        let _ = writeln!(
            output,
            "# HELP bahi_log_head_position Position of the last event.\n# TYPE bahi_log_head_position gauge\nbahi_log_head_position {head}"
        );
        let _ = writeln!(
            output,
            "# HELP bahi_projection_lag_events Events committed but not yet in a SQL read model.\n# TYPE bahi_projection_lag_events gauge"
        );
        for (name, position) in self.projection_positions.lock().iter() {
            let _ =
                writeln!(output, "bahi_projection_lag_events{{projection=\"{name}\"}} {}", (head - position).max(0));
        }
        let runner = u8::from(self.projection_runner.load(Ordering::Relaxed));
        let _ = writeln!(
            output,
            "# HELP bahi_projection_runner 1 when this node folds events into the SQL read models (one node of a PostgreSQL cluster does).\n# TYPE bahi_projection_runner gauge\nbahi_projection_runner {runner}"
        );
        if self.tailer.running.load(Ordering::Relaxed) {
            counter(
                &mut output,
                "bahi_tailer_failures_total",
                "Catch-ups of other nodes' events that failed.",
                self.tailer.failures.load(Ordering::Relaxed),
            );
            counter(
                &mut output,
                "bahi_tailer_reconnects_total",
                "Times the LISTEN connection was lost.",
                self.tailer.reconnects.load(Ordering::Relaxed),
            );
            let behind = self
                .tailer
                .caught_up_milliseconds_ago()
                .map_or_else(|| "-1".to_owned(), |millis| format!("{}.{:03}", millis / 1000, millis % 1000));
            let _ = writeln!(
                output,
                "# HELP bahi_tailer_caught_up_seconds_ago Seconds since the tailer last read the log to its end (-1: never).\n# TYPE bahi_tailer_caught_up_seconds_ago gauge\nbahi_tailer_caught_up_seconds_ago {behind}"
            );
        }
        let _ = writeln!(
            output,
            "# HELP bahi_http_responses_total HTTP responses by status class.\n# TYPE bahi_http_responses_total counter"
        );
        for (class, count) in self.http_responses.iter().enumerate().skip(1) {
            let _ =
                writeln!(output, "bahi_http_responses_total{{class=\"{class}xx\"}} {}", count.load(Ordering::Relaxed));
        }
        output
    }
}
