#include "kernels/block.h"

#include <algorithm>

#include "common/error.h"
#include "kernels/versions.h"

namespace rwkvpp {

const HostTensor& LayerLoader::get(const std::string& name) const {
  auto it = t_.find(name);
  if (it == t_.end()) fail("layer {}: tensor '{}' is missing", layer_, name);
  return it->second;
}

const HostTensor& LayerLoader::get(const std::string& name, int64_t numel) const {
  const HostTensor& h = get(name);
  if (h.numel() != numel)
    fail("layer {}: tensor '{}' has shape {} ({} elements), expected {} elements", layer_, name,
         h.shape_str(), h.numel(), numel);
  return h;
}

const HostTensor& LayerLoader::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const HostTensor& h = get(name);
  if (h.shape != shape)
    fail("layer {}: tensor '{}' has shape {}, expected {}", layer_, name, h.shape_str(), shape_to_string(shape));
  return h;
}

float* LayerLoader::values(const std::vector<float>& v) const {
  keep_.push_back(std::make_unique<DeviceBuffer>(&be_, v.size() * 4));
  be_.upload(keep_.back()->get(), v.data(), v.size() * 4);
  return keep_.back()->f32();
}

float* LayerLoader::vec(const std::string& name, int64_t numel) const { return values(get(name, numel).to_f32()); }

BlockNorms LayerLoader::norms(int64_t C, bool with_lnx) const {
  BlockNorms n;
  n.ln1_w = vec("ln1.weight", C);
  n.ln1_b = vec("ln1.bias", C);
  n.ln2_w = vec("ln2.weight", C);
  n.ln2_b = vec("ln2.bias", C);
  if (with_lnx) {
    n.lnx_w = vec("att.ln_x.weight", C);
    n.lnx_b = vec("att.ln_x.bias", C);
  }
  return n;
}

float* LayerLoader::one_minus(const std::string& name, int64_t numel) const {
  auto v = get(name, numel).to_f32();
  for (float& e : v) e = 1.0f - e;
  return values(v);
}

WeightView LayerLoader::mat(const std::string& name, int64_t rows, int64_t cols) const {
  const HostTensor& h = get(name, rows * cols);
  if (h.shape != std::vector<int64_t>{rows, cols})
    fail("layer {}: tensor '{}' has shape {}, expected [{}, {}]", layer_, name, h.shape_str(), rows, cols);
  keep_.emplace_back();
  return be_.load_weight(h, dtype_, keep_.back());
}

WeightView LayerLoader::small(const HostTensor& m) const {
  keep_.emplace_back();
  return be_.load_weight(m, unquantised_dtype(dtype_), keep_.back());
}

WeightView LayerLoader::small_t(const std::vector<float>& m, int64_t rows, int64_t cols) const {
  std::vector<float> t(m.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[size_t(j * rows + i)] = m[size_t(i * cols + j)];
  return small(HostTensor::from_f32(t, {cols, rows}));
}

int64_t LayerLoader::low_rank(const std::string& prefix, int64_t C, WeightView& m1, WeightView& m2) const {
  const HostTensor& p1 = get(prefix + "1");
  const auto& sh = p1.shape;
  if (sh.size() != 2 || sh[0] != C || sh[1] <= 0)
    fail("layer {}: tensor '{}1' has shape {}, expected [{}, D]", layer_, prefix, p1.shape_str(), C);
  const int64_t D = sh[1];
  const HostTensor& p2 = get(prefix + "2", std::vector<int64_t>{D, C});
  m1 = small_t(p1.to_f32(), C, D);
  m2 = small_t(p2.to_f32(), D, C);
  return D;
}

std::unique_ptr<Block> make_block(Backend& be, const ModelConfig& cfg, int layer,
                                  const TensorMap& t, DType dtype) {
  switch (cfg.version) {
    case RwkvVersion::V4: return make_block_v4(be, cfg, layer, t, dtype);
    case RwkvVersion::V5_1:
    case RwkvVersion::V5_2: return make_block_v5(be, cfg, layer, t, dtype);
    case RwkvVersion::V6: return make_block_v6(be, cfg, layer, t, dtype);
    case RwkvVersion::V7: return make_block_v7(be, cfg, layer, t, dtype);
  }
  fail("unknown RWKV version");
}

void ReluSquareFfn::forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h,
                            float* state, int64_t stride, int64_t off) const {
  const int64_t n = h.n, C = receptance.rows, F = key.rows, nc = n * C;
  float* xln = ws.get(kFfnXln, size_t(nc));
  float* prev = ws.get(kFfnPrev, size_t(nc));
  float* xk = ws.get(kFfnXk, size_t(nc));
  float* xr = ws.get(kFfnXr, size_t(nc));
  float* k = ws.get(kFfnK, size_t(n * F));
  const float* mu[2] = {mix_k, mix_r};
  float* mixed[2] = {xk, xr};
  be.norm_shift_mix(h.x, ln_w, ln_b, eps, n, C, segs, state, stride, off, mu, mixed, 2, xln, prev);
  Backend::Epilogue relu2, sig;
  relu2.has_act = sig.has_act = true;
  relu2.act = Unary::ReluSquare;
  sig.act = Unary::Sigmoid;
  float* v = xln;   // free again
  float* r = prev;  // free again
  // k = relu(W_k xk)^2, r = sigmoid(W_r xr); the square left to the value product where the
  // backend folds it into that product's input.
  const bool fold = be.folds_relu_square_x(value, n);
  const Backend::MatmulJob kr[2] = {{&key, xk, k, fold ? Backend::Epilogue{} : relu2},
                                    {&receptance, xr, r, sig}};
  be.matmul_group(kr, 2, n);
  Backend::Epilogue gated_add;
  gated_add.gate = r;
  gated_add.accumulate = true;
  if (fold) be.matmul_ex_relu_square_x(value, k, h.x, n, gated_add, v);  // x += r * (W_v k)
  else be.matmul_ex(value, k, h.x, n, gated_add, v);
}

