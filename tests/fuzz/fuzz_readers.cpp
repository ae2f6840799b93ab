// fuzz_readers.cpp — the core's readers of files that native apps get from anywhere, fuzzed
// under AddressSanitizer and UBSan: JSON, a Hugging Face config.json, a safetensors image
// (header and tensor conversion), a .tiktoken vocabulary, a PyTorch .bin (zip archive or
// legacy stream: the restricted unpickler, storage resolution and strided conversion), a Hugging
// Face tokenizer.json and a SentencePiece .model (protobuf; each then encodes and decodes a
// text), and the regex compiler (regex.h: a pattern, then the matches in a text). Any input must
// end in a result
// or one of the core's exception types (a clear error), never a crash, a hang, an
// out-of-bounds read or undefined behaviour.
//
// Two ways to run it:
//   libFuzzer (clang):  clang++ -fsanitize=fuzzer,address,undefined ... (LLVMFuzzerTestOneInput)
//   built-in driver:    fuzz_readers [seconds=30] [seed=1]    (CMake -DPYLLAMA_FUZZ=ON, g++ works;
//                       .ci/run runs it): mutations of valid seeds of every format, for a
//                       time budget, deterministic for a seed.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "hf_config.h"
#include "json.h"
#include "regex.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "tokenizer_hf.h"
#include "torch_bin.h"

using namespace pyllama;

// JSON, config.json, safetensors, .tiktoken, torch .bin, tokenizer.json, SentencePiece .model, regex
static constexpr int kReaders = 8;

// A tokenizer's pipeline on a text that touches every stage (added tokens, bytes, spaces).
static void exercise(const HfTokenizer& t) {
  std::vector<uint32_t> ids = t.encode(" Hello  w\xC3\xB6rld <s>\n\xE4\xB8\xAD\xF0\x9F\x98\x80 x", true);
  std::vector<int64_t> back(ids.begin(), ids.end());
  t.decode(back, false);
  t.decode(back, true);
}

static void run_one(uint8_t kind, const std::string& s) {
  switch (kind % kReaders) {
    case 0:
      Json::parse(s).dump();
      break;
    case 1:
      normalize_hf_config(Json::parse(s));
      llama_config_from_hf(Json::parse(s));
      break;
    case 2: {
      size_t off = 0;
      const auto entries = parse_safetensors_header(s.data(), s.size(), "fuzz", &off);
      for (const auto& e : entries) {
        if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16") continue;
        std::vector<float> dst(e.numel());
        safetensors_to_float32(s.data() + off, e, dst.data(), true, "fuzz");
      }
      break;
    }
    case 3:
      parse_tiktoken(s);
      break;
    case 4: {
      for (const auto& e : parse_torch_bin(s.data(), s.size(), "fuzz")) {
        if ((e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16") || e.numel() > (1u << 16)) continue;
        std::vector<float> dst(e.numel());
        torch_bin_to_float32(s.data(), e, dst.data(), true, "fuzz");
      }
      break;
    }
    case 5:
      exercise(HfTokenizer(s));
      break;
    case 6:
      exercise(HfTokenizer(sentencepiece_to_hf_json(s)));
      break;
    case 7: {  // a regex (the first line), then the text it searches (the rest)
      const size_t nl = s.find('\n');
      const Regex re(s.substr(0, nl));
      const std::string text = nl == std::string::npos ? std::string("a 1\n\xE4\xB8\xAD") : s.substr(nl + 1);
      for (const RegexSpan& sp : regex_spans(re, text))
        if (sp.start > sp.end || sp.end > text.size()) throw std::logic_error("regex span out of the text");
      break;
    }
  }
}

// true: a result or a clear error; false: anything else escaped
static bool check(uint8_t kind, const std::string& s) {
  try {
    run_one(kind, s);
  } catch (const ValueError&) {
  } catch (const TypeError&) {
  } catch (const IndexError&) {
  } catch (const IOError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_readers: reader %d let through %s: %s\n", kind % kReaders, typeid(e).name(), e.what());
    return false;
  }
  return true;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (!check(data[0], std::string(reinterpret_cast<const char*>(data) + 1, size - 1))) std::abort();
  return 0;
}

#ifndef PYLLAMA_LIBFUZZER
namespace {

std::string safetensors_seed() {
  // two float32 tensors and a bf16 one, laid out back to back
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"F16","shape":[2],"data_offsets":[32,36]}})";
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int k = 0; k < 8; k++) out[k] = (char)((n >> (8 * k)) & 0xff);
  out += header;
  for (int i = 0; i < 36; i++) out += (char)(0x3c + i % 3);
  return out;
}

