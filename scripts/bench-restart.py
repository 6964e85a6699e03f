#!/usr/bin/env python3
"""Issue 22, point 10: the time from restarting the first node of a 3-node durable cluster (kill -9
or SIGTERM) until all three see each other alive at their current addresses (members --json,
polled every 50 ms). Usage: scripts/bench-restart.py BIN kill|term [LIMIT_SECONDS]"""
import json, os, signal, subprocess, sys, tempfile, time

BIN, MODE, LIMIT = sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 60

def env(home):
    e = dict(os.environ); e["KVNODE_HOME"] = home
    for k in ("KVNODE_SECRET", "KVNODE_VIA", "RUST_LOG"): e.pop(k, None)
    return e

def start(home, name, *args):
    return subprocess.Popen([BIN, "start", "--name", name, *args], env=env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def addr(home, name, pid):
    p = os.path.join(home, "nodes", name)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            t = open(p).read()
            kv = dict(l.split("=", 1) for l in t.splitlines() if "=" in l)
            if int(kv.get("pid", 0)) == pid: return kv["addr"]
        except Exception: pass
        time.sleep(0.02)
    raise SystemExit(f"{name} did not come up")

def members(home, via):
    r = subprocess.run([BIN, "members", "--via", via, "--json", "--timeout", "1s"], env=env(home),
                       capture_output=True, text=True)
    if r.returncode != 0: return []
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]

def whole(home, nodes):
    for via in nodes:
        m = members(home, via)
        for n, a in nodes.items():
            if not any(x["name"] == n and x["state"] == "alive" and x["addr"] == a for x in m): return False
    return True

with tempfile.TemporaryDirectory() as home:
    procs = {}
    procs["n1"] = start(home, "n1")
    nodes = {"n1": addr(home, "n1", procs["n1"].pid)}
    for n in ("n2", "n3"):
        procs[n] = start(home, n, "--join", "n1"); nodes[n] = addr(home, n, procs[n].pid)
    t = time.time()
    while not whole(home, nodes):
        if time.time() - t > 30: raise SystemExit("never whole before the restart")
        time.sleep(0.05)
    procs["n1"].send_signal(signal.SIGKILL if MODE == "kill" else signal.SIGTERM)
    procs["n1"].wait()
    t0 = time.time()
    procs["n1"] = start(home, "n1")
    nodes["n1"] = addr(home, "n1", procs["n1"].pid)
    took = None
    while time.time() - t0 < LIMIT:
        if whole(home, nodes): took = time.time() - t0; break
        time.sleep(0.05)
    print(f"{MODE}: " + (f"{took:.3f}s" if took is not None else f"not within {LIMIT:.0f}s"), flush=True)
    for p in procs.values():
        p.kill(); p.wait()
