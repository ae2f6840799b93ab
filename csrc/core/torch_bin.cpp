#include "torch_bin.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <unordered_map>

#include "common.h"
#include "safetensors.h"  // f16_to_float, WeightMatcher
#include "tensor.h"       // bf16_to_float

namespace pyllama {

namespace {

// ------------------------------------------------------------------ little helpers

uint64_t rd_le(const char* p, int n) {
  uint64_t v = 0;
  for (int k = n - 1; k >= 0; k--) v = (v << 8) | (unsigned char)p[k];
  return v;
}

struct DTypeInfo {
  const char* torch_name;  // torch.<name> (dtype) — first spelling
  const char* alias;       // second spelling or nullptr
  const char* storage;     // torch.<storage> storage type or nullptr
  const char* st;          // safetensors spelling
  size_t bytes;
};

const DTypeInfo kDTypes[] = {
    {"float32", "float", "FloatStorage", "F32", 4},        {"float16", "half", "HalfStorage", "F16", 2},
    {"bfloat16", nullptr, "BFloat16Storage", "BF16", 2},   {"float64", "double", "DoubleStorage", "F64", 8},
    {"int64", "long", "LongStorage", "I64", 8},            {"int32", "int", "IntStorage", "I32", 4},
    {"int16", "short", "ShortStorage", "I16", 2},          {"int8", nullptr, "CharStorage", "I8", 1},
    {"uint8", nullptr, "ByteStorage", "U8", 1},            {"bool", nullptr, "BoolStorage", "BOOL", 1},
    {"complex64", "cfloat", "ComplexFloatStorage", "C64", 8},
    {"complex128", "cdouble", "ComplexDoubleStorage", "C128", 16},
    {"float8_e4m3fn", nullptr, nullptr, "F8_E4M3", 1},      {"float8_e5m2", nullptr, nullptr, "F8_E5M2", 1},
};

const DTypeInfo* dtype_by_st(const std::string& st) {
  for (const auto& d : kDTypes)
    if (st == d.st) return &d;
  return nullptr;
}

// ------------------------------------------------------------------ zip (stored entries, zip64)

struct ZipEntry {
  std::string name;
  uint64_t begin = 0, size = 0;  // the stored bytes in the image
  uint16_t method = 0, flags = 0;
};

std::vector<ZipEntry> read_zip(const char* b, size_t size, const std::string& what) {
  const std::string bad = "'" + what + "': a corrupt or truncated zip archive (";
  PYLLAMA_CHECK(size >= 22, ValueError, bad << "no end-of-directory record)");
  size_t eocd = size;  // the end-of-central-directory record: searched back over a comment
  for (size_t p = size - 22 + 1; p-- > 0 && size - p <= 22 + 65535;)
    if (rd_le(b + p, 4) == 0x06054b50) {
      eocd = p;
      break;
    }
  PYLLAMA_CHECK(eocd < size, ValueError, bad << "no end-of-directory record)");
  uint64_t count = rd_le(b + eocd + 10, 2), cd_size = rd_le(b + eocd + 12, 4), cd_off = rd_le(b + eocd + 16, 4);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {  // zip64
    PYLLAMA_CHECK(eocd >= 20 && rd_le(b + eocd - 20, 4) == 0x07064b50, ValueError, bad << "no zip64 locator)");
    const uint64_t z = rd_le(b + eocd - 20 + 8, 8);
    PYLLAMA_CHECK(z <= size && size - z >= 56 && rd_le(b + z, 4) == 0x06064b50, ValueError,
                  bad << "bad zip64 end-of-directory record)");
    count = rd_le(b + z + 32, 8);
    cd_size = rd_le(b + z + 40, 8);
    cd_off = rd_le(b + z + 48, 8);
  }
  PYLLAMA_CHECK(cd_off <= size && cd_size <= size - cd_off && count <= cd_size / 46, ValueError,
                bad << "the central directory lies outside the file)");
  std::vector<ZipEntry> out;
  uint64_t p = cd_off;
  const uint64_t end = cd_off + cd_size;
  for (uint64_t i = 0; i < count; i++) {
    PYLLAMA_CHECK(end - p >= 46 && rd_le(b + p, 4) == 0x02014b50, ValueError, bad << "bad directory entry " << i << ")");
    ZipEntry e;
    e.flags = (uint16_t)rd_le(b + p + 8, 2);
    e.method = (uint16_t)rd_le(b + p + 10, 2);
    uint64_t csize = rd_le(b + p + 20, 4), usize = rd_le(b + p + 24, 4), local = rd_le(b + p + 42, 4);
    const uint64_t nlen = rd_le(b + p + 28, 2), xlen = rd_le(b + p + 30, 2), clen = rd_le(b + p + 32, 2);
    PYLLAMA_CHECK(end - p - 46 >= nlen + xlen + clen, ValueError, bad << "directory entry " << i << " is cut)");
    e.name.assign(b + p + 46, (size_t)nlen);
    // zip64 extended information: the 8-byte values of the fields saturated above, in order
    for (uint64_t x = p + 46 + nlen, xend = x + xlen; xend - x >= 4;) {
      const uint64_t id = rd_le(b + x, 2), len = rd_le(b + x + 2, 2);
      PYLLAMA_CHECK(xend - x - 4 >= len, ValueError, bad << "directory entry '" << e.name << "' has a cut extra field)");
      if (id == 1) {
        uint64_t q = x + 4;
        for (uint64_t* f : {&usize, &csize, &local})
          if (*f == 0xffffffffu) {
            PYLLAMA_CHECK(x + 4 + len - q >= 8, ValueError, bad << "short zip64 field in '" << e.name << "')");
            *f = rd_le(b + q, 8);
            q += 8;
          }
      }
      x += 4 + len;
    }
    PYLLAMA_CHECK(local <= size && size - local >= 30 && rd_le(b + local, 4) == 0x04034b50, ValueError,
                  bad << "entry '" << e.name << "' has no local header)");
    const uint64_t data = local + 30 + rd_le(b + local + 26, 2) + rd_le(b + local + 28, 2);
    PYLLAMA_CHECK(data <= size && csize <= size - data, ValueError,
                  bad << "entry '" << e.name << "' runs past the end of the file)");
    e.begin = data;
    e.size = e.method == 0 ? csize : usize;
    if (e.method == 0)
      PYLLAMA_CHECK(csize == usize, ValueError, bad << "stored entry '" << e.name << "' has two sizes)");
    out.push_back(std::move(e));
    p += 46 + nlen + xlen + clen;
  }
  return out;
}

// ------------------------------------------------------------------ the pickle machine

// A value of the restricted pickle machine. Objects live in the machine's arena (cycles are harmless).
struct PObj {
  enum class K { none, boolean, integer, bigint, real, str, bytes, tuple, list, dict, callable, storage_type, dtype,
                 storage, tensor };
  K k = K::none;
  int64_t i = 0;
  double f = 0;
  std::string s;               // str / bytes / bigint (raw little-endian) / callable name / dtype (st spelling)
  std::vector<PObj*> items;    // tuple, list; dict: key, value, key, value, ...
  std::unordered_map<std::string, size_t> keys;  // dict: str key -> index of the key in items
  // storage: s = key, dtype = the storage type's st spelling, i = declared element count
  std::string dtype;
  // tensor
  std::vector<int64_t> shape, stride;
  int64_t offset = 0;
  PObj* storage = nullptr;
};

const char* kind_name(PObj::K k) {
  switch (k) {
    case PObj::K::none: return "None";
    case PObj::K::boolean: return "bool";
    case PObj::K::integer: case PObj::K::bigint: return "int";
    case PObj::K::real: return "float";
    case PObj::K::str: return "str";
    case PObj::K::bytes: return "bytes";
    case PObj::K::tuple: return "tuple";
    case PObj::K::list: return "list";
    case PObj::K::dict: return "dict";
    case PObj::K::callable: return "function";
    case PObj::K::storage_type: return "storage type";
    case PObj::K::dtype: return "dtype";
    case PObj::K::storage: return "storage";
    case PObj::K::tensor: return "tensor";
  }
  return "?";
}

const char* opcode_name(unsigned char op) {
  switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: case 0x83: case 0x84: return "EXT";
    case 'P': return "PERSID";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

class Unpickler {
 public:
  Unpickler(const char* b, size_t size, const std::string& what) : b_(b), size_(size), what_(what) {}

  // Runs one pickle from `pos` to its STOP; returns the result and moves pos past it.
  PObj* run(size_t& pos) {
    stack_.clear();
    marks_.clear();
    memo_.clear();
    p_ = pos;
    for (;;) {
      const unsigned char op = (unsigned char)take(1)[0];
      if (op == '.') break;
      step(op);
    }
    if (stack_.empty()) fail_corrupt("it ends with an empty stack");
    pos = p_;
    return stack_.back();
  }

 private:
  const char* b_;
  size_t size_, p_ = 0;
  std::string what_;
  std::vector<std::unique_ptr<PObj>> arena_;
  std::vector<PObj*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PObj*> memo_;

  [[noreturn]] void fail(const std::string& m) const { throw ValueError("'" + what_ + "': " + m); }
  [[noreturn]] void fail_corrupt(const std::string& m) const {
    fail("not a valid PyTorch checkpoint pickle (" + m + "): a truncated or corrupt file");
  }

  const char* take(uint64_t n) {
    if (n > size_ - p_) fail_corrupt("it ends in the middle of an opcode");
    const char* r = b_ + p_;
    p_ += (size_t)n;
    return r;
  }
  PObj* make(PObj::K k) {
    arena_.emplace_back(new PObj());
    arena_.back()->k = k;
    return arena_.back().get();
  }
  PObj* pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail_corrupt("stack underflow");
    PObj* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  PObj* top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail_corrupt("stack underflow");
    return stack_.back();
  }
  std::vector<PObj*> pop_mark() {
    if (marks_.empty()) fail_corrupt("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PObj*> out(stack_.begin() + (std::ptrdiff_t)m, stack_.end());
    stack_.resize(m);
    return out;
  }
  void push(PObj* o) { stack_.push_back(o); }
  void push_str(PObj::K k, uint64_t n) {
    const char* s = take(n);
    PObj* o = make(k);
    o->s.assign(s, (size_t)n);
    push(o);
  }
  void push_int(int64_t v) {
    PObj* o = make(PObj::K::integer);
    o->i = v;
    push(o);
  }
  void push_long(uint64_t n) {
    const char* s = take(n);
    if (n <= 8) {
      uint64_t v = n ? rd_le(s, (int)n) : 0;
      if (n && n < 8 && ((unsigned char)s[n - 1] & 0x80)) v |= ~uint64_t(0) << (8 * n);  // sign-extend
      push_int((int64_t)v);
    } else {
      PObj* o = make(PObj::K::bigint);
      o->s.assign(s, (size_t)n);
      push(o);
    }
  }
  void memo_put(uint64_t k) { memo_[k] = top(); }
  void memo_get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) fail_corrupt("memo key " + std::to_string(k) + " read before it is written");
    push(it->second);
  }
  void dict_set(PObj* d, PObj* k, PObj* v) {
    if (d->k != PObj::K::dict) fail(std::string("the pickle sets items on a ") + kind_name(d->k) + ", not a dict");
    if (k->k == PObj::K::str) {
      auto it = d->keys.find(k->s);
      if (it != d->keys.end()) {
        d->items[it->second + 1] = v;
        return;
      }
      d->keys[k->s] = d->items.size();
    }
    d->items.push_back(k);
    d->items.push_back(v);
  }
  void list_add(PObj* l, PObj* v) {
    if (l->k != PObj::K::list) fail(std::string("the pickle appends to a ") + kind_name(l->k) + ", not a list");
    l->items.push_back(v);
  }

