// mps-emu stand-in for upstream's MPSDevice.mm (not compiled here): the singleton MPSDevice over
// the emulator's only MTLDevice, and the free functions declared next to it in MPSDevice.h.
// Written for the emulator; it keeps only what the stream layer calls (the device, availability,
// version queries, the allocator getter) and answers every macOS version query with "yes".
#include <ATen/mps/MPSAllocatorInterface.h>
#include <ATen/mps/MPSDevice.h>

namespace at::mps {

MPSDevice* MPSDevice::_device = nullptr;

MPSDevice* MPSDevice::getInstance() {
  // thread-safe once-only creation; never destroyed (streams outlive static destructors)
  static MPSDevice* instance = [] {
    _device = new MPSDevice();
    return _device;
  }();
  return instance;
}

MPSDevice::MPSDevice() : _mtl_device(nil) {
  _mtl_device = MTLCreateSystemDefaultDevice();
  TORCH_CHECK(_mtl_device != nil, "mps-emu: the emulator has no Metal device");
}

MPSDevice::~MPSDevice() {
  [_mtl_device release];
  _mtl_device = nil;
}

bool MPSDevice::isMacOS13Plus(MacOSVersion) const {
  return true;
}

std::string MPSDevice::getName() const {
  return [[_mtl_device name] UTF8String];
}

unsigned MPSDevice::getCoreCount() const {
  return 8;
}

bool is_available() {
  return MPSDevice::getInstance()->device() != nil;
}

bool is_macos_13_or_newer(MacOSVersion version) {
  return MPSDevice::getInstance()->isMacOS13Plus(version);
}

#if MPSEMU_TORCH_MINOR >= 13
bool is_apple_family_or_newer(AppleGPUFamily) {
  return true;
}

at::Allocator* GetMPSAllocator() {
  return getIMPSAllocator();
}
#else
at::Allocator* GetMPSAllocator(bool useSharedAllocator) {
  return getIMPSAllocator(useSharedAllocator);
}
#endif

} // namespace at::mps
