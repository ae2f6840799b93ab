// bindings.cpp — the only file that sees Python. Glue: converts types, maps the
// core's exceptions to Python's, releases the GIL around native work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>

#include "adamw_cpu.h"
#include "backends.h"
#include "dlpack.h"
#include "tokenizer.h"  // bind_tokenizer
#include "tokenizer_hf.h"  // bind_tokenizer_hf
#include "common.h"
#include "checkpoint.h"
#include "hf_config.h"
#include "json.h"
#include "safetensors.h"
#include "torch_bin.h"
#include "matmul.h"
#include "model.h"
#include "runtime.h"
#include "tensor.h"
#ifdef PYLLAMA_HAVE_CUDA
#include "model_cuda.h"
#include "ops_check.h"
#include "nccl.h"
#endif

#ifdef PYLLAMA_CUDA_SIM_BUILD
namespace sim {  // tools/cuda_sim/sim_host.cpp
long long counter(const char* name);
const char* counter_name(int i);
}  // namespace sim
#endif

namespace py = pybind11;
using namespace pyllama;

namespace {

// ------------------------------------------------------------------ numpy <-> Tensor

py::dtype numpy_dtype(DType dt) {
  switch (dt) {
    case DType::float32: return py::dtype::of<float>();
    case DType::bfloat16: return py::dtype::of<uint16_t>();  // raw bf16 bits; numpy has no bfloat16
    case DType::int32: return py::dtype::of<int32_t>();
    case DType::uint16: return py::dtype::of<uint16_t>();
    case DType::uint32: return py::dtype::of<uint32_t>();
    case DType::int64: return py::dtype::of<int64_t>();
  }
  throw ValueError("unknown dtype");
}

DType dtype_of_numpy(const py::array& a) {
  py::dtype d = a.dtype();
  if (d.is(py::dtype::of<float>()) || d.equal(py::dtype::of<float>())) return DType::float32;
  if (d.equal(py::dtype::of<int32_t>())) return DType::int32;
  if (d.equal(py::dtype::of<uint16_t>())) return DType::uint16;
  if (d.equal(py::dtype::of<uint32_t>())) return DType::uint32;
  if (d.equal(py::dtype::of<int64_t>())) return DType::int64;
  throw TypeError("unsupported numpy dtype '" + std::string(py::str(d)) +
                  "': expected float32, int32, int64, uint16 or uint32");
}

// A numpy array that views the tensor's storage; the array keeps the tensor alive.
py::array tensor_to_numpy(const Tensor& t) {
  PYLLAMA_CHECK(t.device() == Device::cpu, ValueError,
                "cannot view a " << device_name(t.device()) << " tensor as numpy: call .to('cpu') first");
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t s = static_cast<py::ssize_t>(dtype_size(t.dtype()));
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  auto* holder = new Tensor(t);
  py::capsule owner(holder, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(numpy_dtype(t.dtype()), shape, strides, t.raw(), owner);
}

// A tensor over the numpy array's memory, without a copy. The array must be
// C-contiguous and aligned; `as_bf16` reinterprets a uint16 array as bfloat16.
Tensor numpy_to_tensor(const py::array& a, bool as_bf16 = false) {
  PYLLAMA_CHECK(a.flags() & py::array::c_style, ValueError,
                "array is not C-contiguous (row-major): pass np.ascontiguousarray(x)");
  PYLLAMA_CHECK((a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_), ValueError, "array is not aligned: pass a copy (x.copy())");
  DType dt = dtype_of_numpy(a);
  if (as_bf16) {
    PYLLAMA_CHECK(dt == DType::uint16, TypeError, "bfloat16 tensors are built from uint16 arrays holding the bits");
    dt = DType::bfloat16;
  }
  std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  auto* keep = new py::object(a);
  std::shared_ptr<void> keepalive(keep, [](void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
  return Tensor::wrap(const_cast<void*>(a.data()), shape, dt, keepalive);
}

using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Token ids for the model interface: a core Tensor as it is (any device; the core checks its
// dtype and shape), or any integer array-like as an int32 Tensor over its memory (a copy only
// where the array is not int32 and C-contiguous already).
Tensor ids_tensor(py::handle obj, const char* what) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  auto a = IntArray::ensure(obj);
  PYLLAMA_CHECK(a, TypeError, what << " must be an integer array or an int32 pyllama.Tensor");
  return numpy_to_tensor(a);
}

// A flat float32 buffer for set_parameters / set_gradients / set_moments: a core Tensor as it
// is (any device), or a float32 array over its memory (the core checks the length).
Tensor flat_tensor(py::handle obj, const char* what) {
  if (py::isinstance<Tensor>(obj)) return obj.cast<Tensor>();
  PYLLAMA_CHECK(py::isinstance<py::array>(obj), TypeError,
                what << " must be a float32 numpy array or a pyllama.Tensor, got " << std::string(py::str(obj.get_type())));
  py::array a = py::reinterpret_borrow<py::array>(obj);
  PYLLAMA_CHECK(a.dtype().equal(py::dtype::of<float>()), TypeError,
                what << " must be a float32 array, got " << std::string(py::str(a.dtype())));
  PYLLAMA_CHECK(a.flags() & py::array::c_style, ValueError, what << " must be contiguous");
  return numpy_to_tensor(a);
}

// A KV-cache step's arguments as Tensors: tokens (B, T), slots and start_pos (B).
struct KvStep {
  Tensor tokens, slots, start_pos;
};

KvStep kv_step_args(py::handle tokens, py::handle slots, py::handle start_pos) {
  return {ids_tensor(tokens, "tokens"), ids_tensor(slots, "slots"), ids_tensor(start_pos, "start_pos")};
}

// ------------------------------------------------------------------ DLPack (Tensor.__dlpack__)

// What a DLManagedTensor keeps alive: the tensor (its storage is shared) and its shape.
struct DLPackHolder {
  Tensor tensor;
  std::vector<int64_t> shape;
  DLManagedTensor managed;
};

void dlpack_delete(DLManagedTensor* self) {
  delete static_cast<DLPackHolder*>(self->manager_ctx);
}

DLDataType dlpack_dtype(DType dt) {
  switch (dt) {
    case DType::float32: return {kPyllamaDLFloat, 32, 1};
    case DType::bfloat16: return {kPyllamaDLBfloat, 16, 1};
    case DType::int32: return {kPyllamaDLInt, 32, 1};
    case DType::uint16: return {kPyllamaDLUInt, 16, 1};
    case DType::uint32: return {kPyllamaDLUInt, 32, 1};
    case DType::int64: return {kPyllamaDLInt, 64, 1};
  }
  throw ValueError("unknown dtype");
}

// A "dltensor" capsule viewing t's memory (no copy). The consumer renames it "used_dltensor"
// and calls the deleter when done; a capsule never consumed frees the holder itself.
py::capsule tensor_to_dlpack(const Tensor& t) {
  auto* h = new DLPackHolder{t, t.shape(), DLManagedTensor{}};
  DLTensor& d = h->managed.dl_tensor;
  d.data = const_cast<void*>(static_cast<const void*>(t.raw()));
  d.device = {t.device() == Device::cpu ? kPyllamaDLCPU : kPyllamaDLCUDA, t.device_index()};
  d.ndim = static_cast<int32_t>(h->shape.size());
  d.dtype = dlpack_dtype(t.dtype());
  d.shape = h->shape.empty() ? nullptr : h->shape.data();
  d.strides = nullptr;  // row-major contiguous
  d.byte_offset = 0;
  h->managed.manager_ctx = h;
  h->managed.deleter = &dlpack_delete;
  PyObject* cap = PyCapsule_New(&h->managed, "dltensor", [](PyObject* c) {
    if (PyCapsule_IsValid(c, "dltensor")) {  // never consumed
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      if (m && m->deleter) m->deleter(m);
    }
  });
  if (!cap) {
    delete h;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// A float32, 1-D, contiguous array of n elements (any length with kAnyLength), writable when
// the core writes into it: the core's in-place kernels must see the caller's memory.
constexpr size_t kAnyLength = static_cast<size_t>(-1);
float* flat_buffer(py::array& a, size_t n, const char* what, bool writable) {
  PYLLAMA_CHECK(a.dtype().equal(py::dtype::of<float>()), TypeError,
                what << " must be a float32 array, got " << std::string(py::str(a.dtype())));
  if (n == kAnyLength)
    PYLLAMA_CHECK(a.ndim() == 1, ValueError, what << " must be 1-D (a flat buffer), got " << a.ndim() << "-D");
  else
    PYLLAMA_CHECK(a.ndim() == 1 && (size_t)a.shape(0) == n, ValueError,
                  what << " must be 1-D with " << n << " elements (the flat parameter layout)");
  PYLLAMA_CHECK(a.flags() & py::array::c_style, ValueError, what << " must be contiguous");
  PYLLAMA_CHECK(!writable || a.writeable(), ValueError, what << " must be writable");
  return static_cast<float*>(a.mutable_data());
}

void bind_tensor(py::module_& m) {
  py::class_<Tensor>(m, "Tensor", py::buffer_protocol(), R"doc(
A core tensor: dtype, shape, device and row-major contiguous storage.

>>> import numpy as np, pyllama
>>> t = pyllama.Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))  # no copy
>>> t.shape, t.dtype
((2, 3), 'float32')
>>> t.numpy()[1, 2]   # a view of the same memory
5.0
)doc")
      .def_buffer([](Tensor& t) -> py::buffer_info {
        PYLLAMA_CHECK(t.device() == Device::cpu, ValueError, "cannot expose a cuda tensor as a buffer");
        std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
        std::vector<py::ssize_t> strides(shape.size());
        py::ssize_t s = static_cast<py::ssize_t>(dtype_size(t.dtype()));
        for (int i = static_cast<int>(shape.size()) - 1; i >= 0; i--) {
          strides[i] = s;
          s *= shape[i];
        }
        std::string fmt = t.dtype() == DType::float32 ? py::format_descriptor<float>::format()
                          : t.dtype() == DType::int32 ? py::format_descriptor<int32_t>::format()
                          : t.dtype() == DType::uint32 ? py::format_descriptor<uint32_t>::format()
                          : t.dtype() == DType::int64 ? py::format_descriptor<int64_t>::format()
                                                      : py::format_descriptor<uint16_t>::format();
        return py::buffer_info(t.raw(), static_cast<py::ssize_t>(dtype_size(t.dtype())), fmt,
                               static_cast<py::ssize_t>(shape.size()), shape, strides);
      })
      .def(py::init([](std::vector<int64_t> shape, const std::string& dtype, const std::string& device) {
             return Tensor::zeros(shape, dtype_from_name(dtype), device_from_name(device),
                                  device_index_from_name(device));
           }),
           py::arg("shape"), py::arg("dtype") = "float32", py::arg("device") = "cpu",
           "A zero-filled tensor. >>> pyllama.Tensor([2, 3], 'float32').shape -> (2, 3)")
      .def_static("from_numpy", &numpy_to_tensor, py::arg("array"), py::arg("bfloat16") = false,
                  "A tensor over a C-contiguous numpy array's memory (no copy). Pass bfloat16=True "
                  "with a uint16 array that holds bfloat16 bits.")
      .def("numpy", &tensor_to_numpy, "A numpy view of the tensor's memory (no copy). bfloat16 shows as uint16 bits.")
      .def_property_readonly("shape", [](const Tensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_property_readonly("device", &Tensor::device_str, "'cpu', 'cuda' (GPU 0) or 'cuda:N'")
      .def_property_readonly("ndim", &Tensor::ndim)
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def("numel", &Tensor::numel)
      .def("view", &Tensor::view, py::arg("shape"))
      .def("clone", &Tensor::clone)
      .def("to", [](const Tensor& t, const std::string& what) {
             if (what == "cpu" || what == "cuda" || what.rfind("cuda:", 0) == 0) {
               const Device d = device_from_name(what);
               const int index = device_index_from_name(what);
               if (d == Device::cpu && t.device() == Device::cpu) return t;  // already there: no copy, as torch
               py::gil_scoped_release nogil;
               return t.to(d, index);
             }
             DType dt;
             try {
               dt = dtype_from_name(what);
             } catch (const ValueError&) {
               throw ValueError("Tensor.to('" + what + "'): unknown device or dtype; expected 'cpu', 'cuda', or a "
                                "dtype ('float32', 'bfloat16', 'int32', 'int64', 'uint16', 'uint32')");
             }
             return t.to_dtype(dt);
           }, py::arg("device_or_dtype"), R"doc(
A copy on another device ('cpu', 'cuda', 'cuda:N': every device Llama.to takes) or in
another dtype ('float32', 'bfloat16').
Moving to the device the tensor is already on returns it unchanged on the CPU and a
copy on the GPU. Without a CUDA build or a GPU, 'cuda' raises ValueError.

>>> import numpy as np, pyllama
>>> t = pyllama.Tensor.from_numpy(np.ones((2, 3), np.float32))
>>> t.to('bfloat16').dtype
'bfloat16'
>>> # g = t.to('cuda'); g.device -> 'cuda'; g.to('cpu').numpy() equals t.numpy()
)doc")
      .def("__dlpack__", [](const Tensor& t, py::kwargs) { return tensor_to_dlpack(t); },
           "DLPack export (no copy): np.from_dlpack(t) on the CPU, torch.from_dlpack(t) on either device.")
      .def("__dlpack_device__", [](const Tensor& t) {
             return py::make_tuple(t.device() == Device::cpu ? (int)kPyllamaDLCPU : (int)kPyllamaDLCUDA,
                                   t.device_index());
           })
      .def("cpu", [](const Tensor& t) {
             if (t.device() == Device::cpu) return t;
             py::gil_scoped_release nogil;
             return t.to(Device::cpu);
           }, "The tensor on the CPU (itself when it is there already, else a copy).")
      .def("cuda", [](const Tensor& t) {
             py::gil_scoped_release nogil;
             return t.to(Device::cuda);
           }, "A copy in GPU memory (same as .to('cuda')).")
      .def_property_readonly("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); },
                             "The address of the first element (device memory for a cuda tensor).")
      .def_property_readonly("__cuda_array_interface__", [](const Tensor& t) {
             // Lets torch.as_tensor / cupy.asarray view a cuda tensor without a copy.
             if (t.device() != Device::cuda)
               throw py::attribute_error("__cuda_array_interface__ exists only on cuda tensors");
             const char* typestr = t.dtype() == DType::float32  ? "<f4"
                                   : t.dtype() == DType::int32  ? "<i4"
                                   : t.dtype() == DType::int64  ? "<i8"
                                   : t.dtype() == DType::uint16 ? "<u2"
                                   : t.dtype() == DType::uint32 ? "<u4"
                                                                : nullptr;
             if (!typestr)
               throw py::attribute_error("bfloat16 has no __cuda_array_interface__ type code: convert with "
                                         ".to('float32') first");
             py::dict d;
             d["shape"] = py::tuple(py::cast(t.shape()));
             d["typestr"] = typestr;
             d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(t.raw()), false);
             d["strides"] = py::none();
             d["version"] = 3;
             d["stream"] = py::none();  // tensor copies are synchronous: nothing to wait for
             return d;
           })
      .def("__repr__", &Tensor::repr);
}

// ------------------------------------------------------------------ runtime

void bind_runtime(py::module_& m) {
  m.def("build_info", []() {
    BuildInfo b = build_info();
    py::dict d;
    d["version"] = b.version;
    d["cuda"] = b.cuda;
    d["cuda_archs"] = b.cuda_archs;
    d["cuda_available"] = b.cuda_available;
    d["simd"] = b.simd;
    d["openmp"] = b.openmp;
    d["threads"] = b.threads;
    return d;
  });
  m.def("num_threads", &num_threads);
  m.def("cuda_device_count", []() { return backend_device_count("cuda"); },
        "Usable CUDA GPUs (0 when none, or in a build without the CUDA backend).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  // The core's matrix multiply, for tests and benchmarks: op(A) @ op(B) as a new float32 array.
  m.def("matmul", [](py::array_t<float, py::array::c_style | py::array::forcecast> a,
                     py::array_t<float, py::array::c_style | py::array::forcecast> b, bool trans_a, bool trans_b) {
        PYLLAMA_CHECK(a.ndim() == 2 && b.ndim() == 2, ValueError, "matmul expects 2-D arrays");
        int M = (int)(trans_a ? a.shape(1) : a.shape(0)), K = (int)(trans_a ? a.shape(0) : a.shape(1));
        int Kb = (int)(trans_b ? b.shape(1) : b.shape(0)), N = (int)(trans_b ? b.shape(0) : b.shape(1));
        PYLLAMA_CHECK(K == Kb, ValueError, "matmul: inner dimensions differ (" << K << " vs " << Kb << ")");
        py::array_t<float> c({(py::ssize_t)M, (py::ssize_t)N});
        const float* pa = a.data();
        const float* pb = b.data();
        float* pc = c.mutable_data();
        int lda = (int)a.shape(1), ldb = (int)b.shape(1);
        {
          py::gil_scoped_release nogil;
          sgemm(trans_a, trans_b, M, N, K, pa, lda, pb, ldb, 0.f, pc, N);
        }
        return c;
      }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false);
}

// ------------------------------------------------------------------ model (lead)

// A parsed JSON value as the Python value json.loads would give (integral numbers as int).
py::object json_to_py(const Json& j) {
  switch (j.kind()) {
    case Json::Kind::null: return py::none();
    case Json::Kind::boolean: return py::bool_(j.as_bool());
    case Json::Kind::number: {
      double v = j.as_number();
      if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) return py::int_((long long)v);
      return py::float_(v);
    }
    case Json::Kind::string: return py::str(j.as_string());
    case Json::Kind::array: {
      py::list out;
      for (size_t i = 0; i < j.size(); i++) out.append(json_to_py(j.at(i)));
      return out;
    }
    case Json::Kind::object: {
      py::dict out;
      for (const auto& kv : j.items()) out[py::str(kv.first)] = json_to_py(kv.second);
      return out;
    }
  }
  return py::none();
}

// BackendOptions from a dict of its fields (None: the defaults); unknown keys and wrong types
// are a TypeError / ValueError naming the field.
BackendOptions backend_options(py::object obj) {
  BackendOptions o;
  if (obj.is_none()) return o;
  PYLLAMA_CHECK(py::isinstance<py::dict>(obj), TypeError, "options must be a dict of BackendOptions fields");
  for (auto item : obj.cast<py::dict>()) {
    const std::string key = py::str(item.first);
    py::handle v = item.second;
    auto as_bool = [&](bool* dst) {
      PYLLAMA_CHECK(py::isinstance<py::bool_>(v), TypeError, "BackendOptions." << key << " must be True or False");
      *dst = v.cast<bool>();
    };
    auto as_str = [&](std::string* dst) {
      PYLLAMA_CHECK(py::isinstance<py::str>(v), TypeError, "BackendOptions." << key << " must be a string");
      *dst = v.cast<std::string>();
    };
    if (key == "matmul") as_str(&o.matmul);
    else if (key == "attention") as_str(&o.attention);
    else if (key == "decode_fast_path") as_bool(&o.decode_fast_path);
    else if (key == "cuda_graphs") as_bool(&o.cuda_graphs);
    else if (key == "decode_gemv") as_bool(&o.decode_gemv);
    else if (key == "decode_fused") as_bool(&o.decode_fused);
    else if (key == "pdl") as_bool(&o.pdl);
    else throw TypeError("unknown BackendOptions field '" + key + "'");
  }
  o.validate();
  return o;
}

void bind_model(py::module_& m) {
  m.def("normalize_hf_config", [](const std::string& text) { return json_to_py(normalize_hf_config(Json::parse(text))); },
        py::arg("config_json"),
        "The fields of a Hugging Face config.json that pyllama computes with, in canonical spelling; "
        "ValueError naming the field for anything that would change the math and is not supported.");
  py::class_<LlamaConfig>(m, "LlamaConfigCore")
      .def(py::init<>())
      .def_readwrite("vocab_size", &LlamaConfig::vocab_size)
      .def_readwrite("hidden_size", &LlamaConfig::hidden_size)
      .def_readwrite("intermediate_size", &LlamaConfig::intermediate_size)
      .def_readwrite("num_hidden_layers", &LlamaConfig::num_hidden_layers)
      .def_readwrite("num_attention_heads", &LlamaConfig::num_attention_heads)
      .def_readwrite("num_key_value_heads", &LlamaConfig::num_key_value_heads)
      .def_readwrite("max_position_embeddings", &LlamaConfig::max_position_embeddings)
      .def_readwrite("rms_norm_eps", &LlamaConfig::rms_norm_eps)
      .def_readwrite("rope_theta", &LlamaConfig::rope_theta)
      .def_readwrite("tie_word_embeddings", &LlamaConfig::tie_word_embeddings)
      .def_readwrite("head_dim", &LlamaConfig::head_dim_explicit)
      .def_readwrite("attention_bias", &LlamaConfig::attention_bias)
      .def_readwrite("mlp_bias", &LlamaConfig::mlp_bias)
      .def("set_rope_scaling",
           [](LlamaConfig& c, const std::string& text) {
             c.rope_scaling = rope_scaling_from_json(Json::parse(text), c.max_position_embeddings);
           },
           py::arg("rope_scaling_json"), "rope_scaling as config.json spells it (JSON text; 'null' for none)")
      .def("validate", &LlamaConfig::validate)
      .def("max_positions", &LlamaConfig::max_positions);
  m.def("normalize_rope_scaling",
        [](const std::string& text, int max_position_embeddings) {
          return json_to_py(rope_scaling_json(rope_scaling_from_json(Json::parse(text), max_position_embeddings)));
        },
        py::arg("rope_scaling_json"), py::arg("max_position_embeddings"),
        "rope_scaling in canonical form (None for the default); ValueError naming what is wrong.");


  // The one model interface (backend.h), bound once: every device's model is a Model.
  py::class_<Model>(m, "Model", R"doc(
A LLaMA model on one backend (the core's model interface, backend.h): 'cpu' or 'cuda[:N]'.
Made by make_model / move_model; use pyllama.Llama instead.
)doc")
      .def_property_readonly("device", &Model::device)
      .def_property_readonly("dtype", [](const Model& mdl) { return std::string(dtype_name(mdl.dtype())); })
      .def("init_weights", &Model::init_weights, py::arg("seed"), py::call_guard<py::gil_scoped_release>())
      .def("num_parameters", &Model::num_parameters)
      .def("flops_per_token", &Model::flops_per_token, py::arg("T"))
      .def("param_infos", [](const Model& mdl) {
        py::list out;
        for (const auto& p : mdl.param_infos())
          out.append(py::make_tuple(p.name, p.offset, p.numel, py::tuple(py::cast(p.shape))));
        return out;
      })
      .def("parameters", &Model::parameters, py::keep_alive<0, 1>(),
           "The live flat parameter buffer (float32, num_parameters()) as a core Tensor in the model's memory "
           "(a cuda tensor on the GPU), no copy; numpy/DLPack view it. Call params_written() after writing "
           "through it on the GPU.")
      .def("gradients", &Model::gradients, py::keep_alive<0, 1>(),
           "The live flat gradient buffer as a core Tensor in the model's memory, no copy.")
      .def("parameters_copy", [](const Model& mdl) {
             Tensor t;
             {
               py::gil_scoped_release nogil;
               t = mdl.parameters_copy();
             }
             return tensor_to_numpy(t);
           }, "A new float32 host array holding the parameters (flat layout).")
      .def("gradients_copy", [](const Model& mdl) {
             Tensor t;
             {
               py::gil_scoped_release nogil;
               t = mdl.gradients_copy();
             }
             return tensor_to_numpy(t);
           }, "A new float32 host array holding the gradients (flat layout).")
      .def("set_parameters", [](Model& mdl, py::handle src) {
             const Tensor t = flat_tensor(src, "parameters");
             py::gil_scoped_release nogil;
             mdl.set_parameters(t);
           }, py::arg("src"), "Copy every parameter in from a float32 tensor or array (any device) of num_parameters().")
      .def("set_gradients", [](Model& mdl, py::handle src) {
             const Tensor t = flat_tensor(src, "gradients");
             py::gil_scoped_release nogil;
             mdl.set_gradients(t);
           }, py::arg("src"))
      .def("moments", [](const Model& mdl) {
             std::pair<Tensor, Tensor> mv;
             {
               py::gil_scoped_release nogil;
               mv = mdl.moments();
             }
             return py::make_tuple(tensor_to_numpy(mv.first), tensor_to_numpy(mv.second));
           }, "(exp_avg, exp_avg_sq): new float32 host arrays (zeros before the first adamw_step).")
      .def("set_moments", [](Model& mdl, py::handle m_, py::handle v_) {
             const Tensor m = flat_tensor(m_, "exp_avg"), v = flat_tensor(v_, "exp_avg_sq");
             py::gil_scoped_release nogil;
             mdl.set_moments(m, v);
           }, py::arg("exp_avg"), py::arg("exp_avg_sq"))
      .def("forward", [](Model& mdl, py::handle tokens, py::handle labels) {
             const Tensor ids = ids_tensor(tokens, "input_ids");
             const Tensor lab = labels.is_none() ? Tensor() : ids_tensor(labels, "labels");
             py::gil_scoped_release nogil;
             return mdl.forward(ids, lab);
           }, py::arg("input_ids"), py::arg("labels") = py::none(),
           "Training forward over int32 (B, T) ids (a core Tensor on any device, or an integer array); "
           "returns the loss (NaN without labels or while losses are deferred).")
      .def("logits", [](Model& mdl) {
             Tensor t;
             {
               py::gil_scoped_release nogil;
               t = mdl.logits();
             }
             return tensor_to_numpy(t);
           }, "A new float32 host array (B, T, V) holding the last forward's logits.")
      .def("backward", &Model::backward, py::arg("scale") = 1.0f, py::call_guard<py::gil_scoped_release>())
      .def("zero_grad", &Model::zero_grad, py::call_guard<py::gil_scoped_release>())
      .def("kv_reset", &Model::kv_reset, py::arg("n_slots"), py::arg("max_len"),
           py::call_guard<py::gil_scoped_release>())
      .def("kv_forward", [](Model& mdl, py::handle tokens, py::handle slots, py::handle start_pos, bool last_only) {
             const KvStep k = kv_step_args(tokens, slots, start_pos);
             Tensor out;
             {
               py::gil_scoped_release nogil;
               out = mdl.kv_forward(k.tokens, k.slots, k.start_pos, last_only);
             }
             return tensor_to_numpy(out);
           }, py::arg("tokens"), py::arg("slots"), py::arg("start_pos"), py::arg("last_only") = true,
           "One KV-cache step; returns new float32 host logits (B, V) or (B, T, V) on every device.")
      .def("kv_forward_greedy", [](Model& mdl, py::handle tokens, py::handle slots, py::handle start_pos) {
             const KvStep k = kv_step_args(tokens, slots, start_pos);
             Tensor out;
             {
               py::gil_scoped_release nogil;
               out = mdl.kv_forward_greedy(k.tokens, k.slots, k.start_pos);
             }
             return tensor_to_numpy(out);
           }, py::arg("tokens"), py::arg("slots"), py::arg("start_pos"),
           "As kv_forward(last_only=True) followed by argmax over the vocabulary (numpy semantics); "
           "returns a new int32 array (B). On the GPU, T = 1 steps take the argmax there.")
      .def_property_readonly("greedy_on_device", &Model::greedy_on_device)
      .def("kv_greedy_chain", [](Model& mdl, py::handle tokens, py::handle slots, py::handle start_pos, int n) {
             const KvStep k = kv_step_args(tokens, slots, start_pos);
             Tensor out;
             {
               py::gil_scoped_release nogil;
               out = mdl.kv_greedy_chain(k.tokens, k.slots, k.start_pos, n);
             }
             return tensor_to_numpy(out);
           }, py::arg("tokens"), py::arg("slots"), py::arg("start_pos"), py::arg("n"),
           "n greedy decode steps in a row: step 0 runs tokens (B, 1) at start_pos, step i the argmax of "
           "step i - 1 at start_pos + i. Returns a new int32 array (n, B). n in [1, greedy_chain_max].")
      .def_property_readonly("greedy_chain_max", &Model::greedy_chain_max,
                             "Most steps of one kv_greedy_chain call (0: the backend has no chained path).")
      .def("kv_reorder", [](Model& mdl, py::handle src) {
             const Tensor s = ids_tensor(src, "kv_reorder's src");
             py::gil_scoped_release nogil;
             mdl.kv_reorder(s);
           }, py::arg("src"))
      .def("set_inference_dtype", [](Model& mdl, const std::string& dt) {
             PYLLAMA_CHECK(dt == "float32" || dt == "bfloat16", ValueError,
                           "inference dtype must be 'float32' or 'bfloat16', got '" << dt << "'");
             mdl.set_inference_dtype(dtype_from_name(dt));
           }, py::arg("dtype"))
      .def("inference_dtype", [](const Model& mdl) { return std::string(dtype_name(mdl.inference_dtype())); })
      .def("adamw_step", [](Model& mdl, py::array_t<int64_t, py::array::c_style | py::array::forcecast> segments,
                            float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step) {
             PYLLAMA_CHECK(segments.ndim() == 2 && segments.shape(1) == 3, ValueError,
                           "adamw_step: segments must be an int64 array of shape (S, 3): offset, numel, decay");
             std::vector<AdamWSegment> segs(static_cast<size_t>(segments.shape(0)));
             auto sv = segments.unchecked<2>();
             for (size_t i = 0; i < segs.size(); i++) segs[i] = {sv(i, 0), sv(i, 1), sv(i, 2) != 0};
             AdamWHyper h;
             h.lr = lr;
             h.beta1 = beta1;
             h.beta2 = beta2;
             h.eps = eps;
             h.weight_decay = weight_decay;
             py::gil_scoped_release nogil;
             mdl.adamw_step(segs.data(), segs.size(), h, step);
           }, py::arg("segments"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("step"),
           "One fused AdamW update where the model lives (the moments live there too). segments: (S, 3) int64 "
           "rows of (offset, numel, decay); step is 1-based.")
      .def("grad_norm", &Model::grad_norm, py::call_guard<py::gil_scoped_release>())
      .def("clip_grad_norm", &Model::clip_grad_norm, py::arg("max_norm"), py::call_guard<py::gil_scoped_release>(),
           "As torch's clip_grad_norm_; returns the norm before clipping.")
      .def("set_defer_loss", &Model::set_defer_loss, py::arg("on"),
           "With True, forward() returns NaN and keeps its loss until norm_and_losses() reads it (on the GPU: "
           "no host wait per forward). True also drops losses not read.")
      .def("norm_and_losses", [](Model& mdl, double max_norm) {
             std::pair<double, std::vector<double>> r;
             {
               py::gil_scoped_release nogil;
               r = mdl.norm_and_losses(max_norm);
             }
             return py::make_tuple(r.first, py::cast(r.second));
           }, py::arg("max_norm") = 0.0,
           "(gradient norm, [losses of the deferred forwards]) with one wait; clips the gradients to "
           "max_norm first when max_norm > 0 (the returned norm is the one before clipping).")
      .def_property_readonly("has_moments", &Model::has_moments)
      .def("reset_moments", &Model::reset_moments, py::call_guard<py::gil_scoped_release>())
      .def("synchronize", &Model::synchronize, py::call_guard<py::gil_scoped_release>());

  py::class_<LlamaModel, Model>(m, "LlamaModel", "The CPU backend's model (SIMD + OpenMP kernels).")
      .def(py::init<const LlamaConfig&>(), py::arg("config"));

  m.def("make_model", [](const LlamaConfig& cfg, const std::string& device, const std::string& dtype,
                         py::object options) {
          DType dt = dtype_from_name(dtype);
          BackendOptions opt = backend_options(options);
          py::gil_scoped_release nogil;
          return make_model(cfg, device, dt, opt);
        }, py::arg("config"), py::arg("device") = "cpu", py::arg("dtype") = "float32", py::arg("options") = py::none(),
        "A model of config on device ('cpu', 'cuda', 'cuda:N') with zero parameters; options: a dict of "
        "BackendOptions fields (pyllama.BackendOptions).");
  m.def("move_model", [](const Model& src, const std::string& device, const std::string& dtype, py::object options) {
          DType dt = dtype_from_name(dtype);
          BackendOptions opt = backend_options(options);
          py::gil_scoped_release nogil;
          return move_model(src, device, dt, opt);
        }, py::arg("model"), py::arg("device"), py::arg("dtype") = "float32", py::arg("options") = py::none(),
        "A new model on device holding model's parameters, gradients and AdamW moments.");
  m.def("load_weight_files", [](Model& mdl, const std::vector<std::string>& files, bool check_finite) {
          py::gil_scoped_release nogil;
          std::vector<float> staging;
          float* dst = mdl.host_params();
          if (!dst) {
            staging.resize(mdl.num_parameters());
            dst = staging.data();
          }
          load_weight_files(files, mdl.param_infos(), mdl.config().tie_word_embeddings, dst, check_finite);
          if (!staging.empty())
            mdl.set_parameters(Tensor::wrap(dst, {(int64_t)staging.size()}, DType::float32, nullptr));
        }, py::arg("model"), py::arg("files"), py::arg("check_finite") = true,
        "The model's weights from safetensors and PyTorch .bin files (.bin/.pt/.pth read by the core's "
        "restricted unpickler, which runs no pickled code and refuses every call a state dict does not use).");
  m.def("torch_bin_entries", [](const std::string& path) {
          std::vector<py::tuple> out;
          std::vector<TorchBinEntry> entries;
          {
            py::gil_scoped_release nogil;
            TorchBinFile f(path);
            entries = f.entries();
          }
          for (const auto& e : entries) out.push_back(py::make_tuple(e.name, e.dtype, e.shape, e.stride, e.offset));
          return out;
        }, py::arg("path"),
        "(name, dtype, shape, stride, storage_offset) of each tensor of a PyTorch .bin file, read without "
        "running pickled code (ValueError naming the file for anything else).");
  m.def("parse_device", &parse_device, py::arg("device"),
        "('cpu' | 'cuda', index) for 'cpu', 'cuda', 'cuda:N'; ValueError otherwise.");
}

// ------------------------------------------------------------------ optimizer (training)

void bind_optim(py::module_& m) {
  m.def(
      "adamw_step",
      [](py::array params, py::array grads, py::array exp_avg, py::array exp_avg_sq,
                 py::array_t<int64_t, py::array::c_style | py::array::forcecast> segments, float lr, float beta1,
                 float beta2, float eps, float weight_decay, int64_t step) {
        float* p = flat_buffer(params, kAnyLength, "params", true);
        float* g = flat_buffer(grads, kAnyLength, "grads", false);
        float* mm = flat_buffer(exp_avg, kAnyLength, "exp_avg", true);
        float* vv = flat_buffer(exp_avg_sq, kAnyLength, "exp_avg_sq", true);
        const int64_t n = params.shape(0);
        PYLLAMA_CHECK(grads.shape(0) == n && exp_avg.shape(0) == n && exp_avg_sq.shape(0) == n, ValueError,
                      "adamw_step: params, grads, exp_avg and exp_avg_sq must have the same length");
        PYLLAMA_CHECK(segments.ndim() == 2 && segments.shape(1) == 3, ValueError,
                      "adamw_step: segments must be an int64 array of shape (S, 3): offset, numel, decay");
        std::vector<AdamWSegment> segs(static_cast<size_t>(segments.shape(0)));
        auto sv = segments.unchecked<2>();
        for (size_t i = 0; i < segs.size(); i++) segs[i] = {sv(i, 0), sv(i, 1), sv(i, 2) != 0};
        AdamWHyper h;
        h.lr = lr;
        h.beta1 = beta1;
        h.beta2 = beta2;
        h.eps = eps;
        h.weight_decay = weight_decay;
        py::gil_scoped_release nogil;
        adamw_step(p, mm, vv, g, n, segs.data(), segs.size(), h, step);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("segments"),
      py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("step"),
      "One fused AdamW update over flat float32 buffers (in place). segments: (S, 3) int64 rows of "
      "(offset, numel, decay) tiling the buffers. step is 1-based. Use pyllama.AdamW instead.");
  m.def(
      "clip_grad_norm",
      [](py::array grads, double max_norm) {
        float* g = flat_buffer(grads, kAnyLength, "grads", true);
        const int64_t n = grads.shape(0);
        py::gil_scoped_release nogil;
        return clip_grad_norm(g, n, max_norm);
      },
      py::arg("grads"), py::arg("max_norm"),
      "Scale a flat float32 gradient buffer in place so its L2 norm is at most max_norm; returns the norm "
      "before clipping. Use pyllama.clip_grad_norm instead.");
  m.def(
      "grad_global_norm",
      [](py::array grads) {
        const float* g = flat_buffer(grads, kAnyLength, "grads", false);
        const int64_t n = grads.shape(0);
        py::gil_scoped_release nogil;
        return grad_global_norm(g, n);
      },
      py::arg("grads"), "L2 norm of a flat float32 buffer, accumulated in double.");
}

// ------------------------------------------------------------------ tokenizer

// Lists of ids reuse one int object per id below 2^20 (created on first use, kept for the
// life of the process, like Python's small-int cache): allocating a fresh int per token
// would cost about as much as encoding. Called with the GIL held.
py::list ids_to_list(const uint32_t* ids, size_t n) {
  static std::vector<PyObject*>* ints = new std::vector<PyObject*>();  // never freed on purpose
  constexpr uint32_t kCached = 1u << 20;
  py::list out(n);
  for (size_t i = 0; i < n; i++) {
    uint32_t id = ids[i];
    PyObject* v;
    if (id < kCached) {
      if (id >= ints->size()) {
        size_t want = std::min<size_t>(kCached, std::max<size_t>(size_t(id) + 1, ints->size() * 2));
        while (ints->size() < want) {
          PyObject* o = PyLong_FromUnsignedLong(static_cast<unsigned long>(ints->size()));
          if (!o) throw py::error_already_set();
          ints->push_back(o);
        }
      }
      v = (*ints)[id];
      Py_INCREF(v);
    } else {
      v = PyLong_FromUnsignedLong(id);
      if (!v) throw py::error_already_set();
    }
    PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), v);
  }
  return out;
}
py::list ids_to_list(const std::vector<uint32_t>& ids) { return ids_to_list(ids.data(), ids.size()); }

void bind_tokenizer(py::module_& m) {
  // A str's UTF-8 bytes, without a copy (the str caches them; the caller keeps it alive).
  // A str holding lone surrogates raises UnicodeEncodeError (the Python layer repairs it).
  auto utf8 = [](py::handle s) -> std::string_view {
    if (!PyUnicode_Check(s.ptr()))
      throw TypeError(std::string("expected str, got ") + Py_TYPE(s.ptr())->tp_name);
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
    if (!p) throw py::error_already_set();
    return std::string_view(p, static_cast<size_t>(n));
  };
  auto pattern_opt = [](const py::object& p) -> std::optional<Pattern> {
    if (p.is_none()) return std::nullopt;
    return pattern_from_name(p.cast<std::string>());
  };
  auto make_specials = [](const std::vector<std::pair<std::string, uint32_t>>& sp) {
    std::vector<SpecialToken> out;
    for (auto& [t, id] : sp) out.push_back({t, id});
    return out;
  };

  m.def("tokenizer_pattern_regex", [](const std::string& name) { return std::string(pattern_regex(pattern_from_name(name))); },
        py::arg("name"), "The regular expression a preset's scanner implements.");
  m.def("tokenizer_is_preset", &is_pattern_name, py::arg("name"));
  m.def("tokenizer_pretokenize", [utf8](const std::string& name, py::handle text) {
    Pattern p = pattern_from_name(name);
    std::string_view t = utf8(text);
    std::vector<std::string_view> pieces;
    {
      py::gil_scoped_release nogil;
      PieceScanner sc(p, t);
      std::string_view piece;
      while (sc.next(piece)) pieces.push_back(piece);
    }
    py::list out(pieces.size());
    for (size_t i = 0; i < pieces.size(); i++) {
      PyObject* s = PyUnicode_DecodeUTF8(pieces[i].data(), static_cast<Py_ssize_t>(pieces[i].size()), "strict");
      if (!s) throw py::error_already_set();
      PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), s);
    }
    return out;
  }, py::arg("pattern"), py::arg("text"), "Split text as the preset's regex would (list of str).");

  py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "CoreTokenizer", "Byte-level BPE core; use pyllama.Tokenizer.")
      .def(py::init([pattern_opt, make_specials](const std::vector<py::bytes>& tokens, const py::object& pattern,
                                                 const std::vector<std::pair<std::string, uint32_t>>& specials) {
             std::vector<std::string> toks;
             toks.reserve(tokens.size());
             for (const py::bytes& b : tokens) toks.push_back(std::string(b));
             return std::make_shared<Tokenizer>(std::move(toks), pattern_opt(pattern), make_specials(specials));
           }),
           py::arg("tokens"), py::arg("pattern"), py::arg("specials"))
      .def_static("from_tiktoken", [pattern_opt, make_specials](const py::bytes& contents, const py::object& pattern,
                                                               const std::vector<std::pair<std::string, uint32_t>>& specials) {
             std::string_view c = contents;
             std::optional<Pattern> p = pattern_opt(pattern);
             std::vector<SpecialToken> sp = make_specials(specials);
             py::gil_scoped_release nogil;
             return std::make_shared<Tokenizer>(parse_tiktoken(c), p, std::move(sp));
           }, py::arg("contents"), py::arg("pattern"), py::arg("specials"))
      .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
      .def_property_readonly("n_ranks", &Tokenizer::n_ranks)
      .def_property_readonly("specials", [](const Tokenizer& t) {
        std::vector<std::pair<std::string, uint32_t>> out;
        for (const SpecialToken& s : t.specials()) out.emplace_back(s.text, s.id);
        return out;
      })
      .def("token_bytes", [](const Tokenizer& t, uint32_t id) { return py::bytes(std::string(t.token_bytes(id))); })
      .def("rank_of", [](const Tokenizer& t, const py::bytes& b) { return t.rank_of(std::string_view(b)); })
      .def("encode_ordinary", [utf8](const Tokenizer& t, py::handle text) {
        std::string_view s = utf8(text);
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = t.encode_ordinary(s);
        }
        return ids_to_list(ids);
      })
      .def("encode", [utf8](const Tokenizer& t, py::handle text, const std::vector<uint32_t>& allowed) {
        std::string_view s = utf8(text);
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = t.encode(s, allowed);
        }
        return ids_to_list(ids);
      })
      .def("encode_checked", [utf8](const Tokenizer& t, py::handle text, const std::vector<uint32_t>& allowed,
                                                const std::vector<uint32_t>& disallowed) -> py::object {
        // The ids, or (when the text holds a special token in `disallowed`) that token's id as an int.
        std::string_view s = utf8(text);
        std::vector<uint32_t> ids;
        std::pair<size_t, uint32_t> hit{std::string_view::npos, 0};
        {
          py::gil_scoped_release nogil;
          if (!disallowed.empty()) hit = t.find_special(s, disallowed);
          if (hit.first == std::string_view::npos) ids = allowed.empty() ? t.encode_ordinary(s) : t.encode(s, allowed);
        }
        if (hit.first != std::string_view::npos) return py::int_(hit.second);
        return ids_to_list(ids);
      })
      .def("encode_pieces", [utf8](const Tokenizer& t, const py::list& pieces) {
        std::vector<std::string_view> v;
        v.reserve(pieces.size());
        for (py::handle p : pieces) v.push_back(utf8(p));
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = t.encode_pieces(v);
        }
        return ids_to_list(ids);
      })
      .def("encode_batch", [utf8](const Tokenizer& t, const py::list& texts, const std::vector<uint32_t>& allowed,
                                              int threads) {
        std::vector<std::string_view> v;
        v.reserve(texts.size());
        for (py::handle p : texts) v.push_back(utf8(p));
        std::vector<std::vector<uint32_t>> ids;
        {
          py::gil_scoped_release nogil;
          ids = t.encode_batch(v, allowed, threads);
        }
        py::list out(ids.size());
        for (size_t i = 0; i < ids.size(); i++) {
          PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), ids_to_list(ids[i]).release().ptr());
          std::vector<uint32_t>().swap(ids[i]);  // free as we go
        }
        return out;
      })
      .def("find_special", [utf8](const Tokenizer& t, py::handle text, const std::vector<uint32_t>& ids) -> py::object {
        std::string_view s = utf8(text);
        std::pair<size_t, uint32_t> hit;
        {
          py::gil_scoped_release nogil;
          hit = t.find_special(s, ids);
        }
        if (hit.first == std::string_view::npos) return py::none();
        return py::int_(hit.second);
      })
      .def("find_special_batch", [utf8](const Tokenizer& t, const py::list& texts, const std::vector<uint32_t>& ids) -> py::object {
        // (index of the first text holding one of the special tokens `ids`, that token's id) or None
        std::vector<std::string_view> v;
        v.reserve(texts.size());
        for (py::handle p : texts) v.push_back(utf8(p));
        size_t index = v.size();
        uint32_t id = 0;
        {
          py::gil_scoped_release nogil;
          for (size_t i = 0; i < v.size() && index == v.size(); i++) {
            auto hit = t.find_special(v[i], ids);
            if (hit.first != std::string_view::npos) index = i, id = hit.second;
          }
        }
        if (index == v.size()) return py::none();
        return py::make_tuple(index, id);
      })
      .def("decode_bytes", [](const Tokenizer& t, const std::vector<int64_t>& ids) {
        std::string out;
        {
          py::gil_scoped_release nogil;
          out = t.decode_bytes(ids.data(), ids.size());
        }
        return py::bytes(out);
      })
      .def("decode_bytes_array", [](const Tokenizer& t, py::array_t<int64_t, py::array::c_style> ids) {
        std::string out;
        const int64_t* p = ids.data();
        size_t n = static_cast<size_t>(ids.size());
        {
          py::gil_scoped_release nogil;
          out = t.decode_bytes(p, n);
        }
        return py::bytes(out);
      })
      .def("to_tiktoken", [](const Tokenizer& t) { return py::bytes(t.to_tiktoken()); })
      .def("hf_merges", [](const Tokenizer& t) {
        auto merges = t.hf_merges();
        py::list out(merges.size());
        for (size_t i = 0; i < merges.size(); i++) out[i] = py::make_tuple(merges[i][0], merges[i][1], merges[i][2]);
        return out;
      });

  py::class_<BpeTrainer>(m, "CoreBpeTrainer", "Byte-level BPE training core; use pyllama.Tokenizer.train.")
      .def(py::init([pattern_opt](const py::object& pattern, std::vector<std::string> specials) {
             return new BpeTrainer(pattern_opt(pattern), std::move(specials));
           }),
           py::arg("pattern"), py::arg("specials"))
      .def("add_text", [utf8](BpeTrainer& tr, py::handle text) {
        std::string_view s = utf8(text);
        py::gil_scoped_release nogil;
        tr.add_text(s);
      })
      .def("add_pieces", [utf8](BpeTrainer& tr, const py::dict& counts) {
        for (auto item : counts) tr.add_piece(utf8(item.first), item.second.cast<uint64_t>());
      })
      .def_property_readonly("n_unique_pieces", &BpeTrainer::n_unique_pieces)
      .def("train", [](BpeTrainer& tr, size_t n_tokens, const py::object& progress) {
        // Reports progress and lets Ctrl-C stop a long run (the exception unwinds train()).
        std::function<void(size_t, size_t)> cb = [&progress](size_t done, size_t total) {
          py::gil_scoped_acquire gil;
          if (!progress.is_none()) progress(done, total);
          if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        };
        std::vector<std::string> toks;
        {
          py::gil_scoped_release nogil;
          toks = tr.train(n_tokens, cb);
        }
        py::list out(toks.size());
        for (size_t i = 0; i < toks.size(); i++) out[i] = py::bytes(toks[i]);
        return out;
      }, py::arg("n_tokens"), py::arg("progress") = py::none());
}

