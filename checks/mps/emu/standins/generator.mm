// mps-emu stand-in for upstream's MPSGeneratorImpl.mm (not compiled here): MPSHooks hands out
// generators, the stream layer never draws from them. Seeds and offsets are kept; the state
// tensor is not emulated (get_state/set_state raise).
#include <ATen/mps/MPSGeneratorImpl.h>

namespace at {
namespace mps::detail {

const Generator& getDefaultMPSGenerator() {
  static Generator* generator = new Generator(createMPSGenerator(default_rng_seed_val));
  return *generator;
}

Generator createMPSGenerator(uint64_t seed_val) {
  return make_generator<MPSGeneratorImpl>(seed_val);
}

} // namespace mps::detail

MPSGeneratorImpl::MPSGeneratorImpl(uint64_t seed_in)
    : c10::GeneratorImpl{Device(DeviceType::MPS, 0), DispatchKeySet(c10::DispatchKey::MPS)},
      data_({.seed = seed_in}),
      engine_(seed_in, 0, 0) {}

void MPSGeneratorImpl::set_current_seed(uint64_t seed) {
  data_.seed = seed;
  data_.state.fill(1);
  engine_ = at::Philox4_32(seed, 0, 0);
}

void MPSGeneratorImpl::set_offset(uint64_t offset) {
  engine_ = at::Philox4_32(data_.seed, 0, offset);
}

uint64_t MPSGeneratorImpl::get_offset() const {
  return 0;
}

uint64_t MPSGeneratorImpl::current_seed() const {
  return data_.seed;
}

uint64_t MPSGeneratorImpl::seed() {
  set_current_seed(c10::detail::getNonDeterministicRandom(true));
  return data_.seed;
}

void MPSGeneratorImpl::set_state(const c10::TensorImpl&) {
  TORCH_CHECK(false, "mps-emu: MPSGeneratorImpl is a stand-in (no generator state)");
}

c10::intrusive_ptr<c10::TensorImpl> MPSGeneratorImpl::get_state() const {
  TORCH_CHECK(false, "mps-emu: MPSGeneratorImpl is a stand-in (no generator state)");
}

void MPSGeneratorImpl::update_philox_counters() {}

std::shared_ptr<MPSGeneratorImpl> MPSGeneratorImpl::clone() const {
  return std::shared_ptr<MPSGeneratorImpl>(clone_impl());
}

MPSGeneratorImpl* MPSGeneratorImpl::clone_impl() const {
  auto* gen = new MPSGeneratorImpl(data_.seed);
  gen->data_ = data_;
  gen->engine_ = engine_;
  return gen;
}

} // namespace at
