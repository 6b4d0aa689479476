/*
 * dlopen_loader.c -- the loader side of the foreign-architecture tests, cross-built with zig and
 * run under qemu-user: it does what the runtime does with a packed library, on the target's own
 * ld.so, byte order and relocation types.
 *
 *   dlopen_loader LIB [NAME:INT]...
 *
 * dlopens LIB, finds __tvm_ffi__library_bin with dlsym, reads nbytes (u64 little-endian on every
 * host, as the blob format says) and prints it with the FNV-1a 64-bit digest of the 8 + nbytes
 * bytes; then calls each __tvm_ffi_NAME through the packed ABI with one int and prints the result.
 * Output lines: "nbytes N", "fnv1a64 HEX", "NAME(INT) = RESULT".  Any failure exits non-zero.
 */
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

/* The host libraries import the runtime's error setter; this executable stands in for
 * libtvm_ffi (linked with -rdynamic, so the library binds to it). */
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message) {
  fprintf(stderr, "raised %s: %s\n", kind, message);
}

static uint64_t read_u64_le(const unsigned char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = value << 8 | bytes[i];
  return value;
}

static int call(void* library, const char* spec) {
  char symbol[256];
  const char* colon = strchr(spec, ':');
  if (colon == NULL || (size_t)(colon - spec) + sizeof("__tvm_ffi_") > sizeof(symbol)) {
    fprintf(stderr, "bad call spec %s\n", spec);
    return 1;
  }
  snprintf(symbol, sizeof(symbol), "__tvm_ffi_%.*s", (int)(colon - spec), spec);
  TVMFFISafeCallType function = (TVMFFISafeCallType)dlsym(library, symbol);
  if (function == NULL) {
    fprintf(stderr, "dlsym %s: %s\n", symbol, dlerror());
    return 1;
  }
  TVMFFIAny arg, result;
  memset(&arg, 0, sizeof(arg));
  memset(&result, 0, sizeof(result));
  arg.type_index = kTVMFFIInt;
  arg.v_int64 = strtoll(colon + 1, NULL, 0);
  int rc = function(NULL, &arg, 1, &result);
  if (rc != 0 || result.type_index != kTVMFFIInt) {
    fprintf(stderr, "%s returned %d, type %d\n", symbol, rc, (int)result.type_index);
    return 1;
  }
  printf("%.*s(%" PRId64 ") = %" PRId64 "\n", (int)(colon - spec), spec, arg.v_int64,
         result.v_int64);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s LIB [NAME:INT]...\n", argv[0]);
    return 2;
  }
  void* library = dlopen(argv[1], RTLD_LAZY | RTLD_LOCAL);
  if (library == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  const unsigned char* blob = (const unsigned char*)dlsym(library, "__tvm_ffi__library_bin");
  if (blob == NULL) {
    fprintf(stderr, "dlsym __tvm_ffi__library_bin: %s\n", dlerror());
    return 1;
  }
  uint64_t nbytes = read_u64_le(blob);
  uint64_t digest = 0xcbf29ce484222325u;
  for (uint64_t i = 0; i < 8 + nbytes; ++i) digest = (digest ^ blob[i]) * 0x100000001b3u;
  printf("nbytes %" PRIu64 "\nfnv1a64 %016" PRIx64 "\n", nbytes, digest);
  for (int i = 2; i < argc; ++i) {
    if (call(library, argv[i]) != 0) return 1;
  }
  return 0;
}
