#!/usr/bin/env python3
"""A TCP relay that cuts its connections mid-PDU, for tests/vm/kernel-initiator.sh.

usage: cut-relay.py LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT CUTS MIN_BYTES MAX_BYTES [SEED]

Every accepted connection is relayed to UPSTREAM. Until CUTS connections
have been cut, each connection is given a random budget of MIN_BYTES to
MAX_BYTES in the initiator-to-target direction; the relay forwards exactly
that many bytes, then closes both sides (shutdown, close): the cut lands
wherever that byte falls, usually inside a PDU. The relay follows the
iSCSI PDUs of that direction (48-byte BHS, TotalAHSLength, DataSegmentLength
padded to 4; no digests) to say where each cut fell. After CUTS cuts it
relays without cutting. It also prints the keys of the target's Login
Responses. One line per event on stdout:
  "relay: listening ...", "relay: connection N", "relay: cut N after B bytes
  (in the data segment of a SCSI Data-Out PDU, byte 1234 of 65536)", ...
Bounded: it runs until killed.
"""
import random
import socket
import sys
import threading
import time

OPCODES = {
    0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management Request", 0x03: "Login Request",
    0x04: "Text Request", 0x05: "SCSI Data-Out", 0x06: "Logout Request", 0x10: "SNACK Request",
}


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


class PduTracker:
    """Where the next byte of a PDU stream falls (no digests); the data
    segments of Login Responses (opcode 0x23) are kept in `logins`."""

    def __init__(self):
        self.header = b""
        self.left = 0  # bytes of the current PDU after its BHS
        self.total = 0
        self.opcode = None
        self.body = b""
        self.logins = []

    def feed(self, data):
        i = 0
        while i < len(data):
            if len(self.header) < 48:
                take = min(48 - len(self.header), len(data) - i)
                self.header += data[i:i + take]
                i += take
                if len(self.header) == 48:
                    h = self.header
                    ahs = h[4] * 4
                    dsl = int.from_bytes(h[5:8], "big")
                    self.opcode = h[0] & 0x3F
                    self.total = ahs + dsl + (-dsl % 4)
                    self.left = self.total
                    self.body = b""
                    if self.left == 0:
                        self.header = b""
            else:
                take = min(self.left, len(data) - i)
                if self.opcode == 0x23:
                    self.body += data[i:i + take]
                self.left -= take
                i += take
                if self.left == 0:
                    self.header = b""
                    if self.opcode == 0x23:
                        self.logins.append(self.body.rstrip(b"\0").split(b"\0"))

    def where(self):
        name = OPCODES.get(self.opcode, "opcode %#x" % (self.opcode or 0))
        if len(self.header) == 0:
            return "between PDUs"
        if len(self.header) < 48:
            return "in a BHS, byte %d of 48" % len(self.header)
        return "in the data segment of a %s PDU, byte %d of %d" % (name, self.total - self.left, self.total)


class Relay:
    def __init__(self, upstream, cuts, lo, hi, seed):
        self.upstream = upstream
        self.cuts_left = cuts
        self.lo, self.hi = lo, hi
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.count = 0
        self.cut = 0

    def say(self, text):
        with self.lock:
            print("relay: %s (at %.3f)" % (text, time.time()), flush=True)

    def serve(self, client):
        with self.lock:
            self.count += 1
            n = self.count
            budget = self.rng.randint(self.lo, self.hi) if self.cuts_left > 0 else None
            if budget is not None:
                self.cuts_left -= 1
        try:
            up = socket.create_connection(self.upstream, timeout=10)
            up.settimeout(None)
        except OSError as e:
            self.say("connection %d: upstream %s" % (n, e))
            client.close()
            return
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.say("connection %d%s" % (n, "" if budget is None else ", cut after %d bytes" % budget))
        done = threading.Event()

        def close_both():
            if done.is_set():
                return
            done.set()
            for s in (client, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def pump(src, dst, limit):
            tracker = PduTracker()
            sent = 0
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if limit is not None and sent + len(data) >= limit:
                        part = data[:limit - sent]
                        dst.sendall(part)
                        tracker.feed(part)
                        sent += len(part)
                        with self.lock:
                            self.cut += 1
                            k = self.cut
                        self.say("cut %d after %d bytes (%s)" % (k, sent, tracker.where()))
                        break
                    dst.sendall(data)
                    tracker.feed(data)
                    sent += len(data)
                    while tracker.logins:
                        keys = [k.decode("utf-8", "replace") for k in tracker.logins.pop(0) if k]
                        self.say("connection %d: login response keys: %s" % (n, " ".join(keys)))
            except OSError:
                pass
            close_both()

        threading.Thread(target=pump, args=(up, client, None), daemon=True).start()
        pump(client, up, budget)

    def run(self, listen):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(listen)
        ls.listen(16)
        self.say("listening on %s:%d, upstream %s:%d" % (listen + self.upstream))
        while True:
            c, _ = ls.accept()
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()


def main():
    if len(sys.argv) not in (6, 7):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    seed = int(sys.argv[6]) if len(sys.argv) == 7 else None
    Relay(addr(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), seed).run(addr(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
