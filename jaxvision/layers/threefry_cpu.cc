// jax's threefry2x32 hash (20 rounds, the key schedule of Salmon et al. 2011 as jax applies it)
// as an XLA:CPU custom call: one call per draw, where jax's CPU lowering compiles a loop of
// kernels and its unrolled lowering a large kernel per draw (layers/rng_lowering.py).
#include <algorithm>
#include <cstdint>
#include <exception>
#include <string>

#include "xla/ffi/api/ffi.h"
#include "pool_chunks.h"

namespace ffi = xla::ffi;

namespace {

inline uint32_t RotateLeft(uint32_t v, uint32_t r) { return (v << r) | (v >> (32 - r)); }

// Four rounds with the rotations R0-R3; Block adds the key after each four. Written out, so the
// compiler vectorises the element loop over straight-line code.
template <uint32_t R0, uint32_t R1, uint32_t R2, uint32_t R3>
inline void Rounds(uint32_t& v0, uint32_t& v1) {
  v0 += v1; v1 = RotateLeft(v1, R0); v1 ^= v0;
  v0 += v1; v1 = RotateLeft(v1, R1); v1 ^= v0;
  v0 += v1; v1 = RotateLeft(v1, R2); v1 ^= v0;
  v0 += v1; v1 = RotateLeft(v1, R3); v1 ^= v0;
}

inline void Block(uint32_t a, uint32_t b, uint32_t x0, uint32_t x1, uint32_t* y0, uint32_t* y1) {
  const uint32_t c = a ^ b ^ 0x1BD11BDAu;
  uint32_t v0 = x0 + a, v1 = x1 + b;
  Rounds<13, 15, 26, 6>(v0, v1); v0 += b; v1 += c + 1;
  Rounds<17, 29, 16, 24>(v0, v1); v0 += c; v1 += a + 2;
  Rounds<13, 15, 26, 6>(v0, v1); v0 += a; v1 += b + 3;
  Rounds<17, 29, 16, 24>(v0, v1); v0 += b; v1 += c + 4;
  Rounds<13, 15, 26, 6>(v0, v1); v0 += c; v1 += a + 5;
  *y0 = v0;
  *y1 = v1;
}

// One key pair for every element (a draw), or a pair per element (vmapped keys); cloned per CPU
// class (JAXVISION_CLONES, pool_chunks.h).
#define JAXVISION_HASH(NAME, KEY)                                                              \
  JAXVISION_CLONES void NAME(                                                                  \
      const uint32_t* __restrict k1, const uint32_t* __restrict k2,                             \
      const uint32_t* __restrict x1, const uint32_t* __restrict x2, uint32_t* __restrict y1,    \
      uint32_t* __restrict y2, int64_t begin, int64_t end) {                                    \
    for (int64_t i = begin; i < end; ++i)                                                      \
      Block(k1[KEY], k2[KEY], x1[i], x2[i], y1 + i, y2 + i);                                     \
  }
JAXVISION_HASH(HashOneKey, 0)
JAXVISION_HASH(HashKeys, i)

// The fewest elements a task hashes.
constexpr int64_t kChunk = 1 << 16;

ffi::Error Threefry2x32(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> k1, ffi::Buffer<ffi::U32> k2,
                        ffi::Buffer<ffi::U32> x1, ffi::Buffer<ffi::U32> x2,
                        ffi::ResultBuffer<ffi::U32> y1, ffi::ResultBuffer<ffi::U32> y2) {
  const int64_t n = x1.element_count();
  const int64_t keys = k1.element_count();
  if (x2.element_count() != n || y1->element_count() != n || y2->element_count() != n ||
      k2.element_count() != keys || (keys != 1 && keys != n)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "threefry2x32: the counters, results and keys differ in size");
  }
  auto hash = [f = keys == 1 ? HashOneKey : HashKeys, a = k1.typed_data(),
               b = k2.typed_data(), c0 = x1.typed_data(), c1 = x2.typed_data(),
               o0 = y1->typed_data(), o1 = y2->typed_data()](int64_t begin, int64_t end) {
    f(a, b, c0, c1, o0, o1, begin, end);
  };
  // one task per thread, none smaller than kChunk: a small draw stays on the calling thread
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), n / kChunk));
  const std::string error = jaxvision::ForChunks<std::exception>(
      pool, tasks, [&](int64_t t) { hash(n * t / tasks, n * (t + 1) / tasks); });
  if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "threefry2x32: " + error);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionThreefry2x32, Threefry2x32,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
