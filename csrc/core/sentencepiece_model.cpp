// sentencepiece_model.cpp — a SentencePiece .model file (protobuf ModelProto, read here without a
// protobuf library) turned into the equivalent tokenizer.json, which HfTokenizer runs.
//
// The fields read (sentencepiece_model.proto):
//   ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
//   SentencePiece   1 piece (string), 2 score (float), 3 type (1 normal, 2 unknown, 3 control,
//                   4 user defined, 5 unused, 6 byte)
//   TrainerSpec     3 model_type (1 unigram, 2 bpe, 3 word, 4 char), 24 treat_whitespace_as_suffix,
//                   35 byte_fallback, 40 unk_id, 41 bos_id, 42 eos_id, 43 pad_id
//   NormalizerSpec  1 name, 2 precompiled_charsmap (kept as a Precompiled normalizer), 3 add_dummy_prefix, 4 remove_extra_whitespaces,
//                   5 escape_whitespaces
// Every other field is skipped by its wire type. A truncated or malformed message throws ValueError.
#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "json.h"
#include "tokenizer.h"  // b64_encode
#include "tokenizer_hf.h"

namespace pyllama {

namespace {

class ProtoReader {
 public:
  ProtoReader(std::string_view data, const char* what) : d_(data), what_(what) {}
  bool done() const { return p_ >= d_.size(); }
  // Next field: (number, wire type).
  std::pair<uint32_t, uint32_t> tag() {
    uint64_t t = varint();
    uint32_t field = static_cast<uint32_t>(t >> 3);
    PYLLAMA_CHECK(field != 0 && (t >> 3) <= 0x1FFFFFFFu, ValueError,
                  "SentencePiece model: bad field number in " << what_ << " at byte " << p_);
    return {field, static_cast<uint32_t>(t & 7)};
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      PYLLAMA_CHECK(p_ < d_.size(), ValueError, "SentencePiece model: truncated varint in " << what_);
      uint8_t b = static_cast<uint8_t>(d_[p_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw ValueError(std::string("SentencePiece model: varint longer than 10 bytes in ") + what_);
  }
  std::string_view bytes() {
    uint64_t n = varint();
    PYLLAMA_CHECK(n <= d_.size() - p_, ValueError,
                  "SentencePiece model: a field of " << n << " bytes runs past the end of " << what_);
    std::string_view s = d_.substr(p_, static_cast<size_t>(n));
    p_ += static_cast<size_t>(n);
    return s;
  }
  float fixed32f() {
    PYLLAMA_CHECK(d_.size() - p_ >= 4, ValueError, "SentencePiece model: truncated float in " << what_);
    float f;
    std::memcpy(&f, d_.data() + p_, 4);  // little-endian, as protobuf writes it
    p_ += 4;
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        PYLLAMA_CHECK(d_.size() - p_ >= 8, ValueError, "SentencePiece model: truncated field in " << what_);
        p_ += 8;
        break;
      case 2: bytes(); break;
      case 5:
        PYLLAMA_CHECK(d_.size() - p_ >= 4, ValueError, "SentencePiece model: truncated field in " << what_);
        p_ += 4;
        break;
      default:
        throw ValueError(std::string("SentencePiece model: unsupported wire type ") + std::to_string(wire) + " in " +
                         what_ + " (is this a SentencePiece .model file?)");
    }
  }
  void expect(uint32_t wire, uint32_t want, const char* field) {
    PYLLAMA_CHECK(wire == want, ValueError,
                  "SentencePiece model: field " << field << " of " << what_ << " has wire type " << wire
                                                << " (expected " << want << ")");
  }

 private:
  std::string_view d_;
  const char* what_;
  size_t p_ = 0;
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;
};

size_t n_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::string sentencepiece_to_hf_json(std::string_view data) {
  std::vector<SpPiece> pieces;
  int model_type = 1;
  bool byte_fallback = false, suffix = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string charsmap;
  bool dummy_prefix = true, remove_ws = true, escape_ws = true;
  bool have_trainer = false, have_normalizer = false;

  PYLLAMA_CHECK(!data.empty(), ValueError, "SentencePiece model: the file is empty");
  ProtoReader r(data, "ModelProto");
  while (!r.done()) {
    auto [f, w] = r.tag();
    if (f == 1) {
      r.expect(w, 2, "pieces");
      ProtoReader pr(r.bytes(), "SentencePiece");
      SpPiece p;
      while (!pr.done()) {
        auto [pf, pw] = pr.tag();
        if (pf == 1) {
          pr.expect(pw, 2, "piece");
          p.piece = std::string(pr.bytes());
        } else if (pf == 2) {
          pr.expect(pw, 5, "score");
          p.score = pr.fixed32f();
        } else if (pf == 3) {
          pr.expect(pw, 0, "type");
          p.type = static_cast<int>(pr.varint());
        } else {
          pr.skip(pw);
        }
      }
      pieces.push_back(std::move(p));
    } else if (f == 2) {
      r.expect(w, 2, "trainer_spec");
      have_trainer = true;
      ProtoReader tr(r.bytes(), "TrainerSpec");
      while (!tr.done()) {
        auto [tf, tw] = tr.tag();
        auto int_field = [&]() {
          tr.expect(tw, 0, "an integer field");
          return static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(tr.varint())));
        };
        if (tf == 3) model_type = static_cast<int>(int_field());
        else if (tf == 24) suffix = int_field() != 0;
        else if (tf == 35) byte_fallback = int_field() != 0;
        else if (tf == 40) unk_id = int_field();
        else if (tf == 41) bos_id = int_field();
        else if (tf == 42) eos_id = int_field();
        else if (tf == 43) pad_id = int_field();
        else tr.skip(tw);
      }
    } else if (f == 3) {
      r.expect(w, 2, "normalizer_spec");
      have_normalizer = true;
      ProtoReader nr(r.bytes(), "NormalizerSpec");
      while (!nr.done()) {
        auto [nf, nw] = nr.tag();
        if (nf == 2) {
          nr.expect(nw, 2, "precompiled_charsmap");
          charsmap = std::string(nr.bytes());
        } else if (nf == 3 || nf == 4 || nf == 5) {
          nr.expect(nw, 0, "a flag");
          bool v = nr.varint() != 0;
          (nf == 3 ? dummy_prefix : nf == 4 ? remove_ws : escape_ws) = v;
        } else {
          nr.skip(nw);
        }
      }
    } else {
      r.skip(w);
    }
  }

