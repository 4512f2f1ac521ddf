#include "kernels/quantize.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <thread>
#include <vector>

#include "common/error.h"

namespace rwkvpp {

namespace {

void quantize_range(DType dt, const uint8_t* src, int64_t r0, int64_t r1, int64_t cols, int8_t* q,
                    float* scales) {
  std::vector<float> row(size_t(std::max<int64_t>(cols, 1)));
  const size_t row_bytes = size_t(cols) * dtype_size(dt);
  for (int64_t r = r0; r < r1; ++r) {
    to_f32(dt, src + size_t(r) * row_bytes, row.data(), size_t(cols));
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = row[size_t(c)];
      if (!std::isfinite(v))
        fail("cannot quantise to int8: element [{}, {}] is {} (not finite)", r, c, v);
      amax = std::max(amax, std::fabs(v));
    }
    const float scale = amax / 127.0f;
    int8_t* qr = q + size_t(r) * size_t(cols);
    scales[r] = scale;
    if (scale == 0.0f) {
      std::fill(qr, qr + cols, int8_t(0));
      continue;
    }
    for (int64_t c = 0; c < cols; ++c) {
      // Default rounding mode: nearest, ties to even.
      const float v = std::nearbyint(row[size_t(c)] / scale);
      qr[c] = int8_t(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

}  // namespace

void quantize_rows_i8(DType dt, const void* src, int64_t rows, int64_t cols, int8_t* q,
                      float* scales) {
  RWKVPP_CHECK(rows >= 0 && cols >= 0, "quantize_rows_i8: bad shape");
  if (dt == DType::I8) fail("quantize_rows_i8: the source is int8 already");
  const auto* s = static_cast<const uint8_t*>(src);
  const int64_t work = rows * cols;
  int threads = int(std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()), 16));
  if (work < (int64_t(1) << 22)) threads = 1;  // below ~4M values a thread costs more than it saves
  threads = int(std::min<int64_t>(threads, std::max<int64_t>(rows, 1)));
  if (threads <= 1) {
    quantize_range(dt, s, 0, rows, cols, q, scales);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) {
    const int64_t r0 = rows * i / threads, r1 = rows * (i + 1) / threads;
    pool.emplace_back([&, i, r0, r1] {
      try {
        quantize_range(dt, s, r0, r1, cols, q, scales);
      } catch (...) {
        errors[size_t(i)] = std::current_exception();
      }
    });
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void quantize_rows_i4(DType dt, const void* src, int64_t rows, int64_t cols, int64_t group,
                      uint8_t* q, uint16_t* d, uint16_t* m) {
  RWKVPP_CHECK(rows >= 0 && cols >= 0 && group > 0, "quantize_rows_i4: bad shape");
  if (dt == DType::I8 || dt == DType::I4) fail("quantize_rows_i4: the source is quantised already");
  const int64_t groups = (cols + group - 1) / group;
  std::vector<float> row(size_t(std::max<int64_t>(cols, 1)));
  const size_t row_bytes = size_t(cols) * dtype_size(dt);
  for (int64_t r = 0; r < rows; ++r) {
    to_f32(dt, static_cast<const uint8_t*>(src) + size_t(r) * row_bytes, row.data(), size_t(cols));
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = g * group, c1 = std::min(cols, c0 + group);
      float lo = row[size_t(c0)], hi = lo;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = row[size_t(c)];
        if (!std::isfinite(v))
          fail("cannot quantise to int4: element [{}, {}] is {} (not finite)", r, c, v);
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      const uint16_t mh = f32_to_f16(lo);
      const float mf = f16_to_f32(mh);
      const uint16_t dh = f32_to_f16(std::max(hi - mf, 0.0f) / 15.0f);
      const float df = f16_to_f32(dh);
      if (!std::isfinite(mf) || !std::isfinite(df))
        fail("cannot quantise to int4: row {} columns {}..{} span [{}, {}], beyond fp16's range", r,
             c0, c1 - 1, lo, hi);
      d[size_t(r * groups + g)] = dh;
      m[size_t(r * groups + g)] = mh;
      uint8_t* qr = q + size_t(r) * size_t(cols);
      for (int64_t c = c0; c < c1; ++c) {
        const float v = df > 0.0f ? std::nearbyint((row[size_t(c)] - mf) / df) : 0.0f;
        qr[c] = uint8_t(std::clamp(v, 0.0f, 15.0f));
      }
    }
  }
}

void dequantize_rows_i8(const int8_t* q, const float* scales, int64_t rows, int64_t cols,
                        float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float s = scales[r];
    const int8_t* qr = q + size_t(r) * size_t(cols);
    float* o = out + size_t(r) * size_t(cols);
    for (int64_t c = 0; c < cols; ++c) o[c] = float(qr[c]) * s;
  }
}

}  // namespace rwkvpp
