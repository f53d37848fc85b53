// mps-emu: Grand Central Dispatch, the part the MPS backend uses, implemented by libmpsemu.a
// (src/dispatch.mm describes the model). Dispatch objects are reference counted C objects here, not
// Objective-C objects: dispatch_retain/dispatch_release, never -retain/-release.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct dispatch_queue_s* dispatch_queue_t;
typedef struct dispatch_queue_attr_s* dispatch_queue_attr_t;
typedef struct dispatch_semaphore_s* dispatch_semaphore_t;
typedef void (^dispatch_block_t)(void);
typedef void (*dispatch_function_t)(void*);
typedef uint64_t dispatch_time_t;
typedef long dispatch_once_t;
typedef long dispatch_queue_priority_t;

// Times are nanoseconds of CLOCK_MONOTONIC; NOW and FOREVER are the usual sentinels.
#define DISPATCH_TIME_NOW (0ull)
#define DISPATCH_TIME_FOREVER (~0ull)
#define NSEC_PER_SEC 1000000000ull
#define NSEC_PER_MSEC 1000000ull
#define USEC_PER_SEC 1000000ull
#define NSEC_PER_USEC 1000ull

// A serial queue is the default (NULL attribute); DISPATCH_QUEUE_CONCURRENT runs blocks in parallel.
#define DISPATCH_QUEUE_SERIAL ((dispatch_queue_attr_t)0)
#define DISPATCH_QUEUE_CONCURRENT (&_dispatch_queue_attr_concurrent)
#define DISPATCH_QUEUE_PRIORITY_HIGH 2
#define DISPATCH_QUEUE_PRIORITY_DEFAULT 0
#define DISPATCH_QUEUE_PRIORITY_LOW (-2)
#define DISPATCH_QUEUE_PRIORITY_BACKGROUND (-32768)

#ifdef __cplusplus
extern "C" {
#endif
extern struct dispatch_queue_attr_s _dispatch_queue_attr_concurrent;

dispatch_queue_t dispatch_queue_create(const char* label, dispatch_queue_attr_t attr);
const char* dispatch_queue_get_label(dispatch_queue_t queue);
// Runs `block` on the calling thread once every block submitted to the queue before it has returned
// (serial queue). Deadlocks that GCD would hang in are reported and abort instead.
void dispatch_sync(dispatch_queue_t queue, dispatch_block_t block);
void dispatch_sync_f(dispatch_queue_t queue, void* context, dispatch_function_t work);
void dispatch_async(dispatch_queue_t queue, dispatch_block_t block);
void dispatch_async_f(dispatch_queue_t queue, void* context, dispatch_function_t work);
void dispatch_queue_set_specific(dispatch_queue_t queue, const void* key, void* context, dispatch_function_t destructor);
void* dispatch_queue_get_specific(dispatch_queue_t queue, const void* key);
void* dispatch_get_specific(const void* key);
dispatch_queue_t dispatch_get_global_queue(long identifier, unsigned long flags);
void dispatch_retain(void* object);
void dispatch_release(void* object);

dispatch_semaphore_t dispatch_semaphore_create(long value);
long dispatch_semaphore_wait(dispatch_semaphore_t dsema, dispatch_time_t timeout);
long dispatch_semaphore_signal(dispatch_semaphore_t dsema);
dispatch_time_t dispatch_time(dispatch_time_t when, int64_t delta);

void dispatch_once(dispatch_once_t* predicate, dispatch_block_t block);
void dispatch_once_f(dispatch_once_t* predicate, void* context, dispatch_function_t function);
#ifdef __cplusplus
}
#endif
