// cxx_host.cc -- linked with matrix_host.c by g++: what a C++ library brings to the loader.
//
// Each packed function returns what one feature computed, so the test sees it still works in
// the packed file: an exception thrown and caught (.eh_frame_hdr, libstdc++ unwinding), an
// exported thread_local (PT_TLS, TLS relocations against a .dynsym index), an exported IFUNC
// called through the PLT (IRELATIVE / JUMP_SLOT), and two constructors (.init_array).  A normal
// g++ link also pulls in crtbeginS.o, whose .tm_clone_table gold and lld keep even when empty.
#include <stdexcept>

extern "C" {
#include "ffi_fixture.h"
}

namespace {

int SetInt(TVMFFIAny* result, int64_t value) {
  result->type_index = kTVMFFIInt;
  result->zero_padding = 0;
  result->v_int64 = value;
  return 0;
}

bool OneInt(const TVMFFIAny* args, int32_t num_args) {
  if (num_args == 1 && args[0].type_index == kTVMFFIInt) return true;
  TVMFFIErrorSetRaisedFromCStr("TypeError", "expects one int argument");
  return false;
}

int constructed = 0;

__attribute__((constructor)) void MarkConstructor() { constructed |= 0x10; }

struct StaticObject {
  StaticObject() { constructed |= 0x01; }
};
StaticObject static_object;

}  // namespace

extern "C" {

FIXTURE_EXPORT thread_local int64_t ffitool_tls_counter = 100;

typedef int64_t (*Scale)(int64_t);
static int64_t TimesThree(int64_t x) { return 3 * x; }
static Scale ResolveScale() { return TimesThree; }
FIXTURE_EXPORT int64_t ffitool_ifunc_scale(int64_t x) __attribute__((ifunc("ResolveScale")));

// throw_catch(x) -> x, after it travelled as an exception through a non-inlined frame.
__attribute__((noinline)) static void Throw(int64_t x) { throw std::runtime_error(std::to_string(x)); }

FIXTURE_EXPORT int __tvm_ffi_throw_catch(void*, const TVMFFIAny* args, int32_t num_args,
                                         TVMFFIAny* result) {
  if (!OneInt(args, num_args)) return -1;
  try {
    Throw(args[0].v_int64);
  } catch (const std::runtime_error& error) {
    return SetInt(result, std::stoll(error.what()));
  }
  return SetInt(result, -1);
}

// tls_add(x) -> this thread's counter after adding x (it starts at 100).
FIXTURE_EXPORT int __tvm_ffi_tls_add(void*, const TVMFFIAny* args, int32_t num_args,
                                     TVMFFIAny* result) {
  if (!OneInt(args, num_args)) return -1;
  ffitool_tls_counter += args[0].v_int64;
  return SetInt(result, ffitool_tls_counter);
}

// ifunc(x) -> 3 * x, through the IFUNC's resolved target.
FIXTURE_EXPORT int __tvm_ffi_ifunc(void*, const TVMFFIAny* args, int32_t num_args,
                                   TVMFFIAny* result) {
  if (!OneInt(args, num_args)) return -1;
  return SetInt(result, ffitool_ifunc_scale(args[0].v_int64));
}

// constructed() -> 0x11 when both the constructor function and the static object ran.
FIXTURE_EXPORT int __tvm_ffi_constructed(void*, const TVMFFIAny*, int32_t, TVMFFIAny* result) {
  return SetInt(result, constructed);
}

}  // extern "C"