  // GLOBAL / STACK_GLOBAL: only the names a state dict uses; anything else refused before it could run.
  void global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    PObj* o = nullptr;
    if (full == "collections.OrderedDict" || full == "torch._utils._rebuild_tensor" ||
        full == "torch._utils._rebuild_tensor_v2" || full == "torch._utils._rebuild_tensor_v3" ||
        full == "torch._utils._rebuild_parameter" || full == "torch._utils._rebuild_parameter_with_state") {
      o = make(PObj::K::callable);
      o->s = full;
    } else if (module == "torch") {
      if (name == "UntypedStorage") {
        o = make(PObj::K::storage_type);
        o->s = "U8";
      }
      for (const auto& d : kDTypes) {
        if (o) break;
        if (d.storage && name == d.storage) {
          o = make(PObj::K::storage_type);
          o->s = d.st;
        } else if (name == d.torch_name || (d.alias && name == d.alias)) {
          o = make(PObj::K::dtype);
          o->s = d.st;
        }
      }
    }
    if (!o)
      fail("the pickle names '" + full + "', which a PyTorch state dict never uses; pyllama refuses it rather "
           "than run it (torch.load(weights_only=False) would call it: the file may be malicious). A state dict "
           "may only use torch._utils._rebuild_tensor*/_rebuild_parameter*, torch storage types and dtypes, and "
           "collections.OrderedDict; if you trust the file, convert it to safetensors");
    push(o);
  }

