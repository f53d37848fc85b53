// Stub of Darwin's <mach/vm_page_size.h> (declarations only), for the objc-syntax check.
#pragma once
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
extern size_t vm_page_size;
#ifdef __cplusplus
}
#endif
