// mps-emu: the Foundation value classes the MPS sources touch (strings, errors, numbers, arrays,
// dictionaries, process info), kept minimal, plus the Darwin libc/os extras (os_log, os_signpost,
// vm_page_size, clock_gettime_nsec_np). Objects are immutable after creation unless their class
// is a mutable one; none of them is thread-safe beyond what Apple promises (immutable ones may be
// read from any thread).
#include "internal.h"

#include <apple-compat.h>
#include <mach/vm_page_size.h>
#include <os/log.h>
#include <os/signpost.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

namespace mpsemu {
namespace {

// Formats like printf, plus %@ (the argument's -description). Each conversion is handed to
// vsnprintf-compatible snprintf with the argument fetched at its own type.
std::string format_string(const char* fmt, va_list ap) {
  std::string out;
  char spec[64];
  char buf[512];
  for (const char* p = fmt; *p;) {
    if (*p != '%') {
      out += *p++;
      continue;
    }
    const char* start = p++;
    if (*p == '%') {
      out += '%';
      ++p;
      continue;
    }
    int stars[2];
    int nstars = 0;
    while (*p && strchr("-+ #0'", *p)) ++p;
    if (*p == '*') {
      stars[nstars++] = va_arg(ap, int);
      ++p;
    } else {
      while (*p >= '0' && *p <= '9') ++p;
    }
    if (*p == '.') {
      ++p;
      if (*p == '*') {
        stars[nstars++] = va_arg(ap, int);
        ++p;
      } else {
        while (*p >= '0' && *p <= '9') ++p;
      }
    }
    int longs = 0;
    char size = 0;
    for (;;) {
      if (*p == 'l') {
        ++longs;
      } else if (*p == 'h' || *p == 'z' || *p == 'j' || *p == 't' || *p == 'L') {
        size = *p;
      } else if (*p == 'q') {
        longs = 2;
      } else {
        break;
      }
      ++p;
    }
    char conv = *p ? *p++ : 0;
    size_t n = (size_t)(p - start);
    if (n >= sizeof spec || conv == 0) break;
    memcpy(spec, start, n);
    spec[n] = 0;
    auto emit = [&](auto value) {
      if (nstars == 0) snprintf(buf, sizeof buf, spec, value);
      else if (nstars == 1) snprintf(buf, sizeof buf, spec, stars[0], value);
      else snprintf(buf, sizeof buf, spec, stars[0], stars[1], value);
      out += buf;
    };
    switch (conv) {
      case '@': {
        id obj = va_arg(ap, id);
        out += obj ? [[obj description] UTF8String] : "(null)";
        break;
      }
      case 'd': case 'i': case 'c':
        if (size == 'z' || size == 't' || size == 'j' || longs) emit(longs == 2 ? va_arg(ap, long long) : va_arg(ap, long));
        else emit(va_arg(ap, int));
        break;
      case 'u': case 'x': case 'X': case 'o':
        if (size == 'z' || size == 't' || size == 'j' || longs) emit(longs == 2 ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned long));
        else emit(va_arg(ap, unsigned int));
        break;
      case 'f': case 'F': case 'e': case 'E': case 'g': case 'G': case 'a': case 'A':
        if (size == 'L') emit(va_arg(ap, long double));
        else emit(va_arg(ap, double));
        break;
      case 's': {
        const char* s = va_arg(ap, const char*);
        emit(s ? s : "(null)");
        break;
      }
      case 'p':
        emit(va_arg(ap, void*));
        break;
      default:
        out.append(start, n);
        break;
    }
  }
  return out;
}

struct StringState {
  std::string bytes;
};

size_t count_code_points(const char* s, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    if (((unsigned char)s[i] & 0xC0) != 0x80) ++count;
  }
  return count;
}

enum class NumKind { Signed, Unsigned, Double };
struct NumberState {
  NumKind kind;
  long long s;
  unsigned long long u;
  double d;
};