ReluSquareFfn ReluSquareFfn::load(const LayerLoader& ld, int64_t C, int64_t F, const float* ln_w,
                                  const float* ln_b, const float* mix_k, const float* mix_r, float eps) {
  ReluSquareFfn f;
  f.ln_w = ln_w;
  f.ln_b = ln_b;
  f.mix_k = mix_k;
  f.mix_r = mix_r;
  f.key = ld.mat("ffn.key.weight", F, C);
  f.value = ld.mat("ffn.value.weight", C, F);
  f.receptance = ld.mat("ffn.receptance.weight", C, C);
  f.eps = eps;
  return f;
}

size_t Block::weight_bytes() const {
  size_t n = 0;
  for (const auto& b : keep_) n += b->bytes();
  return n;
}

static WeightView load_matrix(Backend& be, const HostTensor& t, int64_t rows, int64_t cols,
                              const char* what, DType dtype, std::unique_ptr<DeviceBuffer>& own) {
  if (t.numel() != rows * cols)
    fail("tensor '{}' has shape {}, expected [{}, {}]", what, t.shape_str(), rows, cols);
  if (t.shape == std::vector<int64_t>{rows, cols}) return be.load_weight(t, dtype, own);
  HostTensor m = t;  // another shape of the same elements: a reshaped copy
  m.shape = {rows, cols};
  return be.load_weight(m, dtype, own);
}

static std::unique_ptr<DeviceBuffer> load_vec(Backend& be, const HostTensor& t, int64_t n,
                                              const char* what) {
  if (t.numel() != n) fail("tensor '{}' has shape {}, expected [{}]", what, t.shape_str(), n);
  auto v = t.to_f32();
  auto b = std::make_unique<DeviceBuffer>(&be, v.size() * 4);
  be.upload(b->get(), v.data(), v.size() * 4);
  return b;
}

Embedder::Embedder(Backend& be, const ModelConfig& cfg, const HostTensor& emb,
                   const HostTensor& ln0_w, const HostTensor& ln0_b, DType dtype)
    : cfg_(cfg) {
  // Each token reads one row: int8 would save memory but no time, so int8 keeps it in fp16.
  emb_ = load_matrix(be, emb, cfg.vocab_size, cfg.n_embd, "emb.weight", unquantised_dtype(dtype),
                     emb_buf_);
  ln_w_ = load_vec(be, ln0_w, cfg.n_embd, "blocks.0.ln0.weight");
  ln_b_ = load_vec(be, ln0_b, cfg.n_embd, "blocks.0.ln0.bias");
}

void Embedder::forward(Backend& be, const int32_t* ids, int64_t n, float* x) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      fail("token id {} is out of range (vocabulary size {})", ids[i], cfg_.vocab_size);
  be.embedding(emb_, ids, n, x);
  be.layer_norm(x, ln_w_->f32(), ln_b_->f32(), x, n, cfg_.n_embd, cfg_.layer_norm_eps);
}

size_t Embedder::weight_bytes() const { return emb_buf_->bytes() + ln_w_->bytes() * 2; }

Head::Head(Backend& be, const ModelConfig& cfg, const HostTensor& ln_w, const HostTensor& ln_b,
           const HostTensor& head, DType dtype)
    : cfg_(cfg) {
  ln_w_ = load_vec(be, ln_w, cfg.n_embd, "ln_out.weight");
  ln_b_ = load_vec(be, ln_b, cfg.n_embd, "ln_out.bias");
  if (head.numel() != cfg.vocab_size * cfg.n_embd)
    fail("tensor 'head.weight' has shape {}, expected [{}, {}]", head.shape_str(), cfg.vocab_size, cfg.n_embd);
  const int64_t align = std::max<int64_t>(1, be.row_align());
  rows_ = (cfg.vocab_size + align - 1) / align * align;
  if (rows_ == cfg.vocab_size) {
    head_ = load_matrix(be, head, rows_, cfg.n_embd, "head.weight", dtype, head_buf_);
    return;
  }
  // One copy of the matrix (0.5 GB for 14B) with the zero rows appended.
  const size_t bytes = size_t(rows_ * cfg.n_embd) * dtype_size(head.dtype);
  HostTensor padded{head.dtype, {rows_, cfg.n_embd}, {}};
  padded.data.reserve(bytes);
  padded.data.assign(head.data.begin(), head.data.end());
  padded.data.resize(bytes, 0);
  head_ = load_matrix(be, padded, rows_, cfg.n_embd, "head.weight", dtype, head_buf_);
}

void Head::forward(Backend& be, Workspace& ws, const float* x, const int32_t* rows, int64_t m,
                   float* logits) {
  float* sel = ws.get(kHeadRows, size_t(m * cfg_.n_embd));
  be.gather_rows(x, rows, m, cfg_.n_embd, sel);
  be.layer_norm(sel, ln_w_->f32(), ln_b_->f32(), sel, m, cfg_.n_embd, cfg_.layer_norm_eps);
  if (rows_ == cfg_.vocab_size) return be.matmul(head_, sel, logits, m);
  float* full = ws.get(kHeadPadded, size_t(m * rows_));
  be.matmul(head_, sel, full, m);
  be.copy_rows(logits, size_t(cfg_.vocab_size) * 4, full, size_t(rows_) * 4, size_t(cfg_.vocab_size) * 4, size_t(m));
}

size_t Head::weight_bytes() const { return head_buf_->bytes() + ln_w_->bytes() * 2; }

}  // namespace rwkvpp
