#define RWKVPP_CUBLAS_LAZY_IMPL
#include "kernels/cuda/cublas_lazy.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "common/error.h"

namespace rwkvpp::cuda {
namespace {

// By name (LD_LIBRARY_PATH, the executable's run path, the system's), else from the folder of
// the CUDA runtime this process uses (where the toolkit keeps cuBLAS too).
void* open_library(const std::string& name) {
  if (void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  const std::string first = dlerror();
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) && info.dli_fname) {
    std::string dir = info.dli_fname;
    dir = dir.substr(0, dir.find_last_of('/') + 1);
    if (void* h = dlopen((dir + name).c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
  }
  fail("the CUDA backend needs cuBLAS, and {} cannot be loaded ({}); put the CUDA toolkit's "
       "library folder on LD_LIBRARY_PATH",
       name, first);
}

CublasApi load() {
  const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* h = open_library(name);
  CublasApi api;
#define RWKVPP_CUBLAS_LOAD(fn)                                               \
  api.fn = reinterpret_cast<decltype(api.fn)>(dlsym(h, #fn));                \
  if (!api.fn) fail("{} has no function {}: another cuBLAS version?", name, #fn);
  RWKVPP_CUBLAS_FUNCTIONS(RWKVPP_CUBLAS_LOAD)
#undef RWKVPP_CUBLAS_LOAD
  return api;
}

}  // namespace

const CublasApi& cublas_api() {
  static CublasApi api;
  static std::once_flag once;
  std::call_once(once, [] { api = load(); });
  return api;
}

}  // namespace rwkvpp::cuda
