//! Unit tests of the hub: subscribe and delivery rules, interest flips,
//! presence members.

use super::*;
use crate::backplane::{Deliver, Envelope, Publication};
use parking_lot::Mutex;
use serde_json::value::RawValue;

fn next(out: &mut crate::outbox::Outbox) -> Option<Utf8Bytes> {
    let mut v = std::collections::VecDeque::new();
    out.try_recv_many(&mut v, 1).and_then(|_| v.pop_front())
}

fn publication(channel: &str, offset: Option<u64>) -> Publication {
    Publication {
        channel: channel.into(),
        data: RawValue::from_string(format!("{}", offset.unwrap_or(0))).unwrap(),
        from: None,
        offset,
        epoch: offset.map(|_| "e".to_owned()),
        exclude: None,
        ts_us: 0,
    }
}

/// Records what the hub reports, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(Topic, bool)>>);

impl Interest for Recorder {
    fn set(&self, topic: &Topic, on: bool) {
        self.0.lock().push((topic.clone(), on));
    }
}

fn hub() -> (Hub, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (Hub::new("n".into(), rec.clone()), rec)
}

fn at(offset: u64) -> Option<Position> {
    Some(Position {
        offset,
        epoch: Arc::from("e"),
    })
}

#[test]
fn a_user_past_its_limit_is_refused_and_leaves_nothing() {
    let rec = Arc::new(Recorder::default());
    let hub = Hub::new("n".into(), rec.clone()).with_user_limit(2);
    let user = |i: u32| {
        ConnHandle::new(
            format!("n.1.{i}").into(),
            Some(Arc::from("alice")),
            None,
            1 << 20,
        )
        .0
    };
    let (a, b, c) = (user(1), user(2), user(3));
    assert!(hub.add_conn(&a));
    assert!(hub.add_conn(&b));
    assert!(!hub.add_conn(&c), "third connection of alice admitted");
    assert_eq!(hub.connection_count(), 2);
    assert!(hub.conn("n.1.3").is_none());
    assert_eq!(hub.user_conns("alice").len(), 2);
    // Anonymous connections and other users are not counted.
    let (anon, _) = ConnHandle::new("n.1.4".into(), None, None, 1 << 20);
    assert!(hub.add_conn(&anon));
    hub.remove_conn(&a);
    assert!(hub.add_conn(&c), "a slot came back");
    hub.remove_conn(&b);
    hub.remove_conn(&c);
    assert!(hub.user_conns("alice").is_empty());
    let user_topic = Topic::User("alice".into());
    let flips: Vec<bool> = rec
        .0
        .lock()
        .iter()
        .filter(|(t, _)| *t == user_topic)
        .map(|(_, on)| *on)
        .collect();
    assert_eq!(flips, [true, false], "user topic on once, off once");
}