// A zip archive of stored entries, laid out as torch.save writes it (local headers, central
// directory, end record).
std::string zip_stored(const std::vector<std::pair<std::string, std::string>>& entries) {
  auto le = [](std::string& o, uint64_t v, int n) {
    for (int k = 0; k < n; k++) o += (char)((v >> (8 * k)) & 0xff);
  };
  std::string out, cd;
  for (const auto& e : entries) {
    const uint64_t at = out.size();
    le(out, 0x04034b50, 4), le(out, 20, 2), le(out, 0, 2), le(out, 0, 2), le(out, 0, 4), le(out, 0, 4);
    le(out, e.second.size(), 4), le(out, e.second.size(), 4), le(out, e.first.size(), 2), le(out, 0, 2);
    out += e.first + e.second;
    le(cd, 0x02014b50, 4), le(cd, 20, 2), le(cd, 20, 2), le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 4), le(cd, 0, 4);
    le(cd, e.second.size(), 4), le(cd, e.second.size(), 4), le(cd, e.first.size(), 2), le(cd, 0, 2), le(cd, 0, 2);
    le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 4), le(cd, at, 4);
    cd += e.first;
  }
  const uint64_t cd_at = out.size();
  out += cd;
  le(out, 0x06054b50, 4), le(out, 0, 2), le(out, 0, 2), le(out, entries.size(), 2), le(out, entries.size(), 2);
  le(out, cd.size(), 4), le(out, cd_at, 4), le(out, 0, 2);
  return out;
}

std::string torch_bin_seed() {
  // torch.save({"a": arange(6).reshape(2,3).t() (float32, strided), "b": ones(4) (bf16), "c": ones(2) (f16),
  //             "d": a.t()[1:] (a's storage at offset 3)})'s data.pkl
  static const char pkl[] =
      "\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62"
      "\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x0a\x71\x02\x28\x28\x58\x07\x00\x00\x00\x73\x74\x6f\x72\x61\x67\x65\x71"
      "\x03\x63\x74\x6f\x72\x63\x68\x0a\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x04\x58\x01\x00\x00\x00\x30\x71\x05\x58"
      "\x03\x00\x00\x00\x63\x70\x75\x71\x06\x4b\x06\x74\x71\x07\x51\x4b\x00\x4b\x03\x4b\x02\x86\x71\x08\x4b\x01\x4b\x03\x86\x71\x09\x89"
      "\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x0a\x29\x52\x71\x0b\x74"
      "\x71\x0c\x52\x71\x0d\x58\x01\x00\x00\x00\x62\x71\x0e\x68\x02\x28\x28\x68\x03\x63\x74\x6f\x72\x63\x68\x0a\x42\x46\x6c\x6f\x61\x74"
      "\x31\x36\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x0f\x58\x01\x00\x00\x00\x31\x71\x10\x68\x06\x4b\x04\x74\x71\x11\x51\x4b\x00\x4b\x04"
      "\x85\x71\x12\x4b\x01\x85\x71\x13\x89\x68\x0a\x29\x52\x71\x14\x74\x71\x15\x52\x71\x16\x58\x01\x00\x00\x00\x63\x71\x17\x68\x02\x28"
      "\x28\x68\x03\x63\x74\x6f\x72\x63\x68\x0a\x48\x61\x6c\x66\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x18\x58\x01\x00\x00\x00\x32\x71\x19"
      "\x68\x06\x4b\x02\x74\x71\x1a\x51\x4b\x00\x4b\x02\x85\x71\x1b\x4b\x01\x85\x71\x1c\x89\x68\x0a\x29\x52\x71\x1d\x74\x71\x1e\x52\x71"
      "\x1f\x58\x01\x00\x00\x00\x64\x71\x20\x68\x02\x28\x28\x68\x03\x68\x04\x68\x05\x68\x06\x4b\x06\x74\x71\x21\x51\x4b\x03\x4b\x01\x4b"
      "\x03\x86\x71\x22\x4b\x03\x4b\x01\x86\x71\x23\x89\x68\x0a\x29\x52\x71\x24\x74\x71\x25\x52\x71\x26\x75\x2e";
  std::string floats;
  for (int i = 0; i < 6; i++) {
    const float f = (float)i;
    floats.append(reinterpret_cast<const char*>(&f), 4);
  }
  return zip_stored({{"seed/data.pkl", std::string(pkl, sizeof pkl - 1)},
                     {"seed/byteorder", "little"},
                     {"seed/data/0", floats},
                     {"seed/data/1", std::string("\x80\x3f\x80\x3f\x80\x3f\x80\x3f", 8)},
                     {"seed/data/2", std::string("\x00\x3c\x00\x3c", 4)},
                     {"seed/version", "3\n"}});
}

