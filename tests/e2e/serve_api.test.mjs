// End-to-end: `rwkvpp serve` on a 3-rank pipeline (mpirun -np 3) of the tiny byte-level model,
// driven by the official OpenAI client over 127.0.0.1. Chat and completions, whole and
// streamed; n = 2; stop strings; seeds (equal to `rwkvpp generate` with the same seed); 401
// without the key; 400s on bad bodies; a client that disconnects mid-stream frees its slot
// (seen in /metrics); a long shared system prompt read once (the state cache, seen in /metrics,
// with the tokens of rwkvpp generate); /ready names a stage that stops answering; SIGTERM ends
// streams with an error event and the server exits 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { binary, loadOpenAI, skipWhy, tinyModel, startServer, metrics, metric, until, alive, sleep, within, rankPid } from './server.mjs';

const OpenAI = await loadOpenAI();
const skip = OpenAI ? false : skipWhy;
const KEY = 'sk-rwkvpp-e2e';
let model, srv, client;

before(async () => {
  if (!OpenAI) return;
  model = tinyModel();
  srv = await startServer({ model, ranks: 3, args: ['--api-key', KEY, '--max-tokens-limit', '200000', '--ready-silence', '2'] });
  client = new OpenAI({ apiKey: KEY, baseURL: `${srv.baseURL}/v1`, maxRetries: 0, timeout: 60000 });
});

after(async () => {
  if (srv) await srv.stop();
});

const bytes = (s) => [...Buffer.from(s, 'utf8')];
const chatPrompt = (user) => `User: ${user}\n\nAssistant:`;

// Collects a streamed chat or completion: per choice its text pieces and finish reason, and the
// usage chunk.
async function collect(stream, chat) {
  const choices = {};
  let usage = null, first = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      const ch = (choices[c.index] ??= { pieces: [], finish: null, role: null });
      if (chat && c.delta.role) ch.role = c.delta.role;
      const piece = chat ? c.delta.content : c.text;
      if (piece) ch.pieces.push(piece);
      if (c.finish_reason) ch.finish = c.finish_reason;
      first ??= chunk;
    }
  }
  return { choices, usage, first };
}

test('the served model is listed; /health and /ready answer', { skip }, async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), ['tiny']);
  assert.equal((await fetch(`${srv.baseURL}/health`)).status, 200);
  const ready = await (await fetch(`${srv.baseURL}/ready`)).json();
  assert.equal(ready.status, 'ready');
});

test('a chat completion: the User:/Assistant: prompt, the tokens of rwkvpp generate with the same seed', { skip }, async () => {
  const r = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 40, seed: 42, logprobs: true,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.message.role, 'assistant');
  assert.ok(['stop', 'length'].includes(c.finish_reason));
  assert.equal(r.usage.prompt_tokens, Buffer.byteLength(chatPrompt('Hello')));  // one token per byte
  const ids = c.logprobs.content.map((t) => t.bytes[0]);
  assert.equal(ids.length, r.usage.completion_tokens);
  for (const t of c.logprobs.content) assert.ok(t.logprob <= 0);
  // The same prompt, sampling and seed through the command line (another code path, one process).
  const g = spawnSync(binary, ['generate', '-m', model, '--prompt-tokens', bytes(chatPrompt('Hello')).join(','),
    '--temperature', '1', '--seed', '42', '-n', '40', '--stop', '\n\n', '--stop', '\nUser:'], { encoding: 'utf8' });
  assert.equal(g.status, 0, g.stderr);
  assert.deepEqual(ids, g.stdout.trim().split(/\s+/).map(Number));
});

test('a completion, whole and streamed with usage, gives the same text for the same seed', { skip }, async () => {
  const req = { model: 'tiny', prompt: 'The quick brown fox', max_tokens: 24, seed: 5 };
  const whole = await client.completions.create(req);
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.choices[0].finish_reason, 'length');  // no stop string, no end-of-text id
  assert.deepEqual(whole.usage, { prompt_tokens: 19, completion_tokens: 24, total_tokens: 43 });
  const streamed = await collect(await client.completions.create({ ...req, stream: true, stream_options: { include_usage: true } }), false);
  assert.equal(streamed.choices[0].pieces.join(''), whole.choices[0].text);
  assert.ok(streamed.choices[0].pieces.length > 1, 'streamed in pieces');
  assert.equal(streamed.choices[0].finish, 'length');
  assert.deepEqual(streamed.usage, whole.usage);
  const other = await client.completions.create({ ...req, seed: 6 });
  assert.notEqual(other.choices[0].text, whole.choices[0].text);
});