// ------------------------------------------------------------------ Hugging Face tokenizers (tokenizer_hf.h)

void bind_tokenizer_hf(py::module_& m) {
  auto utf8 = [](py::handle s) -> std::string_view {
    if (!PyUnicode_Check(s.ptr()))
      throw TypeError(std::string("expected str, got ") + Py_TYPE(s.ptr())->tp_name);
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(s.ptr(), &n);
    if (!p) throw py::error_already_set();
    return std::string_view(p, static_cast<size_t>(n));
  };
  py::class_<HfTokenizer, std::shared_ptr<HfTokenizer>>(m, "CoreHfTokenizer",
                                                        "A tokenizer.json pipeline; use pyllama.Tokenizer.from_pretrained.")
      .def(py::init([](const std::string& json_text) {
             py::gil_scoped_release nogil;
             return std::make_shared<HfTokenizer>(json_text);
           }),
           py::arg("json_text"))
      .def("encode", [utf8](const HfTokenizer& t, py::handle text, bool add_special,
                            std::optional<std::vector<uint32_t>> allowed) {
        std::string_view s = utf8(text);
        std::vector<uint32_t> ids;
        {
          py::gil_scoped_release nogil;
          ids = t.encode(s, add_special, allowed ? &*allowed : nullptr);
        }
        return ids_to_list(ids);
      }, py::arg("text"), py::arg("add_special_tokens"), py::arg("allowed_special") = py::none())
      .def("encode_batch", [utf8](const HfTokenizer& t, const py::list& texts, bool add_special) {
        std::vector<std::string_view> v;
        v.reserve(texts.size());
        for (auto x : texts) v.push_back(utf8(x));
        std::vector<uint32_t> ids;  // every text's ids, one after another
        std::vector<size_t> ends(v.size());
        {
          py::gil_scoped_release nogil;
          for (size_t i = 0; i < v.size(); i++) {
            t.encode_into(v[i], add_special, ids);
            ends[i] = ids.size();
          }
        }
        py::list out(v.size());
        for (size_t i = 0, start = 0; i < v.size(); start = ends[i++])
          PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), ids_to_list(ids.data() + start, ends[i] - start).release().ptr());
        return out;
      }, py::arg("texts"), py::arg("add_special_tokens"))
      .def("pre_tokenize", [utf8](const HfTokenizer& t, py::handle text) {
        std::vector<std::string> pieces = t.pre_tokenize(utf8(text));
        py::list out(pieces.size());
        for (size_t i = 0; i < pieces.size(); i++) out[i] = py::bytes(pieces[i]);
        return out;
      }, py::arg("text"))
      .def("count_pieces", [utf8](const HfTokenizer& t, const py::list& texts) {
        // (piece, count) of every piece pre_tokenize gives for the texts (training's word counts)
        std::vector<std::string_view> v;
        v.reserve(texts.size());
        for (auto x : texts) v.push_back(utf8(x));
        ByteMap<uint64_t> counts;
        {
          py::gil_scoped_release nogil;
          for (std::string_view text : v)
            for (const std::string& p : t.pre_tokenize(text)) (*counts.insert(p.data(), p.size(), 0).first)++;
        }
        py::list out;
        counts.for_each([&](std::string_view p, uint64_t n) { out.append(py::make_tuple(py::bytes(p.data(), p.size()), n)); });
        return out;
      }, py::arg("texts"))
      .def("decode", [](const HfTokenizer& t, const std::vector<int64_t>& ids, bool skip_special) {
        std::string s;
        {
          py::gil_scoped_release nogil;
          s = t.decode(ids, skip_special);
        }
        return py::bytes(s);
      }, py::arg("ids"), py::arg("skip_special_tokens"))
      .def_property_readonly("vocab_size", &HfTokenizer::vocab_size)
      .def_property_readonly("model_type", &HfTokenizer::model_type)
      .def("token_to_id", [](const HfTokenizer& t, const std::string& tok) { return t.token_to_id(tok); })
      .def("id_to_token", [](const HfTokenizer& t, uint32_t id) { return py::bytes(t.id_to_token(id)); })
      .def("is_special", &HfTokenizer::is_special)
      .def_property_readonly("added_tokens", [](const HfTokenizer& t) {
        py::list out;
        for (const HfAddedToken& a : t.added_tokens())
          out.append(py::make_tuple(a.id, py::bytes(a.content), a.special));
        return out;
      })
      .def_property_readonly("prefix_ids", &HfTokenizer::prefix_ids)
      .def_property_readonly("suffix_ids", &HfTokenizer::suffix_ids)
      .def("set_template", &HfTokenizer::set_template, py::arg("prefix"), py::arg("suffix"));
  m.def("sentencepiece_to_hf_json", [](const py::bytes& data) {
    std::string_view d(data);
    py::gil_scoped_release nogil;
    return sentencepiece_to_hf_json(d);
  }, py::arg("model_bytes"), "A SentencePiece .model file's equivalent tokenizer.json text.");
  m.def("train_char_bpe", [](const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                             const std::string& prefix, const std::vector<std::string>& specials, uint64_t min_frequency) {
    CharBpeResult r;
    {
      py::gil_scoped_release nogil;
      r = train_char_bpe(words, vocab_size, prefix, specials, min_frequency);
    }
    return py::make_tuple(r.vocab, r.merges);
  }, py::arg("words"), py::arg("vocab_size"), py::arg("prefix"), py::arg("specials"), py::arg("min_frequency"),
     "Character-level BPE over counted words: (vocab, merges).");
  m.def("train_unigram", [](const std::vector<std::pair<std::string, uint64_t>>& words, size_t vocab_size,
                            size_t max_piece_chars, size_t seed_size) {
    std::vector<UnigramPiece> r;
    {
      py::gil_scoped_release nogil;
      r = train_unigram(words, vocab_size, max_piece_chars, seed_size);
    }
    py::list out;
    for (auto& p : r) out.append(py::make_tuple(p.piece, p.score));
    return out;
  }, py::arg("words"), py::arg("vocab_size"), py::arg("max_piece_chars"), py::arg("seed_size"),
     "Unigram pieces learnt by EM + pruning: [(piece, log probability)], best first.");
}

