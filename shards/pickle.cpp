// The pickle virtual machine for checkpoint files (see pickle.h). Opcode values and operand
// layouts follow CPython's Lib/pickletools.py descriptions.
#include "shards/pickle.h"

#include <charconv>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "common/error.h"

namespace rwkvpp {

const char* PyObj::kind_name() const {
  switch (kind) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::Str:
      return "str";
    case Kind::Bytes:
      return "bytes";
    case Kind::Tuple:
      return "tuple";
    case Kind::List:
      return "list";
    case Kind::Dict:
      return "dict";
    case Kind::Global:
      return "global";
    case Kind::PersId:
      return "persistent id";
    case Kind::Reduce:
      return "object";
  }
  return "?";
}

namespace {

// Enough for any real checkpoint (a 14B RWKV's data.pkl has ~30k objects), small enough that
// a hostile pickle cannot make us allocate without bound: objects, stack entries (DUP and GET
// push without making objects), marks and memo entries.
constexpr size_t kMaxObjects = size_t(1) << 22;
constexpr size_t kMaxStack = size_t(1) << 20;
constexpr size_t kMaxMemo = size_t(1) << 20;

// The only globals a state dict of dense tensors names (what torch.load(weights_only=True)
// needs for one): the rebuild functions, the storage types (the .pth reader names the dtypes it
// does not take) and OrderedDict. Everything else is refused where it is named.
constexpr std::string_view kCallables[] = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
};
constexpr std::string_view kStorages[] = {
    "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage",
    "torch.LongStorage",  "torch.IntStorage",  "torch.ShortStorage",    "torch.CharStorage",
    "torch.ByteStorage",  "torch.BoolStorage",
};

template <size_t N>
bool listed(const std::string_view (&list)[N], std::string_view name) {
  for (std::string_view s : list)
    if (s == name) return true;
  return false;
}

class Machine {
 public:
  Machine(std::span<const uint8_t> b, const std::string& what) : b_(b), what_(what) {}

  Pickle run();

 private:
  using Kind = PyObj::Kind;

  [[noreturn]] void bad(const std::string& msg) const {
    fail("{}: {} (pickle opcode at byte {}); corrupt or unsupported pickle", what_, msg, op_pos_);
  }
  const uint8_t* take(uint64_t n) {
    if (n > b_.size() - pos_)
      bad(fmt::format("truncated: needs {} more bytes, {} left", n, b_.size() - pos_));
    const uint8_t* p = b_.data() + pos_;
    pos_ += size_t(n);
    return p;
  }
  uint64_t uint_le(int n) {
    const uint8_t* p = take(uint64_t(n));
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
  std::string line() {  // text operand up to '\n' (protocol 0 opcodes)
    const uint8_t* start = b_.data() + pos_;
    const void* nl = std::memchr(start, '\n', b_.size() - pos_);
    if (!nl) bad("truncated: unterminated text operand");
    size_t n = size_t(static_cast<const uint8_t*>(nl) - start);
    pos_ += n + 1;
    return std::string(reinterpret_cast<const char*>(start), n);
  }
  std::string chars(uint64_t n) {
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), size_t(n));
  }

  PyObj* make(Kind k) {
    if (arena_.size() >= kMaxObjects) bad("too many objects");
    arena_.emplace_back();
    arena_.back().kind = k;
    return &arena_.back();
  }
  PyObj* make_bool(bool v) {
    PyObj* o = make(Kind::Bool);
    o->i = v;
    return o;
  }
  PyObj* make_int(int64_t v) {
    PyObj* o = make(Kind::Int);
    o->i = v;
    return o;
  }
  PyObj* make_str(Kind k, std::string s) {
    PyObj* o = make(k);
    o->s = std::move(s);
    return o;
  }

  void push(const PyObj* o) {
    if (stack_.size() >= kMaxStack)
      bad(fmt::format("more than {} objects on the stack", kMaxStack));
    stack_.push_back(o);
  }
  const PyObj* pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    const PyObj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  const PyObj* top() const {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  // The objects above the topmost MARK, removed from the stack with the MARK.
  std::vector<const PyObj*> pop_mark() {
    if (marks_.empty()) bad("no MARK on the stack");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<const PyObj*> v(stack_.begin() + int64_t(m), stack_.end());
    stack_.resize(m);
    return v;
  }
  // The container under construction: objects on the stack are immutable to everyone else,
  // but APPEND/SETITEM mutate the list/dict they were created as; the arena owns them all.
  PyObj* mutable_top(Kind k, const char* op) {
    const PyObj* t = top();
    if (t->kind != k) bad(fmt::format("{} on a {}", op, t->kind_name()));
    return const_cast<PyObj*>(t);
  }
  void tuple_of(std::vector<const PyObj*> v) {
    PyObj* t = make(Kind::Tuple);
    t->items = std::move(v);
    push(t);
  }
  void memo_put(uint64_t idx) {
    if (memo_.size() >= kMaxMemo && !memo_.count(idx))
      bad(fmt::format("more than {} memo entries", kMaxMemo));
    memo_[idx] = top();
  }
  // GLOBAL and STACK_GLOBAL: only the names of kCallables and kStorages exist here.
  void global(std::string name) {
    if (!listed(kCallables, name) && !listed(kStorages, name))
      bad(fmt::format(
          "refusing global '{}': a checkpoint may name only torch's tensor rebuild functions, "
          "its storage types and collections.OrderedDict (anything else could run code when "
          "Python loads the file; rwkvpp executes nothing)",
          name.substr(0, 200)));
    push(make_str(Kind::Global, std::move(name)));
  }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) bad(fmt::format("memo entry {} is not set", idx));
    push(it->second);
  }
  void reduce() {
    const PyObj* args = pop();
    const PyObj* callable = pop();
    if (args->kind != Kind::Tuple) bad(fmt::format("REDUCE with {} arguments", args->kind_name()));
    if (callable->kind != Kind::Global || !listed(kCallables, callable->s))
      bad(
          fmt::format("refusing to call a {}{}{}: only torch's tensor rebuild functions and "
                      "collections.OrderedDict may be called",
                      callable->kind_name(), callable->kind == Kind::Global ? " " : "",
                      callable->kind == Kind::Global ? callable->s : ""));
    if (callable->is_global("collections.OrderedDict") && args->items.empty()) {
      push(make(Kind::Dict));
      return;
    }
    PyObj* o = make(Kind::Reduce);
    o->items = {callable, args, nullptr};
    push(o);
  }
  void step(uint8_t op);

  std::span<const uint8_t> b_;
  const std::string& what_;
  size_t pos_ = 0, op_pos_ = 0;
  std::deque<PyObj> arena_;
  std::vector<const PyObj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, const PyObj*> memo_;
  bool done_ = false;
};