std::string torch_bin_legacy_seed() {
  // torch.save({"a": ..., "b": ...}, f, _use_new_zipfile_serialization=False)
  static const char bytes[] =
      "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e\x80\x02\x4d\xe9\x03\x2e\x80\x02\x7d\x71\x00\x28\x58\x10\x00\x00\x00"
      "\x70\x72\x6f\x74\x6f\x63\x6f\x6c\x5f\x76\x65\x72\x73\x69\x6f\x6e\x71\x01\x4d\xe9\x03\x58\x0d\x00\x00\x00\x6c\x69\x74\x74\x6c\x65"
      "\x5f\x65\x6e\x64\x69\x61\x6e\x71\x02\x88\x58\x0a\x00\x00\x00\x74\x79\x70\x65\x5f\x73\x69\x7a\x65\x73\x71\x03\x7d\x71\x04\x28\x58"
      "\x05\x00\x00\x00\x73\x68\x6f\x72\x74\x71\x05\x4b\x02\x58\x03\x00\x00\x00\x69\x6e\x74\x71\x06\x4b\x04\x58\x04\x00\x00\x00\x6c\x6f"
      "\x6e\x67\x71\x07\x4b\x04\x75\x75\x2e\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75"
      "\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x0a\x71\x02\x28\x28\x58\x07\x00\x00"
      "\x00\x73\x74\x6f\x72\x61\x67\x65\x71\x03\x63\x74\x6f\x72\x63\x68\x0a\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x04"
      "\x58\x0e\x00\x00\x00\x39\x34\x36\x33\x30\x33\x39\x30\x31\x38\x34\x30\x31\x36\x71\x05\x58\x03\x00\x00\x00\x63\x70\x75\x71\x06\x4b"
      "\x06\x4e\x74\x71\x07\x51\x4b\x00\x4b\x03\x4b\x02\x86\x71\x08\x4b\x01\x4b\x03\x86\x71\x09\x89\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69"
      "\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x0a\x29\x52\x71\x0b\x74\x71\x0c\x52\x71\x0d\x58\x01\x00\x00"
      "\x00\x62\x71\x0e\x68\x02\x28\x28\x68\x03\x63\x74\x6f\x72\x63\x68\x0a\x42\x46\x6c\x6f\x61\x74\x31\x36\x53\x74\x6f\x72\x61\x67\x65"
      "\x0a\x71\x0f\x58\x0e\x00\x00\x00\x39\x34\x36\x33\x30\x33\x30\x34\x33\x35\x30\x39\x39\x32\x71\x10\x68\x06\x4b\x04\x4e\x74\x71\x11"
      "\x51\x4b\x00\x4b\x04\x85\x71\x12\x4b\x01\x85\x71\x13\x89\x68\x0a\x29\x52\x71\x14\x74\x71\x15\x52\x71\x16\x75\x2e\x80\x02\x5d\x71"
      "\x00\x28\x58\x0e\x00\x00\x00\x39\x34\x36\x33\x30\x33\x30\x34\x33\x35\x30\x39\x39\x32\x71\x01\x58\x0e\x00\x00\x00\x39\x34\x36\x33"
      "\x30\x33\x39\x30\x31\x38\x34\x30\x31\x36\x71\x02\x65\x2e\x04\x00\x00\x00\x00\x00\x00\x00\x80\x3f\x80\x3f\x80\x3f\x80\x3f\x06\x00"
      "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40\x00\x00\xa0\x40";
  return std::string(bytes, sizeof bytes - 1);
}

