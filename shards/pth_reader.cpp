// PyTorch checkpoints as released (torch.save since 1.6): a zip archive holding
// `<archive>/data.pkl`, the pickled state dict, and `<archive>/data/<key>`, the raw bytes of
// each storage (plus `byteorder`, `version`, ... which only matter here for the byte order).
//
// In data.pkl each tensor is
//   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)
// where `storage` is a persistent id ('storage', torch.HalfStorage, key, location, numel)
// naming `data/<key>`. Tensors may be views (offset, strides, shared storages); each one is
// copied out contiguous, straight from the memory-mapped archive. Names and shapes are kept
// exactly as in the file.
#include <algorithm>
#include <cstring>
#include <set>

#include "common/error.h"
#include "common/limits.h"
#include "shards/checkpoint.h"
#include "shards/mapped_file.h"
#include "shards/pickle.h"
#include "shards/zip_reader.h"

namespace rwkvpp {
namespace {

using Kind = PyObj::Kind;

// One tensor as data.pkl describes it.
struct TensorRecord {
  std::string name;
  DType dtype = DType::F32;
  std::string storage_key;
  int64_t storage_numel = 0;  // elements
  int64_t offset = 0;         // elements
  std::vector<int64_t> sizes, strides;
};

// data.pkl of a 14B model is a few MB; a larger one is not a state dict.
constexpr uint64_t kMaxPickleBytes = uint64_t(64) << 20;
// How much more the tensors may hold than the storages they view (see materialize()).
constexpr uint64_t kMaxViewFactor = 4, kViewSlack = uint64_t(64) << 20;

class PthReader {
 public:
  explicit PthReader(const std::string& path) : file_(path), zip_(file_) {}
  PthReader(std::span<const uint8_t> bytes, const std::string& name)
      : file_(bytes, name), zip_(file_) {}
  Checkpoint read();

 private:
  const std::string& path() const { return file_.path(); }
  std::string find_prefix() const;
  bool read_big_endian();
  bool tensor_record(const std::string& name, const PyObj* o, TensorRecord& r, int depth) const;
  HostTensor materialize(const TensorRecord& r);