#[test]
fn a_subscriptions_own_info_is_its_presence_info() {
    let (hub, _) = hub();
    let conn_info = RawValue::from_string(r#"{"name":"Mo"}"#.to_owned()).unwrap();
    let (c, _out) = ConnHandle::new("n.1.1".into(), Some("mo".into()), Some(conn_info), 1 << 20);
    assert!(hub.add_conn(&c));
    let own = RawValue::from_string(r#"{"role":"mod"}"#.to_owned()).unwrap();
    hub.add_subscriber("a", &c, Some(own));
    hub.add_subscriber("b", &c, None);
    let mut infos: Vec<(String, String)> = (0..SHARDS)
        .flat_map(|s| hub.presence_members(s, |_| true))
        .map(|(ch, m)| (ch, m.info.map(|i| i.get().to_owned()).unwrap_or_default()))
        .collect();
    infos.sort();
    assert_eq!(
        infos,
        [
            ("a".to_owned(), r#"{"role":"mod"}"#.to_owned()),
            ("b".to_owned(), r#"{"name":"Mo"}"#.to_owned())
        ],
        "what the presence refresh and restore write"
    );
}

#[test]
fn pending_subscriber_gets_reply_then_unseen_parked_messages() {
    let (hub, _) = hub();
    let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
    assert!(hub.add_conn(&c));
    assert_eq!(hub.add_subscriber("ch", &c, None), AddOutcome::Added);
    assert_eq!(
        hub.add_subscriber("ch", &c, None),
        AddOutcome::AlreadySubscribed
    );
    hub.deliver(Envelope::Message(publication("ch", Some(5))));
    hub.deliver(Envelope::Message(publication("ch", Some(6))));
    assert!(next(&mut out).is_none(), "parked while pending");
    assert!(hub.finish_subscribe("ch", &c, vec![Utf8Bytes::from_static("reply")], at(5)));
    assert_eq!(next(&mut out).unwrap().as_str(), "reply");
    assert!(next(&mut out).unwrap().as_str().contains("\"offset\":6"));
    assert!(
        next(&mut out).is_none(),
        "offset 5 was covered by the reply position"
    );
    hub.deliver(Envelope::Message(publication("ch", Some(7))));
    assert!(next(&mut out).unwrap().as_str().contains("\"offset\":7"));
    // A new epoch restarts offsets: not mistaken for duplicates.
    let mut reset = publication("ch", Some(1));
    reset.epoch = Some("f".into());
    hub.deliver(Envelope::Message(reset));
    assert!(next(&mut out).unwrap().as_str().contains("\"epoch\":\"f\""));
    assert_eq!(
        c.queued_bytes(),
        "reply".len() + 3 * message_frame(&publication("ch", Some(6))).len()
    );
}

/// The old filter forgot the reply position 3 s after the subscribe, so
/// a delivery held back longer leaked duplicates. The position is exact:
/// however late, an offset at or below it is never delivered again, the
/// next one is, and a jump past the next one closes the connection
/// (4005) instead of hiding the gap.
#[tokio::test(start_paused = true)]
async fn deliveries_held_back_past_3_s_leak_no_duplicate_and_hide_no_gap() {
    let (hub, _) = hub();
    let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
    assert!(hub.add_conn(&c));
    hub.add_subscriber("ch", &c, None);
    assert!(hub.finish_subscribe("ch", &c, vec![], at(5)));
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    // Publications the reply already covered, arriving 10 s late.
    for o in [3, 4, 5] {
        hub.deliver(Envelope::Message(publication("ch", Some(o))));
    }
    assert!(next(&mut out).is_none(), "a duplicate leaked");
    hub.deliver(Envelope::Message(publication("ch", Some(6))));
    assert!(next(&mut out).unwrap().as_str().contains("\"offset\":6"));
    hub.deliver(Envelope::Message(publication("ch", Some(6))));
    assert!(next(&mut out).is_none(), "the same offset twice");
    // 7 never arrives: 8 is a gap, the client must recover.
    hub.deliver(Envelope::Message(publication("ch", Some(8))));
    assert!(next(&mut out).is_none(), "delivered across a gap");
    assert_eq!(
        c.close_reason().map(|r| r.code),
        Some(crate::protocol::close::MISSED_MESSAGES)
    );
}

/// A publication the subscriber is excluded from (its own, without
/// echo) moves its position too: the next one is not a gap.
#[test]
fn an_excluded_publication_is_not_a_gap() {
    let (hub, _) = hub();
    let (c, mut out) = ConnHandle::new("n.1.1".into(), None, None, 1 << 20);
    assert!(hub.add_conn(&c));
    hub.add_subscriber("ch", &c, None);
    let mut own = publication("ch", Some(1));
    own.exclude = Some("n.1.1".into());
    hub.deliver(Envelope::Message(own.clone()));
    assert!(hub.finish_subscribe("ch", &c, vec![], at(0)));
    own.offset = Some(2);
    hub.deliver(Envelope::Message(own));
    hub.deliver(Envelope::Message(publication("ch", Some(3))));
    assert!(next(&mut out).unwrap().as_str().contains("\"offset\":3"));
    assert!(!c.is_closing());
}

/// The hub is the one reference count: interest goes on with the first
/// local subscriber (or a user's first connection) and off with the last.
#[test]
fn interest_follows_the_first_and_the_last_reference() {
    let (hub, rec) = hub();
    let (a, _oa) = ConnHandle::new("n.1.1".into(), Some("u".into()), None, 1 << 20);
    let (b, _ob) = ConnHandle::new("n.1.2".into(), Some("u".into()), None, 1 << 20);
    for c in [&a, &b] {
        assert!(hub.add_conn(c));
        hub.add_subscriber("ch", c, None);
    }
    hub.remove_subscriber("ch", &a);
    hub.remove_conn(&a);
    hub.remove_conn(&a);
    assert_eq!(
        *rec.0.lock(),
        [
            (Topic::User("u".into()), true),
            (Topic::Channel("ch".into()), true)
        ]
    );
    hub.remove_subscriber("ch", &b);
    hub.remove_conn(&b);
    assert_eq!(rec.0.lock().len(), 4);
    assert_eq!(rec.0.lock()[2], (Topic::Channel("ch".into()), false));
    assert_eq!(rec.0.lock()[3], (Topic::User("u".into()), false));
    assert_eq!(hub.subscription_count(), 0);
}

#[test]
fn exclude_and_removal() {
    let (hub, _) = hub();
    let (a, mut out_a) = ConnHandle::new("n.1.1".into(), Some("u".into()), None, 1 << 20);
    let (b, mut out_b) = ConnHandle::new("n.1.2".into(), Some("u".into()), None, 1 << 20);
    for c in [&a, &b] {
        assert!(hub.add_conn(c));
        hub.add_subscriber("ch", c, None);
        hub.finish_subscribe("ch", c, vec![], None);
    }
    assert_eq!(hub.channel_count(), 1);
    let mut p = publication("ch", None);
    p.exclude = Some("n.1.1".into());
    hub.deliver(Envelope::Message(p));
    assert!(next(&mut out_a).is_none());
    assert!(next(&mut out_b).is_some());
    assert_eq!(hub.user_conns("u").len(), 2);
    assert!(hub.remove_subscriber("ch", &a));
    assert!(!hub.remove_subscriber("ch", &a));
    assert!(hub.remove_subscriber("ch", &b));
    assert_eq!(hub.channel_count(), 0);
    hub.remove_conn(&a);
    hub.remove_conn(&b);
    assert_eq!(hub.connection_count(), 0);
    assert!(hub.user_conns("u").is_empty());
}
