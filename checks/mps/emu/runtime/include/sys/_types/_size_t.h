// mps-emu: a Darwin libc internal header that some sources include directly (declares size_t).
#pragma once
#include <stddef.h>
