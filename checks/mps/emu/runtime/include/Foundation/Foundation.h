// mps-emu: Foundation, the part the MPS sources and their headers use, implemented by libmpsemu.a
// for GCC's Objective-C runtime (no ARC, manual reference counting as on Apple with -fno-objc-arc).
// src/object.mm holds the object model, src/foundation.mm the value classes.
#pragma once
#include <dispatch/dispatch.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef signed char BOOL;
#define YES ((BOOL)1)
#define NO ((BOOL)0)
#ifndef nil
#define nil nullptr
#endif
#ifndef Nil
#define Nil nullptr
#endif
typedef long NSInteger;
typedef unsigned long NSUInteger;
typedef double NSTimeInterval;
#define NSIntegerMax __LONG_MAX__
#define NSUIntegerMax (__LONG_MAX__ * 2UL + 1UL)
#define NSNotFound NSIntegerMax
typedef struct _NSZone NSZone;
typedef struct _NSRange {
  NSUInteger location;
  NSUInteger length;
} NSRange;
static inline NSRange NSMakeRange(NSUInteger location, NSUInteger length) {
  NSRange r = {location, length};
  return r;
}
typedef struct {
  NSInteger majorVersion;
  NSInteger minorVersion;
  NSInteger patchVersion;
} NSOperatingSystemVersion;
typedef struct {
  unsigned long state;
  id __unsafe_unretained* itemsPtr;
  unsigned long* mutationsPtr;
  unsigned long extra[5];
} NSFastEnumerationState;
typedef NSUInteger NSStringEncoding;
enum : NSUInteger { NSASCIIStringEncoding = 1, NSUTF8StringEncoding = 4 };

@class NSString;

@protocol NSObject
- (instancetype)retain;
- (oneway void)release;
- (instancetype)autorelease;
- (NSUInteger)retainCount;
- (BOOL)isEqual:(id)object;
- (NSUInteger)hash;
- (Class)class;
- (instancetype)self;
- (BOOL)isKindOfClass:(Class)aClass;
- (BOOL)respondsToSelector:(SEL)aSelector;
- (NSString*)description;
@end

// The root class. Every instance carries a reference count (starts at 1 in +alloc) and is counted
// per class while alive (mpsemu_live_objects). A release below zero is reported as a violation.
__attribute__((objc_root_class))
@interface NSObject <NSObject> {
  Class isa;
}
+ (instancetype)alloc;
+ (instancetype)allocWithZone:(NSZone*)zone;
+ (instancetype)new;
+ (Class)class;
+ (Class)superclass;
+ (BOOL)instancesRespondToSelector:(SEL)aSelector;
+ (id)retain;
+ (oneway void)release;
+ (id)autorelease;
+ (NSUInteger)retainCount;
+ (NSString*)description;
- (instancetype)init;
- (void)dealloc;
- (id)copy;
- (id)mutableCopy;
@end

@protocol NSCopying
- (id)copyWithZone:(NSZone*)zone;
@end

@protocol NSMutableCopying
- (id)mutableCopyWithZone:(NSZone*)zone;
@end

@protocol NSFastEnumeration
- (NSUInteger)countByEnumeratingWithState:(NSFastEnumerationState*)state
                                  objects:(id __unsafe_unretained[])buffer
                                    count:(NSUInteger)len;
@end

// Each thread has a stack of pools; -drain (or -release) releases every object autoreleased since
// the pool was created. @autoreleasepool { } compiles to +alloc/-init/-drain of this class here.
// Objects autoreleased with no pool on the stack go to the thread's implicit pool, drained when the
// thread exits (the main thread's never is).
@interface NSAutoreleasePool : NSObject
- (void)drain;
+ (void)addObject:(id)object;
@end

@interface NSString : NSObject <NSCopying, NSMutableCopying>
+ (instancetype)string;
+ (instancetype)stringWithUTF8String:(const char*)bytes;
+ (instancetype)stringWithCString:(const char*)bytes encoding:(NSStringEncoding)encoding;
// Formats: %@ (an object's -description), %s %c %d %i %u %x %X %o %ld %lu %lld %llu %zu %zd %p
// %f %e %g %% with flags, width and precision.
+ (instancetype)stringWithFormat:(NSString*)format, ...;
- (instancetype)initWithUTF8String:(const char*)bytes;
- (instancetype)initWithFormat:(NSString*)format, ...;
- (instancetype)initWithFormat:(NSString*)format arguments:(va_list)args;
@property(readonly) const char* UTF8String;
// Unicode code points (UTF-16 units on Apple; the same for the BMP, which is all this code uses).
@property(readonly) NSUInteger length;
- (const char*)cStringUsingEncoding:(NSStringEncoding)encoding;
- (BOOL)isEqualToString:(NSString*)other;
- (BOOL)hasPrefix:(NSString*)prefix;
- (BOOL)hasSuffix:(NSString*)suffix;
- (NSString*)stringByAppendingString:(NSString*)other;
- (int)intValue;
- (long long)longLongValue;
@end

@interface NSMutableString : NSString
- (void)appendString:(NSString*)other;
- (void)appendFormat:(NSString*)format, ...;
@end

// The class of @"..." literals (compile with -fconstant-string-class=NSConstantString): static
// storage, never deallocated; retain and release do nothing.
@interface NSConstantString : NSString {
  const char* _mpsemu_bytes;
  unsigned int _mpsemu_length;
}
@end

