#!/usr/bin/env python3
"""Reads the trace of one run (`rwkvpp ... --trace FILE.json`, Chrome/Perfetto trace-event
JSON; common/trace.h) and prints where a step's time goes, as medians over the steps (a
batch-1 decode run is mostly alike steps, so the median is the decode step). Per rank (its
process) and track, the median duration of each span name ("wait for step", "slot ops +
input", "layers", "send" or "head + sampling" on the host; "layers" etc. on the device), and
between ranks:
  to rank i     rank i-1's step began (its Step arrived) -> rank i's Step arrived (the hop,
                on rank 0's clock: the ranks' offsets were measured at start-up)
  pipeline      the coordinator posted the Step -> its Result was handled
Usage: scripts/trace_hops.py FILE.json"""
import collections, json, statistics, sys

if len(sys.argv) != 2:
    sys.exit(__doc__)
ev = json.load(open(sys.argv[1]))["traceEvents"]
names = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
tracks = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
dur = collections.defaultdict(list)          # (pid, tid, name) -> [us]
step_start = collections.defaultdict(dict)   # pid -> step -> ts of the host's "step" span
begins = {}
pipeline = []
for e in ev:
    if e["ph"] == "X":
        dur[(e["pid"], e["tid"], e["name"])].append(e["dur"])
        if e["tid"] == 1 and e["name"] == "step":
            step_start[e["pid"]][e["args"]["step"]] = e["ts"]
    elif e["ph"] == "b" and e["name"] == "step through the pipeline":
        begins[e["id"]] = e["ts"]
    elif e["ph"] == "e" and e["id"] in begins:
        pipeline.append(e["ts"] - begins.pop(e["id"]))

def line(label, v):
    q = statistics.quantiles(v, n=10) if len(v) >= 10 else [min(v)] * 9
    print(f"  {label:44s} {statistics.median(v):9.1f}  ({q[0]:.1f} / {q[-1]:.1f})  n={len(v)}")

print(f"{len(names)} rank(s); medians (p10 / p90) in us:")
for pid in sorted(names):
    print(names[pid])
    for (p, tid, name), v in sorted(dur.items()):
        if p == pid:
            line(f"{tracks.get((p, tid), tid)}: {name}", v)
ranks = sorted(step_start)
for a, b in zip(ranks, ranks[1:]):
    hop = [step_start[b][s] - step_start[a][s] for s in step_start[a] if s in step_start[b]]
    if hop:
        line(f"to rank {b} (from rank {a}'s step start)", hop)
if pipeline:
    line("pipeline (Step posted -> Result handled)", pipeline)