struct ArrayState {
  std::vector<id> items;  // retained
};
struct DictState {
  std::vector<std::pair<id, id>> items;  // keys copied, values retained
};

struct ErrorState {
  NSString* domain;
  NSInteger code;
  NSString* description;
};

NSOperatingSystemVersion macos_version() {
  NSOperatingSystemVersion v = {15, 1, 0};
  if (const char* s = getenv("MPSEMU_MACOS_VERSION")) {
    long a = 0, b = 0, c = 0;
    int n = sscanf(s, "%ld.%ld.%ld", &a, &b, &c);
    if (n >= 1) v = {a, n >= 2 ? b : 0, n >= 3 ? c : 0};
  }
  return v;
}

}  // namespace
}  // namespace mpsemu

using namespace mpsemu;

@interface NSString ()
- (const char*)mpsemuBytes:(size_t*)length;
@end

@implementation NSString

+ (instancetype)string {
  return [[[self alloc] initWithUTF8String:""] autorelease];
}

+ (instancetype)stringWithUTF8String:(const char*)bytes {
  if (!bytes) return nil;
  return [[[self alloc] initWithUTF8String:bytes] autorelease];
}

+ (instancetype)stringWithCString:(const char*)bytes encoding:(NSStringEncoding)encoding {
  (void)encoding;
  return [self stringWithUTF8String:bytes];
}

+ (instancetype)stringWithFormat:(NSString*)format, ... {
  va_list ap;
  va_start(ap, format);
  NSString* s = [[self alloc] initWithFormat:format arguments:ap];
  va_end(ap);
  return [s autorelease];
}

- (instancetype)initWithUTF8String:(const char*)bytes {
  auto* st = new StringState;
  st->bytes = bytes ? bytes : "";
  set_object_state(self, st);
  return self;
}

- (instancetype)initWithFormat:(NSString*)format, ... {
  va_list ap;
  va_start(ap, format);
  self = [self initWithFormat:format arguments:ap];
  va_end(ap);
  return self;
}

- (instancetype)initWithFormat:(NSString*)format arguments:(va_list)args {
  auto* st = new StringState;
  va_list copy;
  va_copy(copy, args);
  st->bytes = format_string(format ? [format UTF8String] : "", copy);
  va_end(copy);
  set_object_state(self, st);
  return self;
}

- (void)dealloc {
  delete state_of<StringState>(self);
  [super dealloc];
}

- (const char*)mpsemuBytes:(size_t*)length {
  StringState* st = state_of<StringState>(self);
  *length = st->bytes.size();
  return st->bytes.c_str();
}

- (const char*)UTF8String {
  size_t n;
  return [self mpsemuBytes:&n];
}

- (const char*)cStringUsingEncoding:(NSStringEncoding)encoding {
  (void)encoding;
  return [self UTF8String];
}

- (NSUInteger)length {
  size_t n;
  const char* s = [self mpsemuBytes:&n];
  return count_code_points(s, n);
}

- (BOOL)isEqualToString:(NSString*)other {
  if (!other) return NO;
  size_t a, b;
  const char* x = [self mpsemuBytes:&a];
  const char* y = [other mpsemuBytes:&b];
  return a == b && memcmp(x, y, a) == 0;
}

- (BOOL)isEqual:(id)object {
  if (object == self) return YES;
  if (![object isKindOfClass:[NSString class]]) return NO;
  return [self isEqualToString:object];
}

- (NSUInteger)hash {
  size_t n;
  const char* s = [self mpsemuBytes:&n];
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return (NSUInteger)h;
}

- (BOOL)hasPrefix:(NSString*)prefix {
  size_t a, b;
  const char* x = [self mpsemuBytes:&a];
  const char* y = [prefix mpsemuBytes:&b];
  return b <= a && memcmp(x, y, b) == 0;
}

