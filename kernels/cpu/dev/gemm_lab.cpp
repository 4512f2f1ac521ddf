// CPU matrix-kernel lab (not in the default build: `ninja gemm_lab` in the build folder).
// Times one product of a layer's shape through the CPU backend against the read bandwidth
// measured in the same run: the weights' bytes / time as GB/s at small n, GFLOP/s at large n.
//   gemm_lab [R K dtype threads reps n...]    e.g. gemm_lab 3072 768 fp16 2 200 1 2 4 8 512
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"

using namespace rwkvpp;

int main(int argc, char** argv) {
  const int64_t R = argc > 1 ? std::atoll(argv[1]) : 3072, K = argc > 2 ? std::atoll(argv[2]) : 768;
  const DType dt = parse_dtype(argc > 3 ? argv[3] : "fp16");
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2, reps = argc > 5 ? std::atoi(argv[5]) : 100;
  std::vector<int64_t> ns;
  for (int i = 6; i < argc; ++i) ns.push_back(std::atoll(argv[i]));
  if (ns.empty()) ns = {1, 2, 4, 8, 64, 512};
  auto be = make_cpu_backend(threads);
  std::printf("isa %s, threads %d, read %.1f GB/s\n", cpu::isa_name(cpu::current_isa()), threads,
              be->measure_read_GBps());
  // Enough copies of the matrix that one pass over them leaves the caches (as in a model).
  const size_t one = cpu::packed_bytes(dt, R, K);
  const int copies = int(std::max<size_t>(1, (size_t(std::getenv("LAB_MB") ? std::atoi(std::getenv("LAB_MB")) : 256) << 20) / one));
  std::vector<float> w(size_t(R * K));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(int(i * 2654435761u % 2001) - 1000) * 1e-4f;
  const HostTensor t = HostTensor::from_f32(w, {R, K});
  std::vector<std::unique_ptr<DeviceBuffer>> own(static_cast<size_t>(copies));
  std::vector<WeightView> W;
  for (auto& o : own) W.push_back(be->load_weight(t, dt, o));
  for (int64_t n : ns) {
    std::vector<float> x(size_t(n * K), 0.5f), y(size_t(n * R));
    std::vector<double> s;
    const int r = int(std::max<int64_t>(3, reps / std::max<int64_t>(1, n / 8)));
    for (int i = 0; i < r; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      be->matmul(W[size_t(i % copies)], x.data(), y.data(), n);
      s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(s.begin(), s.end());
    const double med = s[s.size() / 2];
    std::printf("R %lld K %lld %s n %4lld: %8.1f us  %6.1f GB/s  %7.1f GFLOP/s\n", (long long)R,
                (long long)K, dtype_name(dt), (long long)n, med * 1e6, double(one) / med / 1e9,
                2.0 * double(n * R * K) / med / 1e9);
  }
}