  MappedFile file_;
  ZipReader zip_;
  std::string prefix_;  // "<archive>/"
  bool big_endian_ = false;
  std::set<std::string> verified_;  // storages whose CRC has been checked
  uint64_t storage_bytes_ = 0;      // of the storages in verified_
  uint64_t tensor_bytes_ = 0;       // of the tensors materialized so far
  std::vector<uint8_t> scratch_;
};

int64_t int_of(const std::string& path, const std::string& name, const PyObj* o, const char* what) {
  if (o->kind != Kind::Int)
    fail("'{}': tensor '{}' has a {} as its {}, expected an int", path, name, o->kind_name(), what);
  return o->i;
}

std::vector<int64_t> ints_of(const std::string& path, const std::string& name, const PyObj* o,
                             const char* what) {
  if (o->kind != Kind::Tuple)
    fail("'{}': tensor '{}' has a {} as its {}, expected a tuple", path, name, o->kind_name(),
         what);
  std::vector<int64_t> v;
  for (const PyObj* x : o->items) v.push_back(int_of(path, name, x, what));
  return v;
}

std::string PthReader::find_prefix() const {
  // torch writes every record under one folder named after the file: "<archive>/data.pkl".
  for (const ZipEntry& e : zip_.entries()) {
    const std::string& n = e.name;
    if (n == "data.pkl") return "";
    if (n.size() > 9 && n.compare(n.size() - 9, 9, "/data.pkl") == 0 && n.find('/') == n.size() - 9)
      return n.substr(0, n.size() - 8);
  }
  fail("'{}': zip archive without a data.pkl record: not a PyTorch checkpoint", path());
}

bool PthReader::read_big_endian() {
  const ZipEntry* e = zip_.find(prefix_ + "byteorder");
  if (!e) return false;  // older torch: always little-endian
  auto b = zip_.contents(*e, scratch_);
  std::string s(reinterpret_cast<const char*>(b.data()), b.size());
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  if (s == "little") return false;
  if (s == "big") return true;
  fail("'{}': record '{}' says '{}', expected 'little' or 'big'", path(), e->name, s.substr(0, 32));
}

// Fills `r` when `o` is a tensor; returns false for objects that are not tensors (other
// entries of the dict are skipped).
bool PthReader::tensor_record(const std::string& name, const PyObj* o, TensorRecord& r,
                              int depth) const {
  if (o->kind != Kind::Reduce) return false;
  const PyObj* fn = o->items[0];
  const std::vector<const PyObj*>& args = o->items[1]->items;
  if (fn->is_global("torch._utils._rebuild_parameter") ||
      fn->is_global("torch._utils._rebuild_parameter_with_state")) {
    if (args.empty() || depth > 0) fail("'{}': tensor '{}' is a malformed parameter", path(), name);
    return tensor_record(name, args[0], r, depth + 1);
  }
  if (!fn->is_global("torch._utils._rebuild_tensor_v2") &&
      !fn->is_global("torch._utils._rebuild_tensor")) {
    if (fn->kind == Kind::Global && fn->s.rfind("torch.", 0) == 0)
      fail(
          "'{}': tensor '{}' is rebuilt by {}, which is not supported "
          "(only plain dense tensors are)",
          path(), name, fn->s);
    return false;
  }
  if (args.size() < 4)
    fail("'{}': tensor '{}' has {} rebuild arguments, expected at least 4", path(), name,
         args.size());
  if (name.size() > kMaxTensorName)
    fail("'{}': a tensor name of {} bytes ('{}...'), over the limit of {}", path(), name.size(),
         name.substr(0, 40), kMaxTensorName);
  r.name = name;
  // args: storage, storage_offset, size, stride[, requires_grad, backward_hooks, metadata]
  const PyObj* st = args[0];
  if (st->kind != Kind::PersId || st->items[0]->kind != Kind::Tuple ||
      st->items[0]->items.size() < 5)
    fail("'{}': tensor '{}' does not refer to a ('storage', type, key, location, numel) record",
         path(), name);
  const std::vector<const PyObj*>& pid = st->items[0]->items;
  if (pid[0]->kind != Kind::Str || pid[0]->s != "storage" || pid[1]->kind != Kind::Global ||
      pid[2]->kind != Kind::Str)
    fail("'{}': tensor '{}' has a malformed storage record", path(), name);
  const std::string& type = pid[1]->s;
  if (type == "torch.FloatStorage")
    r.dtype = DType::F32;
  else if (type == "torch.HalfStorage")
    r.dtype = DType::F16;
  else if (type == "torch.BFloat16Storage")
    r.dtype = DType::BF16;
  else
    fail("'{}': tensor '{}' is stored as {}; only float32, float16 and bfloat16 are supported",
         path(), name, type);
  r.storage_key = pid[2]->s;
  r.storage_numel = int_of(path(), name, pid[4], "storage size");
  r.offset = int_of(path(), name, args[1], "storage offset");
  r.sizes = ints_of(path(), name, args[2], "size");
  r.strides = ints_of(path(), name, args[3], "stride");
  if (r.sizes.size() > 16)
    fail("'{}': tensor '{}' has {} dimensions (at most 16)", path(), name, r.sizes.size());
  return true;
}

HostTensor PthReader::materialize(const TensorRecord& r) {
  const std::string entry_name = prefix_ + "data/" + r.storage_key;
  const ZipEntry* e = zip_.find(entry_name);
  if (!e)
    fail(
        "'{}': tensor '{}' uses storage '{}', but the archive has no record '{}' "
        "(truncated or corrupt?)",
        path(), r.name, r.storage_key, entry_name);
  HostTensor t;
  t.dtype = r.dtype;
  t.shape = r.sizes;
  const uint64_t es = dtype_size(r.dtype);

  // Validate the view against its storage before touching any byte.
  if (r.sizes.size() != r.strides.size())
    fail("'{}': tensor '{}' has {} sizes but {} strides", path(), r.name, r.sizes.size(),
         r.strides.size());
  uint64_t storage_bytes = 0;
  if (r.storage_numel < 0 ||
      __builtin_mul_overflow(uint64_t(r.storage_numel), es, &storage_bytes) ||
      storage_bytes > e->size)
    fail(
        "'{}': tensor '{}': storage '{}' should hold {} elements of {} bytes, "
        "its record has {} bytes",
        path(), r.name, r.storage_key, r.storage_numel, es, e->size);
  if (r.offset < 0) fail("'{}': tensor '{}' has a negative storage offset", path(), r.name);
  uint64_t numel = 1;
  uint64_t last = uint64_t(r.offset);  // the highest element index the view reads
  for (size_t d = 0; d < r.sizes.size(); ++d) {
    if (r.sizes[d] < 0 || r.strides[d] < 0)
      fail("'{}': tensor '{}' has size {} / stride {} in dimension {}", path(), r.name, r.sizes[d],
           r.strides[d], d);
    uint64_t span = 0;
    if (__builtin_mul_overflow(numel, uint64_t(r.sizes[d]), &numel) ||
        (r.sizes[d] > 0 &&
         (__builtin_mul_overflow(uint64_t(r.sizes[d] - 1), uint64_t(r.strides[d]), &span) ||
          __builtin_add_overflow(last, span, &last))))
      fail("'{}': tensor '{}' has an impossibly large shape", path(), r.name);
  }
  // A view with more elements than its storage repeats some (an expanded tensor); weights never
  // do, and refusing them bounds every allocation by the file's size.
  if (numel > uint64_t(r.storage_numel))
    fail("'{}': tensor '{}' has {} elements but its storage '{}' only {} (an expanded view?)",
         path(), r.name, numel, r.storage_key, r.storage_numel);
  if (numel > 0 && last >= uint64_t(r.storage_numel))
    fail("'{}': tensor '{}' (shape {}, offset {}) reads element {} of storage '{}', which has {}",
         path(), r.name, t.shape_str(), r.offset, last, r.storage_key, r.storage_numel);
  if (numel == 0) return t;
  // Views may share a storage (tied weights, slices), but a small archive must not turn into
  // many copies of one storage: the tensors together may hold at most kMaxViewFactor times their
  // storages' bytes, plus kViewSlack.
  const bool verify = verified_.insert(r.storage_key).second;
  if (verify) storage_bytes_ += e->size;
  tensor_bytes_ += numel * es;
  if (tensor_bytes_ > kMaxViewFactor * storage_bytes_ + kViewSlack)
    fail(
        "'{}': the tensors up to '{}' hold {} bytes, more than {} times the {} bytes of the "
        "storages they view (the same storage viewed over and over?)",
        path(), r.name, tensor_bytes_, kMaxViewFactor, storage_bytes_);
  t.data.resize(size_t(numel * es));
  std::span<const uint8_t> src = zip_.contents(*e, scratch_, verify);
  // Contiguous (C order, ignoring unit dimensions) views are one copy; others are gathered.
  bool contiguous = true;
  int64_t expect = 1;
  for (size_t d = r.sizes.size(); d-- > 0;) {
    if (r.sizes[d] != 1 && r.strides[d] != expect) contiguous = false;
    expect *= r.sizes[d];
  }
  const uint8_t* base = src.data() + uint64_t(r.offset) * es;
  if (contiguous) {
    std::memcpy(t.data.data(), base, t.data.size());
  } else {
    const size_t nd = r.sizes.size();
    std::vector<int64_t> idx(nd, 0);
    int64_t at = 0;  // element offset from base of idx
    for (uint64_t o = 0; o < numel; ++o) {
      std::memcpy(&t.data[size_t(o * es)], base + uint64_t(at) * es, es);
      for (size_t d = nd; d-- > 0;) {
        at += r.strides[d];
        if (++idx[d] < r.sizes[d]) break;
        at -= r.strides[d] * r.sizes[d];
        idx[d] = 0;
      }
    }
  }
  if (big_endian_)
    for (size_t i = 0; i < t.data.size(); i += es)
      std::reverse(t.data.begin() + int64_t(i), t.data.begin() + int64_t(i + es));
  if (e->method == 0) file_.release(e->data_offset, e->size);
  return t;
}

Checkpoint PthReader::read() {
  prefix_ = find_prefix();
  big_endian_ = read_big_endian();
  const ZipEntry* pkl = zip_.find(prefix_ + "data.pkl");
  if (pkl->size > kMaxPickleBytes)
    fail("'{}': record '{}' has {} bytes, over the limit of {} for a state dict's pickle", path(),
         pkl->name, pkl->size, kMaxPickleBytes);
  std::vector<uint8_t> pkl_scratch;
  Pickle p = unpickle(zip_.contents(*pkl, pkl_scratch), fmt::format("'{}': {}", path(), pkl->name));

  const PyObj* dict = p.root;
  if (dict->kind != Kind::Dict)
    fail("'{}': data.pkl holds a {}, not a dict of tensors", path(), dict->kind_name());
  std::vector<TensorRecord> records;
  for (int attempt = 0; attempt < 2 && records.empty(); ++attempt) {
    const PyObj* nested = nullptr;
    for (size_t i = 0; i + 1 < dict->items.size(); i += 2) {
      const PyObj* k = dict->items[i];
      if (k->kind != Kind::Str)
        fail("'{}': data.pkl has a {} key, expected tensor names", path(), k->kind_name());
      TensorRecord r;
      if (tensor_record(k->s, dict->items[i + 1], r, 0))
        records.push_back(std::move(r));
      else if ((k->s == "state_dict" || k->s == "model") && dict->items[i + 1]->kind == Kind::Dict)
        nested = dict->items[i + 1];
    }
    if (!records.empty() || !nested) break;
    dict = nested;  // a training checkpoint wrapping the weights: {"state_dict": {...}, ...}
  }
  if (records.empty()) fail("'{}': data.pkl holds no tensors", path());

  Checkpoint ck;
  ck.source = path();
  ck.format = "pth";
  for (const TensorRecord& r : records)
    if (!ck.tensors.emplace(r.name, materialize(r)).second)
      fail("'{}': tensor '{}' appears twice", path(), r.name);
  return ck;
}

}  // namespace

Checkpoint read_pth(const std::string& path) {
  PthReader reader(path);
  return reader.read();
}

Checkpoint read_pth_bytes(std::span<const uint8_t> bytes, const std::string& name) {
  PthReader reader(bytes, name);
  return reader.read();
}

}  // namespace rwkvpp
