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
// lives in each slot's state at `off` (stride `stride`). Uses workspace buffers 10..14.
struct ReluSquareFfn {
  const float *ln_w = nullptr, *ln_b = nullptr;   // ln2, [C]
  const float *mix_k = nullptr, *mix_r = nullptr;  // [C], weight of the current token in mix()
  WeightView key, value, receptance;               // [F, C], [C, F], [C, C]
  float eps = 1e-5f;
  void forward(Backend& be, Workspace& ws, const SegTable& segs, Hidden& h, float* state,
               int64_t stride, int64_t off) const;
  // Loads ffn.key, ffn.value and ffn.receptance of `layer` ([F, C], [C, F], [C, C]) as `dtype`
  // into buffers kept in `keep`; the vectors come from the caller.
  static ReluSquareFfn load(Backend& be, const TensorMap& t, int layer, int64_t C, int64_t F,
                            const float* ln_w, const float* ln_b, const float* mix_k,
                            const float* mix_r, float eps, DType dtype,
                            std::vector<std::unique_ptr<DeviceBuffer>>& keep);
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

// Helpers for block implementations: fetch a tensor, checking its element count against
// `numel` (shapes like [1,1,C] and [C] are interchangeable for vectors); throws Error naming
// layer and tensor.
const HostTensor& require(const TensorMap& t, int layer, const std::string& name, int64_t numel);
// Loads matrix `name` of layer `layer`, which must have shape [rows, cols], as `dtype` into a
// new buffer kept in `keep`; throws Error naming layer, tensor and both shapes otherwise.
WeightView load_layer_matrix(Backend& be, const TensorMap& t, int layer, const std::string& name,
                             int64_t rows, int64_t cols, DType dtype,
                             std::vector<std::unique_ptr<DeviceBuffer>>& keep);
// Uploads a vector as fp32 into a new buffer kept in `keep`; returns its pointer.
float* upload_f32(Backend& be, const std::vector<float>& v,
                  std::vector<std::unique_ptr<DeviceBuffer>>& keep);
// Uploads 1 - v for the [numel] vector `name` of `layer`: RWKV-6/7 store the weight m of
// x + (prev - x) * m, Backend::mix takes mu of x * mu + prev * (1 - mu).
float* upload_one_minus(Backend& be, const TensorMap& t, int layer, const std::string& name,
                        int64_t numel, std::vector<std::unique_ptr<DeviceBuffer>>& keep);
// Loads a small matrix (RWKV-6/7 low-rank factors: a few % of the bytes, feeding the decay)
// as `dtype`, or fp16 where `dtype` is int8: these are never quantised.
WeightView load_small_matrix(Backend& be, const HostTensor& m, DType dtype,
                             std::vector<std::unique_ptr<DeviceBuffer>>& keep);

}  // namespace rwkvpp
