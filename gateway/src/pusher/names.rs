//! Pusher channel names and their place on the hub.
//!
//! A Pusher channel `c` of app `a` lives on the hub and the backplane as
//! `!a!c`. `!` is never part of a v1 channel name
//! ([`crate::protocol::valid_channel`]) nor of an app id, so the two
//! protocols' channels cannot meet, apps cannot see each other's channels,
//! and anything keyed by channel (fan-out, presence, occupancy, webhooks)
//! tells a Pusher channel by its first byte.

/// Longest Pusher channel name (the official server libraries' limit).
pub const MAX_CHANNEL: usize = 200;

/// Prefix of the server-to-user channel of a signed-in user.
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// What a channel's name makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe.
    Public,
    /// `private-`: a signature over socket id and channel.
    Private,
    /// `private-encrypted-`: like private; the data is end-to-end
    /// encrypted by the apps and relayed as is.
    Encrypted,
    /// `presence-`: a signature over socket id, channel and channel data;
    /// members are tracked.
    Presence,
    /// `#server-to-user-<id>`: only the connection signed in as `<id>`.
    User,
}

impl Kind {
    /// The kind of channel `name`.
    pub fn of(name: &str) -> Kind {
        if name.starts_with("presence-") {
            Kind::Presence
        } else if name.starts_with("private-encrypted-") {
            Kind::Encrypted
        } else if name.starts_with("private-") {
            Kind::Private
        } else if name.starts_with(USER_CHANNEL_PREFIX) {
            Kind::User
        } else {
            Kind::Public
        }
    }

    /// Whether a subscribe needs a signature.
    pub fn needs_auth(self) -> bool {
        matches!(self, Kind::Private | Kind::Encrypted | Kind::Presence)
    }

    /// Whether clients may send client events on it.
    pub fn allows_client_events(self) -> bool {
        matches!(self, Kind::Private | Kind::Encrypted | Kind::Presence)
    }

    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::Private => "private",
            Kind::Encrypted => "private_encrypted",
            Kind::Presence => "presence",
            Kind::User => "user",
        }
    }
}

/// Whether `name` is a valid Pusher channel name: 1-200 bytes of
/// `[A-Za-z0-9_\-=@,.;]`, or a server-to-user channel.
pub fn valid_channel(name: &str) -> bool {
    let body = name.strip_prefix('#').unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_CHANNEL
        && (body.len() == name.len() || name.starts_with(USER_CHANNEL_PREFIX))
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The hub name of channel `channel` of app `app`.
pub fn hub_channel(app: &str, channel: &str) -> String {
    let mut s = String::with_capacity(app.len() + channel.len() + 2);
    s.push('!');
    s.push_str(app);
    s.push('!');
    s.push_str(channel);
    s
}

/// The (app, channel) of a hub channel name, `None` for a v1 channel.
pub fn split(hub: &str) -> Option<(&str, &str)> {
    hub.strip_prefix('!')?.split_once('!')
}

/// The hub name of a signed-in user's control channel: a publication on
/// it closes its subscribers (the user's connections) instead of reaching
/// them (`terminate_connections`). `#` keeps it apart from every channel a
/// client may name.
pub fn user_control_channel(app: &str, user: &str) -> String {
    let mut s = hub_channel(app, "#user-");
    s.push_str(user);
    s
}

/// Whether a hub channel is a user control channel.
pub fn is_control(hub: &str) -> bool {
    split(hub).is_some_and(|(_, c)| c.starts_with("#user-"))
}

/// Whether a hub channel is one of a Pusher app's internal channels (a
/// user's control or server-to-user channel): not listed, no webhooks.
pub fn is_internal(hub: &str) -> bool {
    split(hub).is_some_and(|(_, c)| c.starts_with('#'))
}

/// Whether a hub channel name is a Pusher one (cheap: one byte).
pub fn is_pusher(hub: &str) -> bool {
    hub.as_bytes().first() == Some(&b'!')
}

/// Whether a hub channel is a Pusher presence channel.
pub fn is_presence(hub: &str) -> bool {
    split(hub).is_some_and(|(_, c)| Kind::of(c) == Kind::Presence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_names() {
        assert_eq!(Kind::of("presence-room"), Kind::Presence);
        assert_eq!(Kind::of("private-encrypted-x"), Kind::Encrypted);
        assert_eq!(Kind::of("private-x"), Kind::Private);
        assert_eq!(Kind::of("#server-to-user-42"), Kind::User);
        assert_eq!(Kind::of("news"), Kind::Public);
        assert!(valid_channel("private-orders.1"));
        assert!(valid_channel("a=b@c,d;e_f-g"));
        assert!(valid_channel("#server-to-user-7"));
        assert!(!valid_channel("#other"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("has space"));
        assert!(!valid_channel("a:b"));
        assert!(!valid_channel("a!b"));
        assert!(!valid_channel(&"x".repeat(201)));
    }

    #[test]
    fn hub_names_round_trip_and_never_look_like_v1() {
        let h = hub_channel("app-1", "presence-room");
        assert_eq!(h, "!app-1!presence-room");
        assert_eq!(split(&h), Some(("app-1", "presence-room")));
        assert!(is_pusher(&h) && is_presence(&h));
        assert!(!crate::protocol::valid_channel(&h));
        assert_eq!(split("chat:room"), None);
        let c = user_control_channel("a", "u1");
        assert!(is_control(&c) && is_internal(&c) && !valid_channel(split(&c).unwrap().1));
        assert!(is_internal("!a!#server-to-user-u1") && !is_control("!a!#server-to-user-u1"));
        assert!(!is_pusher("chat:room"));
    }
}
