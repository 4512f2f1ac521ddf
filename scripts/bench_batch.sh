#!/usr/bin/env bash
# What rwkvpp batch gains by reading shared prompt text once, measured by timing pairs of batch
# runs that write the same records:
#   1. n=8 samples per prompt (the prompt is read once, its state forked for every sample)
#      against the same samples as 8 separate input lines per prompt (each reads the prompt);
#   2. a 500-token --prefix-file read once for the job against the same text pasted in front
#      of every prompt;
#   3. automatic prefix sharing: DOC_PROMPTS prompts (2000) made of one DOC_BYTES-token document
#      (1000) and a different QUESTION_BYTES-token question (20), against --no-auto-prefix;
#   4. the same on DOC_PROMPTS prompts of DOC_BYTES + QUESTION_BYTES tokens that share nothing
#      (what the sharing costs when there is nothing to share).
# Usage: scripts/bench_batch.sh [MODEL]   (default: a RANDOM-weight `rwkvpp synth --shape tiny`)
# Environment: RWKVPP (binary, default build/coordinator/rwkvpp), LAUNCH (e.g. "mpirun -np 3"),
# PROMPTS (default 32), PROMPT_BYTES (500), MAX_TOKENS (16), FLAGS (more batch flags),
# REPEAT (runs per case, the best is kept; default 2), CASES (which cases, default "1 2 3 4"),
# DOC_PROMPTS, DOC_BYTES, QUESTION_BYTES (cases 3 and 4), DOC_REPEAT (runs of cases 3 and 4,
# default REPEAT). The bytes tokenizer is used, so a byte of prompt text is one token.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RWKVPP:-build/coordinator/rwkvpp}
launch=${LAUNCH:-}
prompts=${PROMPTS:-32}
plen=${PROMPT_BYTES:-500}
gen=${MAX_TOKENS:-16}
repeat=${REPEAT:-2}
cases=${CASES:-1 2 3 4}
doc_prompts=${DOC_PROMPTS:-2000}
doc_bytes=${DOC_BYTES:-1000}
q_bytes=${QUESTION_BYTES:-20}
doc_repeat=${DOC_REPEAT:-$repeat}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

model=${1:-}
if [[ -z $model ]]; then
  "$bin" synth --shape tiny -o "$work/model" >/dev/null
  model=$work/model
fi

# Deterministic text of N bytes made of words (a-z and spaces), different for each seed.
text() {
  awk -v n="$1" -v seed="$2" 'BEGIN { srand(seed); s = "";
    while (length(s) < n) { w = int(2 + rand() * 7); for (i = 0; i < w; i++) s = s sprintf("%c", 97 + int(rand() * 26)); s = s " " }
    printf "%s", substr(s, 1, n) }'
}

# Case 1: forked samples vs separate lines.
: >"$work/forked.jsonl"
: >"$work/lines.jsonl"
for ((i = 0; i < prompts; i++)); do
  t=$(text "$plen" "$i")
  printf '{"id": "p%d", "prompt": "%s", "n": 8}\n' "$i" "$t" >>"$work/forked.jsonl"
  for ((k = 0; k < 8; k++)); do printf '{"id": "p%d-%d", "prompt": "%s"}\n' "$i" "$k" "$t" >>"$work/lines.jsonl"; done
done
# Case 2: a shared 500-token prefix, read once vs pasted into every prompt.
text 500 999 >"$work/prefix.txt"
prefix=$(cat "$work/prefix.txt")
: >"$work/short.jsonl"
: >"$work/joined.jsonl"
for ((i = 0; i < prompts * 8; i++)); do
  q=$(text 40 "$((i + 5000))")
  printf '{"id": "q%d", "prompt": "%s"}\n' "$i" "$q" >>"$work/short.jsonl"
  printf '{"id": "q%d", "prompt": "%s%s"}\n' "$i" "$prefix" "$q" >>"$work/joined.jsonl"
done

