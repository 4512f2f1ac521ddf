// cuBLAS, loaded when the CUDA backend first needs it instead of when the program starts.
// Linking libcublas makes every rwkvpp process map and relocate it at start-up (about 200 MB
// resident, and a noticeable start time) even on the CPU, where a CUDA-built rwkvpp runs its CPU
// stages and every short command (tokenize, inspect, --help). Include this header instead of
// <cublas_v2.h>: the cuBLAS calls below it go through a table that cublas_lazy.cpp fills with
// dlopen/dlsym on first use, and the names stay the official ones at the call sites.
#pragma once

#include <cublas_v2.h>

namespace rwkvpp::cuda {

// The functions rwkvpp calls (the _v2 names are what cublas_v2.h maps the plain ones to).
#define RWKVPP_CUBLAS_FUNCTIONS(X)                                                         \
  X(cublasCreate_v2) X(cublasDestroy_v2) X(cublasGemmBatchedEx) X(cublasGemmEx)             \
  X(cublasGetStatusName) X(cublasGetStatusString) X(cublasSetMathMode)                      \
  X(cublasSetPointerMode_v2) X(cublasSetStream_v2) X(cublasSetWorkspace_v2)

// cublasGemmEx and cublasGemmBatchedEx have C++ overloads (an older computeType); these are the
// C functions.
using GemmExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                    const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                                    int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                                    cublasGemmAlgo_t);
using GemmBatchedExFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                           int, const void*, const void* const[], cudaDataType, int,
                                           const void* const[], cudaDataType, int, const void*,
                                           void* const[], cudaDataType, int, int, cublasComputeType_t,
                                           cublasGemmAlgo_t);
struct CublasApi {
  decltype(&::cublasCreate_v2) cublasCreate_v2 = nullptr;
  decltype(&::cublasDestroy_v2) cublasDestroy_v2 = nullptr;
  GemmBatchedExFn cublasGemmBatchedEx = nullptr;
  GemmExFn cublasGemmEx = nullptr;
  decltype(&::cublasGetStatusName) cublasGetStatusName = nullptr;
  decltype(&::cublasGetStatusString) cublasGetStatusString = nullptr;
  decltype(&::cublasSetMathMode) cublasSetMathMode = nullptr;
  decltype(&::cublasSetPointerMode_v2) cublasSetPointerMode_v2 = nullptr;
  decltype(&::cublasSetStream_v2) cublasSetStream_v2 = nullptr;
  decltype(&::cublasSetWorkspace_v2) cublasSetWorkspace_v2 = nullptr;
};

// The table, loaded on the first call (thread-safe); throws Error naming the library when it
// cannot be loaded or lacks a function.
const CublasApi& cublas_api();

}  // namespace rwkvpp::cuda

#ifndef RWKVPP_CUBLAS_LAZY_IMPL
#define cublasCreate_v2 (::rwkvpp::cuda::cublas_api().cublasCreate_v2)
#define cublasDestroy_v2 (::rwkvpp::cuda::cublas_api().cublasDestroy_v2)
#define cublasGemmBatchedEx (::rwkvpp::cuda::cublas_api().cublasGemmBatchedEx)
#define cublasGemmEx (::rwkvpp::cuda::cublas_api().cublasGemmEx)
#define cublasGetStatusName (::rwkvpp::cuda::cublas_api().cublasGetStatusName)
#define cublasGetStatusString (::rwkvpp::cuda::cublas_api().cublasGetStatusString)
#define cublasSetMathMode (::rwkvpp::cuda::cublas_api().cublasSetMathMode)
#define cublasSetPointerMode_v2 (::rwkvpp::cuda::cublas_api().cublasSetPointerMode_v2)
#define cublasSetStream_v2 (::rwkvpp::cuda::cublas_api().cublasSetStream_v2)
#define cublasSetWorkspace_v2 (::rwkvpp::cuda::cublas_api().cublasSetWorkspace_v2)
#endif