  int64_t as_int(PObj* o, const char* what) {
    if (o->k == PObj::K::boolean || o->k == PObj::K::integer) return o->i;
    fail(std::string(what) + " must be an int, got a " + kind_name(o->k));
  }
  std::vector<int64_t> as_ints(PObj* o, const char* what) {
    if (o->k != PObj::K::tuple && o->k != PObj::K::list)
      fail(std::string(what) + " must be a tuple of ints, got a " + kind_name(o->k));
    if (o->items.size() > 8) fail(std::string(what) + " has " + std::to_string(o->items.size()) + " dimensions (at most 8)");
    std::vector<int64_t> v;
    for (PObj* x : o->items) v.push_back(as_int(x, what));
    return v;
  }

  PObj* rebuild_tensor(const std::vector<PObj*>& a, const std::string& fn) {
    PObj* st = a[0];
    if (st->k != PObj::K::storage) fail(fn + "'s first argument must be a storage, got a " + kind_name(st->k));
    PObj* t = make(PObj::K::tensor);
    t->storage = st;
    t->dtype = st->dtype;
    t->offset = as_int(a[1], "a tensor's storage offset");
    t->shape = as_ints(a[2], "a tensor's size");
    t->stride = as_ints(a[3], "a tensor's stride");
    if (fn == "torch._utils._rebuild_tensor_v3") {
      if (a[6]->k != PObj::K::dtype) fail(fn + "'s dtype argument is a " + kind_name(a[6]->k) + ", not a torch dtype");
      t->dtype = a[6]->s;
    }
    if (t->shape.size() != t->stride.size())
      fail("a tensor has " + std::to_string(t->shape.size()) + " sizes but " + std::to_string(t->stride.size()) +
           " strides");
    return t;
  }

