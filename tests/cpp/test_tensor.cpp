// Tensor basics: shapes, views, bf16 round trip, errors are exceptions (never aborts).
#include <cmath>
#include <cstdio>
#include "tensor.h"
#include "test_util.h"

using namespace pyllama;

int main() {
  Tensor t = Tensor::zeros({2, 3}, DType::float32);
  CHECK(t.numel() == 6);
  CHECK(t.nbytes() == 24);
  t.data<float>()[5] = 7.f;
  Tensor v = t.view({3, 2});
  CHECK(v.data<float>()[5] == 7.f);
  CHECK_THROWS(t.view({4, 2}), ValueError);
  CHECK_THROWS(t.check(DType::int32, 2, "x"), TypeError);
  CHECK_THROWS(t.check(DType::float32, 3, "x"), ValueError);
  CHECK_THROWS(dtype_from_name("float8"), ValueError);
  float vals[] = {1.0f, -2.5f, 3.14159f, 1e-20f, 65504.f};
  for (float f : vals) {
    float r = bf16_to_float(float_to_bf16(f));
    CHECK(std::fabs(r - f) <= std::fabs(f) * (1.0f / 128));
  }
  Tensor b = t.to_dtype(DType::bfloat16);
  CHECK(b.dtype() == DType::bfloat16);
  CHECK(b.to_dtype(DType::float32).data<float>()[5] == 7.f);
  return test_summary("test_tensor");
}
