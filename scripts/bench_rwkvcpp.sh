#!/usr/bin/env bash
# Side-by-side CPU benchmark of rwkvpp against rwkv.cpp (issue 28), run by hand on a CPU box
# (not in CI, not called by scripts/test.sh). Method and how to read the output:
# docs/perf-cpu.md, "Side by side with rwkv.cpp".
#
#   1. builds rwkv.cpp (RWKVCPP_SRC, with ggml in place) OUTSIDE the repository, Release, CPU
#      backend only, and our driver for it (kernels/cpu/dev/rwkvcpp_driver.cpp);
#   2. writes the SAME random weights for both engines: rwkvpp's synthetic RWKV-4 weights at an
#      official shape (seed SEED) in rwkv.cpp's format (shards/dev/rwkvcpp_write.cpp, FP32 and
#      FP16 files), `rwkvpp convert` of those bytes for rwkvpp, and rwkv.cpp's own Q8_0
#      quantisation of the FP16 file (rwkvpp runs the fp16 model with --compute-dtype int8);
#   3. checks that the logits after a fixed token sequence agree (fp32: max |diff| <= FP32_TOL
#      or the script fails; fp16 and int8 are reported);
#   4. times decode at batch 1 for both engines ALTERNATELY (rwkv.cpp, rwkvpp, rwkv.cpp, ...),
#      ROUNDS rounds, at each thread count, dtype and shape, with the machine load (`uptime`)
#      recorded before each round; medians over rounds go to a JSON file and a table.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
usage: scripts/bench_rwkvcpp.sh [RWKVCPP_SRC]

Builds rwkv.cpp from RWKVCPP_SRC (an rwkv.cpp source tree with its ggml submodule in place) into
\$WORK/rwkvcpp-build, writes the same random weights for both engines, checks that their logits
agree and times both alternately at batch 1. Results: \$WORK/results/bench-<time>/summary.json
(every run, the agreement, the medians) and table.txt (the table, also printed).

Environment (defaults in brackets):
  RWKVCPP_SRC     rwkv.cpp source tree (or the first argument)
  WORK            builds, models and results [/tmp/rwkvpp-peer]; outside the repository
  RWKVPP_BUILD_DIR  rwkvpp's build folder, relative to the repository [build]; configured by
                  scripts/build.sh if absent (to pass cmake options such as -DRWKVPP_CUDA=OFF,
                  run RWKVPP_BUILD_DIR=DIR scripts/build.sh -DRWKVPP_CUDA=OFF first)
  SHAPES          official RWKV-4 shapes [169m 430m]
  DTYPES          fp32 fp16 int8 (int8: rwkv.cpp Q8_0 vs rwkvpp --compute-dtype int8) [all]
  THREADS         thread counts [1 2]
  ROUNDS          timing rounds, each runs every case once per engine [3]
  GEN             timed decode steps per run [64]; WARMUP: untimed rwkv.cpp steps before [8]
  TOKENS          token ids of the agreement check [16 fixed ids]
  SEED            synthetic weights' seed [1]
  FP32_TOL        largest allowed fp32 max |diff| of the logits [1e-4]
  NICE            nice level of builds and runs [0]
  FRESH=1         rewrite the models even if present
Short check: SHAPES=169m DTYPES="fp32 fp16" THREADS=1 ROUNDS=1 scripts/bench_rwkvcpp.sh SRC
EOF
}

die() {
  echo "bench_rwkvcpp: $*" >&2
  exit 1
}