// A SentencePiece ModelProto written field by field: six pieces, BPE, byte fallback off.
std::string sentencepiece_seed() {
  auto varint = [](std::string& o, uint64_t v) {
    do {
      uint8_t b = v & 0x7F;
      v >>= 7;
      o += (char)(b | (v ? 0x80 : 0));
    } while (v);
  };
  auto field = [&](std::string& o, int num, const std::string& body) {
    varint(o, (uint64_t)num << 3 | 2);
    varint(o, body.size());
    o += body;
  };
  std::string out;
  const char* pieces[] = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "\xE2\x96\x81" "a", "b"};
  for (int i = 0; i < 7; i++) {
    std::string p;
    field(p, 1, pieces[i]);
    float score = -(float)i;
    p += (char)(2 << 3 | 5);
    p.append(reinterpret_cast<const char*>(&score), 4);
    p += (char)(3 << 3);
    varint(p, i == 0 ? 2 : i < 3 ? 3 : 1);
    field(out, 1, p);
  }
  std::string trainer;
  trainer += (char)(3 << 3);
  varint(trainer, 2);  // BPE
  field(out, 2, trainer);
  std::string norm;
  field(norm, 1, "identity");
  field(out, 3, norm);
  return out;
}

std::vector<std::pair<uint8_t, std::string>> seeds() {
  return {
      {0, R"({"a": [1, 2.5e-3, -7, true, null, "x\u00e9\n"], "b": {"c": {}}})"},
      {1, R"({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
              "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "head_dim": 8,
              "tie_word_embeddings": true, "hidden_act": "silu", "model_type": "llama"})"},
      {1, R"({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
              "num_attention_heads": 4, "rope_theta": 10000, "rope_scaling": {"type": "linear", "factor": 2}})"},
      {2, safetensors_seed()},
      {3, "IQ== 0\nIg== 1\nIw== 2\naGVsbG8= 3\nIHdvcmxk 4\n"},
      {4, torch_bin_seed()},
      {4, torch_bin_legacy_seed()},
      {5, R"({"added_tokens": [{"id": 5, "content": "<s>", "special": true, "normalized": false, "lstrip": false,
              "rstrip": true, "single_word": false}], "normalizer": {"type": "Sequence", "normalizers": [
              {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "},
              "content": "\u2581"}]}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits",
              "individual_digits": true}, {"type": "Split", "pattern": {"String": "x"}, "behavior": "MergedWithNext",
              "invert": false}]}, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken":
              {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>":
              {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}}, "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
              {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}, "model": {"type": "BPE",
              "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true, "vocab": {"<unk>": 0, "\u2581": 1,
              "a": 2, "\u2581a": 3, "<0x41>": 4}, "merges": ["\u2581 a"]}})"},
      {5, R"({"added_tokens": [], "normalizer": {"type": "Strip", "strip_left": true, "strip_right": true},
              "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true},
              "decoder": {"type": "ByteLevel"}, "post_processor": {"type": "ByteLevel"}, "model": {"type": "BPE",
              "ignore_merges": true, "vocab": {"\u0120": 0, "H": 1, "e": 2, "He": 3}, "merges": [["H", "e"]]}})"},
      {5, R"({"pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece", "prefix": "##"},
              "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 2]},
              "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "[SEP]": 1, "[CLS]": 2,
              "he": 3, "##llo": 4}}})"},
      {5, R"({"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first"},
              "decoder": {"type": "Metaspace"}, "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": false,
              "vocab": [["<unk>", 0], ["\u2581", -1.5], ["H", -2], ["ello", -3], ["\u2581Hello", -4]]}})"},
      {5, R"({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "BAAAAAAAAABhAA=="},
              "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0, "a": 1}}})"},
      {6, sentencepiece_seed()},
      {5, R"J({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"Regex": "\\s{2,}"},
              "content": " "}, {"type": "Replace", "pattern": {"Regex": "(?<=\\p{Ll})(?=\\p{Lu})"}, "content": "_"}]},
              "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex":
              "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false}, {"type": "Split", "pattern": {"Regex":
              "(?i:'s|'t)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s+(?!\\S)|\\s+"},
              "behavior": "MergedWithNext", "invert": true}]}, "decoder": {"type": "Replace", "pattern": {"Regex":
              "_+"}, "content": " "}, "model": {"type": "WordLevel", "unk_token": "u", "vocab": {"u": 0, "a": 1}}})J"},
      {7, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
          "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+\nHello world's 12  \n\n x \xE4\xB8\xAD\xF0\x9F\x98\x80"},
      {7, "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
          " ?[\\p{P}\\p{S}]+[\r\n]*\n.Net (x) 12 \xE4\xB8\xAD\xE6\x96\x87"},
      {7, "(?<=a+|\\b)(?>b*+c)?[^(\\s|[.,])&&\\P{Lu}]{1,3}?(?=\\z|$)|(?m:.)\\R\\x{41}\\u00e9{2}\na bc, ABc\r\n"},
  };
}

