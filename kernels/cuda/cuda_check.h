// Error reporting for the CUDA backend. Host-only C++ with no CUDA types, so that .cu files can
// raise rwkvpp::Error without including fmt (which nvcc's front end cannot compile) and so that
// the messages carry the CUDA or cuBLAS error string, the failing call and its location.
#pragma once

#include <string>

namespace rwkvpp::cuda {

// `code` is a cudaError_t; throws Error("CUDA error <name>: <string> in <what> at file:line").
[[noreturn]] void fail_cuda(int code, const char* what, const char* file, int line);
// `status` is a cublasStatus_t.
[[noreturn]] void fail_cublas(int status, const char* what, const char* file, int line);
// Throws Error(msg): for invalid arguments a user can cause (bad token id, unsupported dtype).
[[noreturn]] void fail_msg(const std::string& msg);

}  // namespace rwkvpp::cuda