[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# <= 1)) || { usage >&2; exit 2; }
src=${1:-${RWKVCPP_SRC:-}}
[[ -n $src ]] || { usage >&2; die "no rwkv.cpp source tree: set RWKVCPP_SRC or pass it as the argument"; }
[[ -f $src/rwkv.h && -f $src/CMakeLists.txt ]] || die "'$src' is not an rwkv.cpp source tree (no rwkv.h/CMakeLists.txt)"
[[ -f $src/ggml/CMakeLists.txt ]] || die "'$src/ggml' is empty: put ggml at the commit rwkv.cpp pins there (git submodule update --init)"
src=$(cd "$src" && pwd)
work=$(mkdir -p "${WORK:-/tmp/rwkvpp-peer}" && cd "${WORK:-/tmp/rwkvpp-peer}" && pwd)
case "$work/" in "$repo"/*) die "WORK ($work) is inside the repository; choose a folder outside it" ;; esac
build=${RWKVPP_BUILD_DIR:-build}
[[ $build == /* ]] || build=$repo/$build
read -r -a shapes <<<"${SHAPES:-169m 430m}"
read -r -a dtypes <<<"${DTYPES:-fp32 fp16 int8}"
read -r -a threads <<<"${THREADS:-1 2}"
rounds=${ROUNDS:-3}
gen=${GEN:-64}
warmup=${WARMUP:-8}
tokens=${TOKENS:-510,3158,2,50276,187,0,1000,12345,42,29,8,33000,777,4000,101,17}
seed=${SEED:-1}
tol=${FP32_TOL:-1e-4}
nice_level=${NICE:-0}
for d in "${dtypes[@]}"; do [[ $d == fp32 || $d == fp16 || $d == int8 ]] || die "DTYPES: '$d' (fp32, fp16 or int8)"; done
for t in "${threads[@]}"; do [[ $t =~ ^[1-9][0-9]*$ ]] || die "THREADS: '$t' is not a thread count"; done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS: '$rounds' is not a positive count"
for tool in cmake c++ python3; do command -v "$tool" >/dev/null || die "'$tool' is needed"; done
run() { nice -n "$nice_level" "$@"; }
log() { echo "== $*" >&2; }

# --- 1. rwkv.cpp (outside the repository) and our driver -------------------------------------
rc_build=$work/rwkvcpp-build
log "building rwkv.cpp from $src into $rc_build (Release, CPU backend only)"
gen_args=()
if command -v ninja >/dev/null && [[ ! -f $rc_build/CMakeCache.txt || -f $rc_build/build.ninja ]]; then
  gen_args=(-G Ninja)
fi
run cmake -S "$src" -B "$rc_build" "${gen_args[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DRWKV_BUILD_SHARED_LIBRARY=ON -DRWKV_STANDALONE=ON -DRWKV_CUBLAS=OFF -DRWKV_HIPBLAS=OFF -DRWKV_METAL=OFF \
  -DRWKV_CLBLAST=OFF -DRWKV_OPENBLAS=OFF -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_METAL=OFF \
  -DGGML_VULKAN=OFF -DGGML_SYCL=OFF -DGGML_BLAS=OFF -DGGML_NATIVE=ON -DGGML_CCACHE=OFF >"$work/rwkvcpp-cmake.log" 2>&1 ||
  die "configuring rwkv.cpp failed: $work/rwkvcpp-cmake.log"
run cmake --build "$rc_build" --target rwkv -j "$(nproc)" >"$work/rwkvcpp-build.log" 2>&1 ||
  die "building rwkv.cpp failed: $work/rwkvcpp-build.log"
lib=$(find "$rc_build" -name 'librwkv.so' -print -quit)
[[ -n $lib ]] || die "no librwkv.so under $rc_build"
libdir=$(dirname "$lib")
driver=$work/rwkvcpp_driver
run c++ -std=c++17 -O2 -Wall -Wextra -Werror -I"$src" "$repo/kernels/cpu/dev/rwkvcpp_driver.cpp" \
  -o "$driver" -L"$libdir" -lrwkv -Wl,-rpath,"$libdir" || die "compiling the driver failed"

# --- rwkvpp and the weight writer -------------------------------------------------------------
if [[ ! -f $build/CMakeCache.txt ]]; then
  log "configuring and building rwkvpp in $build"
  (cd "$repo" && RWKVPP_BUILD_DIR=$build run ./scripts/build.sh)
fi
run cmake --build "$build" --target rwkvpp rwkvcpp_write -j "$(nproc)" >"$work/rwkvpp-build.log" 2>&1 ||
  die "building rwkvpp failed: $work/rwkvpp-build.log"
rwkvpp=$build/coordinator/rwkvpp
writer=$build/shards/rwkvcpp_write
[[ -x $rwkvpp && -x $writer ]] || die "no $rwkvpp or $writer after the build"

# --- 2. the same weights for both engines -----------------------------------------------------
# $work/models/SHAPE/: fp32.bin fp16.bin q8_0.bin (rwkv.cpp), pp-fp32/ pp-fp16/ (rwkvpp).
make_models() {
  local shape=$1 dir=$work/models/$1-seed$seed
  mkdir -p "$dir"
  for d in fp32 fp16; do
    if [[ ${FRESH:-0} == 1 || ! -f $dir/$d.bin ]]; then
      log "$shape: writing $d.bin and converting it for rwkvpp"
      run "$writer" --shape "$shape" --dtype "$d" --seed "$seed" -o "$dir/$d.bin.tmp"
      mv "$dir/$d.bin.tmp" "$dir/$d.bin"
      rm -rf "$dir/pp-$d"
    fi
    if [[ ! -f $dir/pp-$d/model.h5 ]]; then
      rm -rf "$dir/pp-$d.tmp"
      run "$rwkvpp" convert "$dir/$d.bin" -o "$dir/pp-$d.tmp" --dtype "$d" >/dev/null
      mv "$dir/pp-$d.tmp" "$dir/pp-$d"
    fi
  done
  if [[ " ${dtypes[*]} " == *" int8 "* && (${FRESH:-0} == 1 || ! -f $dir/q8_0.bin) ]]; then
    log "$shape: quantising fp16.bin to Q8_0 with rwkv.cpp's quantiser"
    run "$driver" quantize "$dir/fp16.bin" "$dir/q8_0.bin.tmp" Q8_0 >"$dir/quantize.log" 2>&1 ||
      die "rwkv.cpp's quantiser failed: $dir/quantize.log"
    mv "$dir/q8_0.bin.tmp" "$dir/q8_0.bin"
  fi
}

# The files each engine runs for a dtype: rwkv.cpp's .bin, rwkvpp's model and extra flags.
rc_model() { case $2 in fp32) echo "$1/fp32.bin" ;; fp16) echo "$1/fp16.bin" ;; int8) echo "$1/q8_0.bin" ;; esac; }
pp_model() { case $2 in fp32) echo "$1/pp-fp32" ;; *) echo "$1/pp-fp16" ;; esac; }
pp_flags() { if [[ $1 == int8 ]]; then echo "--compute-dtype int8"; fi; }

for s in "${shapes[@]}"; do make_models "$s"; done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$work/results/bench-$stamp
mkdir -p "$out"
runs=$out/runs.jsonl
agree=$out/agreement.jsonl
: >"$runs"
: >"$agree"

# --- 3. logits agreement (1 thread; the fixed token sequence) --------------------------------
compare_logits() {  # rwkv.cpp .f32, rwkvpp .npy -> one JSON line (max |diff|, scale, argmax)
  python3 - "$1" "$2" <<'EOF'
import array, json, struct, sys
a = array.array("f"); a.frombytes(open(sys.argv[1], "rb").read())
raw = open(sys.argv[2], "rb").read()
assert raw[:6] == b"\x93NUMPY", "not a .npy file"
hlen = struct.unpack("<H", raw[8:10])[0] if raw[6] == 1 else struct.unpack("<I", raw[8:12])[0]
start = (10 if raw[6] == 1 else 12) + hlen
header = raw[start - hlen:start].decode("latin1")
assert "'<f4'" in header and "False" in header, "expected little-endian float32 C order: " + header
b = array.array("f"); b.frombytes(raw[start:])
n = len(a)
assert n and len(b) % n == 0, "vocab sizes differ: %d vs %d values" % (n, len(b))
b = b[len(b) - n:]  # the row after the last token
diff = max(abs(x - y) for x, y in zip(a, b))
print(json.dumps({"max_abs_diff": diff, "max_abs_logit": max(abs(x) for x in a),
                  "argmax_rwkvcpp": max(range(n), key=a.__getitem__),
                  "argmax_rwkvpp": max(range(n), key=b.__getitem__), "vocab": n}))
EOF
}

failed=0
for s in "${shapes[@]}"; do
  dir=$work/models/$s-seed$seed
  for d in "${dtypes[@]}"; do
    run "$driver" logits "$(rc_model "$dir" "$d")" --threads 1 --tokens "$tokens" -o "$out/rc-$s-$d.f32" 2>/dev/null ||
      die "rwkv.cpp logits failed ($s $d)"
    read -r -a flags <<<"$(pp_flags "$d")"
    run "$rwkvpp" logits --model "$(pp_model "$dir" "$d")" --device cpu --threads 1 "${flags[@]}" \
      --tokens "$tokens" -o "$out/pp-$s-$d.npy" >/dev/null 2>"$out/pp-$s-$d.log" ||
      die "rwkvpp logits failed ($s $d): $out/pp-$s-$d.log"
    line=$(compare_logits "$out/rc-$s-$d.f32" "$out/pp-$s-$d.npy") || die "comparing logits failed ($s $d)"
    echo "{\"shape\": \"$s\", \"dtype\": \"$d\", \"result\": $line}" >>"$agree"
    diff=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["max_abs_diff"])' "$line")
    verdict=reported
    if [[ $d == fp32 ]]; then
      if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$diff" "$tol"; then
        verdict="ok (<= $tol)"
      else
        verdict="FAILED (> $tol)"
        failed=1
      fi
    fi
    printf 'agreement %-5s %-5s max|diff| %-12s %s\n' "$s" "$d" "$diff" "$verdict" >&2
  done
done
((failed == 0)) || die "fp32 logits disagree beyond $tol: $agree"

# --- 4. timing, alternating engines -----------------------------------------------------------
record() { echo "$1" >>"$runs"; }
for ((r = 1; r <= rounds; r++)); do
  load=$(uptime)
  log "round $r/$rounds: $load"
  record "{\"round\": $r, \"uptime\": \"${load#"${load%%[! ]*}"}\"}"
  for s in "${shapes[@]}"; do
    dir=$work/models/$s-seed$seed
    for d in "${dtypes[@]}"; do
      for t in "${threads[@]}"; do
        j=$(run "$driver" bench "$(rc_model "$dir" "$d")" --threads "$t" --warmup "$warmup" --gen "$gen" 2>/dev/null) ||
          die "rwkv.cpp bench failed ($s $d threads $t)"
        bytes=$(stat -c %s "$(rc_model "$dir" "$d")")
        record "{\"round\": $r, \"shape\": \"$s\", \"dtype\": \"$d\", \"threads\": $t, \"engine\": \"rwkv.cpp\", \"file_bytes\": $bytes, \"run\": $j}"
        read -r -a flags <<<"$(pp_flags "$d")"
        run "$rwkvpp" bench --model "$(pp_model "$dir" "$d")" --device cpu --threads "$t" "${flags[@]}" \
          --batch 1 --prompt 16 --gen "$gen" -o "$out/pp.json" >/dev/null 2>"$out/pp-bench.log" ||
          die "rwkvpp bench failed ($s $d threads $t): $out/pp-bench.log"
        record "{\"round\": $r, \"shape\": \"$s\", \"dtype\": \"$d\", \"threads\": $t, \"engine\": \"rwkvpp\", \"run\": $(tr -d '\n' <"$out/pp.json")}"
        printf '  %-5s %-5s threads %s: rwkv.cpp %s ms, rwkvpp %s ms\n' "$s" "$d" "$t" \
          "$(python3 -c 'import json,sys; print("%.2f" % json.loads(sys.argv[1])["mean_ms"])' "$j")" \
          "$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["decode"][0]["ms_per_step"])' "$out/pp.json")" >&2
      done
    done
  done
done
rm -f "$out/pp.json"

# --- summary: JSON and table ------------------------------------------------------------------
meta=$(python3 - "$src" "$repo" "$driver" "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)" \
  "$(nproc)" "$(uname -sr)" "$gen" "$seed" "$tokens" <<'EOF'
import json, subprocess, sys
src, repo, driver, cpu, cores, kernel, gen, seed, tokens = sys.argv[1:]
def sh(*cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception: return None
origin = None
try: origin = open(src + "/SOURCE.txt").read().strip()
except OSError: pass
print(json.dumps({"rwkvcpp_src": src, "rwkvcpp_git": sh("git", "-C", src, "rev-parse", "HEAD"),
    "rwkvcpp_source_note": origin, "rwkvcpp_system_info": sh(driver, "info"),
    "rwkvpp_git": sh("git", "-C", repo, "rev-parse", "HEAD"), "rwkvpp_dirty": bool(sh("git", "-C", repo, "status", "--porcelain")),
    "cpu": cpu, "cores": int(cores), "kernel": kernel, "gen": int(gen), "seed": int(seed), "tokens": tokens}))
EOF
)
python3 - "$runs" "$agree" "$out/summary.json" "$out/table.txt" "$meta" <<'EOF'
import json, statistics, sys
runs_path, agree_path, json_path, table_path, meta = sys.argv[1:]
rows = [json.loads(l) for l in open(runs_path)]
loads = [r["uptime"] for r in rows if "uptime" in r]
cases, mbytes = {}, {}
for r in rows:
    if "engine" not in r: continue
    k = (r["shape"], r["dtype"], r["threads"])
    # Weight bytes each engine holds: rwkv.cpp's model file, rwkvpp's stages (int8 with scales).
    mbytes.setdefault(k, {})[r["engine"]] = (r["file_bytes"] if r["engine"] == "rwkv.cpp" else
                                             sum(st["weight_bytes"] for st in r["run"]["stages"]))
    ms = r["run"]["mean_ms"] if r["engine"] == "rwkv.cpp" else r["run"]["decode"][0]["ms_per_step"]
    cases.setdefault(k, {"rwkv.cpp": [], "rwkvpp": []})[r["engine"]].append(ms)
summary = []
for (shape, dtype, threads), v in cases.items():
    rc, pp = statistics.median(v["rwkv.cpp"]), statistics.median(v["rwkvpp"])
    summary.append({"shape": shape, "dtype": dtype, "threads": threads, "rounds": len(v["rwkvpp"]),
                    "rwkvcpp_ms_per_token": rc, "rwkvpp_ms_per_token": pp,
                    "rwkvcpp_tokens_per_s": 1e3 / rc, "rwkvpp_tokens_per_s": 1e3 / pp,
                    "ratio_rwkvpp_over_rwkvcpp_tokens_per_s": rc / pp,
                    "rwkvcpp_file_bytes": mbytes[(shape, dtype, threads)]["rwkv.cpp"],
                    "rwkvpp_weight_bytes": mbytes[(shape, dtype, threads)]["rwkvpp"],
                    "rwkvcpp_runs_ms": v["rwkv.cpp"], "rwkvpp_runs_ms": v["rwkvpp"]})
agreement = [json.loads(l) for l in open(agree_path)]
doc = {"meta": json.loads(meta), "loads_before_rounds": loads, "agreement": agreement,
       "summary": summary, "runs": [r for r in rows if "engine" in r]}
json.dump(doc, open(json_path, "w"), indent=1)
lines = ["rwkvpp vs rwkv.cpp, decode at batch 1 (ms/token: median over rounds of each run's mean step)",
         "cpu: %s, %d cores; rounds: %s" % (doc["meta"]["cpu"], doc["meta"]["cores"], len(loads))]
lines += ["load before round %d: %s" % (i + 1, l) for i, l in enumerate(loads)]
lines += ["logits %s %s: max|diff| %.3g (max|logit| %.3g, argmax %s)" % (a["shape"], a["dtype"],
          a["result"]["max_abs_diff"], a["result"]["max_abs_logit"],
          "same" if a["result"]["argmax_rwkvcpp"] == a["result"]["argmax_rwkvpp"] else "DIFFERS")
          for a in agreement]
hdr = "%-6s %-5s %7s | %11s %8s %6s | %9s %8s %6s | %9s" % ("shape", "dtype", "threads", "rwkv.cpp ms",
      "tok/s", "MB", "rwkvpp ms", "tok/s", "MB", "pp/rc t/s")
lines += ["", hdr, "-" * len(hdr)]
for s in summary:
    lines.append("%-6s %-5s %7d | %11.2f %8.1f %6.0f | %9.2f %8.1f %6.0f | %9.2f" % (s["shape"], s["dtype"],
                 s["threads"], s["rwkvcpp_ms_per_token"], s["rwkvcpp_tokens_per_s"], s["rwkvcpp_file_bytes"] / 1e6,
                 s["rwkvpp_ms_per_token"], s["rwkvpp_tokens_per_s"], s["rwkvpp_weight_bytes"] / 1e6,
                 s["ratio_rwkvpp_over_rwkvcpp_tokens_per_s"]))
lines += ["", "MB: weight bytes held (rwkv.cpp: its model file; rwkvpp: its stages' weights); a token reads",
          "all but the embedding. ms: the mean step of a run (rwkv.cpp's medians: summary.json runs)."]
open(table_path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "results: $out/summary.json, $out/table.txt" >&2
