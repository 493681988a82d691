// 2-d convolutions (NHWC activations, HWIO kernels, float32) and their two gradients as XLA FFI
// handlers that run oneDNN's kernels; built on first use and loaded by jaxvision/layers/dnnl.py.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"
#include "pool_chunks.h"

extern "C" void omp_set_num_threads(int);  // libgomp, which oneDNN links

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The geometry of one convolution; every handler derives its descriptors from it.
struct Geometry {
  int64_t n, h, w, c, kh, kw, icg, oc, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, groups;

  std::string Key(char kind) const {
    std::string key(1, kind);
    for (int64_t v : {n, h, w, c, kh, kw, icg, oc, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups})
      key += "," + std::to_string(v);
    return key;
  }
  memory::desc Src() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc Dst() const { return {{n, oc, oh, ow}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::dims WeightDims() const {
    if (groups == 1) return {oc, icg, kh, kw};
    return {groups, oc / groups, icg, kh, kw};
  }
  // the kernel as it lies in a jax HWIO array (output channel fastest)
  memory::desc Hwio() const {
    if (groups == 1) return {WeightDims(), memory::data_type::f32, memory::dims{1, oc, kw * icg * oc, icg * oc}};
    return {WeightDims(), memory::data_type::f32,
            memory::dims{oc / groups, 1, oc, kw * icg * oc, icg * oc}};
  }
  memory::desc AnyWeights() const { return {WeightDims(), memory::data_type::f32, memory::format_tag::any}; }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims Dilates() const { return {dh - 1, dw - 1}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }

  dnnl::convolution_forward::primitive_desc Forward(const dnnl::primitive_attr& attr) const {
    return {Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
            Src(), AnyWeights(), Dst(), Strides(), Dilates(), PadL(), PadR(), attr};
  }
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// A primitive with its scratchpad size and, where oneDNN wants the kernel in a layout of its
// own, the reorder between that layout and HWIO.
struct Plan {
  dnnl::primitive prim;
  memory::desc scratch, weights;
  bool reorder = false;
  dnnl::reorder to_or_from_hwio;
};

std::mutex plans_mutex;
std::unordered_map<std::string, std::shared_ptr<const Plan>> plans;

template <typename Make>
std::shared_ptr<const Plan> GetPlan(const std::string& key, Make make) {
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  auto plan = std::make_shared<const Plan>(make());
  std::lock_guard<std::mutex> lock(plans_mutex);
  return plans.emplace(key, plan).first->second;
}

// Per-thread scratch: the primitive's scratchpad and the reordered kernel.
struct Scratch {
  std::vector<char> pad, weights;
  void* Pad(size_t bytes) { if (pad.size() < bytes) pad.resize(bytes); return pad.data(); }
  void* Weights(size_t bytes) { if (weights.size() < bytes) weights.resize(bytes); return weights.data(); }
};
thread_local Scratch scratch;

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t groups) {
  return {x[0], x[1], x[2], x[3], k[0], k[1], k[2], k[3], y[1], y[2],
          sh, sw, pt, pb, pl, pr, dh, dw, groups};
}

// Each chunk's oneDNN call runs single-threaded over XLA's intra-op pool (pool_chunks.h):
// oneDNN's own OpenMP threads would compete for the cores with XLA's.
template <typename Body>
ffi::Error ForChunks(ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  const std::string error = jaxvision::ForChunks<dnnl::error>(pool, chunks, body);
  if (!error.empty())
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution: " + error);
  return ffi::Error::Success();
}

// How many batch chunks: one per thread; a single image keeps oneDNN's threads instead.
int64_t NumChunks(ffi::ThreadPool& pool, int64_t batch) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (batch == 1) {
    omp_set_num_threads(static_cast<int>(threads));
    return 1;
  }
  return std::min(batch, threads);
}

// Rows [Begin(i), Begin(i + 1)) of a batch of n split in `chunks`.
int64_t Begin(int64_t i, int64_t n, int64_t chunks) { return i * n / chunks; }

Geometry OfBatch(Geometry g, int64_t n) {
  g.n = n;
  return g;
}

std::shared_ptr<const Plan> ForwardPlan(const Geometry& g) {
  return GetPlan(g.Key('f'), [&] {
    auto pd = g.Forward(UserScratchpad());
    Plan p{dnnl::convolution_forward(pd), pd.scratchpad_desc(), pd.weights_desc()};
    p.reorder = pd.weights_desc() != g.Hwio();
    if (p.reorder)
      p.to_or_from_hwio = dnnl::reorder(
          dnnl::reorder::primitive_desc(Engine(), g.Hwio(), Engine(), pd.weights_desc()));
    return p;
  });
}

std::shared_ptr<const Plan> BackwardDataPlan(const Geometry& g) {
  return GetPlan(g.Key('d'), [&] {
    auto hint = g.Forward(dnnl::primitive_attr());
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        g.Strides(), g.Dilates(), g.PadL(), g.PadR(), hint, UserScratchpad());
    Plan p{dnnl::convolution_backward_data(pd), pd.scratchpad_desc(), pd.weights_desc()};
    p.reorder = pd.weights_desc() != g.Hwio();
    if (p.reorder)
      p.to_or_from_hwio = dnnl::reorder(
          dnnl::reorder::primitive_desc(Engine(), g.Hwio(), Engine(), pd.weights_desc()));
    return p;
  });
}

