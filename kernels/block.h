// One RWKV layer (a "block") of any version on one backend, and the model's two ends
// (embedding + ln0 on the first stage; ln_out + head on the last). Each version implements
// Block in its own file (rwkv4.cpp, rwkv5.cpp, ...); make_block picks by ModelConfig::version.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/model_config.h"
#include "common/tensor.h"
#include "kernels/backend.h"

namespace rwkvpp {

// The tensors of one layer, keyed by their official checkpoint names relative to the block
// (e.g. "att.key.weight", "att.time_decay", "ffn.value.weight", "ln1.weight"), in the official
// shapes. Layer 0 also carries "ln0.weight"/"ln0.bias".
using TensorMap = std::map<std::string, HostTensor>;

// The hidden tensors that travel between layers and stages, for n tokens.
struct Hidden {
  float* x = nullptr;        // [n, C]
  float* v_first = nullptr;  // [n, C], RWKV-7 only (layer 0's value); nullptr otherwise
  int64_t n = 0;
};

class Block {
 public:
  virtual ~Block() = default;
  // fp32 values of recurrent state per slot for this layer.
  virtual int64_t state_floats() const = 0;
  // Writes the state of a fresh sequence (state_floats() values) into host memory.
  virtual void init_state(float* host) const = 0;
  // Runs the layer over the batch: h.x updated in place; `state` is this layer's
  // [n_slots, state_floats()] array in backend memory.
  virtual void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h,
                       float* state) = 0;
  // Bytes of weights this block holds on its backend: the buffers in keep_.
  virtual size_t weight_bytes() const;

 protected:
  std::vector<std::unique_ptr<DeviceBuffer>> keep_;  // every buffer the block uploaded
};

// The channel mix shared by RWKV-4, 5 and 6 (DESIGN.md, Numerics): with xk and xr the
// token-shift mixes of ln2(x),  x += sigmoid(Wr xr) * (Wv relu(Wk xk)^2). The token-shift vector
// lives in each slot's state at `off` (stride `stride`). Uses the workspace buffers kFfn*.
// Workspace buffers (Workspace::get ids) by what they hold: kAtt0 .. kAtt0 + 19 are a block's
// time mix (each rwkv<version>.cpp names its own), then the channel mix's, the head's and the
// stage's logits.
enum WsId : int {
  kAtt0 = 0,
  kFfnXln = 20, kFfnPrev, kFfnXk, kFfnXr, kFfnK,
  kHeadRows = 28, kLogits, kHeadPadded,
};

class LayerLoader;
struct ReluSquareFfn {
  const float *ln_w = nullptr, *ln_b = nullptr;   // ln2, [C]
  const float *mix_k = nullptr, *mix_r = nullptr;  // [C], weight of the current token in mix()
  WeightView key, value, receptance;               // [F, C], [C, F], [C, C]
  float eps = 1e-5f;
  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state,
               int64_t stride, int64_t off) const;
  // Loads ffn.key, ffn.value and ffn.receptance ([F, C], [C, F], [C, C]) through `ld`; the
  // vectors come from the caller.
  static ReluSquareFfn load(const LayerLoader& ld, int64_t C, int64_t F, const float* ln_w,
                            const float* ln_b, const float* mix_k, const float* mix_r, float eps);
};

// Builds layer `layer` from its tensors, uploading them to `be` with matrices stored as
// `dtype`. Throws Error naming the tensor when one is missing or has the wrong shape.
std::unique_ptr<Block> make_block(Backend& be, const ModelConfig& cfg, int layer,
                                  const TensorMap& t, DType dtype);

// First-stage input: x = ln0(emb[ids]).
class Embedder {
 public:
  // emb: [vocab, C]; ln0_w/ln0_b: [C]. The table is stored as unquantised_dtype(dtype) (fp16
  // when dtype is int8).
  Embedder(Backend& be, const ModelConfig& cfg, const HostTensor& emb, const HostTensor& ln0_w,
           const HostTensor& ln0_b, DType dtype);
  void forward(Backend& be, const int32_t* ids, int64_t n, float* x);
  size_t weight_bytes() const;

