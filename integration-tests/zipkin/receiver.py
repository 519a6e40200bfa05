"""A stand-in for Zipkin's collector endpoint: accepts POST /api/v2/spans (JSON v2) and appends each
span as one JSON line to a file, for check.py. Only what the exporter sends is stored; it answers
202 like Zipkin does. Usage: receiver.py PORT OUT_FILE (runs until killed)."""
import http.server
import json
import sys
import threading

PORT = int(sys.argv[1])
OUT = sys.argv[2]
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/api/v2/spans":
            self.send_response(404)
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            spans = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        with LOCK, open(OUT, "a") as f:
            for span in spans:
                f.write(json.dumps(span) + "\n")
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
