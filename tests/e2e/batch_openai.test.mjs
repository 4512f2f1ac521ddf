// End-to-end: `rwkvpp batch` on an OpenAI Batch file (the tiny byte-level model, one process).
// Every output and error line is checked against the API reference's per-line object of batch
// output and error files (openapi.yaml, BatchRequestOutput: id, custom_id, response {status_code,
// request_id, body} or null, error {code, message} or null), and every body is read by the
// official OpenAI client as if the server had sent it: a ChatCompletion or a Completion, and for
// a refused body the client's BadRequestError with the server's param and code.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { binary, loadOpenAI, skipWhy, tinyModel, tempDir } from './server.mjs';

const OpenAI = await loadOpenAI();
const skip = OpenAI ? false : skipWhy;

const requests = [
  { custom_id: 'chat', method: 'POST', url: '/v1/chat/completions',
    body: { model: 'tiny', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 16, seed: 1, logprobs: true } },
  { custom_id: 'chat-n', method: 'POST', url: '/v1/chat/completions',
    body: { model: 'tiny', messages: [{ role: 'system', content: 'Be kind.' }, { role: 'user', content: 'Hi' }], max_completion_tokens: 8, n: 2 } },
  { custom_id: 'text', method: 'POST', url: '/v1/completions',
    body: { model: 'tiny', prompt: ['One', 'Two'], max_tokens: 8, logprobs: 0, stop: ['\n'] } },
  { custom_id: 'bad-body', method: 'POST', url: '/v1/completions', body: { model: 'tiny', prompt: 'x', temperature: 9 } },
  { custom_id: 'bad-url', method: 'POST', url: '/v1/embeddings', body: { model: 'tiny', input: 'x' } },
];

// BatchRequestOutput, as the API reference gives it.
function checkLine(line) {
  assert.deepEqual(Object.keys(line).sort(), ['custom_id', 'error', 'id', 'response']);
  assert.equal(typeof line.id, 'string');
  assert.ok(line.custom_id === null || typeof line.custom_id === 'string');
  assert.ok((line.response === null) !== (line.error === null), 'either a response or an error');
  if (line.response !== null) {
    assert.deepEqual(Object.keys(line.response).sort(), ['body', 'request_id', 'status_code']);
    assert.ok(Number.isInteger(line.response.status_code));
    assert.equal(typeof line.response.request_id, 'string');
    assert.equal(typeof line.response.body, 'object');
  } else {
    assert.equal(typeof line.error.code, 'string');
    assert.equal(typeof line.error.message, 'string');
  }
}

// The official client, answered with `body` and `status` whatever it asks.
function clientAnswering(status, body) {
  return new OpenAI({
    apiKey: 'unused', baseURL: 'http://batch.invalid/v1', maxRetries: 0,
    fetch: async () => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } }),
  });
}

const usageOk = (u) => Number.isInteger(u.prompt_tokens) && Number.isInteger(u.completion_tokens) &&
  u.total_tokens === u.prompt_tokens + u.completion_tokens;

test('OpenAI Batch output and error lines follow the reference and parse with the official client', { skip }, async () => {
  const dir = tempDir();
  const input = join(dir, 'in.jsonl'), output = join(dir, 'out.jsonl');
  writeFileSync(input, requests.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const r = spawnSync(binary, ['batch', '-m', tinyModel(), '-i', input, '-o', output, '--progress', 'none', '--ordered'],
    { encoding: 'utf8', timeout: 120000 });
  assert.equal(r.status, 0, r.stderr);
  const lines = readFileSync(output, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.custom_id), ['chat', 'chat-n', 'text']);  // --ordered
  for (const line of lines) {
    checkLine(line);
    assert.equal(line.response.status_code, 200);
    assert.equal(line.error, null);
    const req = requests.find((q) => q.custom_id === line.custom_id);
    const client = clientAnswering(200, line.response.body);
    if (req.url === '/v1/chat/completions') {
      const c = await client.chat.completions.create(req.body);
      assert.equal(c.object, 'chat.completion');
      assert.equal(typeof c.id, 'string');
      assert.ok(Number.isInteger(c.created));
      assert.equal(c.model, 'tiny');
      assert.equal(c.choices.length, req.body.n ?? 1);
      c.choices.forEach((ch, i) => {
        assert.equal(ch.index, i);
        assert.ok(['stop', 'length'].includes(ch.finish_reason));
        assert.equal(ch.message.role, 'assistant');
        assert.equal(typeof ch.message.content, 'string');
        if (req.body.logprobs) {
          for (const t of ch.logprobs.content) {
            assert.equal(typeof t.token, 'string');
            assert.ok(t.logprob <= 0);
            assert.ok(Array.isArray(t.bytes) && Array.isArray(t.top_logprobs));
          }
        } else {
          assert.equal(ch.logprobs, null);
        }
      });
      assert.ok(usageOk(c.usage));
      if (req.body.logprobs) assert.equal(c.choices[0].logprobs.content.length, c.usage.completion_tokens);
    } else {
      const c = await client.completions.create(req.body);
      assert.equal(c.object, 'text_completion');
      assert.equal(c.choices.length, req.body.prompt.length);
      for (const ch of c.choices) {
        assert.ok(['stop', 'length'].includes(ch.finish_reason));
        assert.ok(!ch.text.includes('\n'));
        assert.deepEqual(Object.keys(ch.logprobs).sort(), ['text_offset', 'token_logprobs', 'tokens', 'top_logprobs']);
      }
      assert.ok(usageOk(c.usage));
    }
  }

  const errors = readFileSync(`${output}.rejects.jsonl`, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(errors.map((l) => l.custom_id), ['bad-body', 'bad-url']);
  for (const line of errors) checkLine(line);
  const [body, url] = errors;
  assert.equal(body.response.status_code, 400);
  await assert.rejects(clientAnswering(400, body.response.body).completions.create({ model: 'tiny', prompt: 'x' }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'temperature' && e.code === 'invalid_value');
  assert.equal(url.response, null);
  assert.equal(url.error.code, 'invalid_url');
  assert.match(url.error.message, /^line 5: /);
});
