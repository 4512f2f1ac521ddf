#!/usr/bin/env bash
# Benchmark of `rwkvpp serve` (issue 19): a concurrency sweep of streaming requests (TTFT and
# inter-token latency p50/p99, tokens/s; scripts/bench_serve.mjs) beside `rwkvpp bench` decode of
# the same model with the same launcher and threads, in the same run; then the shared-prefix
# case (scripts/bench_prefix.mjs): TTFT of chats with a PREFIX-token system prompt read from
# scratch and started from the state the cache kept; JSON out. The sweep's requests share one
# prompt, so its server runs without the state cache (every prefill would be a hit); the
# shared-prefix case starts a second server with it.
#
#   scripts/bench_serve.sh [MODEL]      (default: rwkv.cpp's tiny RWKV-4 from ../shared, bytes)
# Environment: LAUNCH (e.g. "mpirun --allow-run-as-root --oversubscribe -np 3"; default: one
# process), LEVELS (1,4,16,64,256), PROMPT (prompt bytes, 64), GEN (tokens per request, 64),
# THREADS (CPU threads per rank, 0: the host's cores shared), OUT (bench-serve.json),
# PREFIX (system prompt tokens of the shared-prefix case, 2000; 0: skip it), CACHE_MB (its
# --state-cache-mb, 1024),
# RWKVPP (the binary, default build/coordinator/rwkvpp), EXTRA (more serve/bench flags),
# SERVE_EXTRA (serve's only, e.g. "--tokenizer bytes" for a `rwkvpp synth` model),
# TEMPERATURE (1: the requests' and the offline decode's; 0 compares greedy with greedy, which
# the last stage reduces to ids on the device, while > 0 samples every row on the host).
# The server listens on 127.0.0.1 only; it is stopped (SIGTERM) before the offline bench runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RWKVPP:-build/coordinator/rwkvpp}
launch=${LAUNCH:-}
levels=${LEVELS:-1,4,16,64,256}
prompt=${PROMPT:-64}
gen=${GEN:-64}
temperature=${TEMPERATURE:-1}
threads=${THREADS:-0}
out=${OUT:-bench-serve.json}
extra=${EXTRA:-}
serve_extra=${SERVE_EXTRA:-}
prefix=${PREFIX:-2000}
cache_mb=${CACHE_MB:-1024}
work=$(mktemp -d)
server=""
cleanup() {
  if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    sleep 2
    kill -KILL "$server" $(pgrep -P "$server" 2>/dev/null) 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

model=${1:-}
if [[ -z "$model" ]]; then
  shared=${RWKVPP_SHARED:-$(cd .. && pwd)/shared}
  model=$work/tiny
  "$bin" convert "$shared/fixtures/rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin" -o "$model" --tokenizer bytes >/dev/null
fi

# Starts the server (more flags in "$@") and waits for /ready: sets server, url, name, rank0.
start_server() {
  # shellcheck disable=SC2086
  $launch "$bin" serve -m "$model" --host 127.0.0.1 --port 0 --threads "$threads" --max-waiting 100000 \
    $extra $serve_extra "$@" 2>"$work/serve.log" &
  server=$!
  url=""
  for _ in $(seq 1 1200); do
    url=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$work/serve.log" | head -1 | sed 's/listening on //' || true)
    if [[ -n "$url" ]] && curl -sf "$url/ready" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server" 2>/dev/null; then cat "$work/serve.log" >&2; exit 1; fi
    sleep 0.1
  done
  [[ -n "$url" ]] || { echo "bench_serve: the server did not start" >&2; cat "$work/serve.log" >&2; exit 1; }
  name=$(curl -s "$url/v1/models" | sed 's/.*"id":"\([^"]*\)".*/\1/')
  rank0=$(grep -o 'pid [0-9]*' "$work/serve.log" | head -1 | cut -d' ' -f2)
}
stop_server() {
  kill -TERM "$rank0"
  wait "$server" || true
  server=""
}

start_server --max-tokens-limit "$gen" --state-cache-mb 0
node scripts/bench_serve.mjs --url "$url" --model "$name" --levels "$levels" --prompt "$prompt" --gen "$gen" --pid "$rank0" \
  --temperature "$temperature" > "$work/served.json"
stop_server

# shellcheck disable=SC2086
$launch "$bin" bench -m "$model" --batch "$levels" --prompt "$prompt" --gen "$gen" --threads "$threads" \
  --temperature "$temperature" $extra \
  -o "$work/offline.json" >/dev/null

echo '{}' >"$work/prefix.json"
if [[ "$prefix" != 0 ]]; then
  start_server --state-cache-mb "$cache_mb" --max-prompt-tokens $((4 * prefix + 4096))
  node scripts/bench_prefix.mjs --url "$url" --model "$name" --prefix "$prefix" >"$work/prefix.json"
  stop_server
fi
node -e '
  const fs = require("fs");
  const served = JSON.parse(fs.readFileSync(process.argv[1]));
  const offline = JSON.parse(fs.readFileSync(process.argv[2]));
  served.launcher = process.argv[3] || "one process";
  for (const l of served.levels) {
    const d = offline.decode.find((x) => x.batch === l.concurrency);
    if (!d) continue;
    l.offline_decode = { batch: d.batch, sequences: d.sequences, tokens_per_s: d.tokens_per_s, ms_per_step: d.ms_per_step };
    l.served_over_offline = Math.round((l.tokens_per_s / d.tokens_per_s) * 1000) / 1000;
  }
  served.offline_bench = offline;
  served.shared_prefix = JSON.parse(fs.readFileSync(process.argv[5]));
  fs.writeFileSync(process.argv[4], JSON.stringify(served, null, 2) + "\n");
' "$work/served.json" "$work/offline.json" "$launch" "$out" "$work/prefix.json"
echo "bench_serve: wrote $out" >&2
node -e '
  const j = JSON.parse(require("fs").readFileSync(process.argv[1]));
  console.error("concurrency  served tok/s  offline tok/s (batch)  TTFT p50/p99 ms  ITL p50/p99 ms  errors");
  for (const l of j.levels)
    console.error(`${String(l.concurrency).padStart(11)}  ${String(l.tokens_per_s).padStart(12)}  ${String(l.offline_decode?.tokens_per_s?.toFixed(1) ?? "-").padStart(13)} (${l.offline_decode?.sequences ?? "-"} seqs)  ${l.ttft_ms.p50}/${l.ttft_ms.p99}  ${l.itl_ms.p50}/${l.itl_ms.p99}  ${l.errors}`);
  const p = j.shared_prefix;
  if (p.hit)
    console.error(`shared prefix: ${p.prompt_tokens} prompt tokens, TTFT ${p.cold.ttft_ms_median} ms cold, ${p.hit.ttft_ms_median} ms from a kept state of ${p.hit.saved_tokens_per_hit} tokens: ${p.ttft_cold_over_hit}x`);
' "$out"