  PObj* call(PObj* fn, PObj* args) {
    if (fn->k != PObj::K::callable)
      fail(std::string("the pickle calls a ") + kind_name(fn->k) + "; only tensor rebuilds and OrderedDict are allowed");
    if (args->k != PObj::K::tuple) fail("the arguments of " + fn->s + " must be a tuple");
    const auto& a = args->items;
    const std::string& f = fn->s;
    auto need = [&](size_t lo, size_t hi) {
      if (a.size() < lo || a.size() > hi)
        fail(f + " takes " + std::to_string(lo) + (lo == hi ? "" : "-" + std::to_string(hi)) + " arguments, got " +
             std::to_string(a.size()));
    };
    if (f == "collections.OrderedDict") {
      need(0, 0);
      return make(PObj::K::dict);
    }
    if (f == "torch._utils._rebuild_tensor") {
      need(4, 4);
      return rebuild_tensor(a, f);
    }
    if (f == "torch._utils._rebuild_tensor_v2") {
      need(6, 7);
      return rebuild_tensor(a, f);
    }
    if (f == "torch._utils._rebuild_tensor_v3") {
      need(7, 8);
      return rebuild_tensor(a, f);
    }
    // _rebuild_parameter(data, requires_grad, hooks) / _with_state(..., state): the tensor itself
    need(f == "torch._utils._rebuild_parameter" ? 3 : 4, f == "torch._utils._rebuild_parameter" ? 3 : 4);
    if (a[0]->k != PObj::K::tensor) fail(f + "'s first argument must be a tensor, got a " + kind_name(a[0]->k));
    return a[0];
  }

  PObj* persistent_load(PObj* pid) {
    if (pid->k != PObj::K::tuple || pid->items.size() < 5 || pid->items[0]->k != PObj::K::str ||
        pid->items[0]->s != "storage")
      fail("a persistent id must be ('storage', storage_type, key, location, numel); this pickle is not a torch.save "
           "state dict");
    const auto& a = pid->items;
    if (a[1]->k != PObj::K::storage_type) fail(std::string("a storage's type is a ") + kind_name(a[1]->k));
    if (a[2]->k != PObj::K::str) fail("a storage key must be a string");
    if (a.size() > 6 || (a.size() == 6 && a[5]->k != PObj::K::none))
      fail("storage views (the pre-0.4 torch.save layout) are not supported: re-save the checkpoint with a newer torch");
    PObj* s = make(PObj::K::storage);
    s->s = a[2]->s;
    s->dtype = a[1]->s;
    s->i = as_int(a[4], "a storage's element count");
    if (s->i < 0) fail("a storage has a negative element count");
    return s;
  }

