#!/usr/bin/env python3
"""The polling peer of geoip-exporter, for `cargo bench --bench poller`.

A stand-in for the original polling tool (which listed connections with
gopsutil every 10 s and asked a web API for each remote address): every
INTERVAL seconds it lists all TCP connections with psutil, as gopsutil
does (parse /proc/net/tcp and tcp6, and read every process's /proc/PID/fd
to match socket inodes), keeps the ESTABLISHED ones with a remote
address, and looks each one's remote address up in a local MaxMind DB
with the maxminddb reader, one lookup per connection per poll, no cache
(as the original asked the API each time).

It counts the connections per country and an "opened" total: the
connections (local address and port, remote address and port) that were
not there at the previous poll. After every poll it writes its state as
JSON to STATUS (atomically, by rename):

    {"polls": 3, "established": 10002, "counts": {"DE": 5001, ...},
     "opened": 10040, "opened_by_country": {"BR": 38, ...},
     "last_poll_seconds": 0.21, "last_list_seconds": 0.17,
     "poll_seconds": [0.25, 0.22, 0.21], "poll_cpu_seconds": [0.24, 0.21, 0.2]}

(the wall-clock and CPU seconds of every poll so far).

It prints "ready" once its modules are imported and the database is open,
polls first when a line arrives on its standard input, then every
INTERVAL seconds after that (a poll that overruns skips the ticks it
missed, as Go's time.Ticker does). It exits when its standard input
closes or after MAX_SECONDS.
"""

import argparse
import json
import os
import select
import sys
import time
from collections import Counter

import maxminddb
import psutil


def country_of(reader, ip):
    """The ISO code of `ip` in a GeoLite2-Country-style database."""
    record = reader.get(ip)
    if not isinstance(record, dict):
        return "unknown"
    for key in ("country", "registered_country"):
        sub = record.get(key)
        if isinstance(sub, dict) and sub.get("iso_code"):
            return sub["iso_code"]
    return record.get("country_code") or "unknown"


def poll(reader):
    """One poll: {(laddr, lport, raddr, rport): country}, list seconds."""
    began = time.perf_counter()
    connections = psutil.net_connections(kind="tcp")
    listed = time.perf_counter() - began
    current = {}
    for c in connections:
        if c.status != psutil.CONN_ESTABLISHED or not c.raddr:
            continue
        key = (c.laddr.ip, c.laddr.port, c.raddr.ip, c.raddr.port)
        current[key] = country_of(reader, c.raddr.ip)
    return current, listed


def write_status(path, state):
    staged = path + ".tmp"
    with open(staged, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(staged, path)


def wait_stdin(seconds):
    """Sleep up to `seconds`; False once standard input has closed."""
    readable, _, _ = select.select([sys.stdin], [], [], max(seconds, 0))
    if readable and not sys.stdin.readline():
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()

    reader = maxminddb.open_database(args.database)
    print("ready", flush=True)
    if not sys.stdin.readline():
        return
    started = time.monotonic()
    previous = {}
    opened = 0
    opened_by_country = Counter()
    polls = 0
    poll_seconds = []
    poll_cpu_seconds = []
    tick = started
    while time.monotonic() - started < args.max_seconds:
        began = time.perf_counter()
        began_cpu = time.process_time()
        current, listed = poll(reader)
        for key, country in current.items():
            if key not in previous:
                opened += 1
                opened_by_country[country] += 1
        previous = current
        polls += 1
        poll_seconds.append(time.perf_counter() - began)
        poll_cpu_seconds.append(time.process_time() - began_cpu)
        write_status(
            args.status,
            {
                "polls": polls,
                "established": len(current),
                "counts": Counter(current.values()),
                "opened": opened,
                "opened_by_country": opened_by_country,
                "last_poll_seconds": poll_seconds[-1],
                "last_list_seconds": listed,
                "poll_seconds": poll_seconds,
                "poll_cpu_seconds": poll_cpu_seconds,
            },
        )
        now = time.monotonic()
        tick += args.interval
        while tick <= now:
            tick += args.interval
        if not wait_stdin(tick - now):
            return


if __name__ == "__main__":
    main()
