// Stub of a Darwin libc internal header (declares size_t), for the objc-syntax check.
#pragma once
#include <stddef.h>
