// Shared by the end-to-end tests of `rwkvpp serve` (node --test tests/e2e/): the official
// OpenAI client (or a clean skip where it cannot be had), the tiny byte-level model, and a
// server started under mpirun on 127.0.0.1 with a port of its own, always cleaned up.
//
// Environment: RWKVPP_BINARY (the rwkvpp executable; CMake passes it), RWKVPP_SHARED (the
// reference data, default ../shared beside the repository), CI (set: the client must be there).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
export const binary = process.env.RWKVPP_BINARY || join(repo, 'build', 'coordinator', 'rwkvpp');
const shared = process.env.RWKVPP_SHARED || resolve(repo, '..', 'shared');

// The official client, or null when it is not installed and npm cannot reach a registry (a
// machine without one, such as a GPU node). Where it could be installed, or in CI, its absence
// is an error: the tests must run there.
export async function loadOpenAI() {
  try {
    return (await import('openai')).default;
  } catch (e) {
    const why = `the openai client is not installed in ${join(here, 'node_modules')} (${e.code || e.message})`;
    if (process.env.CI) throw new Error(`${why}; in CI it must be: scripts/deps.sh installs it`);
    const ping = spawnSync('npm', ['ping'], { timeout: 20000, stdio: 'ignore' });
    if (ping.status === 0) throw new Error(`${why}, and npm reaches a registry: run scripts/deps.sh`);
    return null;
  }
}

export const skipWhy = 'the openai client is not installed and npm cannot reach a registry here';

const temps = [];
process.on('exit', () => {
  for (const d of temps) rmSync(d, { recursive: true, force: true });
});

// rwkv.cpp's tiny RWKV-4 (660K parameters) converted with the bytes tokenizer.
export function tinyModel() {
  const dir = mkdtempSync(join(tmpdir(), 'rwkvpp-e2e-'));
  temps.push(dir);
  const out = join(dir, 'tiny');
  const src = join(shared, 'fixtures', 'rwkv-cpp-tiny', 'tiny-rwkv-4v0-660K-FP32.bin');
  const r = spawnSync(binary, ['convert', src, '-o', out, '--tokenizer', 'bytes'], { encoding: 'utf8', timeout: 120000 });
  if (r.status !== 0) throw new Error(`convert failed: ${r.stderr}`);
  return out;
}

export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), 'rwkvpp-e2e-'));
  temps.push(dir);
  return dir;
}

// The process ids below `pid` (children, grandchildren...), from /proc.
function descendants(pid) {
  const parent = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parent.set(Number(name), ppid);
    } catch {
      // gone meanwhile
    }
  }
  const out = [];
  const walk = (p) => {
    for (const [c, pp] of parent) if (pp === p) { out.push(c); walk(c); }
  };
  walk(pid);
  return out;
}

// The pid of MPI rank `rank` among the launcher's descendants (its environment says).
export function rankPid(launcherPid, rank) {
  for (const p of descendants(launcherPid)) {
    try {
      const env = readFileSync(`/proc/${p}/environ`, 'utf8').split('\0');
      if (env.includes(`OMPI_COMM_WORLD_RANK=${rank}`) && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('serve')) return p;
    } catch {
      // gone, or not ours to read
    }
  }
  return null;
}

export function alive(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    return !/^State:\s+Z/m.test(s);
  } catch {
    return false;
  }
}

export function rssBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) * 1024 : NaN;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `promise`'s value, or `fallback` once `ms` have passed (the timer does not keep the process up).
export function within(promise, ms, fallback) {
  let timer;
  const late = new Promise((r) => { timer = setTimeout(() => r(fallback), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// Starts `rwkvpp serve` (under mpirun with `ranks` > 1) on 127.0.0.1, port chosen by the
// system, and waits until /ready says 200. Returns { baseURL, pid (rank 0), exited (a promise
// of the launcher's exit code), stderr(), stop() }.
export async function startServer({ model, ranks = 3, args = [], env = {} }) {
  const serveArgs = ['serve', '-m', model, '--host', '127.0.0.1', '--port', '0', '--threads', '1', ...args];
  const cmd = ranks > 1 ? 'mpirun' : binary;
  const argv = ranks > 1
    ? ['--allow-run-as-root', '--oversubscribe', '-np', String(ranks), binary, ...serveArgs]
    : serveArgs;
  const proc = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let err = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((res) => proc.on('exit', (code, signal) => res(code === null ? `signal ${signal}` : code)));
  let done = false;
  exited.then(() => { done = true; });
  const kill = () => {
    if (done) return;
    for (const p of [...descendants(proc.pid), proc.pid]) {
      try { process.kill(p, 'SIGKILL'); } catch { /* already gone */ }
    }
  };
  process.on('exit', kill);
  const deadline = Date.now() + 90000;
  let m;
  while (!(m = err.match(/listening on (http:\/\/127\.0\.0\.1:(\d+)) \(model '[^']*', pid (\d+)\)/))) {
    if (done || Date.now() > deadline) { kill(); throw new Error(`the server did not start:\n${err}`); }
    await sleep(50);
  }
  const baseURL = m[1];
  for (;;) {
    try {
      const r = await fetch(`${baseURL}/ready`);
      if (r.status === 200) break;
    } catch { /* not yet */ }
    if (done || Date.now() > deadline) { kill(); throw new Error(`the server did not get ready:\n${err}`); }
    await sleep(50);
  }
  return {
    baseURL,
    pid: Number(m[3]),
    launcher: proc.pid,
    exited,
    stderr: () => err,
    async stop() {
      kill();
      await within(exited, 5000, 'still running');
    },
  };
}

// The value of a Prometheus series in a /metrics text (labels as written), or NaN.
export function metric(text, series) {
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return NaN;
}

export async function metrics(baseURL) {
  return (await fetch(`${baseURL}/metrics`)).text();
}

// Polls `check` (async, returns truthy when done) every 50 ms for up to `ms`.
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

export { sleep, existsSync };