std::string mutate(std::string s, std::mt19937_64& rng, const std::vector<std::pair<uint8_t, std::string>>& pool) {
  static const char* tokens[] = {"{", "}", "[", "]", ",", ":", "\"", "\\u", "\\ud800", "-", "1e999", "-0",
                                 "18446744073709551616", "9223372036854775807", "NaN", "null", "true", "==",
                                 "\n", " ", "\xff", "\xc3", "F32", "BF16", "I8", "data_offsets", "shape",
                                 "(", ")", "(?:", "(?<=", "(?!", "(?i)", "[^", "&&", "*", "+?", "{2,}", "|", "\\p{L}",
                                 "\\", "$", "^", "\\b"};
  const int n = 1 + (int)(rng() % 4);
  for (int i = 0; i < n; i++) {
    const size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (!s.empty()) s[at % s.size()] ^= (char)(1u << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!s.empty()) s[at % s.size()] = (char)(rng() & 0xff);
        break;
      case 2:  // delete a run
        if (!s.empty()) s.erase(at % s.size(), 1 + rng() % 8);
        break;
      case 3:  // insert a token
        s.insert(at, tokens[rng() % (sizeof(tokens) / sizeof(tokens[0]))]);
        break;
      case 4:  // duplicate a run
        if (!s.empty()) {
          const size_t from = rng() % s.size();
          s.insert(at, s.substr(from, 1 + rng() % 16));
        }
        break;
      case 5:  // splice with another seed
        s = s.substr(0, at) + pool[rng() % pool.size()].second.substr(rng() % 16);
        break;
      case 7: {  // replace a whole number with an edge value (sizes, offsets, ids)
        static const char* edges[] = {"1e999", "-1e999", "-1", "0", "1e300", "2.5", "4294967296", "2147483648",
                                      "18446744073709551616", "-9223372036854775809", "9.3e18", "65536"};
        for (size_t k = 0; k < s.size(); k++) {
          const size_t j = (at + k) % s.size();
          if ((s[j] >= '0' && s[j] <= '9') && (j == 0 || !(s[j - 1] >= '0' && s[j - 1] <= '9'))) {
            size_t e = j;
            while (e < s.size() && ((s[e] >= '0' && s[e] <= '9') || s[e] == '.' || s[e] == 'e')) e++;
            s.replace(j, e - j, edges[rng() % (sizeof(edges) / sizeof(edges[0]))]);
            break;
          }
        }
        break;
      }
      case 6:  // change a digit (sizes, offsets, lengths)
        for (size_t k = 0; k < s.size(); k++) {
          const size_t j = (at + k) % s.size();
          if (s[j] >= '0' && s[j] <= '9') {
            s[j] = (char)('0' + rng() % 10);
            break;
          }
        }
        break;
    }
  }
  if (s.size() > (1u << 16)) s.resize(1u << 16);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 30.0;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  std::mt19937_64 rng(seed);
  auto pool = seeds();
  for (const auto& s : pool) {
    if (!check(s.first, s.second)) return 1;
    if (s.first != 4) continue;
    try {  // the .bin seeds must parse, so their mutations start from valid archives

      run_one(s.first, s.second);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz_readers: seed of reader %d is refused: %s\n", s.first % kReaders, e.what());
      return 1;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  long long runs = 0, accepted = 0;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    for (int i = 0; i < 256; i++) {
      const auto& base = pool[rng() % pool.size()];
      const uint8_t kind = (rng() % 8 == 0) ? (uint8_t)(rng() % kReaders) : base.first;  // sometimes the wrong reader
      std::string input = mutate(base.second, rng, pool);
      bool ok = true;
      try {
        run_one(kind, input);
      } catch (const ValueError&) {
        ok = false;
      } catch (const TypeError&) {
        ok = false;
      } catch (const IndexError&) {
        ok = false;
      } catch (const IOError&) {
        ok = false;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz_readers: reader %d let through %s: %s\n", kind % kReaders, typeid(e).name(), e.what());
        std::fprintf(stderr, "input (%zu bytes) follows\n", input.size());
        std::fwrite(input.data(), 1, input.size(), stderr);
        return 1;
      }
      runs++;
      if (ok) {  // valid inputs grow the pool, so mutations go deeper
        accepted++;
        if (pool.size() < 512) pool.push_back({kind, input});
      }
    }
  }
  std::printf("fuzz_readers: %lld inputs in %.0f s (seed %llu): %lld parsed, the rest refused with clear errors; "
              "no crash, no sanitizer report\n",
              runs, seconds, (unsigned long long)seed, accepted);
  return 0;
}
#endif