  void step(unsigned char op) {
    switch (op) {
      case 0x80: {  // PROTO
        const int v = (unsigned char)take(1)[0];
        if (v > 5) fail("pickle protocol " + std::to_string(v) + " is newer than any torch.save writes");
        break;
      }
      case 0x95: take(8); break;  // FRAME: a length hint
      case '(': marks_.push_back(stack_.size()); break;
      case '0': pop(); break;
      case '1': pop_mark(); break;
      case '2': push(top()); break;
      case 'N': push(make(PObj::K::none)); break;
      case 0x88: case 0x89: {
        PObj* o = make(PObj::K::boolean);
        o->i = op == 0x88;
        push(o);
        break;
      }
      case 'J': push_int((int32_t)(uint32_t)rd_le(take(4), 4)); break;
      case 'K': push_int((unsigned char)take(1)[0]); break;
      case 'M': push_int((int64_t)rd_le(take(2), 2)); break;
      case 0x8a: push_long((unsigned char)take(1)[0]); break;
      case 0x8b: push_long(rd_le(take(4), 4)); break;
      case 'G': {
        const char* s = take(8);
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) v = (v << 8) | (unsigned char)s[k];  // big-endian
        PObj* o = make(PObj::K::real);
        std::memcpy(&o->f, &v, 8);
        push(o);
        break;
      }
      case 'X': push_str(PObj::K::str, rd_le(take(4), 4)); break;
      case 0x8c: push_str(PObj::K::str, (unsigned char)take(1)[0]); break;
      case 0x8d: push_str(PObj::K::str, rd_le(take(8), 8)); break;
      case 'T': push_str(PObj::K::str, rd_le(take(4), 4)); break;
      case 'U': push_str(PObj::K::str, (unsigned char)take(1)[0]); break;
      case 'B': push_str(PObj::K::bytes, rd_le(take(4), 4)); break;
      case 'C': push_str(PObj::K::bytes, (unsigned char)take(1)[0]); break;
      case 0x8e: push_str(PObj::K::bytes, rd_le(take(8), 8)); break;
      case ')': push(make(PObj::K::tuple)); break;
      case 't': case 0x85: case 0x86: case 0x87: {
        PObj* o = make(PObj::K::tuple);
        if (op == 't') {
          o->items = pop_mark();
        } else {
          const int n = op - 0x84;
          o->items.resize(n);
          for (int k = n - 1; k >= 0; k--) o->items[k] = pop();
        }
        push(o);
        break;
      }
      case ']': push(make(PObj::K::list)); break;
      case 'l': {
        PObj* o = make(PObj::K::list);
        o->items = pop_mark();
        push(o);
        break;
      }
      case 'a': {
        PObj* v = pop();
        list_add(top(), v);
        break;
      }
      case 'e': {
        auto xs = pop_mark();
        PObj* l = top();
        for (PObj* x : xs) list_add(l, x);
        break;
      }
      case '}': push(make(PObj::K::dict)); break;
      case 'd': case 'u': {
        auto xs = pop_mark();
        if (xs.size() % 2) fail_corrupt("an odd number of dict items");
        PObj* d = op == 'd' ? make(PObj::K::dict) : top();
        for (size_t k = 0; k < xs.size(); k += 2) dict_set(d, xs[k], xs[k + 1]);
        if (op == 'd') push(d);
        break;
      }
      case 's': {
        PObj* v = pop();
        PObj* k = pop();
        dict_set(top(), k, v);
        break;
      }
      case 'q': memo_put((unsigned char)take(1)[0]); break;
      case 'r': memo_put(rd_le(take(4), 4)); break;
      case 0x94: memo_put(memo_.size()); break;
      case 'h': memo_get((unsigned char)take(1)[0]); break;
      case 'j': memo_get(rd_le(take(4), 4)); break;
      case 'c': {
        auto line = [&]() {
          const size_t start = p_;
          while (p_ < size_ && b_[p_] != '\n' && p_ - start < 256) p_++;
          if (p_ >= size_ || b_[p_] != '\n') fail_corrupt("a GLOBAL name is not terminated");
          std::string s(b_ + start, p_ - start);
          p_++;
          return s;
        };
        const std::string module = line();
        const std::string name = line();
        global(module, name);
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PObj* name = pop();
        PObj* module = pop();
        if (module->k != PObj::K::str || name->k != PObj::K::str) fail_corrupt("STACK_GLOBAL needs two strings");
        global(module->s, name->s);
        break;
      }
      case 'R': {
        PObj* args = pop();
        PObj* fn = pop();
        push(call(fn, args));
        break;
      }
      case 'b': {  // BUILD: an OrderedDict's attributes (state_dict()._metadata): kept out
        pop();
        PObj* o = top();
        if (o->k != PObj::K::dict && o->k != PObj::K::tensor)
          fail(std::string("the pickle sets the state of a ") + kind_name(o->k) + "; a state dict never does");
        break;
      }
      case 'Q': push(persistent_load(pop())); break;
      default: {
        std::ostringstream m;
        m << "the pickle uses opcode 0x" << std::hex << (int)op << std::dec << " (" << opcode_name(op)
          << "), which torch.save never writes; pyllama refuses it rather than guess";
        fail(m.str());
      }
    }
  }
};

// A tensor of the pickle and the storage it reads, before the storage bytes are located.
struct PendingTensor {
  std::string name;
  const PObj* t;
};