// ------------------------------------------------------------------ CUDA backend (cuda/)

void bind_cuda(py::module_& m) {
#ifdef PYLLAMA_HAVE_CUDA
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  // The CUDA backend's model: the Model interface (bound above) plus its own diagnostics.
  py::class_<LlamaModelCuda, Model>(m, "LlamaModelCuda", R"doc(
The model on an NVIDIA GPU (a Model; made by move_model / make_model with device 'cuda[:N]'),
with the same flat layouts as every backend. dtype 'float32' (matches the CPU) or 'bfloat16'
(bf16 weights and activations for compute, float32 master weights, gradients and AdamW
moments). Use pyllama.Llama.to('cuda') instead of this class.
)doc")
      .def_property_readonly("device_index", &LlamaModelCuda::device_index)
      .def_property_readonly("uses_cublas", &LlamaModelCuda::uses_cublas)
      .def_property_readonly("matmul_backend", &LlamaModelCuda::matmul_backend,
                             "The matmul back end: 'cublaslt', 'cublas' or 'tiled' (PYLLAMA_CUDA_MATMUL).")
      .def("matmul_stats", [](const LlamaModelCuda& g) {
             const LlamaModelCuda::MatmulStats st = g.matmul_stats();
             py::dict d;
             d["backend"] = g.matmul_backend();
             d["lt_plans"] = st.lt_plans;
             d["lt_fallbacks"] = st.lt_fallbacks;
             return d;
           }, "{'backend', 'lt_plans': cuBLASLt plans made, 'lt_fallbacks': products cuBLASLt refused "
              "(run by cublasGemmEx instead)}")
      .def_property_readonly("uses_flash_attention", &LlamaModelCuda::uses_flash_attention)
      .def_property_readonly("attention_kernels", &LlamaModelCuda::attention_kernels,
                             "The training attention: 'flash', 'flash-simt' or 'naive' (BackendOptions.attention).")
      .def("set_decode_options", [](LlamaModelCuda& g, py::object fast_path, py::object cuda_graphs,
                                    py::object skinny_gemv, py::object fused, py::object pdl) {
             const auto st = g.decode_stats();
             const bool f = fast_path.is_none() ? st.fast_path : fast_path.cast<bool>();
             const bool c = cuda_graphs.is_none() ? st.cuda_graphs : cuda_graphs.cast<bool>();
             const bool k = skinny_gemv.is_none() ? st.skinny_gemv : skinny_gemv.cast<bool>();
             const bool u = fused.is_none() ? st.fused : fused.cast<bool>();
             const bool p = pdl.is_none() ? st.pdl : pdl.cast<bool>();
             py::gil_scoped_release nogil;
             g.set_decode_options(f, c, k, u, p);
           }, py::arg("fast_path") = py::none(), py::arg("cuda_graphs") = py::none(),
           py::arg("skinny_gemv") = py::none(), py::arg("fused") = py::none(), py::arg("pdl") = py::none(),
           "T = 1 decode step: fast_path (fixed buffers, pinned staging, device argmax; env PYLLAMA_CUDA_DECODE), "
           "cuda_graphs (env PYLLAMA_CUDA_GRAPHS), skinny_gemv (matmuls of <= 4 rows by a 128-bit-load "
           "kernel instead of cuBLAS; env PYLLAMA_CUDA_DECODE_GEMV) and fused (with skinny_gemv: RMSNorm, "
           "RoPE + cache store, SwiGLU, residual adds and the argmax folded into the matmul kernels, five "
           "kernels a layer; env PYLLAMA_CUDA_DECODE_FUSED) and pdl (the fused kernels as programmatic "
           "dependent launches, each starting while the one before finishes; sm_90+ only, ignored before; "
           "env PYLLAMA_CUDA_PDL); None keeps the current setting. "
           "Drops captured graphs.")
      .def("set_profiling", &LlamaModelCuda::set_profiling, py::arg("on"), py::call_guard<py::gil_scoped_release>(),
           "Per-region GPU timings: while on, forward, backward, AdamW and eager decode steps time each op "
           "with CUDA events (and wait for the GPU after each pass). Turning it on clears the totals.")
      .def("profile", [](const LlamaModelCuda& g) {
             py::dict d;
             for (const auto& e : g.profile()) d[py::str(e.name)] = py::make_tuple(e.ms, e.count);
             return d;
           }, "{region: (milliseconds, times)} summed since set_profiling(True).")
      .def("decode_stats", [](const LlamaModelCuda& g) {
             const auto st = g.decode_stats();
             py::dict d;
             d["fast_path"] = st.fast_path;
             d["cuda_graphs"] = st.cuda_graphs;
             d["skinny_gemv"] = st.skinny_gemv;
             d["fused"] = st.fused;
             d["pdl"] = st.pdl;
             d["captures"] = st.captures;
             d["replays"] = st.replays;
             d["eager_steps"] = st.eager_steps;
             d["general_steps"] = st.general_steps;
             d["graph_error"] = st.graph_error;
             return d;
           }, "Counters of the decode paths (fast steps = replays + eager_steps; general_steps: kv_forward calls "
              "that took the general path) and why graphs were switched off, if they were.")
      .def("bytes_allocated", &LlamaModelCuda::bytes_allocated,
           "Device bytes this model's buffers hold now (cuBLAS-internal memory not included).");

  m.def("cuda_memory_stats", []() {
    py::dict d;
    d["bytes_allocated"] = cuda_bytes_allocated();
    d["peak_bytes_allocated"] = cuda_peak_bytes_allocated();
    return d;
  }, "Device bytes held by LlamaModelCuda buffers of this process: now, and the most since the last "
     "cuda_reset_peak_memory() (cuBLAS-internal memory, CUDA graphs and pinned host memory not included).");
  m.def("cuda_reset_peak_memory", []() { cuda_reset_peak_bytes_allocated(); },
        "Set the peak of cuda_memory_stats() to the current bytes.");
#ifdef PYLLAMA_CUDA_SIM_BUILD
  m.def("cuda_sim_counters", []() {
    py::dict d;
    for (int i = 0; const char* name = sim::counter_name(i); i++) d[name] = sim::counter(name);
    return d;
  }, "PYLLAMA_CUDA=SIM builds only (tools/cuda_sim): what the host has asked of the emulated device so "
     "far: kernel_launches and cublas_calls outside CUDA graphs, graph_launches, host_waits (calls that "
     "return only after device work), copies by direction.");
#endif
  m.def("cuda_check_ops", [](unsigned seed) {
          std::vector<std::pair<std::string, double>> r;
          {
            py::gil_scoped_release nogil;
            r = cuda_check_ops(seed);
          }
          py::dict d;
          for (auto& kv : r) d[py::str(kv.first)] = kv.second;
          return d;
        }, py::arg("seed") = 1234,
        "A test hook (tests/cuda/ops_check.cu): every CUDA kernel against its CPU twin on random float32 inputs "
        "(every matmul back end the build has): name -> max |gpu - cpu| / max |cpu|.");
#else
  (void)m;  // built without the CUDA backend: nothing to bind (build_info()['cuda'] is False)
#endif
}