 private:
  ModelConfig cfg_;
  std::unique_ptr<DeviceBuffer> emb_buf_, ln_w_, ln_b_;
  WeightView emb_;
};

// Last-stage output: logits[m, vocab] = head(ln_out(x[rows])).
class Head {
 public:
  Head(Backend& be, const ModelConfig& cfg, const HostTensor& ln_w, const HostTensor& ln_b,
       const HostTensor& head, DType dtype);
  // rows: host indices into x (m of them); logits in backend memory.
  void forward(Backend& be, Workspace& ws, const float* x, const int32_t* rows, int64_t m,
               float* logits);
  size_t weight_bytes() const;

 private:
  ModelConfig cfg_;
  std::unique_ptr<DeviceBuffer> head_buf_, ln_w_, ln_b_;
  // The matrix with its rows padded to a multiple of Backend::row_align() by zero rows (CUDA:
  // 8, for cuBLAS's fast kernels; the CPU pads nothing and copies nothing). The padded logits
  // are compacted into the caller's rows.
  int64_t rows_ = 0;
  WeightView head_;
};

// Builds one layer's tensors on a backend: every lookup and shape check names the layer and the
// tensor in its Error, and the conversions the versions share live here, so that each
// rwkv<version>.cpp holds only what differs. Every buffer it makes is kept in `keep` (the
// block's), so the pointers and views it returns live as long as the block.
// The layer norms every block has (ln1 before the time mix, ln2 before the channel mix) and, for
// RWKV-5/6/7, the time mix's group norm ln_x: [C] fp32 weights and biases on the backend.
struct BlockNorms {
  const float *ln1_w = nullptr, *ln1_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr;
  const float *lnx_w = nullptr, *lnx_b = nullptr;
};

class LayerLoader {
 public:
  LayerLoader(Backend& be, const TensorMap& t, int layer, DType dtype,
              std::vector<std::unique_ptr<DeviceBuffer>>& keep)
      : be_(be), t_(t), layer_(layer), dtype_(dtype), keep_(keep) {}
  int layer() const { return layer_; }
  bool has(const std::string& name) const { return t_.count(name) > 0; }
  // The tensor; with numel, its element count is checked (shapes like [1, 1, C] and [C] are
  // interchangeable for vectors); with a shape, the shape itself.
  const HostTensor& get(const std::string& name) const;
  const HostTensor& get(const std::string& name, int64_t numel) const;
  const HostTensor& get(const std::string& name, const std::vector<int64_t>& shape) const;
  // A vector of numel values as fp32 on the backend; `values` uploads computed ones.
  float* vec(const std::string& name, int64_t numel) const;
  float* values(const std::vector<float>& v) const;
  // ln1, ln2 and (with_lnx) att.ln_x, each [C].
  BlockNorms norms(int64_t C, bool with_lnx) const;
  // 1 - v: RWKV-6/7 store the weight m of x + (prev - x) * m, Backend::mix takes mu of
  // x * mu + prev * (1 - mu).
  float* one_minus(const std::string& name, int64_t numel) const;
  // Matrix `name` of shape [rows, cols], stored as the layer's compute dtype.
  WeightView mat(const std::string& name, int64_t rows, int64_t cols) const;
  // A small matrix (RWKV-6/7 low-rank factors: a few % of the bytes, feeding the decay) as the
  // compute dtype, or fp16 where that is int8: these are never quantised. `small_t` takes a
  // row-major [rows, cols] fp32 matrix and stores its transpose [cols, rows] (the checkpoints
  // keep them as x @ W; Backend::matmul takes [out, in]).
  WeightView small(const HostTensor& m) const;
  WeightView small_t(const std::vector<float>& m, int64_t rows, int64_t cols) const;
  // A low-rank pair `prefix`1 [C, D] and `prefix`2 [D, C], applied as x @ p1 @ p2: m1 = p1^T
  // [D, C], m2 = p2^T [C, D]. Returns D.
  int64_t low_rank(const std::string& prefix, int64_t C, WeightView& m1, WeightView& m2) const;

 private:
  Backend& be_;
  const TensorMap& t_;
  int layer_;
  DType dtype_;
  std::vector<std::unique_ptr<DeviceBuffer>>& keep_;
};

}  // namespace rwkvpp
