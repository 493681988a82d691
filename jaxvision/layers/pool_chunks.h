// Shared by the custom calls compiled by layers/native.py: their work split over XLA's intra-op
// thread pool, and the clones of their loops for each CPU class.
#ifndef JAXVISION_LAYERS_POOL_CHUNKS_H_
#define JAXVISION_LAYERS_POOL_CHUNKS_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "xla/ffi/api/ffi.h"

// A loop compiled for AVX2 and for the baseline on x86-64, the loader picking what the CPU runs.
#if defined(__x86_64__)
#define JAXVISION_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define JAXVISION_CLONES
#endif

namespace jaxvision {

// The calling thread and the pool run body(0..chunks-1), one chunk at a time per thread. Tasks
// that start after every chunk is taken return at once, so the caller waits only for chunks in
// progress; the shared state outlives the call for them. The first `Exception` a chunk throws
// is returned as its what() ("" when none was thrown).
template <typename Exception, typename Body>
std::string ForChunks(xla::ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::string error;
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  const Body* f = &body;
  auto run = [state, chunks, f] {
    for (int64_t i; (i = state->next.fetch_add(1)) < chunks;) {
      std::string error;
      try {
        (*f)(i);
      } catch (const Exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(state->mutex);
      if (!error.empty() && state->error.empty()) state->error = error;
      if (++state->done == chunks) state->finished.notify_all();
    }
  };
  for (int64_t t = 1; t < chunks; ++t) pool.Schedule([run] { run(); });
  run();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done == chunks; });
  return state->error;
}

}  // namespace jaxvision

#endif  // JAXVISION_LAYERS_POOL_CHUNKS_H_
