// Turns CUDA and cuBLAS status codes into rwkvpp::Error (see cuda_check.h).
#include "kernels/cuda/cuda_check.h"

#include "kernels/cuda/cublas_lazy.h"
#include <cuda_runtime.h>

#include "common/error.h"

namespace rwkvpp::cuda {

void fail_cuda(int code, const char* what, const char* file, int line) {
  auto e = static_cast<cudaError_t>(code);
  fail("CUDA error {} ({}): {} in {} at {}:{}", cudaGetErrorName(e), code, cudaGetErrorString(e),
       what, file, line);
}

void fail_cublas(int status, const char* what, const char* file, int line) {
  auto s = static_cast<cublasStatus_t>(status);
  fail("cuBLAS error {} ({}): {} in {} at {}:{}", cublasGetStatusName(s), status,
       cublasGetStatusString(s), what, file, line);
}

void fail_msg(const std::string& msg) { fail("{}", msg); }

}  // namespace rwkvpp::cuda
