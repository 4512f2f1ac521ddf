// Packing, instruction-set choice and the block loop of the CPU matrix product (gemm.h).
#include "kernels/cpu/gemm.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/env_options.h"
#include "common/error.h"
#include "kernels/quantize.h"

namespace rwkvpp::cpu {

namespace {
int64_t i4_groups(int64_t cols) { return (cols + kI4Group - 1) / kI4Group; }
}  // namespace

size_t packed_bytes(DType dt, int64_t rows, int64_t cols) {
  const size_t elems = size_t(padded_rows(rows)) * size_t(cols);
  if (dt == DType::I8) return packed_scales_offset(rows, cols) + size_t(padded_rows(rows)) * 4;
  if (dt == DType::I4)
    return packed_scales_offset(rows, cols, dt) + size_t(padded_rows(rows)) * size_t(i4_groups(cols)) * 4;
  return elems * dtype_size(dt);
}

WeightView packed_view(const void* base, DType dt, int64_t rows, int64_t cols) {
  WeightView v{base, dt, rows, cols, nullptr};
  const auto* b = static_cast<const uint8_t*>(base);
  if (dt == DType::I8) v.scales = reinterpret_cast<const float*>(b + packed_scales_offset(rows, cols));
  if (dt == DType::I4) {
    v.aux = b + packed_scales_offset(rows, cols, dt);
    v.group = kI4Group;
  }
  return v;
}

namespace {

// Writes rows [r0, r0 + nr) of one block (its rows converted to `dt`, row-major in `rows_dt`,
// esize bytes per element) into the block's k-major layout at `block` (width wb).
void scatter_block(const uint8_t* rows_dt, int64_t nr, int64_t cols, size_t esize, int64_t wb,
                   uint8_t* block) {
  for (int64_t j = 0; j < nr; ++j) {
    const uint8_t* src = rows_dt + size_t(j) * size_t(cols) * esize;
    for (int64_t k = 0; k < cols; ++k)
      std::memcpy(block + (size_t(k) * size_t(wb) + size_t(j)) * esize, src + size_t(k) * esize, esize);
  }
}

// int4 (gemm.h): quantise the whole matrix, then lay the nibbles and the groups' d and m out by
// blocks.
void pack_i4(DType src_dtype, const void* src, int64_t rows, int64_t cols, uint8_t* out) {
  const int64_t Rp = padded_rows(rows), G = kI4Group, ng = i4_groups(cols);
  std::vector<uint8_t> q(size_t(rows) * size_t(cols));
  std::vector<uint16_t> d(size_t(rows * ng)), m(size_t(rows * ng));
  quantize_rows_i4(src_dtype, src, rows, cols, G, q.data(), d.data(), m.data());
  auto* meta = reinterpret_cast<uint16_t*>(out + packed_scales_offset(rows, cols, DType::I4));
  for (int64_t r0 = 0; r0 < Rp; r0 += kBlockRows) {
    const int64_t wb = std::min(kBlockRows, Rp - r0), half = wb / 2;
    uint8_t* block = out + size_t(r0) * size_t(cols) / 2;
    uint16_t* bm = meta + size_t(r0 * ng * 2);
    for (int64_t j = 0; j < wb && r0 + j < rows; ++j) {
      const int64_t r = r0 + j;
      const int64_t byte = j < half ? j : j - half, shift = j < half ? 0 : 4;
      for (int64_t k = 0; k < cols; ++k)
        block[size_t(k * half + byte)] |= uint8_t(q[size_t(r * cols + k)] << shift);
      for (int64_t g = 0; g < ng; ++g) {
        bm[size_t(g * 2 * wb + j)] = d[size_t(r * ng + g)];
        bm[size_t(g * 2 * wb + wb + j)] = m[size_t(r * ng + g)];
      }
    }
  }
}

}  // namespace

void pack_weight(DType src_dtype, const void* src, int64_t rows, int64_t cols, DType dt, void* dst) {
  RWKVPP_CHECK(rows >= 0 && cols >= 0 && src_dtype != DType::I8, "pack_weight: bad arguments");
  const int64_t Rp = padded_rows(rows);
  auto* out = static_cast<uint8_t*>(dst);
  const auto* in = static_cast<const uint8_t*>(src);
  const size_t src_row = size_t(cols) * dtype_size(src_dtype);
  if (dt == DType::I8) {
    // Quantise the whole matrix (shared among threads), then lay the bytes out by blocks.
    std::vector<int8_t> q(size_t(rows) * size_t(cols));
    auto* scales = reinterpret_cast<float*>(out + packed_scales_offset(rows, cols));
    quantize_rows_i8(src_dtype, src, rows, cols, q.data(), scales);
    for (int64_t r0 = 0; r0 < Rp; r0 += kBlockRows) {
      const int64_t wb = std::min(kBlockRows, Rp - r0), nr = std::max<int64_t>(0, std::min(wb, rows - r0));
      scatter_block(reinterpret_cast<const uint8_t*>(q.data()) + size_t(r0) * size_t(cols), nr, cols, 1,
                    wb, out + size_t(r0) * size_t(cols));
    }
    return;
  }
  if (dt == DType::I4) return pack_i4(src_dtype, src, rows, cols, out);
  const size_t esize = dtype_size(dt);
  std::vector<float> f(static_cast<size_t>(cols));
  std::vector<uint8_t> rows_dt(size_t(kBlockRows) * size_t(cols) * esize);
  for (int64_t r0 = 0; r0 < Rp; r0 += kBlockRows) {
    const int64_t wb = std::min(kBlockRows, Rp - r0), nr = std::max<int64_t>(0, std::min(wb, rows - r0));
    for (int64_t j = 0; j < nr; ++j) {
      const uint8_t* s = in + size_t(r0 + j) * src_row;
      uint8_t* d = rows_dt.data() + size_t(j) * size_t(cols) * esize;
      if (src_dtype == dt) {
        std::memcpy(d, s, src_row);
      } else {
        to_f32(src_dtype, s, f.data(), size_t(cols));
        from_f32(dt, f.data(), d, size_t(cols));
      }
    }
    scatter_block(rows_dt.data(), nr, cols, esize, wb, out + size_t(r0) * size_t(cols) * esize);
  }
}

float packed_at(const WeightView& W, int64_t r, int64_t c) {
  RWKVPP_CHECK(r >= 0 && r < W.rows && c >= 0 && c < W.cols, "packed_at: out of range");
  const int64_t Rp = padded_rows(W.rows), b = r / kBlockRows, row0 = b * kBlockRows;
  const int64_t wb = std::min(kBlockRows, Rp - row0);
  if (W.dtype == DType::I4) {
    const int64_t half = wb / 2, j = r - row0, ng = i4_groups(W.cols), g = c / W.group;
    const auto* block = static_cast<const uint8_t*>(W.data) + size_t(row0) * size_t(W.cols) / 2;
    const uint8_t byte = block[size_t(c * half + (j < half ? j : j - half))];
    const int q = j < half ? byte & 15 : byte >> 4;
    const auto* bm = static_cast<const uint16_t*>(W.aux) + size_t(row0 * ng * 2 + g * 2 * wb);
    return float(q) * f16_to_f32(bm[j]) + f16_to_f32(bm[wb + j]);
  }
  const size_t i = size_t(row0) * size_t(W.cols) + size_t(c) * size_t(wb) + size_t(r - row0);
  switch (W.dtype) {
    case DType::F32: return static_cast<const float*>(W.data)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(W.data)[i]);
    case DType::I8: return float(static_cast<const int8_t*>(W.data)[i]) * W.scales[r];
    case DType::I4: break;
  }
  return 0;
}