- (BOOL)hasSuffix:(NSString*)suffix {
  size_t a, b;
  const char* x = [self mpsemuBytes:&a];
  const char* y = [suffix mpsemuBytes:&b];
  return b <= a && memcmp(x + a - b, y, b) == 0;
}

- (NSString*)stringByAppendingString:(NSString*)other {
  std::string s = [self UTF8String];
  s += [other UTF8String];
  return [NSString stringWithUTF8String:s.c_str()];
}

- (int)intValue {
  return atoi([self UTF8String]);
}

- (long long)longLongValue {
  return atoll([self UTF8String]);
}

- (NSString*)description {
  return self;
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  return [[NSString alloc] initWithUTF8String:[self UTF8String]];
}

- (id)mutableCopyWithZone:(NSZone*)zone {
  (void)zone;
  return [[NSMutableString alloc] initWithUTF8String:[self UTF8String]];
}

@end

@implementation NSMutableString

- (void)appendString:(NSString*)other {
  state_of<StringState>(self)->bytes += [other UTF8String];
}

- (void)appendFormat:(NSString*)format, ... {
  va_list ap;
  va_start(ap, format);
  state_of<StringState>(self)->bytes += format_string([format UTF8String], ap);
  va_end(ap);
}

@end

// Static literals: no header, no reference count.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wobjc-missing-super-calls"
@implementation NSConstantString

- (const char*)mpsemuBytes:(size_t*)length {
  *length = _mpsemu_length;
  return _mpsemu_bytes;
}
- (instancetype)retain {
  return self;
}
- (oneway void)release {
}
- (instancetype)autorelease {
  return self;
}
- (NSUInteger)retainCount {
  return NSUIntegerMax;
}
- (void)dealloc {
  violation("-dealloc of a string literal");
}
- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  return self;
}

@end
#pragma clang diagnostic pop

@implementation NSError

+ (instancetype)errorWithDomain:(NSString*)domain code:(NSInteger)code userInfo:(NSDictionary*)dict {
  (void)dict;
  NSError* e = [[self alloc] init];
  auto* st = new ErrorState;
  st->domain = [domain copy];
  st->code = code;
  st->description = [[NSString alloc] initWithFormat:@"The operation couldn't be completed. (%@ error %ld.)", domain, (long)code];
  set_object_state(e, st);
  return [e autorelease];
}

- (void)dealloc {
  if (ErrorState* st = state_of<ErrorState>(self)) {
    [st->domain release];
    [st->description release];
    delete st;
  }
  [super dealloc];
}

- (NSString*)domain {
  ErrorState* st = state_of<ErrorState>(self);
  return st ? st->domain : nil;
}

- (NSInteger)code {
  ErrorState* st = state_of<ErrorState>(self);
  return st ? st->code : 0;
}

- (NSString*)localizedDescription {
  ErrorState* st = state_of<ErrorState>(self);
  return st ? st->description : @"unknown error";
}

- (NSString*)description {
  return [self localizedDescription];
}

@end

static NSNumber* make_number(NumKind kind, long long s, unsigned long long u, double d) {
  NSNumber* n = [[NSNumber alloc] init];
  set_object_state(n, new NumberState{kind, s, u, d});
  return [n autorelease];
}

@implementation NSNumber

