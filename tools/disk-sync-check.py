#!/usr/bin/env python3
"""Latency of durable 4 KiB writes on this machine's disk, for one or several writers at once
(docs/BENCHMARKS.md, "Commit path, session 8"): each writer thread opens its own pre-zeroed
64 MiB file with O_DIRECT and writes 4 KiB blocks with pwritev(RWF_DSYNC) for SECS seconds.
A 3-node cluster on one host has its 3 nodes' log writes share the disk like 3 writers.

usage: tools/disk-sync-check.py WRITERS [SECS] [DIR]   (DIR defaults to target/disk-check)
"""
import mmap, os, statistics, sys, threading, time

writers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
root = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), "..", "target", "disk-check")
size = 64 << 20
os.makedirs(root, exist_ok=True)
lat = {}

def prepare(path):
    with open(path, "wb") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())

def worker(i, start, stop):
    fd = os.open(os.path.join(root, f"w{i}"), os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * 4096)
    off, out = 0, []
    while time.time() < start:
        pass
    while time.time() < stop:
        t = time.perf_counter()
        os.pwritev(fd, [buf], off, os.RWF_DSYNC)
        out.append(time.perf_counter() - t)
        off = (off + 4096) % size
    lat[i] = out
    os.close(fd)

for i in range(writers):
    prepare(os.path.join(root, f"w{i}"))
start = time.time() + 0.2
threads = [threading.Thread(target=worker, args=(i, start, start + secs)) for i in range(writers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for i in range(writers):
    os.remove(os.path.join(root, f"w{i}"))
v = sorted(x for l in lat.values() for x in l)
print(f"{writers} writer(s): {len(v) / secs:.0f} durable 4 KiB writes/s, "
      f"p50 {statistics.median(v) * 1e6:.0f} us, p99 {v[int(len(v) * 0.99)] * 1e6:.0f} us")