// Opcodes, named as in CPython's pickletools.
// clang-format off
enum Op : uint8_t {
  kProto = 0x80, kFrame = 0x95, kStop = '.', kMark = '(', kPop = '0', kPopMark = '1', kDup = '2',
  kNone = 'N', kNewTrue = 0x88, kNewFalse = 0x89, kBinInt = 'J', kBinInt1 = 'K', kBinInt2 = 'M',
  kLong1 = 0x8a, kLong4 = 0x8b, kInt = 'I', kBinFloat = 'G', kBinUnicode = 'X',
  kShortBinUnicode = 0x8c, kBinUnicode8 = 0x8d, kShortBinString = 'U', kBinString = 'T',
  kShortBinBytes = 'C', kBinBytes = 'B', kBinBytes8 = 0x8e, kEmptyTuple = ')', kTuple = 't',
  kTuple1 = 0x85, kTuple2 = 0x86, kTuple3 = 0x87, kEmptyList = ']', kList = 'l', kEmptyDict = '}',
  kDict = 'd', kAppend = 'a', kAppends = 'e', kSetItem = 's', kSetItems = 'u', kGlobal = 'c',
  kStackGlobal = 0x93, kBinPut = 'q', kLongBinPut = 'r', kMemoize = 0x94, kBinGet = 'h',
  kLongBinGet = 'j', kBinPersId = 'Q', kReduce = 'R', kNewObj = 0x81, kBuild = 'b',
};
// clang-format on