void packed_row(const WeightView& W, int64_t r, float* out) {
  RWKVPP_CHECK(r >= 0 && r < W.rows, "packed_row: out of range");
  const int64_t Rp = padded_rows(W.rows), row0 = r / kBlockRows * kBlockRows;
  const size_t wb = size_t(std::min(kBlockRows, Rp - row0));
  const size_t base = size_t(row0) * size_t(W.cols) + size_t(r - row0);
  const int64_t K = W.cols;
  switch (W.dtype) {
    case DType::F32:
      for (int64_t c = 0; c < K; ++c) out[c] = static_cast<const float*>(W.data)[base + size_t(c) * wb];
      return;
    case DType::F16:
      for (int64_t c = 0; c < K; ++c) out[c] = f16_to_f32(static_cast<const uint16_t*>(W.data)[base + size_t(c) * wb]);
      return;
    case DType::BF16:
      for (int64_t c = 0; c < K; ++c) out[c] = bf16_to_f32(static_cast<const uint16_t*>(W.data)[base + size_t(c) * wb]);
      return;
    case DType::I8:
      for (int64_t c = 0; c < K; ++c)
        out[c] = float(static_cast<const int8_t*>(W.data)[base + size_t(c) * wb]) * W.scales[r];
      return;
    case DType::I4:
      for (int64_t c = 0; c < K; ++c) out[c] = packed_at(W, r, c);
      return;
  }
}

// ---- instruction sets ------------------------------------------------------------------------

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

#if defined(__x86_64__)
// F16C from CPUID leaf 1 (ECX bit 29): clang before 15 has no "f16c" for __builtin_cpu_supports.
static bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}
#endif

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)
    case Isa::Avx2:
      return gemm_block_avx2() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             cpu_has_f16c();
    case Isa::Avx512:
      return gemm_block_avx512() && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma") && cpu_has_f16c();
#else
    case Isa::Avx2:
    case Isa::Avx512: return false;
#endif
  }
  return false;
}

namespace {

Isa choose_isa() {
  if (const std::string& s = env_options().cpu.isa; !s.empty()) {
    for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
      if (s == isa_name(i)) {
        if (!isa_supported(i)) fail("RWKVPP_CPU_ISA={}: this CPU (or build) lacks it", s);
        return i;
      }
    fail("RWKVPP_CPU_ISA={}: expected scalar, avx2 or avx512", s);
  }
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{int(choose_isa())};
  return slot;
}

GemmBlockFn block_fn(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return gemm_block_avx512();
    case Isa::Avx2: return gemm_block_avx2();
    case Isa::Scalar: break;
  }
  return gemm_block_scalar();
}

}  // namespace

Isa current_isa() { return Isa(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
  if (!isa_supported(isa)) fail("instruction set {} is not available on this CPU", isa_name(isa));
  isa_slot().store(int(isa), std::memory_order_relaxed);
}

void gemm_blocks(const WeightView& W, const float* x, float* y, int64_t n, int64_t b0, int64_t b1) {
  const GemmView v{W.data, GemmDType(uint8_t(W.dtype)), W.rows, W.cols, W.scales,
                   static_cast<const uint16_t*>(W.aux), W.group};
  const GemmBlockFn fn = block_fn(current_isa());
  for (int64_t b = b0; b < b1; ++b) fn(v, x, y, n, b);
}

}  // namespace rwkvpp::cpu

#if !defined(__x86_64__)
namespace rwkvpp::cpu {
GemmBlockFn gemm_block_avx2() { return nullptr; }
GemmBlockFn gemm_block_avx512() { return nullptr; }
}  // namespace rwkvpp::cpu
#endif
