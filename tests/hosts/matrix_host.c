/*
 * matrix_host.c -- the C part of every host in tests/test_pack_matrix.py.
 *
 * add_one and main come from fixtures/src/ffi_fixture.h.  The big .bss is exported on purpose:
 * fixtures/src/pack_host.c keeps its 1 MiB array static, and gcc -O2 folds the probe into
 * arithmetic and drops the array (its .bss is 8 bytes).  An exported array must exist, is
 * reached through the GOT (a GLOB_DAT relocation whose symbol index must survive a rewritten
 * .dynsym), and makes the RW segment's memory-only tail larger than 1 MiB.
 */
#include "ffi_fixture.h"

#define BSS_SIZE ((1 << 20) + 4096)

FIXTURE_EXPORT unsigned char ffitool_matrix_bss[BSS_SIZE];

FIXTURE_DEFINE_ADD_ONE(__tvm_ffi_add_one)
FIXTURE_DEFINE_MAIN(__tvm_ffi_main)

/* __tvm_ffi_bss_probe(int64 x) -> x & 0xffff, after a round trip through both ends of .bss */
FIXTURE_EXPORT int __tvm_ffi_bss_probe(void* self, const TVMFFIAny* args, int32_t num_args,
                                       TVMFFIAny* result) {
  volatile unsigned char* bss = ffitool_matrix_bss;
  (void)self;
  if (num_args != 1 || args[0].type_index != kTVMFFIInt) {
    TVMFFIErrorSetRaisedFromCStr("TypeError", "bss_probe expects one int argument");
    return -1;
  }
  bss[BSS_SIZE - 1] = (unsigned char)args[0].v_int64;
  bss[0] = (unsigned char)(args[0].v_int64 >> 8);
  result->type_index = kTVMFFIInt;
  result->zero_padding = 0;
  result->v_int64 = (int64_t)bss[0] << 8 | bss[BSS_SIZE - 1];
  return 0;
}
