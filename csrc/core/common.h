// common.h — errors and small helpers shared by every part of the core.
//
// The core never exits or aborts on bad input: it throws one of the exception
// types below, and the binding file maps them to Python exceptions
// (ValueError, TypeError, IndexError, OSError, RuntimeError).
//
//   PYLLAMA_CHECK(T <= cfg.max_position_embeddings, pyllama::ValueError,
//                 "sequence length " << T << " exceeds max_position_embeddings");
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace pyllama {

struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct IndexError : std::out_of_range {
  using std::out_of_range::out_of_range;
};
struct IOError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A device the build has no backend for (Python: RuntimeError).
struct BackendUnavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace pyllama

#define PYLLAMA_CHECK(cond, ExcType, msg)                 \
  do {                                                    \
    if (!(cond)) {                                        \
      std::ostringstream pyllama_check_ss_;               \
      pyllama_check_ss_ << msg;                           \
      throw ExcType(pyllama_check_ss_.str());             \
    }                                                     \
  } while (0)
