//! The ack tracker: a pure state machine (no I/O, the clock passed in) that
//! decides which outbox alerts the uplink publishes and when it re-sends them.
//!
//! Acks are cumulative (`up_to_seq`), so the tracker works go-back-N: it keeps
//! a cursor (everything `<= cursor` was published on this connection) and a
//! queue of in-flight flights (`first..=last`, when published). It re-offers
//! everything unacknowledged
//! - after a (re)connect, and
//! - when the oldest flight has waited the resend timeout without an ack.
//!
//! The resend timeout starts at `resend_after` and doubles after every
//! timeout, up to [`MAX_RESEND_BACKOFF`] times `resend_after`; an ack that
//! covers something new, or a reconnect, sets it back. A coordinator that is
//! slow but working (a backlog, a slow Kafka) thus gets more time instead of
//! ever more copies of the same alerts, which would only slow it down more.
//!
//! Acks that are old or duplicated are ignored. An ack above the highest seq
//! that may ever have been sent (this process's sends, or anything the outbox
//! held at start, which a previous process may have sent) is clamped to it, so
//! a stray or misrouted ack can never delete an alert that was never sent.
//! The number of alerts in flight is bounded by `window`.
//!
//! Nothing here is persisted: after a restart the tracker starts from the
//! outbox (everything in it is unacknowledged and is sent again).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The resend timeout grows to at most this many times `resend_after`.
pub const MAX_RESEND_BACKOFF: u32 = 8;

/// Limits of the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckConfig {
    /// Most alerts per send request.
    pub batch_max: usize,
    /// Most alerts in flight (published, not acknowledged).
    pub window: usize,
    /// Re-send everything unacknowledged when the oldest flight is this old
    /// (the first time; see the module docs for the back-off).
    pub resend_after: Duration,
}

impl Default for AckConfig {
    fn default() -> Self {
        AckConfig {
            batch_max: 500,
            window: 5000,
            resend_after: Duration::from_secs(10),
        }
    }
}

/// What the uplink should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read up to `max` alerts with `seq > after` from the outbox and publish them
    /// (then report them with [`AckTracker::on_sent`]).
    Send {
        /// Exclusive lower bound of the seqs to send.
        after: u64,
        /// Most alerts to send now.
        max: usize,
    },
    /// Nothing to send until new alerts arrive, an ack frees the window, or `until` passes.
    Wait {
        /// When the oldest flight times out, if anything is in flight.
        until: Option<Instant>,
    },
}

/// One publish: seqs `first..=last` (possibly with gaps), `count` alerts at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flight {
    first: u64,
    last: u64,
    count: usize,
    sent_at: Instant,
}

/// The tracker's state; see the module docs.
#[derive(Debug, Clone)]
pub struct AckTracker {
    cfg: AckConfig,
    acked: u64,
    cursor: u64,
    sent_high: u64,
    connected: bool,
    flights: VecDeque<Flight>,
    in_flight: usize,
    resends: u64,
    /// The current resend timeout (`resend_after`, doubled after each timeout).
    timeout: Duration,
}

impl AckTracker {
    /// A tracker for an outbox whose alerts `<= acked` are gone and which may
    /// hold alerts up to `maybe_sent` that a previous process published.
    pub fn new(cfg: AckConfig, acked: u64, maybe_sent: u64) -> Self {
        let cfg = AckConfig {
            batch_max: cfg.batch_max.max(1),
            window: cfg.window.max(1),
            ..cfg
        };
        AckTracker {
            cfg,
            acked,
            cursor: acked,
            sent_high: maybe_sent.max(acked),
            connected: false,
            flights: VecDeque::new(),
            in_flight: 0,
            resends: 0,
            timeout: cfg.resend_after,
        }
    }

    /// The highest seq acknowledged (cumulative).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Everything `<= cursor` has been published on this connection.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Alerts published and not yet acknowledged (an upper bound).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// How often everything in flight was re-offered after a timeout.
    pub fn timeouts(&self) -> u64 {
        self.resends
    }

    fn rewind(&mut self) {
        self.cursor = self.acked;
        self.flights.clear();
        self.in_flight = 0;
    }

    /// The resend timeout in force now.
    pub fn resend_timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection is up (CONNACK): everything unacknowledged is offered again.
    pub fn on_connected(&mut self) {
        self.connected = true;
        self.timeout = self.cfg.resend_after;
        self.rewind();
    }

    /// The connection dropped: nothing is sent until [`AckTracker::on_connected`].
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// What to do now.
    pub fn next(&mut self, now: Instant) -> Next {
        if !self.connected {
            return Next::Wait { until: None };
        }
        if let Some(f) = self.flights.front()
            && now.saturating_duration_since(f.sent_at) >= self.timeout
        {
            self.resends += 1;
            self.timeout = (self.timeout * 2).min(self.cfg.resend_after * MAX_RESEND_BACKOFF);
            self.rewind();
        }
        let room = self.cfg.window.saturating_sub(self.in_flight);
        if room == 0 {
            return Next::Wait {
                until: self.deadline(),
            };
        }
        Next::Send {
            after: self.cursor,
            max: room.min(self.cfg.batch_max),
        }
    }