std::shared_ptr<const Plan> BackwardWeightsPlan(const Geometry& g) {
  return GetPlan(g.Key('w'), [&] {
    auto hint = g.Forward(dnnl::primitive_attr());
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(),
        g.Strides(), g.Dilates(), g.PadL(), g.PadR(), hint, UserScratchpad());
    Plan p{dnnl::convolution_backward_weights(pd), pd.scratchpad_desc(),
           pd.diff_weights_desc()};
    p.reorder = pd.diff_weights_desc() != g.Hwio();
    if (p.reorder)
      p.to_or_from_hwio = dnnl::reorder(
          dnnl::reorder::primitive_desc(Engine(), pd.diff_weights_desc(), Engine(), g.Hwio()));
    return p;
  });
}

// The kernel in the layout `plan` wants: HWIO itself, or a reorder of it into this thread's
// scratch.
memory Weights(const Plan& plan, const Geometry& g, float* hwio_data, dnnl::stream& stream) {
  memory hwio(g.Hwio(), Engine(), hwio_data);
  if (!plan.reorder) return hwio;
  memory weights(plan.weights, Engine(), scratch.Weights(plan.weights.get_size()));
  plan.to_or_from_hwio.execute(stream, hwio, weights);
  return weights;
}

// The forward (x -> y) or the input gradient (dy -> dx): activations in and out, the kernel
// read, chunk by chunk of the batch.
template <typename PlanFor>
ffi::Error WithKernel(ffi::ThreadPool& pool, const Geometry& g, PlanFor plan_for, bool forward,
                      float* in, float* kernel, float* out) {
  int64_t chunks = NumChunks(pool, g.n);
  float* src = forward ? in : out;
  float* dst = forward ? out : in;
  return ForChunks(pool, chunks, [&](int64_t i) {
    int64_t n0 = Begin(i, g.n, chunks);
    Geometry c = OfBatch(g, Begin(i + 1, g.n, chunks) - n0);
    if (chunks > 1) omp_set_num_threads(1);
    auto plan = plan_for(c);
    auto& stream = Stream();
    memory src_mem(c.Src(), Engine(), src + n0 * g.h * g.w * g.c);
    memory dst_mem(c.Dst(), Engine(), dst + n0 * g.oh * g.ow * g.oc);
    memory weights = Weights(*plan, c, kernel, stream);
    memory pad(plan->scratch, Engine(), scratch.Pad(plan->scratch.get_size()));
    plan->prim.execute(stream, {{forward ? DNNL_ARG_SRC : DNNL_ARG_DIFF_SRC, src_mem},
                                {DNNL_ARG_WEIGHTS, weights},
                                {forward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST, dst_mem},
                                {DNNL_ARG_SCRATCHPAD, pad}});
    stream.wait();
  });
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw,
                       int64_t groups) {
  Geometry g = MakeGeometry(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                            pr, dh, dw, groups);
  return WithKernel(pool, g, ForwardPlan, true, x.typed_data(), k.typed_data(), y->typed_data());
}

ffi::Error BackwardDataImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                            ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx, int64_t sh,
                            int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                            int64_t dh, int64_t dw, int64_t groups) {
  Geometry g = MakeGeometry(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb,
                            pl, pr, dh, dw, groups);
  return WithKernel(pool, g, BackwardDataPlan, false, dy.typed_data(), k.typed_data(),
                    dx->typed_data());
}

ffi::Error BackwardWeightsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                               int64_t pr, int64_t dh, int64_t dw, int64_t groups) {
  Geometry g = MakeGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb,
                            pl, pr, dh, dw, groups);
  int64_t chunks = NumChunks(pool, g.n);
  size_t size = dk->element_count();
  // chunk 0 writes the output, the others a partial sum each, added to it at the end
  std::vector<std::vector<float>> partial(chunks - 1, std::vector<float>(size));
  ffi::Error error = ForChunks(pool, chunks, [&](int64_t i) {
    int64_t n0 = Begin(i, g.n, chunks);
    Geometry c = OfBatch(g, Begin(i + 1, g.n, chunks) - n0);
    if (chunks > 1) omp_set_num_threads(1);
    auto plan = BackwardWeightsPlan(c);
    auto& stream = Stream();
    memory src(c.Src(), Engine(), x.typed_data() + n0 * g.h * g.w * g.c);
    memory diff_dst(c.Dst(), Engine(), dy.typed_data() + n0 * g.oh * g.ow * g.oc);
    memory hwio(c.Hwio(), Engine(), i == 0 ? dk->typed_data() : partial[i - 1].data());
    memory weights = hwio;
    if (plan->reorder)
      weights = memory(plan->weights, Engine(), scratch.Weights(plan->weights.get_size()));
    memory pad(plan->scratch, Engine(), scratch.Pad(plan->scratch.get_size()));
    plan->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                {DNNL_ARG_DIFF_WEIGHTS, weights}, {DNNL_ARG_SCRATCHPAD, pad}});
    if (plan->reorder) plan->to_or_from_hwio.execute(stream, weights, hwio);
    stream.wait();
  });
  if (error.failure()) return error;
  float* out = dk->typed_data();
  for (const auto& p : partial)
    for (size_t j = 0; j < size; ++j) out[j] += p[j];
  return ffi::Error::Success();
}

#define WINDOW_ATTRS                                                                   \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("dh").Attr<int64_t>("dw") \
      .Attr<int64_t>("groups")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionDnnlConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() WINDOW_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionDnnlConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() WINDOW_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxvisionDnnlConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() WINDOW_ATTRS);