std::vector<PendingTensor> state_dict_tensors(const PObj* root, const std::string& what) {
  PYLLAMA_CHECK(root->k == PObj::K::dict, ValueError,
                "'" << what << "': the checkpoint holds a " << kind_name(root->k)
                    << ", not a state dict (a dict of tensor names to tensors)");
  std::vector<PendingTensor> out;
  for (size_t k = 0; k < root->items.size(); k += 2) {
    const PObj* key = root->items[k];
    const PObj* v = root->items[k + 1];
    PYLLAMA_CHECK(key->k == PObj::K::str, ValueError,
                  "'" << what << "': the state dict has a " << kind_name(key->k) << " key; tensor names are strings");
    PYLLAMA_CHECK(v->k == PObj::K::tensor, ValueError,
                  "'" << what << "': state dict entry '" << key->s << "' is a " << kind_name(v->k)
                      << ", not a tensor (is this a training checkpoint rather than model weights?)");
    out.push_back({key->s, v});
  }
  return out;
}

// The located bytes of each storage key: [begin, begin + nbytes).
struct StorageBytes {
  uint64_t begin = 0, nbytes = 0;
};

TorchBinEntry resolve(const PendingTensor& p, const std::map<std::string, StorageBytes>& storages,
                      const std::string& what) {
  const PObj* t = p.t;
  const PObj* st = t->storage;
  const std::string at = "'" + what + "', tensor '" + p.name + "'";
  auto it = storages.find(st->s);
  PYLLAMA_CHECK(it != storages.end(), ValueError, at << ": its storage '" << st->s << "' is not in the file");
  const DTypeInfo* sd = dtype_by_st(st->dtype);
  const DTypeInfo* td = dtype_by_st(t->dtype);
  PYLLAMA_CHECK(sd && td, ValueError, at << ": unknown storage dtype");
  PYLLAMA_CHECK((uint64_t)st->i <= it->second.nbytes / sd->bytes, ValueError,
                at << ": its storage declares " << st->i << " elements but the file holds " << it->second.nbytes
                   << " bytes: a truncated or corrupt file");
  TorchBinEntry e;
  e.name = p.name;
  e.dtype = t->dtype;
  e.shape = t->shape;
  e.stride = t->stride;
  e.storage_begin = it->second.begin;
  e.storage_numel = it->second.nbytes / td->bytes;
  PYLLAMA_CHECK(t->offset >= 0 && (uint64_t)t->offset <= e.storage_numel, ValueError,
                at << ": storage offset " << t->offset << " lies outside its storage (" << e.storage_numel
                   << " elements)");
  e.offset = (uint64_t)t->offset;
  unsigned __int128 numel = 1, last = e.offset;
  for (size_t d = 0; d < e.shape.size(); d++) {
    PYLLAMA_CHECK(e.shape[d] >= 0 && e.stride[d] >= 0, ValueError,
                  at << ": negative size or stride (" << e.shape[d] << ", " << e.stride[d] << ")");
    numel *= (uint64_t)e.shape[d];
    if (numel > ((unsigned __int128)1 << 48)) numel = (unsigned __int128)1 << 49;  // saturate
    if (e.shape[d] > 0) last += (unsigned __int128)(uint64_t)(e.shape[d] - 1) * (uint64_t)e.stride[d];
  }
  PYLLAMA_CHECK(numel <= ((unsigned __int128)1 << 48), ValueError, at << ": its shape holds too many elements");
  PYLLAMA_CHECK(numel == 0 || last < e.storage_numel, ValueError,
                at << ": its size and stride reach past its storage (" << e.storage_numel
                   << " elements): a truncated or corrupt file");
  return e;
}