  // ---- what this reader supports
  PYLLAMA_CHECK(!pieces.empty(), ValueError, "SentencePiece model: no pieces (is this a SentencePiece .model file?)");
  PYLLAMA_CHECK(have_trainer && have_normalizer, ValueError,
                "SentencePiece model: no " << (have_trainer ? "normalizer_spec" : "trainer_spec")
                                           << " (the file is truncated, or not a SentencePiece .model file)");
  PYLLAMA_CHECK(model_type == 1 || model_type == 2, ValueError,
                "SentencePiece model: model_type " << (model_type == 3 ? "WORD" : model_type == 4 ? "CHAR" : "unknown")
                                                   << " is not supported (BPE and UNIGRAM are)");
  PYLLAMA_CHECK(escape_ws, ValueError, "SentencePiece model: escape_whitespaces=false is not supported");
  PYLLAMA_CHECK(!suffix, ValueError, "SentencePiece model: treat_whitespace_as_suffix=true is not supported");
  auto id_ok = [&](int64_t id) { return id >= 0 && static_cast<size_t>(id) < pieces.size(); };
  PYLLAMA_CHECK(unk_id < 0 || id_ok(unk_id), ValueError, "SentencePiece model: unk_id " << unk_id << " is not a piece");
  PYLLAMA_CHECK(bos_id < 0 || id_ok(bos_id), ValueError, "SentencePiece model: bos_id " << bos_id << " is not a piece");
  (void)eos_id;
  (void)pad_id;
  for (size_t i = 0; i < pieces.size(); i++)
    PYLLAMA_CHECK(!pieces[i].piece.empty() && pieces[i].type >= 1 && pieces[i].type <= 6, ValueError,
                  "SentencePiece model: piece " << i << " is empty or has an unknown type " << pieces[i].type);

