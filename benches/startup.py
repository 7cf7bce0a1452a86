#!/usr/bin/env python3
"""Start-up time (spawn to info file) and idle RSS of `jserve serve` with an empty
build root. Usage: python3 benches/startup.py target/release/jserve"""
import json, os, subprocess, sys, time, statistics, shutil, tempfile
binary = sys.argv[1]
times = []
rss = []
for i in range(20):
    d = tempfile.mkdtemp(prefix="jserve-startup-")
    cfg = {"local build root": {"root": "system", "path": d + "/root"},
           "remote service": {"info file": {"root": "system", "path": d + "/info.json"}}}
    open(d + "/c.json", "w").write(json.dumps(cfg))
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "serve", d + "/c.json"], stderr=subprocess.DEVNULL)
    while not os.path.exists(d + "/info.json"):
        time.sleep(0.0005)
    t1 = time.perf_counter()
    times.append((t1 - t0) * 1000)
    time.sleep(0.5)
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("VmRSS"):
            rss.append(int(line.split()[1]) / 1024)
    p.terminate(); p.wait()
    shutil.rmtree(d, ignore_errors=True)
print(f"start-up to info file (empty build root): median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")
print(f"idle RSS: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")
