// Opening the weights of a run (shards/model_source.h).
#include "shards/model_source.h"

#include "shards/model_format.h"
#include "shards/synthetic.h"

namespace rwkvpp {

ModelSource open_model_source(const std::string& model, const std::string& synthetic,
                              uint64_t synthetic_seed, const std::string& dtype) {
  ModelSource s;
  if (!synthetic.empty()) {
    DType d = dtype.empty() ? DType::F16 : unquantised_dtype(parse_dtype(dtype));
    s.synthetic = std::make_unique<SyntheticSource>(synthetic_config(synthetic, d), synthetic_seed);
    s.fingerprint = fnv1a64(synthetic.data(), synthetic.size(), synthetic_seed);
  } else {
    s.reader = std::make_unique<ModelReader>(model);
    s.fingerprint = s.reader->fingerprint();
  }
  return s;
}

}  // namespace rwkvpp
