#include "test_support.h"

#include <algorithm>
#include <numeric>

namespace rwkvpp::test {

LocalModel::LocalModel(TensorSource& src, DType dtype, int max_slots, std::unique_ptr<Backend> b)
    : be(b ? std::move(b) : make_cpu_backend(1)) {
  StageSpec s;
  s.first = 0;
  s.last = int(src.config().n_layer);
  s.embed = s.head = true;
  s.dtype = dtype;
  s.max_slots = max_slots;
  stage = std::make_unique<Stage>(*be, src, s);
  vocab = src.config().vocab_size;
}

std::vector<float> LocalModel::run(int slot, const std::vector<int32_t>& tokens, int chunk) {
  std::vector<float> out;
  for (size_t p = 0; p < tokens.size(); p += size_t(chunk)) {
    int32_t n = int32_t(std::min(tokens.size() - p, size_t(chunk)));
    Hidden h = stage->hidden(n);
    stage->embed(tokens.data() + p, n, h);
    Segment seg{slot, 0, n};
    stage->forward({&seg, 1}, h);
    std::vector<int32_t> rows(static_cast<size_t>(n));
    std::iota(rows.begin(), rows.end(), 0);
    std::vector<float> l(size_t(n * vocab));
    stage->logits(h, rows.data(), n, l.data());
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

std::vector<std::vector<float>> LocalModel::run_batch(const std::vector<std::vector<int32_t>>& tokens) {
  std::vector<int32_t> ids;
  std::vector<Segment> segs;
  for (size_t i = 0; i < tokens.size(); ++i) {
    segs.push_back({int32_t(i), int32_t(ids.size()), int32_t(tokens[i].size())});
    ids.insert(ids.end(), tokens[i].begin(), tokens[i].end());
  }
  int64_t n = int64_t(ids.size());
  Hidden h = stage->hidden(n);
  stage->embed(ids.data(), n, h);
  stage->forward(segs, h);
  std::vector<int32_t> rows(static_cast<size_t>(n));
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<float> l(size_t(n * vocab));
  stage->logits(h, rows.data(), n, l.data());
  std::vector<std::vector<float>> out;
  for (auto& s : segs)
    out.emplace_back(l.begin() + int64_t(s.start) * vocab, l.begin() + int64_t(s.start + s.len) * vocab);
  return out;
}

std::unique_ptr<Backend> fast_cuda_backend() {
  auto be = make_cuda_backend(0);
  be->set_batch_invariant(false);
  return be;
}

}  // namespace rwkvpp::test
