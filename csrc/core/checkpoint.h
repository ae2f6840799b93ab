// checkpoint.h — Hugging Face model folders (config.json + model.safetensors, or
// pytorch_model.bin read without running pickled code) from C++, without Python.
//
//   auto model = pyllama::load_pretrained("runs/shakespeare/latest");   // std::unique_ptr<Model>
//   pyllama::save_pretrained(*model, "copy-of-model");   // atomic: temp file + rename
//
// safetensors: 8-byte little-endian header length, a JSON header mapping each
// tensor name to {dtype, shape, data_offsets: [begin, end)} relative to the end
// of the header, then the raw little-endian data. F32, F16 and BF16 load (as float32).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace pyllama {

LlamaConfig load_config(const std::string& config_json_path);
// model.safetensors, or the shards its index names.
std::vector<std::string> safetensors_files(const std::string& dir);
// The first found of: model.safetensors, its index's shards, pytorch_model.bin, its index's
// shards (IOError when none is there; ValueError for a bad index).
std::vector<std::string> checkpoint_weight_files(const std::string& dir);
// Weights from files of either format (.bin/.pt/.pth: torch_bin.h, executing no pickled code;
// else safetensors) into dst, the flat layout `infos` describes, with WeightMatcher's rules.
void load_weight_files(const std::vector<std::string>& files, const std::vector<ParamInfo>& infos, bool tied,
                       float* dst, bool check_finite);
// A model of the folder's config on `device` ("cpu", or "cuda[:N]" once that backend is registered).
std::unique_ptr<Model> load_pretrained(const std::string& dir, const std::string& device = "cpu");
void save_pretrained(const Model& model, const std::string& dir);

}  // namespace pyllama
