// json.h — a small JSON reader/writer for config.json and safetensors headers.
//
//   pyllama::Json j = pyllama::Json::parse(R"({"hidden_size": 64, "tie": false})");
//   int c = j["hidden_size"].as_int();
//   std::string s = j.dump();
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace pyllama {

class Json {
 public:
  enum class Kind { null, boolean, number, string, array, object };
  Json() = default;
  static Json parse(const std::string& text);  // throws ValueError with the offset of the problem
  static Json number(double v);
  static Json str(const std::string& s);
  static Json boolean(bool b);
  static Json object();
  static Json array();

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool has(const std::string& key) const;
  const Json& operator[](const std::string& key) const;  // throws ValueError when missing
  const Json& at(size_t i) const;
  size_t size() const;
  double as_number() const;
  int64_t as_int() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const std::map<std::string, Json>& items() const;
  void set(const std::string& key, Json v);
  void push(Json v);
  std::string dump() const;

 private:
  Kind kind_ = Kind::null;
  bool b_ = false;
  double n_ = 0;
  std::string s_;
  std::vector<Json> a_;
  std::map<std::string, Json> o_;
  friend struct JsonParser;
};

}  // namespace pyllama
