// BatchNorm's training-mode reductions as XLA:CPU custom calls (layers/bn_native.py).
//
// XLA:CPU computes a batch's variance from `x - mean` written out in full (YNNPACK's reductions
// take no broadcast), and keeps that tensor for the backward's sum(dy * (x - mean)). Here each
// statistic is read straight from x: the forward reads x twice and writes nothing of its size,
// the backward reads dy and x once for both of its sums.
//
// x is (rows, channels), channels contiguous (NHWC flattened). Rows are split into one range per
// thread; each range accumulates per channel in double, and the ranges are added in order, so a
// result depends on the thread count only through that double sum's rounding.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "pool_chunks.h"

namespace ffi = xla::ffi;

namespace {

JAXVISION_CLONES void SumRows(const float* __restrict x, int64_t c, int64_t begin, int64_t end,
                              double* __restrict acc) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * c;
    for (int64_t j = 0; j < c; ++j) acc[j] += row[j];
  }
}

JAXVISION_CLONES void SquaresRows(const float* __restrict x, const float* __restrict mean,
                                  int64_t c, int64_t begin, int64_t end, double* __restrict acc) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * c;
    for (int64_t j = 0; j < c; ++j) {
      const double d = static_cast<double>(row[j]) - mean[j];
      acc[j] += d * d;
    }
  }
}

JAXVISION_CLONES void GradRows(const float* __restrict dy, const float* __restrict x,
                               const float* __restrict mean, int64_t c, int64_t begin,
                               int64_t end, double* __restrict sum_dy,
                               double* __restrict sum_dy_xc) {
  for (int64_t r = begin; r < end; ++r) {
    const float* g = dy + r * c;
    const float* row = x + r * c;
    for (int64_t j = 0; j < c; ++j) {
      sum_dy[j] += g[j];
      sum_dy_xc[j] += static_cast<double>(g[j]) * (static_cast<double>(row[j]) - mean[j]);
    }
  }
}

// The fewest elements a thread's range holds: smaller tensors stay on the calling thread.
constexpr int64_t kMinElements = 1 << 15;

int64_t Ranges(ffi::ThreadPool& pool, int64_t rows, int64_t c) {
  return std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(pool.num_threads()), rows,
                            rows * c / kMinElements}));
}

// body(begin, end, accumulators of range t) over every range, the accumulators (n of `width`
// doubles per range) zeroed first; returns them, or sets `error`.
template <typename Body>
std::vector<double> OverRanges(ffi::ThreadPool& pool, int64_t rows, int64_t c, int64_t width,
                               const Body& body, std::string* error) {
  const int64_t ranges = Ranges(pool, rows, c);
  std::vector<double> acc(ranges * width, 0.0);
  *error = jaxvision::ForChunks<std::exception>(pool, ranges, [&](int64_t t) {
    body(rows * t / ranges, rows * (t + 1) / ranges, acc.data() + t * width);
  });
  for (int64_t t = 1; t < ranges; ++t)
    for (int64_t j = 0; j < width; ++j) acc[j] += acc[t * width + j];
  acc.resize(width);
  return acc;
}

ffi::Error Check(int64_t size, int64_t c, const char* what) {
  if (c <= 0 || size % c != 0)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string("bn_stats: ") + what + " is not (rows, channels)");
  return ffi::Error::Success();
}

ffi::Error Stats(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> mean,
                 ffi::ResultBuffer<ffi::F32> var) {
  const int64_t c = mean->element_count();
  if (auto e = Check(x.element_count(), c, "x"); e.failure()) return e;
  const int64_t rows = x.element_count() / c;
  const float* data = x.typed_data();
  std::string error;
  std::vector<double> sums = OverRanges(pool, rows, c, c, [&](int64_t b, int64_t e, double* acc) {
    SumRows(data, c, b, e, acc);
  }, &error);
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "bn_stats: " + error);
  float* m = mean->typed_data();
  for (int64_t j = 0; j < c; ++j) m[j] = static_cast<float>(sums[j] / std::max<int64_t>(rows, 1));
  // the deviations from the float32 mean, the one the normalisation subtracts
  std::vector<double> squares = OverRanges(pool, rows, c, c,
      [&](int64_t b, int64_t e, double* acc) { SquaresRows(data, m, c, b, e, acc); }, &error);
  float* v = var->typed_data();
  for (int64_t j = 0; j < c; ++j)
    v[j] = static_cast<float>(squares[j] / std::max<int64_t>(rows, 1));
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "bn_stats: " + error);
  return ffi::Error::Success();
}

ffi::Error GradSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> x,
                    ffi::Buffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> sum_dy,
                    ffi::ResultBuffer<ffi::F32> sum_dy_xc) {
  const int64_t c = mean.element_count();
  if (auto e = Check(x.element_count(), c, "x"); e.failure()) return e;
  if (dy.element_count() != x.element_count())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "bn_stats: dy and x differ in size");
  const int64_t rows = x.element_count() / c;
  const float *g = dy.typed_data(), *data = x.typed_data(), *m = mean.typed_data();
  std::string error;
  std::vector<double> acc = OverRanges(pool, rows, c, 2 * c,
      [&](int64_t b, int64_t e, double* a) { GradRows(g, data, m, c, b, e, a, a + c); }, &error);
  float *s0 = sum_dy->typed_data(), *s1 = sum_dy_xc->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    s0[j] = static_cast<float>(acc[j]);
    s1[j] = static_cast<float>(acc[c + j]);
  }
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "bn_stats: " + error);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionBnStats, Stats,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionBnGradSums, GradSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
