// What scripts/bench_serve.mjs and scripts/bench_prefix.mjs share: their --flag value arguments,
// the request headers, and one streamed POST to `rwkvpp serve` read as server-sent events.

// { flag: value } of `--flag value` pairs.
export function parseArgs(argv) {
  return Object.fromEntries(argv.reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []));
}

export function jsonHeaders(key) {
  return { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) };
}

// POSTs `body` to url + path and calls onEvent(json) for every `data:` event but [DONE]; an
// error event or a status other than 200 throws. Returns the last usage object seen.
export async function streamEvents(url, path, headers, body, onEvent) {
  const res = await fetch(`${url}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let usage = null, buf = '';
  const decoder = new TextDecoder();
  for await (const part of res.body) {
    buf += decoder.decode(part, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const j = JSON.parse(event.slice(6));
      if (j.error) throw new Error(j.error.message);
      if (j.usage) usage = j.usage;
      onEvent(j);
    }
  }
  return usage;
}
