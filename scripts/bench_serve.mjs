// The client side of scripts/bench_serve.sh: a concurrency sweep against a running `rwkvpp serve`
// (plain HTTP streaming through Node's fetch, no client library). At each level c it keeps c
// streaming /v1/completions requests in flight (a closed loop) until `requests` have finished,
// and measures per request the time to first token (first text chunk), its inter-token
// latency (from its first to its last text chunk over the tokens between: chunks that reach the
// client in one read would give gaps of zero, so gaps are not used) and the end-to-end time; the
// level's tokens/s is the generated tokens over its wall time. Prints JSON (scripts/bench_serve.sh adds the offline decode rates).
//
// node scripts/bench_serve.mjs --url http://127.0.0.1:PORT --model NAME [--levels 1,4,16,64,256]
//     [--prompt BYTES] [--gen TOKENS] [--requests N] [--key KEY] [--temperature T (1)]
//     [--pid SERVER_PID]
// With --pid (Linux), each level also reports the server process's CPU time (user + system,
// all its threads) per generated token, and always the client's own: on a machine of few cores
// the client and the server share them, so tokens/s alone says little there.
import fs from 'node:fs';
import os from 'node:os';
import { jsonHeaders, parseArgs, streamEvents } from './sse_client.mjs';

const args = parseArgs(process.argv.slice(2));
const url = args.url;
if (!url || !args.model) {
  console.error('usage: node scripts/bench_serve.mjs --url URL --model NAME [--levels 1,4,16,64,256] [--prompt 64] [--gen 64]');
  process.exit(2);
}
const levels = (args.levels || '1,4,16,64,256').split(',').map(Number);
const promptBytes = Number(args.prompt || 64);
const gen = Number(args.gen || 64);
const temperature = Number(args.temperature ?? 1);
const base = 'Once upon a time, in a land far away, there lived a fox who liked to read books. ';
const prompt = base.repeat(Math.ceil(promptBytes / base.length)).slice(0, promptBytes);
const headers = jsonHeaders(args.key);
// CPU seconds the server process has used so far (utime + stime of /proc/PID/stat), or null.
function serverCpu() {
  if (!args.pid) return null;
  try {
    const f = fs.readFileSync(`/proc/${args.pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');  // fields from 3 (state) on
    return (Number(rest[11]) + Number(rest[12])) / 100;  // utime, stime in clock ticks (USER_HZ)
  } catch {
    return null;
  }
}

// One streamed completion: chunk arrival times and the usage.
async function one(seed) {
  const t0 = performance.now();
  const times = [];
  const usage = await streamEvents(url, '/v1/completions', headers, {
    model: args.model, prompt, max_tokens: gen, seed, temperature, stream: true, stream_options: { include_usage: true },
  }, (j) => {
    if (j.choices?.[0]?.text) times.push(performance.now());
  });
  return { t0, times, end: performance.now(), usage };
}

const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

async function level(c, total) {
  const ttft = [], itl = [], e2e = [];
  let tokens = 0, errors = 0, next = 0, firstError = null;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage(), server0 = serverCpu();
  async function worker() {
    while (next < total) {
      const seed = next++;
      try {
        const r = await one(seed);
        if (r.times.length) ttft.push(r.times[0] - r.t0);
        const n = r.usage ? r.usage.completion_tokens : r.times.length;
        if (r.times.length > 1 && n > 1) itl.push((r.times[r.times.length - 1] - r.times[0]) / (n - 1));
        e2e.push(r.end - r.t0);
        tokens += r.usage ? r.usage.completion_tokens : 0;
      } catch (e) {
        ++errors;
        firstError ??= String(e);
      }
    }
  }
  await Promise.all(Array.from({ length: c }, worker));
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0), server1 = serverCpu();
  const serverS = server0 === null || server1 === null ? null : server1 - server0;
  return {
    concurrency: c, requests: total, errors, first_error: firstError, wall_s: round(wall),
    ttft_ms: { p50: round(pct(ttft, 50)), p99: round(pct(ttft, 99)) },
    itl_ms: { p50: round(pct(itl, 50)), p99: round(pct(itl, 99)) },
    e2e_ms: { p50: round(pct(e2e, 50)), p99: round(pct(e2e, 99)) },
    tokens_per_s: round(tokens / wall),
    client_cpu_s: round((cpu.user + cpu.system) / 1e6),
    server_cpu_s: serverS === null ? null : round(serverS),
    server_cpu_us_per_token: serverS === null || !tokens ? null : round((serverS * 1e6) / tokens),
  };
}

const out = {
  model: args.model, url, prompt_bytes: promptBytes, gen_tokens: gen, temperature,
  machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
  levels: [],
};
await level(Math.min(4, levels[0] || 1), 8);  // warm-up
for (const c of levels) {
  const r = await level(c, Number(args.requests || Math.max(2 * c, 16)));
  out.levels.push(r);
  console.error(`bench-serve: c=${c}: ${r.tokens_per_s} tokens/s, TTFT p50 ${r.ttft_ms.p50} ms p99 ${r.ttft_ms.p99} ms, ITL p50 ${r.itl_ms.p50} ms p99 ${r.itl_ms.p99} ms, ${r.errors} errors, server CPU ${r.server_cpu_us_per_token ?? '-'} us/token, client CPU ${r.client_cpu_s} s`);
}
console.log(JSON.stringify(out, null, 2));
