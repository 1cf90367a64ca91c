"""Task logs: progress and log lines of a background job, published to a
history-enabled channel (``task:<id>`` by default) that a page subscribes to
with ``since: {offset: 0}`` to see the lines published before it opened.

A record is ``{"level", "message", "progress", "finished", "ts"}``:

- ``level``: a non-empty str; by convention ``debug``, ``info``,
  ``warning`` or ``error``;
- ``message``: a str (may be empty);
- ``progress``: ``None`` or a percentage, a number from 0 to 100;
- ``finished``: ``True`` on the task's last record;
- ``ts``: when the record was made, **unix milliseconds** (int), the unit
  the gateway uses for its own timestamps (webhook ``time_ms``).

The channel's namespace must exist on the gateway (``[namespaces.task]``
with ``history_size`` > 0, as in gateway.example.toml).
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Tuple

__all__ = ["task_log", "atask_log", "TaskLog", "LEVELS", "record"]

#: Conventional levels (others are accepted).
LEVELS = ("debug", "info", "warning", "error")


def record(
    task_id: Any,
    level: Any,
    message: Any,
    progress: Any,
    finished: Any,
    channel_prefix: Any,
) -> Tuple[str, Dict[str, Any]]:
    """The channel and the record for one task log line (validated)."""
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        raise ValueError(f"task_id must be a non-empty str (or an int), not {task_id!r}")
    if not isinstance(channel_prefix, str):
        raise TypeError(f"channel_prefix must be a str, not {type(channel_prefix).__name__}")
    if not isinstance(level, str) or not level:
        raise ValueError(f"level must be a non-empty str such as {LEVELS}, not {level!r}")
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    if progress is not None:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not math.isfinite(progress):
            raise ValueError(f"progress must be a number from 0 to 100 (percent) or None, not {progress!r}")
        if not 0 <= progress <= 100:
            raise ValueError(f"progress must be from 0 to 100 (percent), not {progress!r}")
    if not isinstance(finished, bool):
        raise TypeError(f"finished must be a bool, not {type(finished).__name__}")
    data = {
        "level": level,
        "message": message,
        "progress": progress,
        "finished": finished,
        "ts": int(time.time() * 1000),
    }
    return f"{channel_prefix}{task_id}", data


def task_log(
    client: Any,
    task_id: Any,
    level: str,
    message: str,
    *,
    progress: Optional[float] = None,
    finished: bool = False,
    channel_prefix: str = "task:",
) -> Any:
    """Publish one record to ``f"{channel_prefix}{task_id}"`` through ``client``.

    With a :class:`~gateway_client.Client` this returns the
    :class:`~gateway_client.PublishResult`; with an
    :class:`~gateway_client.AsyncClient` it returns an awaitable of it
    (``await task_log(aclient, ...)``), so one helper serves both.
    """
    channel, data = record(task_id, level, message, progress, finished, channel_prefix)
    return client.publish(channel, data)


async def atask_log(
    client: Any,
    task_id: Any,
    level: str,
    message: str,
    *,
    progress: Optional[float] = None,
    finished: bool = False,
    channel_prefix: str = "task:",
) -> Any:
    """:func:`task_log` for an :class:`~gateway_client.AsyncClient`, as a coroutine."""
    channel, data = record(task_id, level, message, progress, finished, channel_prefix)
    return await client.publish(channel, data)


class TaskLog:
    """A task's log bound to a client and a task id.

    >>> log = TaskLog(client, "42")
    >>> log.info("started")
    >>> log.progress(50, "halfway")
    >>> log.finish("done")            # or log.finish("boom", level="error")

    With an :class:`~gateway_client.AsyncClient` every method returns an
    awaitable (``await log.info("started")``).
    """

    def __init__(self, client: Any, task_id: Any, *, channel_prefix: str = "task:") -> None:
        # Validate up front, so a bad id fails where the TaskLog is made.
        self.channel, _ = record(task_id, "info", "", None, False, channel_prefix)
        self.client = client
        self.task_id = task_id
        self.channel_prefix = channel_prefix

    def log(self, level: str, message: str, *, progress: Optional[float] = None, finished: bool = False) -> Any:
        """Publish one record."""
        return task_log(
            self.client,
            self.task_id,
            level,
            message,
            progress=progress,
            finished=finished,
            channel_prefix=self.channel_prefix,
        )

    def debug(self, message: str, *, progress: Optional[float] = None) -> Any:
        """A ``debug`` record."""
        return self.log("debug", message, progress=progress)

    def info(self, message: str, *, progress: Optional[float] = None) -> Any:
        """An ``info`` record."""
        return self.log("info", message, progress=progress)

    def warning(self, message: str, *, progress: Optional[float] = None) -> Any:
        """A ``warning`` record."""
        return self.log("warning", message, progress=progress)

    def error(self, message: str, *, progress: Optional[float] = None) -> Any:
        """An ``error`` record."""
        return self.log("error", message, progress=progress)

    def progress(self, progress: float, message: str = "", *, level: str = "info") -> Any:
        """A progress update (``progress`` in percent, 0-100)."""
        return self.log(level, message, progress=progress)

    def finish(self, message: str = "done", *, level: str = "info", progress: Optional[float] = None) -> Any:
        """The last record (``finished: true``); ``level="error"`` for a failed task."""
        return self.log(level, message, progress=progress, finished=True)

    def __repr__(self) -> str:
        return f"TaskLog({self.channel!r})"
