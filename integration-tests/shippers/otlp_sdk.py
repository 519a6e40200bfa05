"""Ship log records with the OpenTelemetry Python SDK's OTLP/HTTP exporter, as an application
would: Python `logging` through the SDK's handler, a batch processor, protobuf over HTTP, gzip.

usage: otlp_sdk.py ENDPOINT KEY RUN COUNT
Prints one JSON line per record sent ({"seq", "message", "level"}), then {"done": true}.
"""
import json
import logging
import sys

from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

endpoint, key, run, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

provider = LoggerProvider(
    resource=Resource.create({"service.name": f"otlp-{run}", "host.name": "shipper-host"})
)
exporter = OTLPLogExporter(
    endpoint=endpoint,
    headers={"authorization": f"Bearer {key}"},
    compression=Compression.Gzip,
    timeout=30,
)
provider.add_log_record_processor(
    BatchLogRecordProcessor(exporter, max_export_batch_size=512, schedule_delay_millis=200)
)
set_logger_provider(provider)

log = logging.getLogger(f"shipper.{run}")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))

LEVELS = [
    (logging.DEBUG, "DEBUG"),
    (logging.INFO, "INFO"),
    (logging.WARNING, "WARN"),
    (logging.ERROR, "ERROR"),
    (logging.CRITICAL, "FATAL"),
]
for seq in range(count):
    level, name = LEVELS[seq % len(LEVELS)]
    # Special characters a log line carries: quotes, backslashes, tabs, non-ASCII, markup.
    message = f'line {seq} "quoted" back\\slash\ttab ünïcødé ✓ <b>&amp;</b> {{brace}}'
    log.log(level, message, extra={"run": run, "seq": seq})
    print(json.dumps({"seq": seq, "message": message, "level": name}))

ok = provider.force_flush(60_000)
provider.shutdown()
print(json.dumps({"done": ok}))
