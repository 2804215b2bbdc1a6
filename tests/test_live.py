"""The live feed's protocol: hello, live events, replay by `since`, reset, slow clients.
Real WebSocket clients over loopback against Calo Jobs in-process (or a real process)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tornado.websocket import websocket_connect

from calo.clock import now_ms
from tests.helpers import (
    collect_until,
    create_jobs,
    db,
    job,
    next_events,
    poll,
    raw_websocket_that_never_reads,
    wait_until,
)


async def connect(port, since=None):
    query = "" if since is None else f"?since={since}"
    return await websocket_connect(f"ws://127.0.0.1:{port}/ws{query}")


@pytest.mark.gen_test
@pytest.mark.calo_flags("--delay-min", "300", "--delay-max", "300")  # no job resolves before the hello
async def test_hello_carries_the_latest_seq(http_server, http_port, calo):
    await create_jobs(calo, 2)
    ws = await connect(http_port)
    assert await next_events(ws) == [{"type": "hello", "seq": 2}]
    ws.close()


@pytest.mark.gen_test
async def test_live_events_for_creation_and_resolution(http_server, http_port, calo):
    ws = await connect(http_port)
    assert (await next_events(ws))[0] == {"type": "hello", "seq": 0}
    [job_id] = await create_jobs(calo, 1)
    events = await collect_until(ws, 2)
    assert [(e["type"], e["seq"], e["job"]["id"]) for e in events] == [
        ("job.created", 1, job_id), ("job.resolved", 2, job_id)]
    assert events[0]["job"]["status"] == "pending"
    assert events[1]["job"] == job(calo, job_id)  # as GET /jobs/{id}
    ws.close()


@pytest.mark.gen_test
async def test_replay_since_sends_exactly_the_missed_events_in_order(http_server, http_port, calo):
    ids = await create_jobs(calo, 3)
    await wait_until(lambda: db(calo).latest_seq() == 6)
    ws = await connect(http_port, since=2)
    assert (await next_events(ws))[0] == {"type": "hello", "seq": 6}
    events = await collect_until(ws, 6)
    assert [e["seq"] for e in events] == [3, 4, 5, 6]
    assert {e["job"]["id"] for e in events if e["type"] == "job.resolved"} == set(ids)
    up_to_date = await connect(http_port, since=6)
    assert await next_events(up_to_date) == [{"type": "hello", "seq": 6}]
    [new_id] = await create_jobs(calo, 1)
    assert (await next_events(up_to_date))[0]["job"]["id"] == new_id  # live, nothing replayed
    ws.close()
    up_to_date.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.calo_flags("--delay-min", "300", "--delay-max", "300")
async def test_no_gap_and_no_duplicate_when_events_commit_during_the_replay(http_server, http_port, calo):
    await create_jobs(calo, 1200)  # a replay of several chunks, each awaited
    writing = asyncio.ensure_future(create_jobs(calo, 300))  # committed while it replays
    ws = await connect(http_port, since=0)
    await next_events(ws)
    await writing
    events = await collect_until(ws, 1500)
    assert [e["seq"] for e in events] == list(range(1, 1501))
    ws.close()


@pytest.mark.gen_test
async def test_reset_when_the_missed_events_were_pruned(http_server, http_port, calo):
    await create_jobs(calo, 2)
    await wait_until(lambda: db(calo).latest_seq() == 4)
    await calo.storage.prune_events(now_ms() + 1)
    ws = await connect(http_port, since=1)
    assert await next_events(ws) == [{"type": "hello", "seq": 4}]
    assert await next_events(ws) == [{"type": "reset", "seq": 4}]
    created = await calo.service.create_job(None)  # the job as it was created (it resolves soon after)
    assert (await next_events(ws))[0] == {"type": "job.created", "seq": 5, "job": json.loads(created.job_json)}
    ahead = await connect(http_port, since=99)  # a client from a database that is gone
    assert [m["type"] for m in (await next_events(ahead)) + (await next_events(ahead))] == ["hello", "reset"]
    ws.close()
    ahead.close()


@pytest.mark.gen_test
@pytest.mark.calo_flags("--event-retention", "1")
async def test_the_server_prunes_old_events_by_itself(http_server, calo):
    await create_jobs(calo, 1)
    await wait_until(lambda: db(calo).latest_seq() == 2)
    task = calo.upkeep.tasks[0]  # runs every retention / 2, here every second
    await wait_until(lambda: db(calo).events_after(0, 10) == [], timeout=6)
    assert task.last_run_at is not None and db(calo).latest_seq() == 2


@pytest.mark.gen_test
async def test_a_bad_since_is_refused(http_server, http_port):
    with pytest.raises(Exception) as refused:
        await websocket_connect(f"ws://127.0.0.1:{http_port}/ws?since=abc")
    assert "400" in str(refused.value)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.calo_flags("--delay-min", "300", "--delay-max", "300")
async def test_a_client_that_stops_reading_is_cut_off_while_others_keep_receiving(http_server, http_port, calo):
    calo.hub.max_buffered_bytes = 64 * 1024
    # Off the IOLoop thread: the handshake waits on the server, which runs on that thread.
    stuck = await asyncio.get_running_loop().run_in_executor(None, raw_websocket_that_never_reads, http_port)
    await wait_until(lambda: len(calo.hub) == 1)
    # Loopback lets the kernel buffer megabytes; shrink the server side's send buffer so
    # that, as on a slow link, what the client does not read stays in the server.
    [stuck_handler] = list(calo.hub._sockets)
    stuck_handler.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reader = await connect(http_port)
    await next_events(reader)
    await wait_until(lambda: len(calo.hub) == 2)
    await create_jobs(calo, 2000)  # about 500 KB of events
    events = await collect_until(reader, 2000)
    assert [e["seq"] for e in events] == list(range(1, 2001))
    await wait_until(lambda: len(calo.hub) == 1)  # the stuck one was dropped, and only it
    assert stuck_handler not in calo.hub._sockets
    stuck.close()
    reader.close()


@pytest.mark.gen_test(timeout=60)
async def test_replay_works_across_a_server_restart(server_process):
    # The servers are separate processes, so blocking calls here stall only the client side.
    server = server_process()
    for _ in range(3):
        server.post("/jobs")
    poll(lambda: len(server.get("/jobs?status=resolved").json()) == 3)
    server.terminate()
    server = server_process()
    ws = await connect(int(server.url.rsplit(":", 1)[1]), since=0)
    assert await next_events(ws) == [{"type": "hello", "seq": 6}]
    events = await collect_until(ws, 6)
    ws.close()
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert sorted(e["type"] for e in events) == ["job.created"] * 3 + ["job.resolved"] * 3


@pytest.mark.gen_test(timeout=60)
async def test_fan_out_to_more_clients_than_one_slice_reaches_each_once(http_server, http_port, calo):
    from calo.live import SLICE

    clients = [await connect(http_port) for _ in range(SLICE + 50)]
    for ws in clients:
        await next_events(ws)
    await create_jobs(calo, 3)
    for ws in clients:
        events = await collect_until(ws, 6)
        assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
        ws.close()
