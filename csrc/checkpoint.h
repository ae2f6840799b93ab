// checkpoint.h — Hugging Face model folders (config.json + model.safetensors)
// from C++, without Python.
//
//   auto model = pyllama::load_pretrained("runs/shakespeare/latest");
//   pyllama::save_pretrained(*model, "copy-of-model");   // atomic: temp file + rename
//
// safetensors: 8-byte little-endian header length, a JSON header mapping each
// tensor name to {dtype, shape, data_offsets: [begin, end)} relative to the end
// of the header, then the raw little-endian data. F32, F16 and BF16 load (as float32).
#pragma once
#include <memory>
#include <string>

#include "model.h"

namespace pyllama {

LlamaConfig load_config(const std::string& config_json_path);
std::unique_ptr<LlamaModel> load_pretrained(const std::string& dir);
void save_pretrained(LlamaModel& model, const std::string& dir);

}  // namespace pyllama
