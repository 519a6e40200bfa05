"""Assert that one trace holds a chain of spans, each the parent of the next.

Usage: check.py SPANS_FILE TRACE_ID ROOT_PARENT_ID STEP...
where STEP is `service|name-prefix|kind|tag=value,tag=value` (name compared case-insensitively,
kind is Zipkin's SERVER/CLIENT/PRODUCER/CONSUMER or `-`). The first step's span must have
ROOT_PARENT_ID as parent; each next step's span must be a child of the previous step's span.
Exit 0 when the chain is there; else print what the trace holds and exit 1."""
import json
import sys

spans_file, trace_id, root_parent = sys.argv[1:4]
steps = sys.argv[4:]
spans = []
with open(spans_file) as f:
    for line in f:
        s = json.loads(line)
        if s.get("traceId") == trace_id:
            spans.append(s)


def matches(span, step, parent):
    service, name, kind, tags = (step.split("|") + [""])[:4]
    if span.get("localEndpoint", {}).get("serviceName") != service:
        return False
    if not span.get("name", "").lower().startswith(name.lower()):
        return False
    if kind != "-" and span.get("kind") != kind:
        return False
    if span.get("parentId") != parent:
        return False
    for pair in filter(None, tags.split(",")):
        key, _, want = pair.partition("=")
        have = span.get("tags", {}).get(key)
        if have is None or (want and have != want):
            return False
    return True


parents = [root_parent]
for step in steps:
    found = [s["id"] for s in spans for p in parents if matches(s, step, p)]
    if not found:
        print(f"trace {trace_id}: no span for step {step!r} under {parents}")
        for s in spans:
            print("  ", s.get("localEndpoint", {}).get("serviceName"), s.get("kind"), s.get("name"),
                  "id", s.get("id"), "parent", s.get("parentId"), s.get("tags"))
        sys.exit(1)
    parents = found
print(f"trace {trace_id}: {len(steps)} linked spans across "
      f"{len({s['localEndpoint']['serviceName'] for s in spans})} services")
