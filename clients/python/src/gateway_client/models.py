"""Typed views of the HTTP API's answers (docs/protocol.md, "HTTP server API v1").

Every model keeps the parsed JSON it came from in ``raw``, so a field the
gateway adds later (v1 adds fields, never renames them) is reachable as
``model.raw["new_field"]`` or ``model["new_field"]`` before the SDK knows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

__all__ = [
    "Model",
    "PublishResult",
    "Member",
    "Presence",
    "HistoryMessage",
    "History",
    "PresenceSummary",
    "HistorySummary",
    "ChannelInfo",
    "ChannelEntry",
    "ChannelPage",
    "UserConnection",
    "UserStatus",
    "NodeInfo",
]


@dataclass(frozen=True)
class Model:
    """Base of the answer types: ``raw`` is the JSON object as received."""

    raw: Dict[str, Any] = field(repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``raw.get(key, default)``."""
        return self.raw.get(key, default)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object as the gateway sent it (a shallow copy of ``raw``),
        e.g. to return from a web framework handler."""
        return dict(self.raw)


def _obj(v: Any, what: str) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"unexpected answer: {what} is not a JSON object: {v!r}")
    return v


@dataclass(frozen=True)
class PublishResult(Model):
    """Answer of ``publish``: the publication's offset (``None`` without history)."""

    offset: Optional[int]

    @classmethod
    def from_json(cls, d: Any) -> "PublishResult":
        d = _obj(d, "publish answer")
        return cls(raw=d, offset=d.get("offset"))


@dataclass(frozen=True)
class Member(Model):
    """A presence member: one connection (``user`` is ``""`` when anonymous)."""

    user: str
    conn: str
    node: str
    info: Any = None

    @classmethod
    def from_json(cls, d: Any) -> "Member":
        d = _obj(d, "member")
        return cls(raw=d, user=d.get("user", ""), conn=d["conn"], node=d.get("node", ""), info=d.get("info"))


@dataclass(frozen=True)
class Presence(Model):
    """Answer of ``presence``: every member of the channel (the HTTP API lists all)."""

    channel: str
    members: List[Member]

    @property
    def users(self) -> List[str]:
        """Distinct non-anonymous user ids, sorted."""
        return sorted({m.user for m in self.members if m.user})

    @classmethod
    def from_json(cls, d: Any) -> "Presence":
        d = _obj(d, "presence answer")
        return cls(raw=d, channel=d["channel"], members=[Member.from_json(m) for m in d.get("members", [])])


@dataclass(frozen=True)
class HistoryMessage(Model):
    """One retained publication; ``from_`` is the publisher's user id (``None``
    for the HTTP API or anonymous)."""

    offset: Optional[int]
    data: Any
    from_: Optional[str]

    @classmethod
    def from_json(cls, d: Any) -> "HistoryMessage":
        d = _obj(d, "history message")
        return cls(raw=d, offset=d.get("offset"), data=d.get("data"), from_=d.get("from"))


@dataclass(frozen=True)
class History(Model):
    """Answer of ``history``: the stream's position (``epoch``, top ``offset``)
    and the retained messages after ``since``, oldest first."""

    channel: str
    epoch: str
    offset: int
    messages: List[HistoryMessage]

    @classmethod
    def from_json(cls, d: Any) -> "History":
        d = _obj(d, "history answer")
        return cls(
            raw=d,
            channel=d["channel"],
            epoch=d.get("epoch", ""),
            offset=d.get("offset", 0),
            messages=[HistoryMessage.from_json(m) for m in d.get("messages", [])],
        )


@dataclass(frozen=True)
class PresenceSummary(Model):
    """``presence`` of a channel info: connections present and distinct users."""

    members: int
    users: int


@dataclass(frozen=True)
class HistorySummary(Model):
    """``history`` of a channel info: retained ``length``, newest offset, epoch."""

    length: int
    top_offset: int
    epoch: str


@dataclass(frozen=True)
class ChannelInfo(Model):
    """Answer of ``channel``: cluster-wide subscribers, presence and history
    summaries (``None`` when the namespace has no presence / history)."""

    channel: str
    subscribers: int
    presence: Optional[PresenceSummary]
    history: Optional[HistorySummary]

    @classmethod
    def from_json(cls, d: Any) -> "ChannelInfo":
        d = _obj(d, "channel answer")
        p = d.get("presence")
        h = d.get("history")
        return cls(
            raw=d,
            channel=d["channel"],
            subscribers=d.get("subscribers", 0),
            presence=None if p is None else PresenceSummary(raw=p, members=p["members"], users=p["users"]),
            history=None
            if h is None
            else HistorySummary(raw=h, length=h["length"], top_offset=h["top_offset"], epoch=h.get("epoch", "")),
        )


@dataclass(frozen=True)
class ChannelEntry(Model):
    """One channel of a listing page."""

    channel: str
    subscribers: int

    @classmethod
    def from_json(cls, d: Any) -> "ChannelEntry":
        d = _obj(d, "channel entry")
        return cls(raw=d, channel=d["channel"], subscribers=d.get("subscribers", 0))


@dataclass(frozen=True)
class ChannelPage(Model):
    """Answer of ``channels``: one page; pass ``next_cursor`` back until it is ``None``."""

    channels: List[ChannelEntry]
    next_cursor: Optional[str]

    @classmethod
    def from_json(cls, d: Any) -> "ChannelPage":
        d = _obj(d, "channels answer")
        return cls(
            raw=d,
            channels=[ChannelEntry.from_json(c) for c in d.get("channels", [])],
            next_cursor=d.get("next_cursor"),
        )


@dataclass(frozen=True)
class UserConnection(Model):
    """One connection of a user."""

    conn: str
    node: str


@dataclass(frozen=True)
class UserStatus(Model):
    """Answer of ``user_status``: whether the user is online anywhere, and where."""

    user: str
    online: bool
    connections: List[UserConnection]

    @classmethod
    def from_json(cls, d: Any) -> "UserStatus":
        d = _obj(d, "user answer")
        conns = [UserConnection(raw=c, conn=c["conn"], node=c.get("node", "")) for c in d.get("connections", [])]
        return cls(raw=d, user=d["user"], online=bool(d.get("online")), connections=conns)


@dataclass(frozen=True)
class NodeInfo(Model):
    """One live node: open connections, locally subscribed channels, start
    time (unix seconds) and version."""

    id: str
    connections: int
    subscriptions: int
    started_at: int
    version: str

    @classmethod
    def from_json(cls, d: Any) -> "NodeInfo":
        d = _obj(d, "node")
        return cls(
            raw=d,
            id=d["id"],
            connections=d.get("connections", 0),
            subscriptions=d.get("subscriptions", 0),
            started_at=d.get("started_at", 0),
            version=d.get("version", ""),
        )


def nodes_from_json(d: Any) -> List[NodeInfo]:
    """The ``nodes`` list of ``GET /api/nodes``."""
    d = _obj(d, "nodes answer")
    return [NodeInfo.from_json(n) for n in d.get("nodes", [])]


def empty_from_json(d: Any) -> Mapping[str, Any]:
    """Answers ``{}`` of the send/disconnect/subscribe routes."""
    return _obj(d, "answer")
