// Load test of `rwkvpp serve` on a 3-rank pipeline of the tiny byte-level model, through the
// official OpenAI client over 127.0.0.1: 256 concurrent streaming requests of mixed prompt and
// output lengths (chat and completions, each with its own seed), three rounds. Every request
// must succeed, and every stream must be byte-identical (each text piece, the finish reason, the
// usage) to the same request sent alone: the CPU backend does not let batching change a
// sequence's arithmetic (docs/architecture.md, Reproducibility). The rounds run on the states
// the state cache kept from the requests sent alone (each starts from its whole prompt but the
// last token; counted in /metrics), so they also check that a hit changes nothing. Memory: rank 0's resident
// memory after the rounds stays within 32 MiB of what it was before them (the first round sizes
// buffers and allocator arenas for 256 streams: about 10 MiB measured), and the last two rounds
// add less than 4 MiB (nothing grows per request).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { loadOpenAI, skipWhy, tinyModel, startServer, metrics, metric, rssBytes } from './server.mjs';

const OpenAI = await loadOpenAI();
const skip = OpenAI ? false : skipWhy;
const N = 256;
const RSS_MARGIN = 32 << 20, RSS_PER_ROUNDS = 4 << 20;
let srv, client;

before(async () => {
  if (!OpenAI) return;
  srv = await startServer({ model: tinyModel(), ranks: 3 });
  client = new OpenAI({ apiKey: 'none', baseURL: `${srv.baseURL}/v1`, maxRetries: 0, timeout: 120000 });
});

after(async () => {
  if (srv) await srv.stop();
});

// Request i: chat or completion, a prompt of 10 to ~600 bytes, 8 to 128 tokens, seed 1000 + i.
function body(i) {
  const text = `Request ${i}: ${'once upon a time '.repeat((i * 37) % 36)}`;
  const common = { model: 'tiny', max_tokens: [8, 16, 32, 64, 128][i % 5], seed: 1000 + i, temperature: 0.9, stream: true, stream_options: { include_usage: true } };
  return i % 2 === 0 ? { ...common, messages: [{ role: 'user', content: text }] } : { ...common, prompt: text };
}

// The stream of request i, as what a client would compare: its pieces, finish reason, usage.
async function send(i) {
  const b = body(i);
  const chat = 'messages' in b;
  const stream = chat ? await client.chat.completions.create(b) : await client.completions.create(b);
  const out = { pieces: [], finish: null, usage: null };
  for await (const chunk of stream) {
    if (chunk.usage) out.usage = chunk.usage;
    for (const c of chunk.choices) {
      const piece = chat ? c.delta.content : c.text;
      if (piece) out.pieces.push(piece);
      if (c.finish_reason) out.finish = c.finish_reason;
    }
  }
  return out;
}

// Admissions so far that found more than `n` requests running (counting themselves), from the
// server's histogram (bounds are powers of two).
async function admittedAbove(n) {
  const m = await metrics(srv.baseURL);
  return metric(m, 'rwkvpp_requests_running_at_admission_count') - metric(m, `rwkvpp_requests_running_at_admission_bucket{le="${n}"}`);
}

test(`${N} concurrent streams equal the same requests sent alone; memory stays bounded`, { skip, timeout: 600000 }, async () => {
  const alone = [];
  const t0 = Date.now();
  for (let i = 0; i < N; ++i) alone.push(await send(i));
  const aloneMs = Date.now() - t0;
  for (const r of alone) assert.ok(r.finish && r.usage && r.pieces.length > 0);
  const rssBefore = rssBytes(srv.pid);
  let rssWarm = 0;
  for (const round of [1, 2, 3]) {
    // How many requests ran at once, from the server: polling /metrics during the round was
    // unreliable (its reply waits behind the 256 requests on the HTTP threads of a busy host).
    const aboveBefore = await admittedAbove(64);
    const t1 = Date.now();
    const settled = await Promise.allSettled(Array.from({ length: N }, (_, i) => send(i)));
    const ms = Date.now() - t1;
    const failed = settled.filter((s) => s.status === 'rejected');
    assert.equal(failed.length, 0, `round ${round}: ${failed.length} errors, first: ${failed[0]?.reason}`);
    let differ = 0;
    settled.forEach((s, i) => { if (JSON.stringify(s.value) !== JSON.stringify(alone[i])) ++differ; });
    assert.equal(differ, 0, `round ${round}: ${differ} of ${N} streams differ from the same request alone`);
    const above = (await admittedAbove(64)) - aboveBefore;
    assert.ok(above > 0, `round ${round}: no request joined more than 63 others: not a concurrent load`);
    console.log(`# round ${round}: ${N} streams in ${ms} ms (alone one by one: ${aloneMs} ms), ${above} joined more than 63 running`);
    if (round === 1) rssWarm = rssBytes(srv.pid);
  }
  const rssAfter = rssBytes(srv.pid);
  const mib = (b) => (b / 2 ** 20).toFixed(1);
  console.log(`# rank 0 RSS before the load ${mib(rssBefore)} MiB, after round 1 ${mib(rssWarm)} MiB, after round 3 ${mib(rssAfter)} MiB`);
  assert.ok(rssAfter <= rssBefore + RSS_MARGIN, `rank 0 grew from ${rssBefore} to ${rssAfter} bytes (margin ${RSS_MARGIN})`);
  assert.ok(rssAfter <= rssWarm + RSS_PER_ROUNDS, `rank 0 grew from ${rssWarm} to ${rssAfter} bytes in rounds 2 and 3`);
  const m = await metrics(srv.baseURL);
  assert.equal(metric(m, 'rwkvpp_requests_running'), 0);
  assert.equal(metric(m, 'rwkvpp_requests_waiting'), 0);
  assert.equal(metric(m, 'rwkvpp_requests_completed_total'), 4 * N);
  assert.ok(metric(m, 'rwkvpp_state_cache_hits_total') >= 3 * N, 'the rounds started from kept states');
});