    /// When the oldest flight times out, if anything is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        self.flights.front().map(|f| f.sent_at + self.timeout)
    }

    /// The uplink published `seqs` (ascending, all `> cursor`) at `now`.
    /// An empty slice means the outbox had nothing after the cursor.
    pub fn on_sent(&mut self, seqs: &[u64], now: Instant) {
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return;
        };
        // Seqs at or below the cursor were already in flight; keep the bookkeeping monotonic.
        if last <= self.cursor {
            return;
        }
        let first = first.max(self.cursor + 1);
        let count = seqs.iter().filter(|&&s| s >= first).count();
        self.flights.push_back(Flight {
            first,
            last,
            count,
            sent_at: now,
        });
        self.in_flight += count;
        self.cursor = last;
        self.sent_high = self.sent_high.max(last);
    }

    /// An ack for `up_to_seq` arrived. Returns the seq up to which the outbox
    /// may now delete, or `None` when the ack is old, duplicated or covers nothing sent.
    pub fn on_ack(&mut self, up_to_seq: u64) -> Option<u64> {
        let effective = up_to_seq.min(self.sent_high);
        if effective <= self.acked {
            return None;
        }
        self.acked = effective;
        self.timeout = self.cfg.resend_after;
        while let Some(f) = self.flights.front_mut() {
            if f.last <= effective {
                self.in_flight -= f.count;
                self.flights.pop_front();
            } else {
                if f.first <= effective {
                    let remaining = f.count.min((f.last - effective) as usize);
                    self.in_flight -= f.count - remaining;
                    f.count = remaining;
                    f.first = effective + 1;
                }
                break;
            }
        }
        self.cursor = self.cursor.max(effective);
        Some(effective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn cfg() -> AckConfig {
        AckConfig {
            batch_max: 3,
            window: 6,
            resend_after: Duration::from_secs(10),
        }
    }

    fn send(t: &mut AckTracker, outbox: &BTreeSet<u64>, now: Instant) -> Vec<u64> {
        match t.next(now) {
            Next::Send { after, max } => {
                let seqs: Vec<u64> = outbox.range(after + 1..).take(max).copied().collect();
                t.on_sent(&seqs, now);
                seqs
            }
            Next::Wait { .. } => Vec::new(),
        }
    }

    #[test]
    fn nothing_is_sent_before_the_first_connect() {
        let mut t = AckTracker::new(cfg(), 0, 0);
        assert_eq!(t.next(Instant::now()), Next::Wait { until: None });
    }

    #[test]
    fn sends_in_batches_until_the_window_is_full_then_waits() {
        let now = Instant::now();
        let outbox: BTreeSet<u64> = (1..=10).collect();
        let mut t = AckTracker::new(cfg(), 0, 0);
        t.on_connected();
        assert_eq!(send(&mut t, &outbox, now), vec![1, 2, 3]);
        assert_eq!(send(&mut t, &outbox, now), vec![4, 5, 6]);
        assert_eq!(
            t.next(now),
            Next::Wait {
                until: Some(now + Duration::from_secs(10))
            }
        );
        assert_eq!(t.on_ack(4), Some(4));
        assert_eq!(t.in_flight(), 2);
        assert_eq!(send(&mut t, &outbox, now), vec![7, 8, 9]);
    }

    #[test]
    fn old_and_duplicate_acks_are_ignored() {
        let now = Instant::now();
        let outbox: BTreeSet<u64> = (1..=3).collect();
        let mut t = AckTracker::new(cfg(), 0, 0);
        t.on_connected();
        send(&mut t, &outbox, now);
        assert_eq!(t.on_ack(2), Some(2));
        assert_eq!(t.on_ack(2), None);
        assert_eq!(t.on_ack(1), None);
        assert_eq!(t.on_ack(0), None);
        assert_eq!(t.acked(), 2);
    }

    #[test]
    fn an_ack_beyond_anything_sent_is_clamped_to_what_was_sent() {
        let now = Instant::now();
        let outbox: BTreeSet<u64> = (1..=10).collect();
        // A previous process may have sent up to 4.
        let mut t = AckTracker::new(cfg(), 0, 4);
        assert_eq!(t.on_ack(100), Some(4));
        t.on_connected();
        assert_eq!(send(&mut t, &outbox, now), vec![5, 6, 7]);
        assert_eq!(t.on_ack(1000), Some(7));
        assert_eq!(t.on_ack(1000), None);
    }

    #[test]
    fn everything_unacked_is_offered_again_after_the_timeout() {
        let t0 = Instant::now();
        let outbox: BTreeSet<u64> = (1..=5).collect();
        let mut t = AckTracker::new(cfg(), 0, 0);
        t.on_connected();
        send(&mut t, &outbox, t0);
        send(&mut t, &outbox, t0);
        t.on_ack(1);
        assert_eq!(
            send(&mut t, &outbox, t0 + Duration::from_secs(9)),
            Vec::<u64>::new()
        );
        assert_eq!(
            send(&mut t, &outbox, t0 + Duration::from_secs(10)),
            vec![2, 3, 4]
        );
        assert_eq!(t.timeouts(), 1);
    }

    #[test]
    fn the_resend_timeout_doubles_without_acks_and_resets_on_progress() {
        let t0 = Instant::now();
        let outbox: BTreeSet<u64> = (1..=3).collect();
        let mut t = AckTracker::new(cfg(), 0, 0);
        t.on_connected();
        assert_eq!(send(&mut t, &outbox, t0), vec![1, 2, 3]);
        // 10 s: the first timeout re-sends, then waits 20 s, then 40 s, capped at 80 s.
        let mut at = t0;
        for wait in [10, 20, 40, 80, 80] {
            let early = at + Duration::from_secs(wait - 1);
            assert_eq!(send(&mut t, &outbox, early), Vec::<u64>::new());
            at += Duration::from_secs(wait);
            assert_eq!(
                send(&mut t, &outbox, at),
                vec![1, 2, 3],
                "re-sent after {wait} s"
            );
        }
        assert_eq!(t.timeouts(), 5);
        assert_eq!(t.resend_timeout(), Duration::from_secs(80));
        // An ack that covers something new resets it.
        assert_eq!(t.on_ack(1), Some(1));
        assert_eq!(t.resend_timeout(), Duration::from_secs(10));
        // And so does a reconnect.
        assert_eq!(
            send(&mut t, &outbox, at + Duration::from_secs(10)),
            vec![2, 3]
        );
        assert_eq!(t.resend_timeout(), Duration::from_secs(20));
        t.on_disconnected();
        t.on_connected();
        assert_eq!(t.resend_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn a_reconnect_offers_everything_unacked_again() {
        let now = Instant::now();
        let outbox: BTreeSet<u64> = (1..=3).collect();
        let mut t = AckTracker::new(cfg(), 0, 0);
        t.on_connected();
        send(&mut t, &outbox, now);
        t.on_disconnected();
        assert_eq!(t.next(now), Next::Wait { until: None });
        t.on_connected();
        assert_eq!(send(&mut t, &outbox, now), vec![1, 2, 3]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8),
        Send,
        Ack(u64),
        Tick(u64),
        Disconnect,
        Connect,
        Drop(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..5).prop_map(Op::Append),
            Just(Op::Send),
            Just(Op::Send),
            (0u64..40).prop_map(Op::Ack),
            (0u64..15).prop_map(Op::Tick),
            Just(Op::Disconnect),
            Just(Op::Connect),
            (0u64..40).prop_map(Op::Drop),
        ]
    }

    proptest! {
        #[test]
        fn tracker_invariants_hold_under_any_sequence_of_events(ops in prop::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut outbox = BTreeSet::new();
            let mut last_seq = 0u64;
            let mut ever_sent: BTreeSet<u64> = BTreeSet::new();
            let mut max_ack_received = 0u64;
            let c = cfg();
            let mut t = AckTracker::new(c, 0, 0);
            for op in ops {
                match op {
                    Op::Append(n) => for _ in 0..n { last_seq += 1; outbox.insert(last_seq); },
                    Op::Send => {
                        let acked = t.acked();
                        let sent = send(&mut t, &outbox, now);
                        prop_assert!(sent.iter().all(|&s| s > acked), "re-sent an acked alert");
                        ever_sent.extend(sent);
                    }
                    Op::Ack(a) => {
                        max_ack_received = max_ack_received.max(a);
                        let before = t.acked();
                        if let Some(up_to) = t.on_ack(a) {
                            // Nothing acked that an ack did not cover or that was never sent.
                            prop_assert!(up_to <= a);
                            prop_assert!(up_to > before);
                            let gone: Vec<u64> = outbox.range(..=up_to).copied().collect();
                            for s in gone { prop_assert!(ever_sent.contains(&s)); outbox.remove(&s); }
                        }
                    }
                    Op::Tick(s) => now += Duration::from_secs(s),
                    Op::Disconnect => t.on_disconnected(),
                    Op::Connect => t.on_connected(),
                    // The full-outbox policy removes an arbitrary alert.
                    Op::Drop(s) => { outbox.remove(&s); }
                }
                prop_assert!(t.in_flight() <= c.window, "window exceeded");
                prop_assert!(t.acked() <= max_ack_received);
                prop_assert!(t.acked() <= t.cursor());
            }
            // Liveness: after a reconnect, or once resend_after passed, everything unacked is offered again.
            t.on_connected();
            let mut offered = BTreeSet::new();
            loop {
                let sent = send(&mut t, &outbox, now);
                if sent.is_empty() { break; }
                offered.extend(sent);
                t.on_ack(*offered.last().unwrap());
            }
            prop_assert!(outbox.iter().all(|s| offered.contains(s)), "unacked alerts never offered again");

            // Timeout path: without acks, waiting resend_after re-offers what is in flight.
            let mut t2 = AckTracker::new(c, 0, 0);
            t2.on_connected();
            let first = send(&mut t2, &outbox, now);
            let again = send(&mut t2, &outbox, now + c.resend_after);
            if !first.is_empty() {
                prop_assert_eq!(first, again);
            }
        }
    }
}
