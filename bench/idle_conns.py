"""Hold many idle keep-alive connections to a larder, for bench/load.sh.

  idle_conns.py HOST PORT COUNT HOLD_SECONDS

Opens COUNT connections, sends one `GET /_health` on each and reads its
answer, keeps them all open and idle for HOLD_SECONDS, then checks that a fresh
connection is still served and sends a second request on every held one.
Prints "key value" lines: opened, first_ok, fresh_ok, second_ok, failures.
"""
import resource
import selectors
import socket
import sys
import time

REQ = b"GET /_health HTTP/1.1\r\nHost: larder\r\n\r\n"


def round_trip(socks, deadline):
    """Send REQ on every socket; count those whose answer starts with 200."""
    sel = selectors.DefaultSelector()
    pending = {}
    for s in socks:
        try:
            s.sendall(REQ)
        except OSError:
            continue
        sel.register(s, selectors.EVENT_READ)
        pending[s] = b""
    ok = 0
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                del pending[s]
                continue
            pending[s] += data
            buf = pending[s]
            if b"\r\n\r\n" in buf:
                head, _, body = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                if len(body) >= length:
                    if head.startswith(b"HTTP/1.1 200"):
                        ok += 1
                    sel.unregister(s)
                    del pending[s]
    sel.close()
    return ok


def main():
    host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    # Each batch is served its first request as soon as it is open: larder
    # closes a connection that sends nothing for 30 s, and a keep-alive
    # connection idle for 30 s (so HOLD_SECONDS stays well under that).
    socks, failures, first = [], 0, 0
    opening = time.monotonic()
    for start in range(0, count, 500):
        batch = []
        for _ in range(min(500, count - start)):
            try:
                batch.append(socket.create_connection((host, port), timeout=10))
            except OSError:
                failures += 1
        for s in batch:
            s.setblocking(False)
        first += round_trip(batch, time.monotonic() + 60)
        socks.extend(batch)
    opened_in = time.monotonic() - opening
    time.sleep(hold)
    fresh = round_trip([socket.create_connection((host, port), timeout=10)], time.monotonic() + 10)
    second = round_trip(socks, time.monotonic() + 60)
    print(f"opened {len(socks)}")
    print(f"first_ok {first}")
    print(f"fresh_ok {fresh}")
    print(f"second_ok {second}")
    print(f"failures {failures}")
    print(f"open_secs {opened_in:.1f}")


if __name__ == "__main__":
    main()
