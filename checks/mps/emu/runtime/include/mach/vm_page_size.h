// mps-emu: Darwin's <mach/vm_page_size.h>. The emulator defines vm_page_size as 16 KiB, the page
// size of Apple silicon Macs (the MPS allocator aligns heap sizes to it).
#pragma once
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
extern size_t vm_page_size;
#ifdef __cplusplus
}
#endif
