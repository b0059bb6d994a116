#!/usr/bin/env python3
"""A vendor fixture for labctl's integration tests: HTTPS on 127.0.0.1, answers from a routes file.

Usage: vendor_server.py --cert PEM --key PEM --routes routes.json --log requests.jsonl

Prints the port on the first line of stdout, then serves until killed. routes.json is re-read on
every request (the tests rewrite it atomically between runs):

    {"/path?query": ROUTE, "/path": ROUTE, ...}

An exact "/path?query" key wins, then "/path" whatever the query. A ROUTE is
    {"status": 200, "headers": {"Content-Type": "..."},
     "body": "text"  |  "body_file": "/abs/path",
     "delay": seconds, "drop_after": bytes, "no_ranges": false}
GET and HEAD only. A 200 route with a body honours `Range: bytes=N-` (and N-M, -N) with 206 and
advertises `Accept-Ranges: bytes`, unless "no_ranges" is true. "drop_after" sends the full
Content-Length but closes the connection after that many body bytes, every time. An unknown path
answers 404 with GitHub's JSON not-found body. Every request is appended to the log as one JSON
line: {"method", "path", "status", "authorization", "accept", "user_agent", "range"}.
Python standard library only.
"""

import argparse
import http.server
import json
import os
import re
import ssl
import sys
import threading
import time

NOT_FOUND = {
    "status": 404,
    "headers": {"Content-Type": "application/json; charset=utf-8"},
    "body": json.dumps(
        {
            "message": "Not Found",
            "documentation_url": "https://docs.github.com/rest",
            "status": "404",
        },
        separators=(",", ":"),
    ),
}

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Each connection's TLS handshake happens in its own thread (finish_request), so a client
    # that connects and never speaks cannot block the accept loop.

    def __init__(self, address, handler, context, routes, log):
        super().__init__(address, handler)
        self.context = context
        self.routes_path = routes
        self.log_path = log
        self.log_lock = threading.Lock()

    def finish_request(self, request, client_address):
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except Exception:  # a client that went away mid-answer
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        pass

    def routes(self):
        try:
            with open(self.routes_path, "rb") as f:
                routes = json.load(f)
            return routes if isinstance(routes, dict) else {}
        except (OSError, ValueError):
            return {}

    def log(self, entry):
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.log_lock:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "labctl-vendor-fixture"

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.answer(head=False)

    def do_HEAD(self):
        self.answer(head=True)

    def find_route(self):
        routes = self.server.routes()
        if self.path in routes:
            return routes[self.path]
        bare = self.path.split("?", 1)[0]
        if bare in routes:
            return routes[bare]
        return NOT_FOUND

    def answer(self, head):
        route = self.find_route()
        status = int(route.get("status", 200))
        headers = dict(route.get("headers") or {})
        if "body_file" in route:
            try:
                with open(route["body_file"], "rb") as f:
                    body = f.read()
            except OSError:
                body = b""
        else:
            body = str(route.get("body", "")).encode("utf-8")

        # Range on a 200 route with a body.
        start, end = 0, len(body)
        range_header = self.headers.get("Range")
        ranges = status == 200 and len(body) > 0 and not route.get("no_ranges", False)
        if ranges:
            headers.setdefault("Accept-Ranges", "bytes")
            m = RANGE.match(range_header.strip()) if range_header else None
            if m and (m.group(1) or m.group(2)):
                first, last = m.group(1), m.group(2)
                if first == "":  # suffix: the last N bytes
                    n = int(last)
                    start = max(0, len(body) - n)
                else:
                    start = int(first)
                    if last != "":
                        end = min(len(body), int(last) + 1)
                if start >= len(body) or start >= end:
                    status = 416
                    headers = {"Content-Range": "bytes */%d" % len(body)}
                    body, start, end = b"", 0, 0
                else:
                    status = 206
                    headers["Content-Range"] = "bytes %d-%d/%d" % (start, end - 1, len(body))
        part = body[start:end]

        self.server.log(
            {
                "method": self.command,
                "path": self.path,
                "status": status,
                "authorization": self.headers.get("Authorization") is not None,
                "accept": self.headers.get("Accept"),
                "user_agent": self.headers.get("User-Agent"),
                "range": range_header,
            }
        )

        delay = route.get("delay")
        if delay:
            time.sleep(float(delay))

        self.send_response(status)
        if not any(k.lower() == "content-length" for k in headers):
            headers["Content-Length"] = str(len(part))
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        drop_after = route.get("drop_after")
        if drop_after is not None:
            self.wfile.write(part[: int(drop_after)])
            self.wfile.flush()
            # Close without sending the rest: the client sees a short body.
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return
        self.wfile.write(part)
        self.wfile.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--routes", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    httpd = Server(
        ("127.0.0.1", 0),
        Handler,
        context,
        os.path.abspath(args.routes),
        os.path.abspath(args.log),
    )
    sys.stdout.write("%d\n" % httpd.server_address[1])
    sys.stdout.flush()
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
