// Skipping GPU tests where no GPU is present (CI, development machines without one): every
// [cuda] test starts with RWKVPP_REQUIRE_CUDA(). Catch2 v3 (3.3 and later) reports the test as
// skipped; Catch2 v2 has no SKIP, so the test warns and returns (it then counts as passed).
#pragma once

#include "catch.h"
#include "kernels/backend.h"

#if defined(RWKVPP_CATCH3)
#define RWKVPP_REQUIRE_CUDA()                                                   \
  do {                                                                          \
    if (!::rwkvpp::cuda_available()) SKIP("no CUDA device (or built without CUDA)"); \
  } while (0)
#else
#define RWKVPP_REQUIRE_CUDA()                                                  \
  do {                                                                         \
    if (!::rwkvpp::cuda_available()) {                                         \
      WARN("skipped: no CUDA device (or built without CUDA)");                 \
      return;                                                                  \
    }                                                                          \
  } while (0)
#endif