+ (NSNumber*)numberWithInt:(int)value { return make_number(NumKind::Signed, value, (unsigned long long)value, value); }
+ (NSNumber*)numberWithUnsignedInt:(unsigned int)value { return make_number(NumKind::Unsigned, value, value, value); }
+ (NSNumber*)numberWithLong:(long)value { return make_number(NumKind::Signed, value, (unsigned long long)value, (double)value); }
+ (NSNumber*)numberWithUnsignedLong:(unsigned long)value { return make_number(NumKind::Unsigned, (long long)value, value, (double)value); }
+ (NSNumber*)numberWithLongLong:(long long)value { return make_number(NumKind::Signed, value, (unsigned long long)value, (double)value); }
+ (NSNumber*)numberWithUnsignedLongLong:(unsigned long long)value { return make_number(NumKind::Unsigned, (long long)value, value, (double)value); }
+ (NSNumber*)numberWithInteger:(NSInteger)value { return [self numberWithLong:value]; }
+ (NSNumber*)numberWithUnsignedInteger:(NSUInteger)value { return [self numberWithUnsignedLong:value]; }
+ (NSNumber*)numberWithBool:(BOOL)value { return make_number(NumKind::Signed, value ? 1 : 0, value ? 1 : 0, value ? 1 : 0); }
+ (NSNumber*)numberWithFloat:(float)value { return make_number(NumKind::Double, (long long)value, (unsigned long long)value, value); }
+ (NSNumber*)numberWithDouble:(double)value { return make_number(NumKind::Double, (long long)value, (unsigned long long)value, value); }

- (void)dealloc {
  delete state_of<NumberState>(self);
  [super dealloc];
}

- (int)intValue { return (int)state_of<NumberState>(self)->s; }
- (unsigned int)unsignedIntValue { return (unsigned int)state_of<NumberState>(self)->u; }
- (long)longValue { return (long)state_of<NumberState>(self)->s; }
- (unsigned long)unsignedLongValue { return (unsigned long)state_of<NumberState>(self)->u; }
- (long long)longLongValue { return state_of<NumberState>(self)->s; }
- (unsigned long long)unsignedLongLongValue { return state_of<NumberState>(self)->u; }
- (NSInteger)integerValue { return (NSInteger)state_of<NumberState>(self)->s; }
- (NSUInteger)unsignedIntegerValue { return (NSUInteger)state_of<NumberState>(self)->u; }
- (BOOL)boolValue { return state_of<NumberState>(self)->u != 0 || state_of<NumberState>(self)->d != 0; }
- (float)floatValue { return (float)state_of<NumberState>(self)->d; }
- (double)doubleValue { return state_of<NumberState>(self)->d; }

- (BOOL)isEqual:(id)object {
  if (![object isKindOfClass:[NSNumber class]]) return NO;
  NumberState* a = state_of<NumberState>(self);
  NumberState* b = state_of<NumberState>(object);
  if (a->kind == NumKind::Double || b->kind == NumKind::Double) return a->d == b->d;
  return a->u == b->u;
}

- (NSUInteger)hash {
  return (NSUInteger)state_of<NumberState>(self)->u;
}

- (NSString*)description {
  NumberState* st = state_of<NumberState>(self);
  switch (st->kind) {
    case NumKind::Signed: return [NSString stringWithFormat:@"%lld", st->s];
    case NumKind::Unsigned: return [NSString stringWithFormat:@"%llu", st->u];
    case NumKind::Double: return [NSString stringWithFormat:@"%g", st->d];
  }
  return @"?";
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  return [self retain];
}

@end

@implementation NSArray

+ (instancetype)array {
  return [[[self alloc] initWithObjects:nullptr count:0] autorelease];
}

+ (instancetype)arrayWithObject:(id)anObject {
  return [[[self alloc] initWithObjects:&anObject count:1] autorelease];
}

+ (instancetype)arrayWithObjects:(const id __unsafe_unretained[])objects count:(NSUInteger)cnt {
  return [[[self alloc] initWithObjects:objects count:cnt] autorelease];
}

- (instancetype)init {
  return [self initWithObjects:nullptr count:0];
}

- (instancetype)initWithObjects:(const id __unsafe_unretained[])objects count:(NSUInteger)cnt {
  auto* st = new ArrayState;
  for (NSUInteger i = 0; i < cnt; ++i) {
    if (!objects[i]) violation("nil object at index %lu inserted into an NSArray", (unsigned long)i);
    st->items.push_back([objects[i] retain]);
  }
  set_object_state(self, st);
  return self;
}

