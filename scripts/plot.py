#!/usr/bin/python3
"""Plots of `rwkvpp bench` JSON (coordinator/cmd_bench.cpp), as PNG files:

  decode_batch.png     tokens/s against batch, with the ceilings the bench measured: the weights
                       read once per step (batch x 1 / decode_b1_floor_ms) and the GEMM rate
                       (tokens/s at gemm_TFLOPs, i.e. tokens_per_s / gemm_fraction)
  context.png          ms/token at batch 1 against the context already read (flat for RWKV)
  stages.png           per stage of a pipeline run: compute and wait seconds (bars)
  rwkv_vs_kv.png       cost per token and memory per sequence against context, RWKV (measured
                       ms/token; its state from the model's shape) next to a transformer of the
                       same n_layer x n_embd with an fp16 KV cache (COMPUTED, not measured: its
                       weights plus its KV cache read once per token at the read rate this bench
                       measured, and 2 x n_layer x n_embd x 2 bytes of cache per token)

Needs matplotlib (Debian's python3-matplotlib: scripts/deps.sh --plots).
Usage: scripts/plot.py [--out DIR] BENCH.json [PIPELINE_BENCH.json]
  The second file (a multi-stage run) gives stages.png; without it the first one does.
Regenerate the checked-in plots: scripts/plot_docs.sh"""
import argparse, json, os, sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: scripts/deps.sh --plots (Debian's python3-matplotlib), "
             "and run it with /usr/bin/python3")


def title(b):
    return f"{b['model']} ({b['version']}, {b['n_layer']} x {b['n_embd']}, {b['dtype']}, " \
           f"{'+'.join(sorted({s['backend'] for s in b['stages']}))})"


def decode_batch(b, out):
    d = sorted(b.get("decode", []), key=lambda x: x["batch"])
    if not d:
        return None
    bs = [x["batch"] for x in d]
    tps = [x["tokens_per_s"] for x in d]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(bs, tps, "o-", label="measured decode tokens/s")
    floor_ms = b["floors"]["decode_b1_floor_ms"]
    if floor_ms > 0:
        ax.plot(bs, [x * 1e3 / floor_ms for x in bs], "--",
                label=f"weights read once per step ({b['floors']['read_GBps']:.1f} GB/s)")
    with_frac = [x for x in d if x.get("gemm_fraction", 0) > 0]
    if with_frac:
        gemm_tps = with_frac[0]["tokens_per_s"] / with_frac[0]["gemm_fraction"]
        ax.axhline(gemm_tps, color="gray", linestyle=":",
                   label=f"GEMM rate ({b['floors']['gemm_TFLOPs']:.2f} TFLOP/s): {gemm_tps:,.0f} tokens/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch (sequences decoding)")
    ax.set_ylabel("tokens/s")
    ax.set_title(title(b), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out, "decode_batch.png")


def context(b, out):
    c = sorted(b.get("context", []), key=lambda x: x["context"])
    if not c:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([x["context"] for x in c], [x["ms_per_token"] for x in c], "o-", label="measured, batch 1")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("context already read (tokens)")
    ax.set_ylabel("ms per generated token")
    ax.set_title(title(b), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out, "context.png")


def stages(b, out):
    st = b.get("stages", [])
    if not st:
        return None
    names = [f"stage {i}\nrank {s['rank']}\nlayers {s['layers'][0]}-{s['layers'][1]}" for i, s in enumerate(st)]
    comp = [s["compute_s"] for s in st]
    wait = [s["wait_s"] for s in st]
    x = range(len(st))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(st) + 2), 4.5))
    ax.bar([i - 0.2 for i in x], comp, 0.4, label="compute (busy)")
    ax.bar([i + 0.2 for i in x], wait, 0.4, label="wait (for the next step)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("seconds over the bench")
    ax.set_title(title(b), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, out, "stages.png")


def rwkv_state_bytes(b):
    """Recurrent state of one sequence, fp32, from the shape (DESIGN.md, kernels' state layouts)."""
    L, C, H, hs = b["n_layer"], b["n_embd"], b["n_head"], b["head_size"]
    if str(b["version"]).startswith("4"):
        return L * 5 * C * 4                 # att x, aa, bb, pp; ffn x
    return L * (2 * C + H * hs * hs) * 4     # two token shifts and the WKV matrix per head


def rwkv_vs_kv(b, out):
    c = sorted(b.get("context", []), key=lambda x: x["context"])
    if not c:
        return None
    ctx = [x["context"] for x in c]
    # The transformer side is computed, so it is drawn over a wider range than was measured.
    wide = [2**k for k in range(7, 18)]
    L, C = b["n_layer"], b["n_embd"]
    kv_per_token = 2 * L * C * 2  # K and V, fp16
    read = b["floors"]["read_GBps"] * 1e9
    weights = sum(s["weight_bytes"] for s in b["stages"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
    a1.plot(ctx, [x["ms_per_token"] for x in c], "o-", label="RWKV (rwkvpp, measured)")
    a1.plot(wide, [(weights + kv_per_token * n) / read * 1e3 for n in wide], "--",
            label="transformer, same n_layer x n_embd, fp16 KV (computed)")
    a1.set_xscale("log", base=2)
    a1.set_ylim(bottom=0)
    a1.set_xlabel("context (tokens)")
    a1.set_ylabel("ms per generated token, batch 1")
    a1.set_title("cost per token", fontsize=9)
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=7)
    mib = 1 / 2**20
    a2.plot(ctx, [rwkv_state_bytes(b) * mib] * len(ctx), "o-", label="RWKV state (fp32, from the shape)")
    a2.plot(wide, [kv_per_token * n * mib for n in wide], "--", label="transformer KV cache (computed)")
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("context (tokens)")
    a2.set_ylabel("MiB per sequence")
    a2.set_title("memory per sequence", fontsize=9)
    a2.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=7)
    fig.suptitle(title(b) + f"; transformer side computed at the measured {b['floors']['read_GBps']:.1f} GB/s",
                 fontsize=9)
    return save(fig, out, "rwkv_vs_kv.png")


def save(fig, out, name):
    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".", help="directory for the PNG files")
    ap.add_argument("bench", help="rwkvpp bench JSON")
    ap.add_argument("pipeline", nargs="?", help="rwkvpp bench JSON of a multi-stage run (stages.png)")
    a = ap.parse_args()
    b = json.load(open(a.bench))
    os.makedirs(a.out, exist_ok=True)
    made = [decode_batch(b, a.out), context(b, a.out), rwkv_vs_kv(b, a.out),
            stages(json.load(open(a.pipeline)) if a.pipeline else b, a.out)]
    for m in made:
        if m:
            print(m)


if __name__ == "__main__":
    main()
