// The shared-prefix case of scripts/bench_serve.sh: what the state cache saves when many chats
// share one long system prompt. Against a running `rwkvpp serve` (with its state cache), one at
// a time: `cold` chats whose system prompts differ from their first word on (they read every
// token but at most those of "System: "), then `hits` chats with the first of those system
// prompts and other questions (each starts from the state kept where that message ends). The
// time to first token (first content chunk) of both, their ratio, and what /metrics says the
// hits saved. The system prompt is sized to about --prefix tokens by a first request that
// measures the tokens per sentence (usage.prompt_tokens). Prints JSON.
//
// node scripts/bench_prefix.mjs --url http://127.0.0.1:PORT --model NAME [--prefix 2000]
//     [--cold 3] [--hits 8] [--gen 16] [--key KEY]
import { jsonHeaders, parseArgs, streamEvents } from './sse_client.mjs';

const args = parseArgs(process.argv.slice(2));
const url = args.url;
if (!url || !args.model) {
  console.error('usage: node scripts/bench_prefix.mjs --url URL --model NAME [--prefix 2000] [--cold 3] [--hits 8]');
  process.exit(2);
}
const target = Number(args.prefix || 2000);
const cold = Number(args.cold || 3), hits = Number(args.hits || 8), gen = Number(args.gen || 16);
const headers = jsonHeaders(args.key);
const sentence = 'The keeper of the lighthouse writes down every ship that passes, its flag and its cargo. ';

// One streamed chat: the time to its first content chunk, and its usage.
async function chat(system, question) {
  const t0 = performance.now();
  let first = null;
  const usage = await streamEvents(url, '/v1/chat/completions', headers, {
    model: args.model, max_tokens: gen, seed: 1, stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'system', content: system }, { role: 'user', content: question }],
  }, (j) => {
    if (first === null && j.choices?.[0]?.delta?.content) first = performance.now();
  });
  return { ttft_ms: (first ?? performance.now()) - t0, usage };
}

async function metric(name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.slice(name.length + 1)) : NaN;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round = (x) => Math.round(x * 1000) / 1000;

// Tokens per sentence, from a system prompt that shares nothing with the ones measured below.
const probe = await chat(`Calibration. ${sentence.repeat(20)}`, 'Hi.');
const base = await chat('Calibration.', 'Hi.');
const perSentence = (probe.usage.prompt_tokens - base.usage.prompt_tokens) / 20;
const n = Math.max(1, Math.round(target / perSentence));
// Different from their first word on, so a cold one finds at most the state after "System: ".
const words = ['Harbour', 'Island', 'Northern', 'Quiet', 'Rocky', 'Western', 'Distant', 'Old'];
const system = (j) => `${words[j % words.length]} ${j}. ${sentence.repeat(n)}`.trim();

const h0 = await metric('rwkvpp_state_cache_hits_total');
const saved0 = await metric('rwkvpp_state_cache_hit_tokens_total');
const coldRuns = [];
for (let j = 0; j < cold; ++j) coldRuns.push(await chat(system(j), 'How many ships passed?'));
const h1 = await metric('rwkvpp_state_cache_hits_total');
const saved1 = await metric('rwkvpp_state_cache_hit_tokens_total');
const hitRuns = [];
for (let i = 0; i < hits; ++i) hitRuns.push(await chat(system(0), `Question ${i}: which flag came first?`));
const h2 = await metric('rwkvpp_state_cache_hits_total');
const saved2 = await metric('rwkvpp_state_cache_hit_tokens_total');

const coldMs = median(coldRuns.map((r) => r.ttft_ms)), hitMs = median(hitRuns.map((r) => r.ttft_ms));
const out = {
  prompt_tokens: coldRuns[0].usage.prompt_tokens,
  cold: { requests: cold, cache_hits: h1 - h0, saved_tokens: saved1 - saved0, ttft_ms_median: round(coldMs), ttft_ms: coldRuns.map((r) => round(r.ttft_ms)) },
  hit: {
    requests: hits, cache_hits: h2 - h1, saved_tokens_per_hit: hits ? round((saved2 - saved1) / Math.max(1, h2 - h1)) : 0,
    ttft_ms_median: round(hitMs), ttft_ms: hitRuns.map((r) => round(r.ttft_ms)),
  },
  ttft_cold_over_hit: round(coldMs / hitMs),
};
console.error(`bench-prefix: ${out.prompt_tokens} prompt tokens: TTFT cold ${out.cold.ttft_ms_median} ms, ` +
  `with a kept state of ${out.hit.saved_tokens_per_hit} tokens ${out.hit.ttft_ms_median} ms (${out.ttft_cold_over_hit}x)`);
console.log(JSON.stringify(out, null, 2));
