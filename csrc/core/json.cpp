#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>

#include "common.h"

namespace pyllama {

struct JsonParser {
  const std::string& s;
  size_t i = 0;
  [[noreturn]] void fail(const char* what) {
    throw ValueError(std::string("invalid JSON at offset ") + std::to_string(i) + ": " + what);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r')) i++;
  }
  bool lit(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s.compare(i, n, w) == 0) {
      i += n;
      return true;
    }
    return false;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += (char)cp;
    else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F)); }
    else { out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F)); }
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    if (s[i] != '"') fail("expected a string");
    i++;
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') break;
      if (c != '\\') { out += c; continue; }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s.compare(i, 2, "\\u") == 0) {
            i += 2;
            uint32_t lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
    return out;
  }
  Json value(int depth) {
    if (depth > 200) fail("nesting too deep");
    ws();
    if (i >= s.size()) fail("unexpected end");
    Json j;
    char c = s[i];
    if (c == '{') {
      i++;
      j.kind_ = Json::Kind::object;
      ws();
      if (i < s.size() && s[i] == '}') { i++; return j; }
      while (true) {
        ws();
        std::string k = string();
        ws();
        if (i >= s.size() || s[i] != ':') fail("expected ':'");
        i++;
        j.o_[k] = value(depth + 1);
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == '}') { i++; break; }
        fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      i++;
      j.kind_ = Json::Kind::array;
      ws();
      if (i < s.size() && s[i] == ']') { i++; return j; }
      while (true) {
        j.a_.push_back(value(depth + 1));
        ws();
        if (i < s.size() && s[i] == ',') { i++; continue; }
        if (i < s.size() && s[i] == ']') { i++; break; }
        fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      j.kind_ = Json::Kind::string;
      j.s_ = string();
    } else if (lit("true")) { j.kind_ = Json::Kind::boolean; j.b_ = true; }
    else if (lit("false")) { j.kind_ = Json::Kind::boolean; j.b_ = false; }
    else if (lit("null")) { j.kind_ = Json::Kind::null; }
    else if (lit("NaN")) { j.kind_ = Json::Kind::number; j.n_ = NAN; }
    else if (lit("Infinity")) { j.kind_ = Json::Kind::number; j.n_ = INFINITY; }
    else {
      const char* start = s.c_str() + i;
      char* end = nullptr;
      double v = std::strtod(start, &end);
      if (end == start) fail("unexpected character");
      i += end - start;
      j.kind_ = Json::Kind::number;
      j.n_ = v;
    }
    return j;
  }
};

Json Json::parse(const std::string& text) {
  JsonParser p{text};
  Json j = p.value(0);
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return j;
}

Json Json::number(double v) { Json j; j.kind_ = Kind::number; j.n_ = v; return j; }
Json Json::str(const std::string& s) { Json j; j.kind_ = Kind::string; j.s_ = s; return j; }
Json Json::boolean(bool b) { Json j; j.kind_ = Kind::boolean; j.b_ = b; return j; }
Json Json::object() { Json j; j.kind_ = Kind::object; return j; }
Json Json::array() { Json j; j.kind_ = Kind::array; return j; }

bool Json::has(const std::string& key) const { return kind_ == Kind::object && o_.count(key); }
const Json& Json::operator[](const std::string& key) const {
  PYLLAMA_CHECK(kind_ == Kind::object, ValueError, "JSON: expected an object when looking up '" << key << "'");
  auto it = o_.find(key);
  PYLLAMA_CHECK(it != o_.end(), ValueError, "JSON: missing key '" << key << "'");
  return it->second;
}
const Json& Json::at(size_t i) const {
  PYLLAMA_CHECK(kind_ == Kind::array && i < a_.size(), ValueError, "JSON: index " << i << " out of range");
  return a_[i];
}
size_t Json::size() const { return kind_ == Kind::array ? a_.size() : kind_ == Kind::object ? o_.size() : 0; }
double Json::as_number() const {
  PYLLAMA_CHECK(kind_ == Kind::number, ValueError, "JSON: expected a number");
  return n_;
}
int64_t Json::as_int() const {
  double v = as_number();
  PYLLAMA_CHECK(v == std::floor(v), ValueError, "JSON: expected an integer, got " << v);
  PYLLAMA_CHECK(v >= -9.2e18 && v <= 9.2e18, ValueError, "JSON: integer " << v << " is out of range");
  return (int64_t)v;
}
bool Json::as_bool() const {
  PYLLAMA_CHECK(kind_ == Kind::boolean, ValueError, "JSON: expected true/false");
  return b_;
}
const std::string& Json::as_string() const {
  PYLLAMA_CHECK(kind_ == Kind::string, ValueError, "JSON: expected a string");
  return s_;
}
const std::map<std::string, Json>& Json::items() const {
  PYLLAMA_CHECK(kind_ == Kind::object, ValueError, "JSON: expected an object");
  return o_;
}
void Json::set(const std::string& key, Json v) { kind_ = Kind::object; o_[key] = std::move(v); }
void Json::push(Json v) { kind_ = Kind::array; a_.push_back(std::move(v)); }

static void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
    else out += (char)c;
  }
  out += '"';
}

static void dump_to(const Json& j, std::string& out) {
  switch (j.kind()) {
    case Json::Kind::null: out += "null"; break;
    case Json::Kind::boolean: out += j.as_bool() ? "true" : "false"; break;
    case Json::Kind::number: {
      double v = j.as_number();
      char buf[32];
      if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%lld", (long long)v);
      else std::snprintf(buf, sizeof buf, "%.9g", v);
      out += buf;
      break;
    }
    case Json::Kind::string: dump_string(out, j.as_string()); break;
    case Json::Kind::array: {
      out += '[';
      for (size_t i = 0; i < j.size(); i++) { if (i) out += ','; dump_to(j.at(i), out); }
      out += ']';
      break;
    }
    case Json::Kind::object: {
      out += '{';
      bool first = true;
      for (const auto& kv : j.items()) {
        if (!first) out += ',';
        first = false;
        dump_string(out, kv.first);
        out += ':';
        dump_to(kv.second, out);
      }
      out += '}';
      break;
    }
  }
}

std::string Json::dump() const {
  std::string out;
  dump_to(*this, out);
  return out;
}

}  // namespace pyllama