std::vector<TorchBinEntry> parse_zip_bin(const char* b, size_t size, const std::string& what) {
  const auto zip = read_zip(b, size, what);
  std::string prefix;
  const ZipEntry* pkl = nullptr;
  for (const auto& e : zip) {
    const size_t slash = e.name.find('/');
    if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      PYLLAMA_CHECK(!pkl, ValueError, "'" << what << "': the zip archive holds two data.pkl records");
      pkl = &e;
      prefix = e.name.substr(0, slash + 1);
    }
  }
  PYLLAMA_CHECK(pkl, ValueError,
                "'" << what << "' is a zip archive without <name>/data.pkl: not a torch.save checkpoint");
  auto stored = [&](const ZipEntry& e) {
    PYLLAMA_CHECK(!(e.flags & 1), ValueError, "'" << what << "': zip entry '" << e.name << "' is encrypted");
    PYLLAMA_CHECK(e.method == 0, ValueError,
                  "'" << what << "': zip entry '" << e.name << "' is compressed (zip method " << e.method
                      << "); torch.save stores entries uncompressed: re-save the checkpoint with torch.save, or "
                         "unzip and re-zip it without compression (zip -0)");
  };
  std::map<std::string, StorageBytes> storages;
  std::map<std::string, const ZipEntry*> storage_entries;
  for (const auto& e : zip) {
    if (e.name == prefix + "byteorder") {
      stored(e);
      const std::string order(b + e.begin, (size_t)e.size);
      PYLLAMA_CHECK(order == "little", ValueError,
                    "'" << what << "': byteorder is '" << order.substr(0, 16)
                        << "'; pyllama reads little-endian checkpoints only (re-save it on a little-endian machine)");
    } else if (e.name.compare(0, prefix.size() + 5, prefix + "data/") == 0 && e.name.size() > prefix.size() + 5) {
      storages[e.name.substr(prefix.size() + 5)] = {e.begin, e.size};
      storage_entries[e.name.substr(prefix.size() + 5)] = &e;
    }
  }
  stored(*pkl);
  Unpickler vm(b + pkl->begin, (size_t)pkl->size, what);
  size_t pos = 0;
  const PObj* root = vm.run(pos);
  std::vector<TorchBinEntry> out;
  for (const auto& p : state_dict_tensors(root, what)) {
    auto it = storage_entries.find(p.t->storage->s);  // what a tensor reads must be stored, not compressed
    if (it != storage_entries.end()) stored(*it->second);
    out.push_back(resolve(p, storages, what));
  }
  return out;
}

// The legacy stream (torch.save(..., _use_new_zipfile_serialization=False)): pickled magic number,
// protocol version, sys_info, the object, the storage keys; then per key: int64 element count, bytes.
std::vector<TorchBinEntry> parse_legacy_bin(const char* b, size_t size, const std::string& what) {
  Unpickler vm(b, size, what);
  size_t pos = 0;
  const PObj* magic = vm.run(pos);
  static const unsigned char kMagic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
  PYLLAMA_CHECK(magic->k == PObj::K::bigint && magic->s == std::string((const char*)kMagic, sizeof kMagic), ValueError,
                "'" << what << "' is a pickle without torch.save's magic number: not a PyTorch checkpoint "
                                "(pyllama reads torch.save files only)");
  const PObj* version = vm.run(pos);
  PYLLAMA_CHECK(version->k == PObj::K::integer && version->i == 1001, ValueError,
                "'" << what << "': unsupported torch.save protocol version");
  const PObj* sys = vm.run(pos);
  PYLLAMA_CHECK(sys->k == PObj::K::dict, ValueError, "'" << what << "': sys_info must be a dict");
  auto le = sys->keys.find("little_endian");
  PYLLAMA_CHECK(le != sys->keys.end() && sys->items[le->second + 1]->k == PObj::K::boolean &&
                    sys->items[le->second + 1]->i == 1,
                ValueError, "'" << what << "': a big-endian checkpoint; pyllama reads little-endian checkpoints only");
  const PObj* root = vm.run(pos);
  const auto pending = state_dict_tensors(root, what);
  const PObj* keys = vm.run(pos);
  PYLLAMA_CHECK(keys->k == PObj::K::list, ValueError, "'" << what << "': the storage key list is missing");
  std::map<std::string, size_t> elsize;  // key -> bytes per element of the storage's type
  for (const auto& p : pending) {
    const DTypeInfo* d = dtype_by_st(p.t->storage->dtype);
    if (d) elsize[p.t->storage->s] = d->bytes;
  }
  std::map<std::string, StorageBytes> storages;
  for (const PObj* k : keys->items) {
    PYLLAMA_CHECK(k->k == PObj::K::str, ValueError, "'" << what << "': a storage key is not a string");
    auto it = elsize.find(k->s);
    PYLLAMA_CHECK(it != elsize.end(), ValueError,
                  "'" << what << "': storage '" << k->s << "' is listed but no tensor uses it");
    PYLLAMA_CHECK(size - pos >= 8, ValueError, "'" << what << "': storage '" << k->s << "' is cut: a truncated file");
    const uint64_t n = rd_le(b + pos, 8);
    pos += 8;
    PYLLAMA_CHECK(n <= (size - pos) / it->second, ValueError,
                  "'" << what << "': storage '" << k->s << "' (" << n << " elements) runs past the end of the file: "
                      << "a truncated file");
    storages[k->s] = {pos, n * it->second};
    pos += (size_t)(n * it->second);
  }
  std::vector<TorchBinEntry> out;
  for (const auto& p : pending) out.push_back(resolve(p, storages, what));
  return out;
}

}  // namespace

size_t TorchBinEntry::numel() const {
  size_t n = 1;
  for (int64_t s : shape) n *= (size_t)s;
  return n;
}

