#!/usr/bin/env python3
"""Reads the per-rank traces of one run (RWKVPP_TRACE=PREFIX: PREFIX.0.csv, PREFIX.1.csv, ...;
common/trace.h) and prints where a step's time goes between hosts, as medians over the steps
(a batch-1 decode run is mostly alike steps, so the median is the decode step):
  engine        the coordinator's Result arrived -> the next Step posted
  to stage i    the message posted (or the previous stage's work queued) -> stage i's host has it
  queue i       stage i's host: the Step arrived -> its work queued (graph launched, header sent),
                split into: input i (-> the embedding or the hidden vectors' copy queued), layers i
                (-> its layers queued) and out i (-> the head or the copy to the next stage queued,
                the message posted)
  device tail   the last stage's work queued -> its sampled ids seen by its host (device time of
                the layers not yet done when it queued, the hops between devices, the head)
  result        the ids seen -> the Result at the coordinator
Usage: scripts/trace_hops.py PREFIX"""
import csv, glob, statistics, sys

prefix = sys.argv[1]
files = sorted(glob.glob(prefix + ".*.csv"), key=lambda p: int(p.rsplit(".", 2)[-2]))
ev = []  # per rank: {point: {step: ns}}
for p in files:
    d = {}
    for row in csv.DictReader(open(p)):
        d.setdefault(row["point"], {})[int(row["step"])] = int(row["ns"])
    ev.append(d)
n = len(ev)
if n == 0:
    sys.exit(f"no trace files {prefix}.*.csv")
posted = ev[0].get("step_posted", {})
res_in = ev[0].get("result_in", {})
ready = ev[-1].get("result_ready", {})
steps = sorted(s for s in posted if s in res_in and s in ready and s + 1 in posted
               and all(s in ev[i].get("step_queued", {}) for i in range(n)))
if not steps:
    sys.exit("no step was traced through every rank")
rows = {}
def add(name, v):
    rows.setdefault(name, []).append(v / 1000.0)
for s in steps:
    prev = posted[s]
    for i in range(n):
        arr, q = ev[i]["step_arrived"][s], ev[i]["step_queued"][s]
        add(f"to stage {i}", arr - prev)
        add(f"queue {i}", q - arr)
        inp, lay = ev[i].get("input_queued", {}).get(s), ev[i].get("layers_queued", {}).get(s)
        if inp is not None and lay is not None:
            add(f"  input {i}", inp - arr)
            add(f"  layers {i}", lay - inp)
            add(f"  out {i}", q - lay)
        prev = q
    add("device tail", ready[s] - prev)
    add("result", res_in[s] - ready[s])
    add("engine", posted[s + 1] - res_in[s])
    add("step (posted -> next posted)", posted[s + 1] - posted[s])
print(f"{n} rank(s), {len(steps)} steps; medians (p10 / p90) in us:")
for k, v in rows.items():
    q = statistics.quantiles(v, n=10) if len(v) >= 10 else [min(v)] * 9
    print(f"  {k:30s} {statistics.median(v):9.1f}  ({q[0]:.1f} / {q[-1]:.1f})")
