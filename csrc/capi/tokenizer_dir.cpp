// tokenizer_dir.cpp — see tokenizer_dir.h.
#include "tokenizer_dir.h"

#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "common.h"
#include "json.h"

namespace pyllama {

static bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
static bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
static std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  PYLLAMA_CHECK(f, IOError, "cannot open '" << p << "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::unique_ptr<HfTokenizer> load_hf_tokenizer(const std::string& path) {
  std::string json, model;
  if (is_dir(path)) {
    if (exists(path + "/tokenizer.tiktoken")) return nullptr;  // pyllama's own files win
    if (exists(path + "/tokenizer.json"))
      json = path + "/tokenizer.json";
    else if (exists(path + "/tokenizer.model"))
      model = path + "/tokenizer.model";
    else
      return nullptr;
  } else if (ends_with(path, ".json") && !ends_with(path, ".tiktoken.json")) {
    json = path;
  } else if (ends_with(path, ".model")) {
    model = path;
  } else {
    return nullptr;
  }
  const std::string& file = json.empty() ? model : json;
  try {
    if (!json.empty()) return std::make_unique<HfTokenizer>(read_all(json));
    return std::make_unique<HfTokenizer>(sentencepiece_to_hf_json(read_all(model)));
  } catch (const ValueError& e) {
    throw ValueError("'" + file + "': " + e.what());
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::string file = path;
  if (is_dir(path)) {
    file = path + "/tokenizer.tiktoken";
    if (!exists(file)) {
      throw IOError("no tokenizer in '" + path + "': expected tokenizer.tiktoken and tokenizer.tiktoken.json "
                    "(what pyllama.Tokenizer.save(dir) and the Trainer's checkpoints write), a Hugging Face "
                    "tokenizer.json or a SentencePiece tokenizer.model");
    }
  }
  PYLLAMA_CHECK(exists(file), IOError, "no tokenizer file at '" << file << "'");
  const std::string meta_path = file + ".json";
  PYLLAMA_CHECK(exists(meta_path), IOError,
                "'" << meta_path << "' (the pattern and special tokens of '" << file
                << "') is missing; pyllama.Tokenizer.save writes both files");
  Json meta;
  try {
    meta = Json::parse(read_all(meta_path));
  } catch (const ValueError& e) {
    throw ValueError("'" + meta_path + "' is not valid JSON: " + e.what());
  }
  PYLLAMA_CHECK(meta.kind() == Json::Kind::object && meta.has("format") &&
                    meta["format"].kind() == Json::Kind::string,
                ValueError, "'" << meta_path << "' is not a pyllama tokenizer file (no \"format\")");
  PYLLAMA_CHECK(meta.has("pattern") && meta["pattern"].kind() == Json::Kind::string, ValueError,
                "'" << meta_path << "' has no \"pattern\" string");
  const std::string pattern = meta["pattern"].as_string();
  PYLLAMA_CHECK(is_pattern_name(pattern), ValueError,
                "'" << meta_path << "': the native tokenizer runs the preset pre-tokenizers (gpt2, cl100k, llama3, "
                "o200k); this tokenizer uses a custom regular expression, which only the Python package runs");
  std::vector<SpecialToken> specials;
  if (meta.has("special_tokens") && !meta["special_tokens"].is_null()) {
    const Json& st = meta["special_tokens"];
    PYLLAMA_CHECK(st.kind() == Json::Kind::object, ValueError,
                  "'" << meta_path << "': \"special_tokens\" must be an object of text -> id");
    for (const auto& kv : st.items()) {
      PYLLAMA_CHECK(kv.second.kind() == Json::Kind::number, ValueError,
                    "'" << meta_path << "': special token '" << kv.first << "' needs an integer id");
      int64_t id = kv.second.as_int();
      PYLLAMA_CHECK(id >= 0 && id <= 0x7FFFFFFF, ValueError,
                    "'" << meta_path << "': special token '" << kv.first << "' has id " << id << ", out of range");
      specials.push_back({kv.first, static_cast<uint32_t>(id)});
    }
  }
  std::vector<std::string> ranks;
  try {
    ranks = parse_tiktoken(read_all(file));
  } catch (const ValueError& e) {
    throw ValueError("'" + file + "': " + e.what());
  }
  return std::make_unique<Tokenizer>(std::move(ranks), pattern_from_name(pattern), std::move(specials));
}

}  // namespace pyllama
