#!/usr/bin/env python3
"""The replica's side of Redis replication, step by step, for check-master.sh:
what a pod's redis-server sends its master through stunnel, and nothing else.

1. TLS to MASTER_HOST:MASTER_PORT, the chain verified against MASTER_CA and
   the certificate's names against MASTER_HOST, TLS 1.2 at least (stunnel's
   verifyChain, checkHost and sslVersionMin).
2. AUTH MASTER_USER MASTER_PASSWORD (masteruser, masterauth).
3. REPLCONF capa eof capa psync2: what a replica announces it can load.
4. PSYNC ? -1: a new replica asks for a full resync; the master answers
   +FULLRESYNC <replication id> <offset>.
5. The snapshot, read to its end (diskless: up to the 40-byte end mark).
6. A new connection asks PSYNC <replication id> <offset + 1>, as the replica
   does when its tunnel drops (the next byte it needs): +CONTINUE is a partial
   resync, from the backlog.
   A master that answers FULLRESYNC instead still works, at the cost of a full
   sync per dropped tunnel; that is a note, not a failure.

No client library speaks this side of the protocol: `redis-cli --rdb` sends
SYNC (a replica sends PSYNC, and a user for replicas has only +psync
+replconf), and hiredis and redis-py take the bare newlines a master sends
while it prepares a snapshot for protocol errors.

Environment: MASTER_HOST, MASTER_PORT, MASTER_CA, MASTER_USER (default:
default), MASTER_PASSWORD (none: no AUTH), CHECK_TIMEOUT (seconds for the
snapshot, default 60). Prints one line per step; exits 1 at the first failure.
"""

import os
import socket
import ssl
import sys
import time

CONNECT_TIMEOUT = 15
EOF_MARK_LEN = 40


class Failed(Exception):
    """A step failed; the message is the one line to print."""


def ok(message):
    print(f"  ok    {message}", flush=True)


def note(message):
    print(f"  note  {message}", flush=True)


class Link:
    """One TLS connection to the master, read the way a replica reads it."""

    def __init__(self, host, port, ca):
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise Failed(f"connect to {host}:{port}: {e.strerror or e}") from e
        try:
            self.sock = context.wrap_socket(raw, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            raw.close()
            raise Failed(f"TLS: {getattr(e, 'verify_message', None) or e}") from e
        self.buffer = b""

    def close(self):
        self.sock.close()

    def send(self, *args):
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def _fill(self, deadline):
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Failed("the master closed the connection")
        self.buffer += chunk

    def line(self, deadline):
        """The next reply line, skipping the bare newlines a master sends as
        keepalives while it prepares a snapshot."""
        while True:
            while b"\n" not in self.buffer:
                self._fill(deadline)
            line, _, self.buffer = self.buffer.partition(b"\n")
            line = line.rstrip(b"\r")
            if line:
                return line.decode(errors="replace")

    def read(self, count, deadline):
        while len(self.buffer) < count:
            self._fill(deadline)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def command(self, *args):
        self.send(*args)
        try:
            return self.line(time.monotonic() + CONNECT_TIMEOUT)
        except TimeoutError:
            raise Failed(f"{args[0]}: no answer within {CONNECT_TIMEOUT}s") from None

    def snapshot(self, deadline):
        """Reads the snapshot that follows +FULLRESYNC to its end; returns its size and form."""
        header = self.line(deadline)
        if header.startswith("$EOF:"):
            mark = header[5:].encode()
            if len(mark) != EOF_MARK_LEN:
                raise Failed(f"snapshot: unexpected header {header[:60]!r}")
            size, tail = 0, b""
            while True:
                data, self.buffer = self.buffer, b""
                if not data:
                    self._fill(deadline)
                    continue
                size += len(data)
                tail = (tail + data)[-EOF_MARK_LEN:]
                if tail == mark:
                    return size - EOF_MARK_LEN, "streamed from memory (diskless)"
        if header.startswith("$") and header[1:].isdigit():
            size, left = int(header[1:]), int(header[1:])
            while left:
                left -= len(self.read(min(left, 1 << 20), deadline))
            return size, "written to the master's disk first"
        raise Failed(f"snapshot: expected a payload, got {header[:80]!r}")


def handshake(link, user, password):
    """AUTH and REPLCONF, as the replica sends them; a failure names the step."""
    if password:
        reply = link.command("AUTH", user, password)
        if reply != "+OK":
            raise Failed(f"AUTH as '{user}': {reply.lstrip('-')}")
    reply = link.command("REPLCONF", "capa", "eof", "capa", "psync2")
    if reply != "+OK":
        raise Failed(f"replication sync refused at REPLCONF: {hint(reply)}")


def hint(reply):
    error = reply.lstrip("-")
    if error.startswith("NOPERM"):
        return f"{error} (a replica's user needs +psync +replconf)"
    return error


def main():
    host, port, ca = os.environ["MASTER_HOST"], int(os.environ["MASTER_PORT"]), os.environ["MASTER_CA"]
    user = os.environ.get("MASTER_USER") or "default"
    password = os.environ.get("MASTER_PASSWORD", "")
    timeout = float(os.environ.get("CHECK_TIMEOUT") or 60)

    link = Link(host, port, ca)
    try:
        handshake(link, user, password)
        ok(f"AUTH as '{user}'" if password else "no AUTH (no password given)")
        ok("REPLCONF capa eof capa psync2 (what a replica announces it can load)")
        link.send("PSYNC", "?", "-1")
        deadline = time.monotonic() + timeout
        reply = link.line(deadline)
        if not reply.startswith("+FULLRESYNC "):
            raise Failed(f"replication sync refused at PSYNC: {hint(reply)}")
        _, replid, offset = reply.split()
        ok(f"PSYNC ? -1: full resync offered (replication ID {replid[:8]}…, offset {offset})")
        size, form = link.snapshot(deadline)
        ok(f"replication sync: received a snapshot of {size} bytes, {form}")
    except TimeoutError:
        raise Failed(f"replication sync: no snapshot within CHECK_TIMEOUT={timeout:g}s") from None
    finally:
        link.close()

    link = Link(host, port, ca)
    try:
        handshake(link, user, password)
        # A replica asks for the byte after the last one it has.
        reply = link.command("PSYNC", replid, str(int(offset) + 1))
    except Failed as e:
        reply = str(e)
    finally:
        link.close()
    if reply.startswith("+CONTINUE"):
        ok(f"PSYNC {replid[:8]}… {int(offset) + 1}: partial resync (+CONTINUE), as after a dropped tunnel")
    else:
        note(f"partial resync refused ({reply[:60]}): every dropped tunnel will cost a full sync")


if __name__ == "__main__":
    try:
        main()
    except Failed as e:
        print(f"  FAIL  {e}", flush=True)
        sys.exit(1)