test('a streamed chat: role first, deltas that add up to the whole answer', { skip }, async () => {
  const req = { model: 'tiny', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Tell me a story' }], max_tokens: 32, seed: 3 };
  const whole = await client.chat.completions.create(req);
  const s = await collect(await client.chat.completions.create({ ...req, stream: true }), true);
  assert.equal(s.choices[0].role, 'assistant');
  assert.equal(s.first.object, 'chat.completion.chunk');
  assert.equal(s.choices[0].pieces.join(''), whole.choices[0].message.content);
  assert.equal(s.choices[0].finish, whole.choices[0].finish_reason);
  assert.equal(s.usage, null);  // not asked for
  assert.equal(whole.usage.prompt_tokens, Buffer.byteLength('System: Be brief.\n\n' + chatPrompt('Tell me a story')));
});

test('n = 2: choice i is the request with seed + i, whole and streamed', { skip }, async () => {
  const req = { model: 'tiny', messages: [{ role: 'user', content: 'Hi there' }], max_tokens: 20, seed: 7 };
  const two = await client.chat.completions.create({ ...req, n: 2 });
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
  for (const i of [0, 1]) {
    const one = await client.chat.completions.create({ ...req, seed: 7 + i });
    assert.equal(two.choices[i].message.content, one.choices[0].message.content);
  }
  assert.equal(two.usage.prompt_tokens, 2 * Buffer.byteLength(chatPrompt('Hi there')));
  const s = await collect(await client.chat.completions.create({ ...req, n: 2, stream: true }), true);
  for (const i of [0, 1]) assert.equal(s.choices[i].pieces.join(''), two.choices[i].message.content);
  const comp = await client.completions.create({ model: 'tiny', prompt: 'abc', max_tokens: 8, seed: 1, n: 2 });
  assert.equal(comp.choices.length, 2);
  assert.equal(comp.usage.completion_tokens, 16);
});

test('a stop string ends the text right before it, with finish_reason stop', { skip }, async () => {
  const req = { model: 'tiny', prompt: 'Once upon a time', max_tokens: 80, seed: 11 };
  const free = (await client.completions.create(req)).choices[0].text;
  const at = [...free.slice(10)].findIndex((ch, k) => /[a-z]/.test(ch) && /[a-z]/.test(free[10 + k + 1] ?? ''));
  assert.ok(at >= 0, `no two letters in a row after position 10 of ${JSON.stringify(free)}`);
  const stop = free.slice(10 + at, 10 + at + 2);
  const cut = free.slice(0, free.indexOf(stop));
  const stopped = await client.completions.create({ ...req, stop: [stop, 'never-seen'] });
  assert.equal(stopped.choices[0].text, cut);
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const s = await collect(await client.completions.create({ ...req, stop, stream: true }), false);
  assert.equal(s.choices[0].pieces.join(''), cut);
  assert.equal(s.choices[0].finish, 'stop');
});

test('without the key, or with a wrong one: 401', { skip }, async () => {
  const wrong = new OpenAI({ apiKey: 'sk-wrong', baseURL: `${srv.baseURL}/v1`, maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key');
  const r = await fetch(`${srv.baseURL}/v1/chat/completions`, { method: 'POST', body: '{}' });
  assert.equal(r.status, 401);
  assert.equal((await r.json()).error.code, 'invalid_api_key');
});

test('bad bodies and unknown models: 400 and 404 with OpenAI error objects', { skip }, async () => {
  const post = (path, body) => fetch(`${srv.baseURL}/v1/${path}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` }, body });
  let r = await post('completions', '{"model": "tiny", "prompt": ');
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.code, 'invalid_json');
  r = await post('completions', 'x'.repeat(2 << 20));
  assert.equal(r.status, 413);
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', temperature: 'hot' }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'temperature' && e.code === 'invalid_type');
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 5 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'top_logprobs' && /not supported yet/.test(e.message));
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: [] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages');
  await assert.rejects(client.completions.create({ model: 'gpt-4o', prompt: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
  // The server is still there.
  assert.equal((await client.completions.create({ model: 'tiny', prompt: 'ok', max_tokens: 2 })).choices.length, 1);
});

test('a client that disconnects mid-stream frees its slot (seen in /metrics)', { skip }, async () => {
  const before = metric(await metrics(srv.baseURL), 'rwkvpp_requests_cancelled_total{reason="disconnect"}');
  const ac = new AbortController();
  const stream = await client.completions.create({ model: 'tiny', prompt: 'Go on', max_tokens: 200000, seed: 1, stream: true }, { signal: ac.signal });
  let chunks = 0;
  try {
    for await (const _ of stream) if (++chunks === 5) ac.abort();
  } catch (e) {
    assert.ok(e.name === 'AbortError' || e instanceof OpenAI.APIUserAbortError, String(e));
  }
  assert.ok(chunks >= 5);
  const m = await until(async () => {
    const t = await metrics(srv.baseURL);
    return metric(t, 'rwkvpp_requests_running') === 0 && metric(t, 'rwkvpp_requests_cancelled_total{reason="disconnect"}') === before + 1 ? t : null;
  }, 10000, 'the aborted request to leave the engine');
  // Nothing is generated for it any more.
  const tokens = metric(m, 'rwkvpp_generation_tokens_total');
  await sleep(300);
  assert.equal(metric(await metrics(srv.baseURL), 'rwkvpp_generation_tokens_total'), tokens);
  assert.ok(tokens < 150000, `${tokens} tokens: the stream was not cut`);
});

test('per-stage compute and wait seconds of the 3 stages are in /metrics', { skip }, async () => {
  const t = await until(async () => {
    const m = await metrics(srv.baseURL);
    return metric(m, 'rwkvpp_stage_compute_seconds_total{stage="2",rank="2",layers="3-3"}') > 0 ? m : null;
  }, 5000, 'stage 2 statistics');
  for (const s of ['stage="0",rank="0"', 'stage="1",rank="1"', 'stage="2",rank="2"']) assert.match(t, new RegExp(`rwkvpp_stage_wait_seconds_total\\{${s}`));
  assert.ok(metric(t, 'rwkvpp_time_to_first_token_seconds_count') > 0);
  assert.ok(metric(t, 'rwkvpp_inter_token_latency_seconds_count') > 0);
  assert.ok(metric(t, 'rwkvpp_e2e_request_latency_seconds_count') > 0);
});

test('/ready answers 503 naming a stage that stopped answering, and 200 when it is back', { skip }, async () => {
  const pid = rankPid(srv.launcher, 2);
  assert.ok(pid, 'rank 2 not found');
  process.kill(pid, 'SIGSTOP');
  try {
    const r = await until(async () => {
      const res = await fetch(`${srv.baseURL}/ready`);
      return res.status === 503 ? res.json() : null;
    }, 8000, '/ready to notice the stopped stage');
    assert.equal(r.status, 'unreachable');
    assert.match(r.message, /^stage 2 \(rank 2, layers 3-3\) has not been heard from for/);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  await until(async () => (await fetch(`${srv.baseURL}/ready`)).status === 200, 8000, '/ready to recover');
  assert.equal((await client.completions.create({ model: 'tiny', prompt: 'back', max_tokens: 4 })).usage.completion_tokens, 4);
});

test('the state cache: a chat that shares a long system prompt starts from its kept state, with the tokens of rwkvpp generate', { skip }, async () => {
  const system = 'You are the keeper of an old lighthouse and answer in short sentences. '.repeat(22).trim();
  const head = Buffer.byteLength(`System: ${system}\n\n`);  // where the first message ends
  assert.ok(head > 1500);
  const ask = (q, seed) => client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'system', content: system }, { role: 'user', content: q }], max_tokens: 24, seed, logprobs: true,
  });
  const m0 = await metrics(srv.baseURL);
  await ask('How many ships?', 31);
  const m1 = await metrics(srv.baseURL);
  const second = await ask('Where is the storm?', 32);
  const m2 = await metrics(srv.baseURL);
  const hits = (m) => metric(m, 'rwkvpp_state_cache_hits_total');
  const saved = (m) => metric(m, 'rwkvpp_state_cache_hit_tokens_total');
  assert.equal(hits(m1), hits(m0), 'the first request has nothing to start from');
  assert.equal(hits(m2), hits(m1) + 1);
  assert.equal(saved(m2) - saved(m1), head);
  assert.ok(metric(m2, 'rwkvpp_state_cache_bytes') > 0);
  assert.ok(metric(m2, 'rwkvpp_state_cache_entries') >= 2);
  // The same prompt and seed through the command line, without any cache: the same tokens.
  const prompt = `System: ${system}\n\n${chatPrompt('Where is the storm?')}`;
  const ids = second.choices[0].logprobs.content.map((t) => t.bytes[0]);
  const g = spawnSync(binary, ['generate', '-m', model, '--prompt-tokens', bytes(prompt).join(','),
    '--temperature', '1', '--seed', '32', '-n', '24', '--stop', '\n\n', '--stop', '\nUser:'], { encoding: 'utf8' });
  assert.equal(g.status, 0, g.stderr);
  assert.deepEqual(ids, g.stdout.trim().split(/\s+/).map(Number));
  // The same request again starts from its whole prompt but the last token, and says the same.
  const again = await ask('Where is the storm?', 32);
  const m3 = await metrics(srv.baseURL);
  assert.equal(saved(m3) - saved(m2), Buffer.byteLength(prompt) - 1);
  assert.equal(again.choices[0].message.content, second.choices[0].message.content);
});

// Last: it ends the server.
test('SIGTERM: a running stream ends with an error event, the pipeline shuts down, exit 0', { skip }, async () => {
  const stream = await client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 200000, seed: 2, stream: true });
  let chunks = 0, error = null;
  const t0 = Date.now();
  try {
    for await (const _ of stream) {
      if (++chunks === 3) process.kill(srv.pid, 'SIGTERM');  // rank 0, as Slurm signals it
    }
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof OpenAI.APIError, `the stream ended without an error (${chunks} chunks)`);
  assert.equal(error.code, 'server_shutdown');
  assert.equal(await within(srv.exited, 20000, 'still running'), 0);
  assert.ok(Date.now() - t0 < 20000);
  assert.match(srv.stderr(), /rwkvpp serve: SIGTERM: not accepting/);
  assert.match(srv.stderr(), /rwkvpp serve: stopped/);
  assert.ok(!alive(srv.pid));
  await assert.rejects(fetch(`${srv.baseURL}/health`));
});
