"""Slow and abusive clients against a gateway (the fault suite's scenario 11), driven by
slow-clients-test.sh. A well-behaved client posts one event every 20 ms for the whole run and times
each answer; after a quiet baseline the abuse starts alongside it:

  - TRICKLE connections send a body one byte a second (Content-Length 1000): each must get 408
    once the gateway's body_read_timeout_ms has passed since the body began;
  - IDLE connections are opened and send nothing;
  - BIG requests announce a 10 MB body in parallel (Content-Length): each must get 413 from the head,
    without the gateway reading the body; as many again stream 10 MB chunked (no length): 413 once
    the body limit is passed.

Prints one JSON object: the good client's latency percentiles before and during the abuse, and for
each abusive request its status and seconds to the answer. Loopback only; every socket closes at the
end; bounded by --secs.
"""

import argparse
import asyncio
import datetime
import json
import time


def event_body(i):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return json.dumps({"timestamp": now, "level": "INFO", "service": "fault-slow-good",
                       "message": f"good {i}"}).encode()


async def read_response(reader):
    """Status and body of one HTTP/1.1 response (Content-Length or chunked)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before a status line")
    status = int(status_line.split()[1])
    length, chunked, close = None, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.lower() == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


def head(path, port, length=None, chunked=False, ctype="application/json"):
    h = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ncontent-type: {ctype}\r\n"
    if chunked:
        h += "transfer-encoding: chunked\r\n"
    elif length is not None:
        h += f"content-length: {length}\r\n"
    return (h + "\r\n").encode()


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100))] * 1000, 1)


async def good_client(port, secs, abuse_at, out):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < secs:
        t = time.monotonic()
        body = event_body(i)
        try:
            writer.write(head("/api/v1/logs", port, len(body)) + body)
            await writer.drain()
            status, close = await asyncio.wait_for(read_response(reader), 5)
            took = time.monotonic() - t
            phase = "during" if t - start >= abuse_at else "before"
            out[phase].append(took)
            if status == 202:
                out["accepted"] += 1
            else:
                out["other"][str(status)] = out["other"].get(str(status), 0) + 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError):
            out["other"]["error"] = out["other"].get("error", 0) + 1
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i += 1
        await asyncio.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    writer.close()


async def trickle(port, secs):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head("/api/v1/logs", port, 1000))
    await writer.drain()
    began = time.monotonic()
    result = {"status": None, "secs": None}

    async def drip():
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(1)

    dripper = asyncio.create_task(drip())
    try:
        status, _ = await asyncio.wait_for(read_response(reader), secs)
        result = {"status": status, "secs": round(time.monotonic() - began, 3)}
    except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as e:
        result = {"status": type(e).__name__, "secs": round(time.monotonic() - began, 3)}
    finally:
        dripper.cancel()
        writer.close()
    return result


async def big(port, chunked):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    total = 10 * 1024 * 1024
    began = time.monotonic()
    writer.write(head("/api/v1/logs", port, None if chunked else total, chunked))
    await writer.drain()
    answer = asyncio.create_task(read_response(reader))
    sent = 0
    chunk = b"x" * 65536
    try:
        # Keep sending until the answer comes (a gateway that refuses from the head answers before
        # any of it is read) or the whole body is out. A gateway that answered and closed makes
        # the next write fail (EPIPE): its answer is read all the same.
        try:
            while sent < total and not answer.done():
                if chunked:
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                else:
                    writer.write(chunk)
                sent += len(chunk)
                await asyncio.wait_for(writer.drain(), 5)
        except (OSError, ConnectionError):
            pass
        status, _ = await asyncio.wait_for(answer, 10)
        return {"status": status, "secs": round(time.monotonic() - began, 3), "sent": sent}
    except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError) as e:
        return {"status": type(e).__name__, "secs": round(time.monotonic() - began, 3), "sent": sent}
    finally:
        answer.cancel()
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secs", type=float, default=30)
    ap.add_argument("--abuse-at", type=float, default=5)
    ap.add_argument("--trickle", type=int, default=5)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--big", type=int, default=10)
    a = ap.parse_args()
    good = {"before": [], "during": [], "accepted": 0, "other": {}}
    good_task = asyncio.create_task(good_client(a.port, a.secs, a.abuse_at, good))
    await asyncio.sleep(a.abuse_at)
    idle = []
    for _ in range(a.idle):
        try:
            idle.append((await asyncio.open_connection("127.0.0.1", a.port))[1])
        except OSError:
            break
    trickles = [asyncio.create_task(trickle(a.port, a.secs)) for _ in range(a.trickle)]
    bigs = [asyncio.create_task(big(a.port, False)) for _ in range(a.big)]
    bigs += [asyncio.create_task(big(a.port, True)) for _ in range(a.big)]
    trickle_results = await asyncio.gather(*trickles)
    big_results = await asyncio.gather(*bigs)
    await good_task
    for w in idle:
        w.close()
    print(json.dumps({
        "good": {"before_p50_ms": percentile(good["before"], 50),
                 "before_p99_ms": percentile(good["before"], 99),
                 "during_p50_ms": percentile(good["during"], 50),
                 "during_p99_ms": percentile(good["during"], 99),
                 "during_max_ms": percentile(good["during"], 100),
                 "requests": len(good["before"]) + len(good["during"]),
                 "accepted": good["accepted"], "other": good["other"]},
        "idle_opened": len(idle),
        "trickle": trickle_results,
        "big_with_length": big_results[:a.big],
        "big_chunked": big_results[a.big:],
    }))


asyncio.run(main())
