// A pickle reader for the subset of Python's pickle protocol (0-5 opcodes, as emitted by
// protocol 2, torch.save's default) that checkpoints use: ints, floats, strings, bytes,
// tuples, lists, dicts, None/True/False, GLOBAL and STACK_GLOBAL, REDUCE/NEWOBJ, BUILD,
// BINPERSID and the memo. Nothing is executed: a GLOBAL becomes a name, REDUCE records the
// call (callable, args) for the caller to interpret (collections.OrderedDict() becomes an
// empty dict so that SETITEMS can fill it), and a persistent id is kept as-is.
//
// Hostile pickles: a GLOBAL (or STACK_GLOBAL) may name only torch's tensor rebuild functions
// (torch._utils._rebuild_tensor[_v2], _rebuild_parameter[_with_state]), torch's storage types
// and collections.OrderedDict, and REDUCE/NEWOBJ may call only the functions among them; any
// other name (os.system, builtins.eval, ...) is refused with an Error naming it, at the opcode
// that names it. The objects, stack, marks and memo are bounded.
//
// Objects live in an arena owned by the result and refer to each other by pointer, so
// cyclic or deeply nested input cannot overflow the stack on destruction.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace rwkvpp {

struct PyObj {
  // clang-format off
  enum class Kind : uint8_t {
    None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, PersId, Reduce
  };
  // clang-format on
  Kind kind = Kind::None;
  int64_t i = 0;  // Bool, Int
  double f = 0;   // Float
  std::string s;  // Str, Bytes; Global: "module.name"
  // Tuple, List: the elements; Dict: key0, value0, key1, value1, ... in insertion order;
  // PersId: {pid}; Reduce: {callable, args, state from BUILD or nullptr}.
  std::vector<const PyObj*> items;

  bool is_global(const char* name) const { return kind == Kind::Global && s == name; }
  const char* kind_name() const;
};

struct Pickle {
  std::deque<PyObj> arena;  // owns every object
  const PyObj* root = nullptr;
};

// Whether the machine lets a GLOBAL name `name` (callables: whether REDUCE may call it).
bool pickle_global_allowed(std::string_view name);
bool pickle_callable_allowed(std::string_view name);

// Runs the pickle program in `bytes`. Throws Error with a message starting with `what`
// (e.g. "'model.pth': data.pkl") for an unknown opcode, truncated input, a stack underflow
// or any other malformed program.
Pickle unpickle(std::span<const uint8_t> bytes, const std::string& what);

}  // namespace rwkvpp
