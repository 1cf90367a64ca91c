"""task_log / TaskLog: records on ``task:<id>``, seen by a subscriber both
from history (published before it subscribed) and live."""

from __future__ import annotations

import time

import pytest
from harness import unique

from gateway_client import TaskLog, atask_log, task_log

FIELDS = {"level", "message", "progress", "finished", "ts"}


def test_task_log_records_replayed_and_live(client, ws):
    task = unique("job")
    before = int(time.time() * 1000)
    r = task_log(client, task, "info", "started", progress=0)
    assert r.offset == 1
    task_log(client, task, "warning", "slow disk", progress=12.5)
    sub = ws("watcher")
    reply = sub.subscribe(f"task:{task}", since={"offset": 0})
    assert reply["offset"] == 2
    first, second = sub.message(f"task:{task}"), sub.message(f"task:{task}")
    assert first["data"]["message"] == "started" and second["data"]["progress"] == 12.5
    task_log(client, task, "info", "done", progress=100, finished=True)
    last = sub.message(f"task:{task}")["data"]
    after = int(time.time() * 1000)
    assert set(last) == FIELDS
    assert (last["level"], last["message"], last["progress"], last["finished"]) == ("info", "done", 100, True)
    assert before <= first["data"]["ts"] <= last["ts"] <= after
    assert first["data"]["finished"] is False


def test_task_log_class(client, ws):
    task = unique("job")
    log = TaskLog(client, task)
    assert log.channel == f"task:{task}"
    sub = ws("watcher")
    sub.subscribe(log.channel)
    log.info("one")
    log.debug("two")
    log.warning("three", progress=40)
    log.error("four")
    log.progress(75, "nearly")
    log.finish("all done")
    got = [sub.message(log.channel)["data"] for _ in range(6)]
    assert [(g["level"], g["message"], g["progress"], g["finished"]) for g in got] == [
        ("info", "one", None, False),
        ("debug", "two", None, False),
        ("warning", "three", 40, False),
        ("error", "four", None, False),
        ("info", "nearly", 75, False),
        ("info", "all done", None, True),
    ]
    assert [m.data["message"] for m in client.history(log.channel).messages][-1] == "all done"


def test_task_log_custom_prefix_and_method(client):
    task = unique("x")
    r = task_log(client, task, "info", "m", channel_prefix="hist:")
    assert r.offset == 1
    assert client.task_log(task, "info", "n", channel_prefix="hist:").offset == 2
    assert client.history(f"hist:{task}").messages[1].data["message"] == "n"


def test_task_log_bad_input(client):
    with pytest.raises(ValueError, match="0 to 100"):
        task_log(client, "t", "info", "m", progress=101)
    with pytest.raises(ValueError, match="progress"):
        task_log(client, "t", "info", "m", progress=float("nan"))
    with pytest.raises(ValueError, match="level"):
        task_log(client, "t", "", "m")
    with pytest.raises(TypeError, match="message"):
        task_log(client, "t", "info", None)
    with pytest.raises(TypeError, match="finished"):
        task_log(client, "t", "info", "m", finished="yes")
    with pytest.raises(ValueError, match="task_id"):
        TaskLog(client, "")


async def test_async_task_logs(aclient, ws):
    task = unique("job")
    sub = ws("watcher")
    sub.subscribe(f"task:{task}")
    assert (await task_log(aclient, task, "info", "a", progress=10)).offset == 1
    assert (await atask_log(aclient, task, "info", "b")).offset == 2
    log = TaskLog(aclient, task)
    await log.progress(50)
    await log.finish("failed", level="error")
    assert (await aclient.task_log(task, "info", "after")).offset == 5
    got = [sub.message(f"task:{task}")["data"] for _ in range(5)]
    assert [g["message"] for g in got] == ["a", "b", "", "failed", "after"]
    assert got[3]["level"] == "error" and got[3]["finished"] is True