- (void)dealloc {
  if (ArrayState* st = state_of<ArrayState>(self)) {
    for (id o : st->items) [o release];
    delete st;
  }
  [super dealloc];
}

- (NSUInteger)count {
  return state_of<ArrayState>(self)->items.size();
}

- (id)objectAtIndex:(NSUInteger)index {
  ArrayState* st = state_of<ArrayState>(self);
  if (index >= st->items.size()) {
    fatal_violation("-[NSArray objectAtIndex:]: index %lu beyond bounds [0 .. %zu)", (unsigned long)index, st->items.size());
  }
  return st->items[index];
}

- (id)objectAtIndexedSubscript:(NSUInteger)index {
  return [self objectAtIndex:index];
}

- (id)firstObject {
  ArrayState* st = state_of<ArrayState>(self);
  return st->items.empty() ? nil : st->items.front();
}

- (id)lastObject {
  ArrayState* st = state_of<ArrayState>(self);
  return st->items.empty() ? nil : st->items.back();
}

- (BOOL)containsObject:(id)anObject {
  for (id o : state_of<ArrayState>(self)->items) {
    if ([o isEqual:anObject]) return YES;
  }
  return NO;
}

- (NSUInteger)countByEnumeratingWithState:(NSFastEnumerationState*)state
                                  objects:(id __unsafe_unretained[])buffer
                                    count:(NSUInteger)len {
  (void)buffer;
  (void)len;
  ArrayState* st = state_of<ArrayState>(self);
  if (state->state >= st->items.size()) return 0;
  state->itemsPtr = st->items.data() + state->state;
  state->mutationsPtr = &state->extra[0];
  NSUInteger n = st->items.size() - state->state;
  state->state = st->items.size();
  return n;
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  ArrayState* st = state_of<ArrayState>(self);
  return [[NSArray alloc] initWithObjects:st->items.data() count:st->items.size()];
}

- (id)mutableCopyWithZone:(NSZone*)zone {
  (void)zone;
  ArrayState* st = state_of<ArrayState>(self);
  return [[NSMutableArray alloc] initWithObjects:st->items.data() count:st->items.size()];
}

- (NSString*)description {
  NSMutableString* s = [[[NSMutableString alloc] initWithUTF8String:"("] autorelease];
  bool first = true;
  for (id o : state_of<ArrayState>(self)->items) {
    [s appendFormat:@"%s%@", first ? "" : ", ", o];
    first = false;
  }
  [s appendString:@")"];
  return s;
}

@end

@implementation NSMutableArray

+ (instancetype)arrayWithCapacity:(NSUInteger)numItems {
  (void)numItems;
  return [self array];
}

- (void)addObject:(id)anObject {
  if (!anObject) fatal_violation("-[NSMutableArray addObject:] with nil");
  state_of<ArrayState>(self)->items.push_back([anObject retain]);
}

- (void)removeAllObjects {
  ArrayState* st = state_of<ArrayState>(self);
  std::vector<id> old;
  old.swap(st->items);
  for (id o : old) [o release];
}

- (void)removeLastObject {
  ArrayState* st = state_of<ArrayState>(self);
  if (st->items.empty()) return;
  id o = st->items.back();
  st->items.pop_back();
  [o release];
}

- (void)setObject:(id)obj atIndexedSubscript:(NSUInteger)idx {
  ArrayState* st = state_of<ArrayState>(self);
  if (idx == st->items.size()) {
    [self addObject:obj];
    return;
  }
  if (idx > st->items.size()) fatal_violation("-[NSMutableArray setObject:atIndexedSubscript:] beyond bounds");
  id old = st->items[idx];
  st->items[idx] = [obj retain];
  [old release];
}

@end

@interface NSDictionary ()
- (void)setObject:(id)anObject forKey:(id)aKey;
@end

@implementation NSDictionary

+ (instancetype)dictionary {
  return [[[self alloc] initWithObjects:nullptr forKeys:nullptr count:0] autorelease];
}

