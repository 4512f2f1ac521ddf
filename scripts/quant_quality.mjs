// The comparison of scripts/quant_quality.sh: reads every model folder's logits (rwkvpp's .npy,
// rwkv.cpp's raw float32 [T, vocab]) and prints, per model and variant, the mean KL divergence
// (nats per position) and the top-1 agreement against rwkvpp fp32 and against rwkvpp fp16;
// writes summary.json beside them.  Usage: node scripts/quant_quality.mjs DIR
import fs from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) throw new Error('usage: node scripts/quant_quality.mjs DIR');

function readNpy(file) {
  const b = fs.readFileSync(file);
  if (b.toString('latin1', 1, 6) !== 'NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = b[6];
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const off = (major === 1 ? 10 : 12) + hlen;
  const header = b.toString('latin1', major === 1 ? 10 : 12, off);
  if (!header.includes("'<f4'")) throw new Error(`${file}: expected little-endian float32, header ${header}`);
  const shape = header.match(/\(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  return { data: new Float32Array(b.buffer.slice(b.byteOffset + off, b.byteOffset + b.length)), shape };
}

function readF32(file, vocab) {
  const b = fs.readFileSync(file);
  const data = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  return { data, shape: [data.length / vocab, vocab] };
}

function logSoftmax(row) {
  let m = -Infinity;
  for (const v of row) m = Math.max(m, v);
  let z = 0;
  for (const v of row) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return Array.from(row, (v) => v - lz);
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function compare(ref, x) {
  const [T, V] = ref.shape;
  if (x.shape[0] !== T || x.shape[1] !== V) throw new Error(`shape ${x.shape} vs ${ref.shape}`);
  let kl = 0, top1 = 0, maxdiff = 0;
  for (let t = 0; t < T; t++) {
    const p = ref.data.subarray(t * V, (t + 1) * V), q = x.data.subarray(t * V, (t + 1) * V);
    const lp = logSoftmax(p), lq = logSoftmax(q);
    for (let v = 0; v < V; v++) {
      kl += Math.exp(lp[v]) * (lp[v] - lq[v]);
      maxdiff = Math.max(maxdiff, Math.abs(p[v] - q[v]));
    }
    top1 += argmax(p) === argmax(q) ? 1 : 0;
  }
  return { kl: kl / T, top1: top1 / T, max_abs_diff: maxdiff, positions: T };
}

const summary = {};
const variants = [
  ['rwkvpp fp16', 'rwkvpp-fp16.npy'], ['rwkvpp int8', 'rwkvpp-int8.npy'], ['rwkvpp int4', 'rwkvpp-int4.npy'],
  ['rwkv.cpp FP32', 'rwkvcpp-FP32.f32'], ['rwkv.cpp Q8_0', 'rwkvcpp-Q8_0.f32'], ['rwkv.cpp Q5_1', 'rwkvcpp-Q5_1.f32'],
  ['rwkv.cpp Q4_1', 'rwkvcpp-Q4_1.f32'], ['rwkv.cpp Q4_0', 'rwkvcpp-Q4_0.f32'],
];
for (const name of fs.readdirSync(dir).sort()) {
  const d = path.join(dir, name);
  if (!fs.existsSync(path.join(d, 'rwkvpp-fp32.npy'))) continue;
  const f32 = readNpy(path.join(d, 'rwkvpp-fp32.npy')), f16 = readNpy(path.join(d, 'rwkvpp-fp16.npy'));
  const V = f32.shape[1];
  summary[name] = {};
  console.log(`\n${name}: ${f32.shape[0]} bytes; KL(ref || variant) nats per byte, top-1 agreement`);
  console.log(`  ${'variant'.padEnd(14)} ${'KL vs fp32'.padStart(11)} ${'top-1'.padStart(6)} ${'KL vs fp16'.padStart(11)} ${'top-1'.padStart(6)}`);
  for (const [label, file] of variants) {
    const x = file.endsWith('.npy') ? readNpy(path.join(d, file)) : readF32(path.join(d, file), V);
    const a = compare(f32, x), b = compare(f16, x);
    summary[name][label] = { vs_fp32: a, vs_fp16: b };
    console.log(`  ${label.padEnd(14)} ${a.kl.toExponential(2).padStart(11)} ${a.top1.toFixed(3).padStart(6)} ` +
      `${b.kl.toExponential(2).padStart(11)} ${b.top1.toFixed(3).padStart(6)}` +
      (label === 'rwkv.cpp FP32' ? `   (max |logit - rwkvpp fp32| ${a.max_abs_diff.toExponential(1)})` : ''));
  }
}
fs.writeFileSync(path.join(dir, 'summary.json'), JSON.stringify(summary, null, 1));
