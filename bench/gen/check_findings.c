/*
 * The varied parts of the small libraries of bench/check.py, one per -D switch, so that
 * `ffitool check` meets libraries with and without findings, as in a real wheel.
 *
 * Every library gets the plain functions (BENCH_PLAIN); the others add one finding each.
 */
#define BENCH_EXPORT __attribute__((visibility("default")))

#ifdef BENCH_PLAIN
/* Ordinary exported code beside the FFI symbols: nm and ffitool read these too. */
BENCH_EXPORT int bench_plain_add(int x) { return x + 1; }
BENCH_EXPORT int bench_plain_mul(int x) { return x * 3; }
BENCH_EXPORT long bench_plain_sum(const long* v, int n) {
  long s = 0;
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}
#endif

#ifdef BENCH_HIDDEN_FUNCTION
/* L210: a __tvm_ffi_ function that dlsym cannot find. */
__attribute__((visibility("hidden"))) int __tvm_ffi_hidden_helper(void* self, const void* args,
                                                                  int num_args, void* result) {
  return 0;
}
BENCH_EXPORT void* bench_hidden_ref(void) { return (void*)&__tvm_ffi_hidden_helper; }
#endif

#ifdef BENCH_ORPHAN_METADATA
/* L212: a metadata getter whose __tvm_ffi_ghost does not exist. */
BENCH_EXPORT const char* __tvm_ffi__metadata_ghost(void) { return "{}"; }
#endif

#ifdef BENCH_TRAILING_BLOB
/*
 * B201: the 96-byte example blob of ffi_exports.c with nbytes 92, i.e. 4 bytes after its
 * last module that no module owns.
 */
BENCH_EXPORT const unsigned char __tvm_ffi__library_bin[100] = {
    0x5c, 0, 0, 0, 0, 0, 0, 0,
    3, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    4, 0, 0, 0, 0, 0, 0, 0, '_', 'l', 'i', 'b',
    8, 0, 0, 0, 0, 0, 0, 0, 'c', 'u', 'd', 'a', '_', 'p', 't', 'x',
    4, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
    0x0b, 0xad, 0xf0, 0x0d,
};
#endif