  // ---- the tokenizer.json, as transformers' converters write it
  const std::string kSpace = "\xE2\x96\x81";  // ▁
  Json root = Json::object();
  root.set("version", Json::str("1.0"));
  root.set("truncation", Json());
  root.set("padding", Json());
  Json added = Json::array();
  for (size_t i = 0; i < pieces.size(); i++) {
    int t = pieces[i].type;
    bool special = t == 2 || t == 3;
    if (!(special || (t == 4 && model_type == 2))) continue;
    Json a = Json::object();
    a.set("id", Json::number(static_cast<double>(i)));
    a.set("content", Json::str(pieces[i].piece));
    a.set("single_word", Json::boolean(false));
    a.set("lstrip", Json::boolean(false));
    a.set("rstrip", Json::boolean(false));
    a.set("normalized", Json::boolean(false));
    a.set("special", Json::boolean(special));
    added.push(std::move(a));
  }
  root.set("added_tokens", std::move(added));

  // The normalizer: SentencePiece's whitespace rules, its dummy prefix and its escaped spaces (as the
  // Llama 2 tokenizer.json writes them: Prepend + Replace; a Metaspace pre-tokenizer would not add the
  // prefix to a text that starts with a space, which SentencePiece does).
  Json seq = Json::array();
  if (!charsmap.empty()) {  // the normalization rule (nmt_nfkc, ...) as SentencePiece compiled it
    Json pc = Json::object();
    std::string b64;
    b64_encode(charsmap, b64);
    pc.set("type", Json::str("Precompiled"));
    pc.set("precompiled_charsmap", Json::str(b64));
    seq.push(std::move(pc));
  }
  auto replace = [&](const char* kind, const std::string& pat, const std::string& to) {
    Json rep = Json::object(), p = Json::object();
    rep.set("type", Json::str("Replace"));
    p.set(kind, Json::str(pat));
    rep.set("pattern", std::move(p));
    rep.set("content", Json::str(to));
    seq.push(std::move(rep));
  };
  if (remove_ws) {  // drop leading and trailing spaces, squeeze runs of them to one
    replace("Regex", "\\A +", "");
    replace("Regex", " +\\z", "");
    replace("Regex", " {2,}", " ");
  }
  if (dummy_prefix) {
    Json pp = Json::object();
    pp.set("type", Json::str("Prepend"));
    pp.set("prepend", Json::str(kSpace));
    seq.push(std::move(pp));
  }
  replace("String", " ", kSpace);
  Json n = Json::object();
  n.set("type", Json::str("Sequence"));
  n.set("normalizers", std::move(seq));
  root.set("normalizer", std::move(n));
  root.set("pre_tokenizer", Json());

  Json post = Json::object();
  post.set("type", Json::str("TemplateProcessing"));
  Json single = Json::array(), pair = Json::array(), specials = Json::object();
  auto seq_item = [](const char* id, int type_id) {
    Json s = Json::object(), inner = Json::object();
    inner.set("id", Json::str(id));
    inner.set("type_id", Json::number(type_id));
    s.set("Sequence", std::move(inner));
    return s;
  };
  auto special_item = [&](int type_id) {
    Json s = Json::object(), inner = Json::object();
    inner.set("id", Json::str(pieces[static_cast<size_t>(bos_id)].piece));
    inner.set("type_id", Json::number(type_id));
    s.set("SpecialToken", std::move(inner));
    return s;
  };
  if (bos_id >= 0) {  // Llama's convention: a sequence starts with BOS
    single.push(special_item(0));
    pair.push(special_item(0));
    Json st = Json::object(), ids = Json::array(), toks = Json::array();
    ids.push(Json::number(static_cast<double>(bos_id)));
    toks.push(Json::str(pieces[static_cast<size_t>(bos_id)].piece));
    st.set("id", Json::str(pieces[static_cast<size_t>(bos_id)].piece));
    st.set("ids", std::move(ids));
    st.set("tokens", std::move(toks));
    specials.set(pieces[static_cast<size_t>(bos_id)].piece, std::move(st));
  }
  single.push(seq_item("A", 0));
  pair.push(seq_item("A", 0));
  if (bos_id >= 0) pair.push(special_item(1));
  pair.push(seq_item("B", 1));
  post.set("single", std::move(single));
  post.set("pair", std::move(pair));
  post.set("special_tokens", std::move(specials));
  root.set("post_processor", std::move(post));

