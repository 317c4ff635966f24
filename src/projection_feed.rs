//! Committed events handed from the writer's publisher to the live projection runner.
//!
//! Without it the runner read back from the database, and decoded again, every event this
//! node's writer had just committed and still held decoded. Under authorize+usage load on
//! PostgreSQL that read competed with the appends for the database's backends and for the
//! node's two cores (BENCHMARKS.md). The feed is only a shortcut: it holds committed events
//! in log order, bounded in number, and the runner falls back to reading the log whenever
//! the feed does not hold the very next event it needs (the feed dropped it for room, the
//! event was appended by another node, or the node has just started).

use std::collections::VecDeque;

use bahi_domain::Event;
use parking_lot::Mutex;

/// Events the feed holds at most. At 20,000 events/s and a runner that folds every 250 ms,
/// about 5,000 wait at a time; past this bound the oldest go, and the runner reads them
/// from the log instead.
pub const FEED_CAPACITY: usize = 65_536;

/// A bounded queue of committed events and their positions, in log order.
#[derive(Debug)]
pub struct ProjectionFeed {
    events: Mutex<VecDeque<(i64, Event)>>,
    capacity: usize,
}

impl Default for ProjectionFeed {
    fn default() -> ProjectionFeed {
        ProjectionFeed::with_capacity(FEED_CAPACITY)
    }
}

impl ProjectionFeed {
    /// A feed that holds at most `capacity` events (at least one).
    pub fn with_capacity(capacity: usize) -> ProjectionFeed {
        ProjectionFeed { events: Mutex::new(VecDeque::new()), capacity: capacity.max(1) }
    }

    /// Adds committed events, in log order, dropping the oldest ones past the capacity.
    /// Positions need not follow the last one pushed: events other nodes appended in between
    /// are never pushed, and the runner reads them from the log.
    pub fn push(&self, committed: impl IntoIterator<Item = (i64, Event)>) {
        let mut events = self.events.lock();
        events.extend(committed);
        let excess = events.len().saturating_sub(self.capacity);
        events.drain(..excess);
    }

    /// Up to `limit` events that follow `position` without a gap, oldest first, taken out of
    /// the feed. Events at or below `position` are dropped (they are projected already).
    /// Empty when the feed does not hold the event at `position + 1`.
    pub fn take_after(&self, position: i64, limit: usize) -> Vec<(i64, Event)> {
        let mut events = self.events.lock();
        let projected = events.partition_point(|(at, _)| *at <= position);
        events.drain(..projected);
        let mut contiguous = 0;
        for (at, _) in events.iter().take(limit) {
            if *at != position + 1 + contiguous as i64 {
                break;
            }
            contiguous += 1;
        }
        events.drain(..contiguous).collect()
    }

    /// Events held now.
    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bahi_domain::billing::Price;
    use bahi_domain::event::PriceSet;
    use bahi_domain::money::Money;

    fn event(position: i64) -> (i64, Event) {
        let Ok(amount) = Money::parse(&position.to_string()) else { unreachable!() };
        let price = Price { input_per_million: amount, output_per_million: amount };
        let event = Event::PriceSet(PriceSet {
            model: format!("model-{position}"),
            price,
            default_hold: None,
            set_at: chrono::DateTime::UNIX_EPOCH,
        });
        (position, event)
    }

    fn positions(events: &[(i64, Event)]) -> Vec<i64> {
        events.iter().map(|(position, _)| *position).collect()
    }

    #[test]
    fn takes_contiguous_events_after_a_position_and_drops_older_ones() {
        let feed = ProjectionFeed::default();
        feed.push((1..=10).map(event));
        assert_eq!(positions(&feed.take_after(3, 4)), vec![4, 5, 6, 7]);
        assert_eq!(feed.len(), 3);
        assert_eq!(positions(&feed.take_after(7, 100)), vec![8, 9, 10]);
        assert!(feed.is_empty());
    }

    #[test]
    fn a_gap_stops_the_take_and_a_missing_next_event_gives_nothing() {
        let feed = ProjectionFeed::default();
        // 6 and 7 were appended by another node: never pushed here.
        feed.push((3..=5).map(event));
        feed.push((8..=9).map(event));
        assert!(feed.take_after(1, 100).is_empty(), "position 2 is not in the feed");
        assert_eq!(feed.len(), 5, "nothing after the missing event is dropped");
        assert_eq!(positions(&feed.take_after(2, 100)), vec![3, 4, 5]);
        assert!(feed.take_after(5, 100).is_empty(), "6 and 7 come from the log");
        assert_eq!(positions(&feed.take_after(7, 100)), vec![8, 9]);
    }

    #[test]
    fn past_its_capacity_the_feed_drops_its_oldest_events() {
        let feed = ProjectionFeed::with_capacity(4);
        feed.push((1..=3).map(event));
        feed.push((4..=6).map(event));
        assert_eq!(feed.len(), 4);
        assert!(feed.take_after(0, 100).is_empty(), "1 and 2 were dropped for room");
        assert_eq!(positions(&feed.take_after(2, 100)), vec![3, 4, 5, 6]);
    }

    #[test]
    fn the_events_come_out_as_they_went_in() {
        let feed = ProjectionFeed::default();
        feed.push([event(1)]);
        assert_eq!(feed.take_after(0, 1), vec![event(1)]);
    }
}