void Machine::step(uint8_t op) {
  switch (op) {
    case kProto:
      if (uint64_t v = uint_le(1); v > 5) bad(fmt::format("pickle protocol {} is newer than 5", v));
      break;
    case kFrame:  // a read-ahead hint only
      take(8);
      break;
    case kStop:
      done_ = true;
      break;
    case kMark:
      if (marks_.size() >= kMaxStack) bad(fmt::format("more than {} MARKs", kMaxStack));
      marks_.push_back(stack_.size());
      break;
    case kPop:
      pop();
      break;
    case kPopMark:
      pop_mark();
      break;
    case kDup:
      push(top());
      break;
    case kNone:
      push(make(Kind::None));
      break;
    case kNewTrue:
    case kNewFalse:
      push(make_bool(op == kNewTrue));
      break;
    case kBinInt:
      push(make_int(int32_t(uint32_t(uint_le(4)))));
      break;
    case kBinInt1:
      push(make_int(int64_t(uint_le(1))));
      break;
    case kBinInt2:
      push(make_int(int64_t(uint_le(2))));
      break;
    case kLong1:
    case kLong4: {  // little-endian two's complement of n bytes
      uint64_t n = uint_le(op == kLong1 ? 1 : 4);
      if (n > 8) bad(fmt::format("integer of {} bytes does not fit 64 bits", n));
      const uint8_t* p = take(n);
      uint64_t v = 0;
      for (uint64_t i = n; i-- > 0;) v = (v << 8) | p[i];
      if (n > 0 && n < 8 && (p[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
      push(make_int(int64_t(v)));
      break;
    }
    case kInt: {  // protocol 0: decimal text, "00"/"01" for False/True
      std::string t = line();
      if (t == "00" || t == "01") {
        push(make_bool(t == "01"));
        break;
      }
      int64_t v = 0;
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (ec != std::errc() || end != t.data() + t.size()) bad("malformed INT operand");
      push(make_int(v));
      break;
    }
    case kBinFloat: {  // big-endian double
      const uint8_t* p = take(8);
      uint64_t u = 0;
      for (int i = 0; i < 8; ++i) u = (u << 8) | p[i];
      PyObj* o = make(Kind::Float);
      std::memcpy(&o->f, &u, 8);
      push(o);
      break;
    }
    case kBinUnicode:
    case kShortBinUnicode:
    case kBinUnicode8:
    case kShortBinString:
    case kBinString:
    case kShortBinBytes:
    case kBinBytes:
    case kBinBytes8: {  // a length of 1, 4 or 8 bytes, then the bytes
      int len_bytes = 4;
      if (op == kShortBinUnicode || op == kShortBinString || op == kShortBinBytes) len_bytes = 1;
      if (op == kBinUnicode8 || op == kBinBytes8) len_bytes = 8;
      const bool bytes = op == kShortBinBytes || op == kBinBytes || op == kBinBytes8;
      push(make_str(bytes ? Kind::Bytes : Kind::Str, chars(uint_le(len_bytes))));
      break;
    }
    case kEmptyTuple:
      tuple_of({});
      break;
    case kTuple:
      tuple_of(pop_mark());
      break;
    case kTuple1:
    case kTuple2:
    case kTuple3: {
      size_t n = size_t(op - kTuple1 + 1);
      std::vector<const PyObj*> v(n);
      for (size_t i = n; i-- > 0;) v[i] = pop();
      tuple_of(std::move(v));
      break;
    }
    case kEmptyList:
      push(make(Kind::List));
      break;
    case kEmptyDict:
      push(make(Kind::Dict));
      break;
    case kList:
    case kDict: {
      auto v = pop_mark();
      if (op == kDict && v.size() % 2) bad("DICT with an odd number of items");
      PyObj* o = make(op == kList ? Kind::List : Kind::Dict);
      o->items = std::move(v);
      push(o);
      break;
    }
    case kAppend: {
      const PyObj* v = pop();
      mutable_top(Kind::List, "APPEND")->items.push_back(v);
      break;
    }
    case kAppends: {
      auto v = pop_mark();
      auto& items = mutable_top(Kind::List, "APPENDS")->items;
      items.insert(items.end(), v.begin(), v.end());
      break;
    }
    case kSetItem: {
      const PyObj* v = pop();
      const PyObj* k = pop();
      auto& items = mutable_top(Kind::Dict, "SETITEM")->items;
      items.push_back(k);
      items.push_back(v);
      break;
    }
    case kSetItems: {
      auto v = pop_mark();
      if (v.size() % 2) bad("SETITEMS with an odd number of items");
      auto& items = mutable_top(Kind::Dict, "SETITEMS")->items;
      items.insert(items.end(), v.begin(), v.end());
      break;
    }
    case kGlobal: {  // "module\nname\n"
      std::string module = line();
      std::string name = line();
      global(module + "." + name);
      break;
    }
    case kStackGlobal: {
      const PyObj* name = pop();
      const PyObj* module = pop();
      if (name->kind != Kind::Str || module->kind != Kind::Str)
        bad("STACK_GLOBAL needs two strings");
      global(module->s + "." + name->s);
      break;
    }
    case kBinPut:
      memo_put(uint_le(1));
      break;
    case kLongBinPut:
      memo_put(uint_le(4));
      break;
    case kMemoize:
      memo_put(memo_.size());
      break;
    case kBinGet:
      memo_get(uint_le(1));
      break;
    case kLongBinGet:
      memo_get(uint_le(4));
      break;
    case kBinPersId: {
      PyObj* o = make(Kind::PersId);
      o->items = {pop()};
      push(o);
      break;
    }
    case kReduce:  // callable(*args)
    case kNewObj:  // cls.__new__(cls, *args): the same record for us
      reduce();
      break;
    case kBuild: {  // obj.__setstate__(state): kept on Reduce records, ignored otherwise
      const PyObj* state = pop();
      const PyObj* obj = top();
      if (obj->kind == Kind::Reduce) const_cast<PyObj*>(obj)->items[2] = state;
      break;
    }
    default:
      bad(fmt::format("unknown pickle opcode 0x{:02x}", op));
  }
}

Pickle Machine::run() {
  while (!done_) {
    op_pos_ = pos_;
    if (pos_ >= b_.size()) bad("truncated: no STOP opcode");
    step(b_[pos_++]);
  }
  if (stack_.empty()) bad("STOP with an empty stack");
  // Move-constructing a deque hands over its blocks: the pointers between objects stay valid.
  return Pickle{std::move(arena_), stack_.back()};
}

}  // namespace

bool pickle_global_allowed(std::string_view name) {
  return listed(kCallables, name) || listed(kStorages, name);
}
bool pickle_callable_allowed(std::string_view name) { return listed(kCallables, name); }

Pickle unpickle(std::span<const uint8_t> bytes, const std::string& what) {
  Machine m(bytes, what);
  return m.run();
}

}  // namespace rwkvpp