# Cases 3 and 4: one document and many questions; prompts that share nothing.
doc=$(text "$doc_bytes" 777)
: >"$work/doc.jsonl"
: >"$work/distinct.jsonl"
for ((i = 0; i < doc_prompts; i++)); do
  printf '{"id": "d%d", "prompt": "%s%s"}\n' "$i" "$doc" "$(text "$q_bytes" "$((i + 20000))")" >>"$work/doc.jsonl"
done
# Distinct from the first token on: each prompt starts with its own number.
for ((i = 0; i < doc_prompts; i++)); do
  printf '{"id": "u%d", "prompt": "%d %s"}\n' "$i" "$i" "$(text "$((doc_bytes + q_bytes))" "$((i + 40000))")"
done >"$work/distinct.jsonl"

# Runs one case REPEAT times (fresh output each time); prints "seconds tokens_fed".
time_case() {
  local input=$1 extra=$2 best="" fed="" n=${3:-$repeat}
  for ((r = 0; r < n; r++)); do
    rm -f "$work/out.jsonl" "$work/out.jsonl.meta.json"
    local t0 t1 s
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    $launch "$bin" batch -m "$model" --tokenizer bytes -i "$input" -o "$work/out.jsonl" -n "$gen" \
      --temperature 1 --seed 1 --progress none $extra ${FLAGS:-} 2>"$work/err"
    t1=$(date +%s.%N)
    s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    fed=$(sed -n 's/.*; \([0-9]*\) tokens fed to the model.*/\1/p' "$work/err")
    if [[ -z $best ]] || awk -v s="$s" -v b="$best" 'BEGIN { exit !(s < b) }'; then best=$s; fi
  done
  echo "$best $fed"
}

report() {
  local name=$1 base=$2 fast=$3
  read -r bs bf <<<"$base"
  read -r fs ff <<<"$fast"
  printf '| %s | %.2f s (%s tokens fed) | %.2f s (%s tokens fed) | %.2fx |\n' "$name" "$bs" "$bf" "$fs" "$ff" \
    "$(awk -v a="$bs" -v b="$fs" 'BEGIN { printf "%.4f", a / b }')"
}

echo "rwkvpp batch prompt reuse: model $model, ${launch:-1 process}, $prompts prompts x 8 samples, prompts of $plen" \
  "tokens (case 1) / 40 tokens after a 500-token prefix (case 2), $gen generated tokens per sample, best of $repeat"
echo
echo "cases 3 and 4: $doc_prompts prompts of a $doc_bytes-token document + a $q_bytes-token question" \
  "(3) or of $((doc_bytes + q_bytes))+ tokens sharing nothing (4), 1 sample each, best of $doc_repeat"
echo
echo "| case | read in full | read once | speedup |"
echo "| --- | --- | --- | --- |"
has() { [[ " $cases " == *" $1 "* ]]; }
if has 1; then
  report "n=8 samples: forked state vs 8 lines" "$(time_case "$work/lines.jsonl" "--no-auto-prefix")" \
    "$(time_case "$work/forked.jsonl" "--no-auto-prefix")"
fi
if has 2; then
  report "500-token shared prefix: --prefix-file vs pasted" "$(time_case "$work/joined.jsonl" "--no-auto-prefix")" \
    "$(time_case "$work/short.jsonl" "--no-auto-prefix --prefix-file $work/prefix.txt")"
fi
if has 3; then
  report "document + questions: automatic sharing vs --no-auto-prefix" \
    "$(time_case "$work/doc.jsonl" "--no-auto-prefix" "$doc_repeat")" "$(time_case "$work/doc.jsonl" "" "$doc_repeat")"
fi
if has 4; then
  report "nothing shared: automatic sharing (on) vs --no-auto-prefix" \
    "$(time_case "$work/distinct.jsonl" "--no-auto-prefix" "$doc_repeat")" "$(time_case "$work/distinct.jsonl" "" "$doc_repeat")"
fi
