#!/usr/bin/env python3
"""A static binary-cache server for larder's pull-through tests.

Serves the files of DIR (a `nix copy --to file://DIR` cache) like any static web
server, and can misbehave on purpose. Every request is appended to LOG as
"METHOD PATH STATUS". CONTROL (re-read on each request) holds lines
"SUBSTRING ACTION [ARG]"; the first line whose SUBSTRING is in the path applies:

  status N     answer HTTP N with a short body
  delay S      wait S seconds, then serve normally
  stall        send the headers and half the body, then hang for 120 s
  truncate     send the headers (full Content-Length) and half the body, then close

Prints "listening on PORT" once it accepts connections.
Usage: upstream_server.py DIR LOG CONTROL [PORT]
"""

import http.server
import os
import socketserver
import sys
import threading
import time

DIR, LOG, CONTROL = sys.argv[1], sys.argv[2], sys.argv[3]
PORT = int(sys.argv[4]) if len(sys.argv) > 4 else 0
LOG_LOCK = threading.Lock()


def log(method, path, status):
    with LOG_LOCK:
        with open(LOG, "a") as f:
            f.write(f"{method} {path} {status}\n")


def rule_for(path):
    try:
        with open(CONTROL) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] in path:
            return parts[1:]
        if len(parts) >= 1 and parts[0] == "*" and len(parts) >= 2:
            return parts[1:]
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        path = self.path.split("?", 1)[0]
        rule = rule_for(path)
        if rule and rule[0] == "status":
            code = int(rule[1])
            body = f"status {code} on purpose\n".encode()
            log(self.command, path, code)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        if rule and rule[0] == "delay":
            time.sleep(float(rule[1]))
        file = os.path.normpath(os.path.join(DIR, path.lstrip("/")))
        if not file.startswith(os.path.abspath(DIR)) or not os.path.isfile(file):
            log(self.command, path, 404)
            body = b"404 not found\n"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        with open(file, "rb") as f:
            data = f.read()
        log(self.command, path, 200)
        self.send_response(200)
        ctype = "text/x-nix-narinfo" if path.endswith(".narinfo") else "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        if rule and rule[0] in ("stall", "truncate"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if rule[0] == "stall":
                time.sleep(120)
            self.close_connection = True
            return
        self.wfile.write(data)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", PORT), Handler)
    print(f"listening on {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
