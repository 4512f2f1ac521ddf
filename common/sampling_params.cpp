// Checks of SamplingParams (common/sampling_params.h).
#include "common/sampling_params.h"

#include <cmath>

#include "common/error.h"

namespace rwkvpp {

void validate(const SamplingParams& p) {
  if (!(std::isfinite(p.temperature) && p.temperature >= 0))
    fail("sampling: temperature must be >= 0 (got {})", p.temperature);
  if (p.top_k < 0) fail("sampling: top_k must be >= 0 (got {})", p.top_k);
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("sampling: top_p must be in (0, 1] (got {})", p.top_p);
  if (!(p.min_p >= 0 && p.min_p < 1)) fail("sampling: min_p must be in [0, 1) (got {})", p.min_p);
  if (!std::isfinite(p.presence_penalty))
    fail("sampling: presence_penalty must be finite (got {})", p.presence_penalty);
  if (!std::isfinite(p.frequency_penalty))
    fail("sampling: frequency_penalty must be finite (got {})", p.frequency_penalty);
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0))
    fail("sampling: repetition_penalty must be > 0 (got {})", p.repetition_penalty);
  if (!(p.penalty_decay >= 0 && p.penalty_decay <= 1))
    fail("sampling: penalty_decay must be in [0, 1] (got {})", p.penalty_decay);
}

}  // namespace rwkvpp
