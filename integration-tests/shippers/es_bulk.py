"""Ship documents with the official Elasticsearch Python client, as an application or a small
shipper would: `info()` first (the probe every client sends), then the bulk helper, with the key as
an Elasticsearch API key. One document in every 100 carries a timestamp that is not a date: it must
come back refused in its own item, the rest stored.

usage: es_bulk.py URL KEY RUN COUNT TIMESTAMP
(TIMESTAMP is every document's `@timestamp`: a resend of the same documents passes the same one.)
Prints {"version", "ok", "errors": [{"status", "type", "seq"}], "sent": [{"seq", "message", "level"}]}.
"""
import json
import sys

from elasticsearch import Elasticsearch, helpers

url, key, run, count, stamp = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
es = Elasticsearch(url, api_key=("shipper", key), request_timeout=30)
version = es.info()["version"]["number"]

LEVELS = ["debug", "info", "warning", "error", "critical"]
EXPECT = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR", "critical": "FATAL"}
sent = []


def actions():
    for seq in range(count):
        level = LEVELS[seq % len(LEVELS)]
        message = f'doc {seq} "quoted" back\\slash\ttab ünïcødé ✓ <b>&amp;</b>'
        doc = {
            "_index": f"logs-{run}",
            "_id": f"{run}-{seq}",
            "@timestamp": stamp if seq % 100 else "not a date",
            "log": {"level": level, "logger": "es-shipper"},
            "service": {"name": f"es-{run}"},
            "host": {"name": "shipper-host"},
            "message": message,
            "labels": {"run": run, "seq": seq},
        }
        if seq % 100:
            sent.append({"seq": seq, "message": message, "level": EXPECT[level]})
        yield doc


ok, errors = helpers.bulk(es, actions(), chunk_size=500, raise_on_error=False, stats_only=False)
refused = []
for item in errors:
    (op, body), = item.items()
    refused.append({"status": body["status"], "type": body["error"]["type"], "id": body["_id"]})
print(json.dumps({"version": version, "ok": ok, "errors": refused, "sent": sent}))