@class NSDictionary;

@interface NSError : NSObject
+ (instancetype)errorWithDomain:(NSString*)domain code:(NSInteger)code userInfo:(NSDictionary*)dict;
@property(readonly, copy) NSString* domain;
@property(readonly) NSInteger code;
@property(readonly, copy) NSString* localizedDescription;
@end

@interface NSNumber : NSObject <NSCopying>
+ (NSNumber*)numberWithInt:(int)value;
+ (NSNumber*)numberWithUnsignedInt:(unsigned int)value;
+ (NSNumber*)numberWithLong:(long)value;
+ (NSNumber*)numberWithUnsignedLong:(unsigned long)value;
+ (NSNumber*)numberWithLongLong:(long long)value;
+ (NSNumber*)numberWithUnsignedLongLong:(unsigned long long)value;
+ (NSNumber*)numberWithInteger:(NSInteger)value;
+ (NSNumber*)numberWithUnsignedInteger:(NSUInteger)value;
+ (NSNumber*)numberWithBool:(BOOL)value;
+ (NSNumber*)numberWithFloat:(float)value;
+ (NSNumber*)numberWithDouble:(double)value;
@property(readonly) int intValue;
@property(readonly) unsigned int unsignedIntValue;
@property(readonly) long longValue;
@property(readonly) unsigned long unsignedLongValue;
@property(readonly) long long longLongValue;
@property(readonly) unsigned long long unsignedLongLongValue;
@property(readonly) NSInteger integerValue;
@property(readonly) NSUInteger unsignedIntegerValue;
@property(readonly) BOOL boolValue;
@property(readonly) float floatValue;
@property(readonly) double doubleValue;
@end

@interface NSArray<ObjectType> : NSObject <NSCopying, NSMutableCopying, NSFastEnumeration>
+ (instancetype)array;
+ (instancetype)arrayWithObject:(ObjectType)anObject;
+ (instancetype)arrayWithObjects:(const ObjectType __unsafe_unretained[])objects count:(NSUInteger)cnt;
- (instancetype)initWithObjects:(const ObjectType __unsafe_unretained[])objects count:(NSUInteger)cnt;
@property(readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
- (ObjectType)objectAtIndexedSubscript:(NSUInteger)index;
@property(readonly) ObjectType firstObject;
@property(readonly) ObjectType lastObject;
- (BOOL)containsObject:(ObjectType)anObject;
@end

@interface NSMutableArray<ObjectType> : NSArray<ObjectType>
+ (instancetype)arrayWithCapacity:(NSUInteger)numItems;
- (void)addObject:(ObjectType)anObject;
- (void)removeAllObjects;
- (void)removeLastObject;
- (void)setObject:(ObjectType)obj atIndexedSubscript:(NSUInteger)idx;
@end

// Keys are copied (-copy) and compared with -isEqual:; lookups are linear (small dictionaries).
@interface NSDictionary<KeyType, ObjectType> : NSObject <NSCopying, NSMutableCopying, NSFastEnumeration>
+ (instancetype)dictionary;
+ (instancetype)dictionaryWithObjects:(const ObjectType __unsafe_unretained[])objects
                              forKeys:(const KeyType __unsafe_unretained[])keys
                                count:(NSUInteger)cnt;
+ (instancetype)dictionaryWithObject:(ObjectType)object forKey:(KeyType)key;
- (instancetype)initWithObjects:(const ObjectType __unsafe_unretained[])objects
                        forKeys:(const KeyType __unsafe_unretained[])keys
                          count:(NSUInteger)cnt;
@property(readonly) NSUInteger count;
- (ObjectType)objectForKey:(KeyType)aKey;
- (ObjectType)objectForKeyedSubscript:(KeyType)key;
@property(readonly, copy) NSArray<KeyType>* allKeys;
@property(readonly, copy) NSArray<ObjectType>* allValues;
@end

@interface NSMutableDictionary<KeyType, ObjectType> : NSDictionary<KeyType, ObjectType>
+ (instancetype)dictionaryWithCapacity:(NSUInteger)numItems;
- (void)setObject:(ObjectType)anObject forKey:(KeyType)aKey;
- (void)setObject:(ObjectType)obj forKeyedSubscript:(KeyType)key;
- (void)removeObjectForKey:(KeyType)aKey;
- (void)removeAllObjects;
@end

// Reports a macOS version (default 15.1.0; MPSEMU_MACOS_VERSION=major.minor[.patch] overrides it)
// so that version-gated code paths of the backend take their newest branch.
@interface NSProcessInfo : NSObject
+ (NSProcessInfo*)processInfo;
@property(readonly) NSOperatingSystemVersion operatingSystemVersion;
@property(readonly, copy) NSString* operatingSystemVersionString;
- (BOOL)isOperatingSystemAtLeastVersion:(NSOperatingSystemVersion)version;
@property(readonly) NSUInteger processorCount;
@property(readonly) NSUInteger activeProcessorCount;
@property(readonly) unsigned long long physicalMemory;
@property(readonly, copy) NSDictionary<NSString*, NSString*>* environment;
@end

#ifdef __cplusplus
extern "C" {
#endif
// Prints the formatted message to stderr (same formats as -[NSString stringWithFormat:]).
void NSLog(NSString* format, ...);
#ifdef __cplusplus
}
#endif
