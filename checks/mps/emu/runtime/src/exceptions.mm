// mps-emu: C++ exceptions through Objective-C++ frames.
//
// Clang gives Objective-C++ functions compiled for GCC's runtime that runtime's personality
// routine, which only understands Objective-C exceptions: a C++ exception (c10::Error from a
// TORCH_CHECK, std::runtime_error) unwinding through or caught in a .mm frame would terminate the
// process. On Apple, Objective-C and C++ exceptions share one unwinder and an Objective-C++ frame
// handles C++ exceptions like a C++ frame does. Nothing emulated here throws Objective-C
// exceptions, so every such frame gets the C++ personality.
//
// This is the only definition in its archive member: the linker takes it only when the program has
// no definition of its own (a program that defines the same routine keeps its own, and then this
// member is not linked).
#include <unwind.h>

extern "C" _Unwind_Reason_Code __gxx_personality_v0(int version, _Unwind_Action actions, _Unwind_Exception_Class cls,
                                                    struct _Unwind_Exception* exc, struct _Unwind_Context* ctx);

extern "C" _Unwind_Reason_Code __gnu_objc_personality_v0(int version, _Unwind_Action actions, _Unwind_Exception_Class cls,
                                                         struct _Unwind_Exception* exc, struct _Unwind_Context* ctx) {
  return __gxx_personality_v0(version, actions, cls, exc, ctx);
}