+ (instancetype)dictionaryWithObjects:(const id __unsafe_unretained[])objects
                              forKeys:(const id __unsafe_unretained[])keys
                                count:(NSUInteger)cnt {
  return [[[self alloc] initWithObjects:objects forKeys:keys count:cnt] autorelease];
}

+ (instancetype)dictionaryWithObject:(id)object forKey:(id)key {
  return [[[self alloc] initWithObjects:&object forKeys:&key count:1] autorelease];
}

- (instancetype)init {
  return [self initWithObjects:nullptr forKeys:nullptr count:0];
}

- (instancetype)initWithObjects:(const id __unsafe_unretained[])objects
                        forKeys:(const id __unsafe_unretained[])keys
                          count:(NSUInteger)cnt {
  set_object_state(self, new DictState);
  for (NSUInteger i = 0; i < cnt; ++i) [(NSMutableDictionary*)self setObject:objects[i] forKey:keys[i]];
  return self;
}

- (void)dealloc {
  if (DictState* st = state_of<DictState>(self)) {
    for (auto& kv : st->items) {
      [kv.first release];
      [kv.second release];
    }
    delete st;
  }
  [super dealloc];
}

- (NSUInteger)count {
  return state_of<DictState>(self)->items.size();
}

- (id)objectForKey:(id)aKey {
  for (auto& kv : state_of<DictState>(self)->items) {
    if ([kv.first isEqual:aKey]) return kv.second;
  }
  return nil;
}

- (id)objectForKeyedSubscript:(id)key {
  return [self objectForKey:key];
}

- (NSArray*)allKeys {
  NSMutableArray* a = [NSMutableArray array];
  for (auto& kv : state_of<DictState>(self)->items) [a addObject:kv.first];
  return a;
}

- (NSArray*)allValues {
  NSMutableArray* a = [NSMutableArray array];
  for (auto& kv : state_of<DictState>(self)->items) [a addObject:kv.second];
  return a;
}

- (NSUInteger)countByEnumeratingWithState:(NSFastEnumerationState*)state
                                  objects:(id __unsafe_unretained[])buffer
                                    count:(NSUInteger)len {
  DictState* st = state_of<DictState>(self);
  NSUInteger n = 0;
  while (state->state < st->items.size() && n < len) buffer[n++] = st->items[state->state++].first;
  state->itemsPtr = buffer;
  state->mutationsPtr = &state->extra[0];
  return n;
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  return [self retain];
}

- (id)mutableCopyWithZone:(NSZone*)zone {
  (void)zone;
  NSMutableDictionary* d = [[NSMutableDictionary alloc] init];
  for (auto& kv : state_of<DictState>(self)->items) [d setObject:kv.second forKey:kv.first];
  return d;
}

// Used by the initializer of both classes.
- (void)setObject:(id)anObject forKey:(id)aKey {
  if (!anObject || !aKey) fatal_violation("nil key or value inserted into an NSDictionary");
  DictState* st = state_of<DictState>(self);
  [anObject retain];
  for (auto& kv : st->items) {
    if ([kv.first isEqual:aKey]) {
      [kv.second release];
      kv.second = anObject;
      return;
    }
  }
  st->items.emplace_back([aKey copy], anObject);
}

@end

@implementation NSMutableDictionary

+ (instancetype)dictionaryWithCapacity:(NSUInteger)numItems {
  (void)numItems;
  return [self dictionary];
}

- (void)setObject:(id)anObject forKey:(id)aKey {
  [super setObject:anObject forKey:aKey];
}

- (void)setObject:(id)obj forKeyedSubscript:(id)key {
  [self setObject:obj forKey:key];
}

- (void)removeObjectForKey:(id)aKey {
  DictState* st = state_of<DictState>(self);
  for (size_t i = 0; i < st->items.size(); ++i) {
    if ([st->items[i].first isEqual:aKey]) {
      auto kv = st->items[i];
      st->items.erase(st->items.begin() + (long)i);
      [kv.first release];
      [kv.second release];
      return;
    }
  }
}