std::vector<TorchBinEntry> parse_torch_bin(const char* b, size_t size, const std::string& what) {
  if (size >= 4 && std::memcmp(b, "PK", 2) == 0) return parse_zip_bin(b, size, what);
  if (size >= 2 && (unsigned char)b[0] == 0x80) return parse_legacy_bin(b, size, what);
  PYLLAMA_CHECK(!(size > 262 && std::memcmp(b + 257, "ustar", 5) == 0), ValueError,
                "'" << what << "' is a tar-format torch checkpoint (torch < 0.4), which pyllama does not read: "
                                "re-save it with a newer torch");
  throw ValueError("'" + what + "' is neither a zip archive nor a pickle stream: not a PyTorch checkpoint (" +
                   std::to_string(size) + " bytes)");
}

void torch_bin_to_float32(const char* b, const TorchBinEntry& e, float* dst, bool check_finite, const std::string& what) {
  const bool f32 = e.dtype == "F32", f16 = e.dtype == "F16", bf16 = e.dtype == "BF16";
  if (!f32 && !f16 && !bf16)
    throw ValueError("'" + what + "', tensor '" + e.name + "' has dtype " + e.dtype +
                     ": pyllama loads float32, float16 and bfloat16 weights; integer, bool, float64 and "
                     "8-bit tensors are refused rather than cast (convert the checkpoint's floats)");
  const size_t n = e.numel(), el = f32 ? 4 : 2;
  const char* base = b + e.storage_begin;
  auto put = [&](size_t i, uint64_t idx) {
    const char* s = base + idx * el;
    if (f32) {
      std::memcpy(dst + i, s, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, s, 2);
      dst[i] = bf16 ? bf16_to_float(h) : f16_to_float(h);
    }
  };
  // row-major contiguous (dimensions of size 1 may carry any stride): one run
  bool contiguous = true;
  int64_t want = 1;
  for (size_t d = e.shape.size(); d-- > 0;) {
    if (e.shape[d] != 1 && e.stride[d] != want) contiguous = false;
    want *= e.shape[d];
  }
  if (n == 0) return;
  if (contiguous) {
    if (f32) std::memcpy(dst, base + e.offset * 4, n * 4);
    else for (size_t i = 0; i < n; i++) put(i, e.offset + i);
  } else {  // an odometer over the dimensions
    const size_t nd = e.shape.size();
    std::vector<int64_t> idx(nd, 0);
    uint64_t at = e.offset;
    for (size_t i = 0; i < n; i++) {
      put(i, at);
      for (size_t d = nd; d-- > 0;) {
        if (++idx[d] < e.shape[d]) {
          at += (uint64_t)e.stride[d];
          break;
        }
        at -= (uint64_t)e.stride[d] * (uint64_t)(e.shape[d] - 1);
        idx[d] = 0;
      }
    }
  }
  if (check_finite)
    for (size_t i = 0; i < n; i++)
      PYLLAMA_CHECK(std::isfinite(dst[i]), ValueError,
                    "'" << what << "', tensor '" << e.name << "' holds " << dst[i] << " at element " << i
                        << ": the weights are not finite (a corrupt or diverged checkpoint)");
}

TorchBinFile::TorchBinFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PYLLAMA_CHECK(fd >= 0, IOError, "cannot open '" << path << "': " << std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IOError("'" + path + "' is not a regular file");
  }
  size_ = (size_t)st.st_size;
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    PYLLAMA_CHECK(p != MAP_FAILED, IOError, "cannot map '" << path << "': " << std::strerror(errno));
    base_ = static_cast<const char*>(p);
  } else {
    ::close(fd);
  }
  try {
    entries_ = parse_torch_bin(base_ ? base_ : "", size_, path);
  } catch (...) {
    if (base_) ::munmap(const_cast<char*>(base_), size_);
    throw;
  }
  for (size_t i = 0; i < entries_.size(); i++) index_[entries_[i].name] = i;
}

TorchBinFile::~TorchBinFile() {
  if (base_) ::munmap(const_cast<char*>(base_), size_);
}

const TorchBinEntry* TorchBinFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void TorchBinFile::read_float32(const TorchBinEntry& e, float* dst, bool check_finite) const {
  torch_bin_to_float32(base_, e, dst, check_finite, path_);
}

void load_torch_bin_weights(const std::vector<std::string>& files, const std::vector<ParamInfo>& infos, bool tied,
                            float* dst, bool check_finite) {
  WeightMatcher match(infos, tied);
  for (const auto& path : files) {
    TorchBinFile f(path);
    for (const auto& e : f.entries())
      if (const ParamInfo* p = match.take(e.name, e.shape, path)) f.read_float32(e, dst + p->offset, check_finite);
  }
  match.finish();
}

}  // namespace pyllama