// ------------------------------------------------------------------ NCCL (cuda/nccl.h)

void bind_nccl(py::module_& m) {
#ifdef PYLLAMA_HAVE_CUDA
  py::register_exception<NcclError>(m, "NcclError", PyExc_RuntimeError);
  auto op_of = [](const std::string& op) {
    if (op == "sum") return NcclOp::sum;
    if (op == "avg") return NcclOp::avg;
    throw ValueError("NCCL reduction op must be 'sum' or 'avg', got '" + op + "'");
  };
  m.def("nccl_load", [](const std::vector<std::string>& candidates) {
          py::gil_scoped_release nogil;
          return nccl_load(candidates);
        }, py::arg("candidates"),
        "Load libnccl (dlopen) from the first candidate path that works; returns it. Raises NcclError "
        "listing every candidate and why it failed. Use pyllama.distributed.load_nccl().");
  m.def("nccl_loaded", &nccl_loaded);
  m.def("nccl_loaded_path", &nccl_loaded_path);
  m.def("nccl_version", &nccl_version, "NCCL_VERSION_CODE of the loaded library (e.g. 23203 for 2.32.3).");
  m.def("nccl_unique_id", []() {
          std::string id;
          {
            py::gil_scoped_release nogil;
            id = nccl_unique_id();
          }
          return py::bytes(id);
        }, "A new NCCL unique id (128 bytes): rank 0 creates it, every rank passes it to NcclComm.");
  py::class_<NcclComm>(m, "NcclComm", R"doc(
An NCCL communicator on one GPU (cuda/nccl.h). Every operation waits for its result
with a deadline (timeout_s; 0: none): past it, or on an NCCL error, the communicator
is aborted and NcclError is raised. Use pyllama.distributed.NCCLCommunicator.
)doc")
      .def(py::init([](py::bytes unique_id, int rank, int world_size, int device, double timeout_s,
                       bool blocking) {
             std::string id = unique_id;
             std::unique_ptr<NcclComm> c;
             {
               py::gil_scoped_release nogil;
               c = std::make_unique<NcclComm>(id, rank, world_size, device, timeout_s, blocking);
             }
             return c;
           }),
           py::arg("unique_id"), py::arg("rank"), py::arg("world_size"), py::arg("device"),
           py::arg("timeout_s") = 300.0, py::arg("blocking") = false)
      .def_property_readonly("blocking", &NcclComm::blocking)
      .def_property_readonly("rank", &NcclComm::rank)
      .def_property_readonly("world_size", &NcclComm::world_size)
      .def_property_readonly("device", &NcclComm::device)
      .def_property("timeout_s", &NcclComm::timeout_s, &NcclComm::set_timeout_s)
      .def_property_readonly("usable", &NcclComm::usable)
      .def_property_readonly("failure", &NcclComm::failure)
      .def("allreduce_grads", [op_of](NcclComm& c, Model& g, const std::string& op, py::object extra,
                                      const std::string& what) {
             double* xp = nullptr;
             int nx = 0;
             py::array x;
             if (!extra.is_none()) {
               PYLLAMA_CHECK(py::isinstance<py::array>(extra), TypeError, what << ": extra must be a numpy array");
               x = py::reinterpret_borrow<py::array>(extra);
               PYLLAMA_CHECK(x.dtype().equal(py::dtype::of<double>()) && x.ndim() == 1 &&
                                 (x.flags() & py::array::c_style) && x.writeable(),
                             TypeError, what << ": extra must be a writable contiguous 1-D float64 array");
               xp = static_cast<double*>(x.mutable_data());
               nx = (int)x.shape(0);
             }
             NcclOp o = op_of(op);
             py::gil_scoped_release nogil;
             c.allreduce_grads(g, o, xp, nx, what);
           }, py::arg("model"), py::arg("op") = "avg", py::arg("extra") = py::none(),
           py::arg("what") = "gradient all-reduce",
           "In place over the model's GPU gradients (op 'sum' or 'avg'); the float64 array extra is summed "
           "over the ranks in the same NCCL group.")
      .def("broadcast_params", [](NcclComm& c, Model& g, int root, const std::string& what) {
             py::gil_scoped_release nogil;
             c.broadcast_params(g, root, what);
           }, py::arg("model"), py::arg("root") = 0, py::arg("what") = "weight broadcast")
      .def("allreduce_host", [op_of](NcclComm& c, py::array a, const std::string& op, const std::string& what) {
             NcclType t;
             if (a.dtype().equal(py::dtype::of<float>()))
               t = NcclType::float32;
             else if (a.dtype().equal(py::dtype::of<double>()))
               t = NcclType::float64;
             else
               throw TypeError(what + ": allreduce_host takes float32 or float64 arrays, got " +
                               std::string(py::str(a.dtype())));
             PYLLAMA_CHECK(a.ndim() == 1 && (a.flags() & py::array::c_style) && a.writeable(), TypeError,
                           what << ": expected a writable contiguous 1-D numpy array");
             void* p = a.mutable_data();
             size_t n = (size_t)a.shape(0);
             NcclOp o = op_of(op);
             py::gil_scoped_release nogil;
             c.allreduce_host(p, n, t, o, what);
           }, py::arg("array"), py::arg("op") = "sum", py::arg("what") = "all-reduce",
           "In place over a host float32/float64 array (staged through the GPU).")
      .def("abort", &NcclComm::abort, py::call_guard<py::gil_scoped_release>())
      .def("destroy", &NcclComm::destroy, py::call_guard<py::gil_scoped_release>());
#else
  (void)m;  // no CUDA backend: no NCCL either
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyllama's native core (C++17). Use the pyllama package, not this module directly.";
  register_backends();  // cpu, and cuda when compiled in: make_model / move_model know them
  py::register_exception<TypeError>(m, "CoreTypeError", PyExc_TypeError);
  py::register_exception<IOError>(m, "CoreIOError", PyExc_OSError);
  py::register_exception<ValueError>(m, "CoreValueError", PyExc_ValueError);
  py::register_exception<IndexError>(m, "CoreIndexError", PyExc_IndexError);
  bind_tensor(m);
  bind_runtime(m);
  bind_model(m);
  bind_optim(m);
  bind_tokenizer(m);
  bind_tokenizer_hf(m);
  bind_cuda(m);
  bind_nccl(m);
}