- (void)removeAllObjects {
  DictState* st = state_of<DictState>(self);
  auto old = std::move(st->items);
  st->items.clear();
  for (auto& kv : old) {
    [kv.first release];
    [kv.second release];
  }
}

- (id)copyWithZone:(NSZone*)zone {
  (void)zone;
  DictState* st = state_of<DictState>(self);
  NSDictionary* d = [[NSDictionary alloc] init];
  for (auto& kv : st->items) [(NSMutableDictionary*)d setObject:kv.second forKey:kv.first];
  return d;
}

@end

@implementation NSProcessInfo

+ (NSProcessInfo*)processInfo {
  static std::atomic<void*> shared{nullptr};
  NSProcessInfo* p = (NSProcessInfo*)shared.load(std::memory_order_acquire);
  if (!p) {
    NSProcessInfo* fresh = [[NSProcessInfo alloc] init];
    void* expected = nullptr;
    if (shared.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) {
      p = fresh;
    } else {
      [fresh release];
      p = (NSProcessInfo*)expected;
    }
  }
  return p;
}

- (NSOperatingSystemVersion)operatingSystemVersion {
  return macos_version();
}

- (NSString*)operatingSystemVersionString {
  NSOperatingSystemVersion v = macos_version();
  return [NSString stringWithFormat:@"Version %ld.%ld.%ld (mps-emu)", (long)v.majorVersion, (long)v.minorVersion,
                                    (long)v.patchVersion];
}

- (BOOL)isOperatingSystemAtLeastVersion:(NSOperatingSystemVersion)version {
  NSOperatingSystemVersion v = macos_version();
  if (v.majorVersion != version.majorVersion) return v.majorVersion > version.majorVersion;
  if (v.minorVersion != version.minorVersion) return v.minorVersion > version.minorVersion;
  return v.patchVersion >= version.patchVersion;
}

- (NSUInteger)processorCount {
  return (NSUInteger)sysconf(_SC_NPROCESSORS_CONF);
}

- (NSUInteger)activeProcessorCount {
  return (NSUInteger)sysconf(_SC_NPROCESSORS_ONLN);
}

- (unsigned long long)physicalMemory {
  return (unsigned long long)sysconf(_SC_PHYS_PAGES) * (unsigned long long)sysconf(_SC_PAGESIZE);
}

- (NSDictionary*)environment {
  extern char** environ;
  NSMutableDictionary* d = [NSMutableDictionary dictionary];
  for (char** e = environ; e && *e; ++e) {
    const char* eq = strchr(*e, '=');
    if (!eq) continue;
    std::string k(*e, (size_t)(eq - *e));
    [d setObject:[NSString stringWithUTF8String:eq + 1] forKey:[NSString stringWithUTF8String:k.c_str()]];
  }
  return d;
}

@end

extern "C" {

void NSLog(NSString* format, ...) {
  va_list ap;
  va_start(ap, format);
  std::string s = format_string(format ? [format UTF8String] : "", ap);
  va_end(ap);
  fprintf(stderr, "%s\n", s.c_str());
}

size_t vm_page_size = 16384;

uint64_t clock_gettime_nsec_np(clockid_t clock_id) {
  struct timespec ts;
  if (clock_gettime(clock_id, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct os_log_s {
  int unused;
};
static os_log_s g_log;

os_log_t os_log_create(const char* subsystem, const char* category) {
  (void)subsystem;
  (void)category;
  return &g_log;
}

static std::atomic<uint64_t> g_signpost_ids{0};

os_signpost_id_t os_signpost_id_generate(os_log_t log) {
  (void)log;
  return g_signpost_ids.fetch_add(1, std::memory_order_relaxed) + 1;
}

bool os_signpost_enabled(os_log_t log) {
  (void)log;
  return false;
}

}  // extern "C"
