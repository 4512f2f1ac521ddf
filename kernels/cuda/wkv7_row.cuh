// One token of the RWKV-7 delta rule on one state row, shared by wkv7_reg (wkv7.cu) and the
// fused time mix (rwkv7_mix.cu). Thread j holds row j of the head's state S (value row j, key
// columns i) in registers; the token's r, w, k, a, b of the head sit in shared memory:
//   sa_j = sum_i S[j,i] a_i;  S[j,i] = S[j,i] * w_i + sa_j * b_i + v_j * k_i;  out_j = S_j . r
// Four partial sums break the dependency chains of the two dot products (so their rounding
// differs from the CPU's sequential order by ~1e-7).
#pragma once

namespace rwkvpp::cuda {

template <int N>
__device__ __forceinline__ float wkv7_row_step(float (&row)[N], const float* sr, const float* sw,
                                               const float* sk, const float* sa, const float* sb,
                                               float vj) {
  float p0 = 0, p1 = 0, p2 = 0, p3 = 0;
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    p0 += row[i] * sa[i];
    p1 += row[i + 1] * sa[i + 1];
    p2 += row[i + 2] * sa[i + 2];
    p3 += row[i + 3] * sa[i + 3];
  }
  const float s_a = (p0 + p1) + (p2 + p3);
  float y0 = 0, y1 = 0, y2 = 0, y3 = 0;
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    row[i] = row[i] * sw[i] + s_a * sb[i] + vj * sk[i];
    row[i + 1] = row[i + 1] * sw[i + 1] + s_a * sb[i + 1] + vj * sk[i + 1];
    row[i + 2] = row[i + 2] * sw[i + 2] + s_a * sb[i + 2] + vj * sk[i + 2];
    row[i + 3] = row[i + 3] * sw[i + 3] + s_a * sb[i + 3] + vj * sk[i + 3];
    y0 += row[i] * sr[i];
    y1 += row[i + 1] * sr[i + 1];
    y2 += row[i + 2] * sr[i + 2];
    y3 += row[i + 3] * sr[i + 3];
  }
  return (y0 + y1) + (y2 + y3);
}

// The head's N x N state between global memory (S, row-major) and each thread's row, through
// a padded shared tile so that the global accesses coalesce: in round q thread j moves S[q, j].
template <int N>
__device__ __forceinline__ void wkv7_load_rows(const float* S, float (&tile)[N][N + 1],
                                               float (&row)[N]) {
  const int j = threadIdx.x;
#pragma unroll 8
  for (int q = 0; q < N; ++q) tile[q][j] = S[q * N + j];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) row[i] = tile[j][i];
}
template <int N>
__device__ __forceinline__ void wkv7_store_rows(float* S, float (&tile)[N][N + 1],
                                                const float (&row)[N]) {
  const int j = threadIdx.x;
  __syncthreads();  // the tile is free again (other threads finished reading their rows)
#pragma unroll
  for (int i = 0; i < N; ++i) tile[j][i] = row[i];
  __syncthreads();
#pragma unroll 8
  for (int q = 0; q < N; ++q) S[q * N + j] = tile[q][j];
}

}  // namespace rwkvpp::cuda