  Json dec = Json::object(), decs = Json::array();
  dec.set("type", Json::str("Sequence"));
  {
    Json rep = Json::object(), pat = Json::object();
    rep.set("type", Json::str("Replace"));
    pat.set("String", Json::str(kSpace));
    rep.set("pattern", std::move(pat));
    rep.set("content", Json::str(" "));
    decs.push(std::move(rep));
    if (byte_fallback) {
      Json bf = Json::object();
      bf.set("type", Json::str("ByteFallback"));
      decs.push(std::move(bf));
    }
    Json fuse = Json::object();
    fuse.set("type", Json::str("Fuse"));
    decs.push(std::move(fuse));
    if (dummy_prefix) {
      Json strip = Json::object();
      strip.set("type", Json::str("Strip"));
      strip.set("content", Json::str(" "));
      strip.set("start", Json::number(1));
      strip.set("stop", Json::number(0));
      decs.push(std::move(strip));
    }
  }
  dec.set("decoders", std::move(decs));
  root.set("decoder", std::move(dec));

  Json model = Json::object();
  if (model_type == 2) {
    model.set("type", Json::str("BPE"));
    model.set("dropout", Json());
    model.set("unk_token", unk_id >= 0 ? Json::str(pieces[static_cast<size_t>(unk_id)].piece) : Json());
    model.set("continuing_subword_prefix", Json());
    model.set("end_of_word_suffix", Json());
    model.set("fuse_unk", Json::boolean(true));
    model.set("byte_fallback", Json::boolean(byte_fallback));
    model.set("ignore_merges", Json::boolean(false));
    Json vocab = Json::object();
    std::unordered_map<std::string, size_t> ids;
    for (size_t i = 0; i < pieces.size(); i++) {
      if (ids.count(pieces[i].piece)) continue;
      ids.emplace(pieces[i].piece, i);
      vocab.set(pieces[i].piece, Json::number(static_cast<double>(i)));
    }
    // Merges as transformers' generate_merges: every split of every piece into two pieces, in the
    // order of the merged piece's id (SentencePiece's scores fall with the id), then shorter left
    // and right parts first.
    std::vector<std::tuple<size_t, size_t, size_t, size_t, size_t>> merges;  // (id, nl, nr, idl, idr)
    for (size_t i = 0; i < pieces.size(); i++) {
      const std::string& s = pieces[i].piece;
      if (ids[s] != i) continue;
      for (size_t k = 1; k < s.size(); k++) {
        if ((static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) continue;  // not a char boundary
        auto l = ids.find(s.substr(0, k)), rr = ids.find(s.substr(k));
        if (l == ids.end() || rr == ids.end()) continue;
        merges.emplace_back(i, n_chars(l->first), n_chars(rr->first), l->second, rr->second);
      }
    }
    std::stable_sort(merges.begin(), merges.end(), [](const auto& a, const auto& b) {
      if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) < std::get<0>(b);
      if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
      if (std::get<2>(a) != std::get<2>(b)) return std::get<2>(a) < std::get<2>(b);
      return std::make_pair(std::get<3>(a), std::get<4>(a)) < std::make_pair(std::get<3>(b), std::get<4>(b));
    });
    Json mj = Json::array();
    for (auto& m : merges) {
      Json pr = Json::array();
      pr.push(Json::str(pieces[std::get<3>(m)].piece));
      pr.push(Json::str(pieces[std::get<4>(m)].piece));
      mj.push(std::move(pr));
    }
    model.set("vocab", std::move(vocab));
    model.set("merges", std::move(mj));
  } else {
    model.set("type", Json::str("Unigram"));
    model.set("unk_id", unk_id >= 0 ? Json::number(static_cast<double>(unk_id)) : Json());
    model.set("byte_fallback", Json::boolean(byte_fallback));
    Json vocab = Json::array();
    for (const SpPiece& p : pieces) {
      Json e = Json::array();
      e.push(Json::str(p.piece));
      e.push(Json::number(static_cast<double>(p.score)));
      vocab.push(std::move(e));
    }
    model.set("vocab", std::move(vocab));
  }
  root.set("model", std::move(model));
  return root.dump();
}

}  // namespace pyllama
