// mps-emu stand-in for upstream's MPSProfiler.mm (not compiled here). The profiler is off: no
// signposts, no logging, no GPU capture, which is what the stream layer sees on a Mac unless
// PYTORCH_MPS_TRACE_SIGNPOSTS or a capture is requested. One switch for the tests: with the
// environment variable MPSEMU_PROFILER_CAPTURE=1, isCaptureEnabled() answers true, so streams
// created afterwards run with commitAndContinue off (MPSStream's constructor checks it), the
// configuration signposts or a capture give on a Mac. Entry points that only run with the
// profiler on raise.
#include <ATen/mps/MPSProfiler.h>

#include <cstdlib>
#include <cstring>

namespace at::mps {
namespace Profiler {

MPSProfiler::MPSProfiler() : m_os_log_events(nullptr), m_os_log_intervals(nullptr) {}

MPSProfiler::~MPSProfiler() = default;

bool MPSProfiler::isCaptureEnabled() const {
  const char* v = std::getenv("MPSEMU_PROFILER_CAPTURE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

bool MPSProfiler::isCapturing() const {
  return false;
}

void MPSProfiler::beginProfileGPUInterval(const void*) {
  TORCH_CHECK(false, "mps-emu: the MPS profiler is a stand-in (operation profiling is off)");
}

void MPSProfiler::endProfileKernel(const void*, SyncType) {
  TORCH_CHECK(false, "mps-emu: the MPS profiler is a stand-in (operation profiling is off)");
}

void MPSProfiler::endProfileCopy(uint64_t, SyncType) {
  TORCH_CHECK(false, "mps-emu: the MPS profiler is a stand-in (copy profiling is off)");
}

void MPSProfiler::StartTrace(const std::string&, bool) {
  TORCH_CHECK(false, "mps-emu: the MPS profiler is a stand-in (tracing is not emulated)");
}

void MPSProfiler::StopTrace() {}

} // namespace Profiler

Profiler::MPSProfiler& getMPSProfiler() {
  static Profiler::MPSProfiler* profiler = new Profiler::MPSProfiler();
  return *profiler;
}

} // namespace at::mps
