/*
 * The TVM FFI part of the benchmark libraries: a few packed-ABI functions and,
 * unless the blob comes from incbin.S instead, a tiny valid __tvm_ffi__library_bin.
 *
 * Why these exist in a benchmark: ffitool inspect must find and classify the
 * __tvm_ffi_* symbols among ~75k others and decode the blob, so the benchmark
 * library has to contain real ones, in the dynamic symbol table.
 */
#define BENCH_EXPORT __attribute__((visibility("default")))

BENCH_EXPORT int __tvm_ffi_f0(void* self, const void* args, int num_args, void* result) {
  return 0;
}
BENCH_EXPORT int __tvm_ffi_f1(void* self, const void* args, int num_args, void* result) {
  return 0;
}
BENCH_EXPORT int __tvm_ffi_f2(void* self, const void* args, int num_args, void* result) {
  return 0;
}
BENCH_EXPORT int __tvm_ffi_f3(void* self, const void* args, int num_args, void* result) {
  return 0;
}
BENCH_EXPORT int __tvm_ffi_main(void* self, const void* args, int num_args, void* result) {
  return 0;
}

#ifdef BENCH_EMBED_EXAMPLE_BLOB
/*
 * The 96-byte worked example of the library format: module 0 is "_lib" and
 * imports module 1, of kind "cuda_ptx", whose value is DE AD BE EF.
 * All integers are u64 little-endian; nbytes (88) counts what follows it.
 */
BENCH_EXPORT const unsigned char __tvm_ffi__library_bin[96] = {
    /* nbytes = 88 */
    0x58, 0, 0, 0, 0, 0, 0, 0,
    /* indptr: count 3, [0, 1, 1] */
    3, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    /* child_indices: count 1, [1] */
    1, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 0, 0, 0, 0, 0,
    /* module 0: key "_lib" */
    4, 0, 0, 0, 0, 0, 0, 0, '_', 'l', 'i', 'b',
    /* module 1: key "cuda_ptx", value DE AD BE EF */
    8, 0, 0, 0, 0, 0, 0, 0, 'c', 'u', 'd', 'a', '_', 'p', 't', 'x',
    4, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
};
#endif
