/*
 * Embeds a generated file as one exported, read-only data object.
 *
 * Why assembly: .incbin copies the file's bytes into the object without the
 * compiler ever seeing them, so a library of hundreds of MiB (or a 1 GiB TVM FFI
 * blob) builds in seconds, where a C array of the same size would take minutes
 * and gigabytes of compiler memory.
 *
 * Configured by the preprocessor (this is a capital-S file, gcc runs cpp on it):
 *   INCBIN_SECTION  section name, e.g. .rodata.bench_bulk (merged into .rodata)
 *   INCBIN_SYMBOL   exported symbol, e.g. __tvm_ffi__library_bin
 *   INCBIN_FILE     quoted path of the file to embed
 * The symbol's ELF size is the file's length, as TVM writes it for blobs.
 */
    .section INCBIN_SECTION, "a"
    .globl INCBIN_SYMBOL
    .type INCBIN_SYMBOL, %object
    .p2align 4
INCBIN_SYMBOL:
    .incbin INCBIN_FILE
    .size INCBIN_SYMBOL, . - INCBIN_SYMBOL

    /* No executable stack: keeps the linker quiet and the library loadable. */
    .section .note.GNU-stack, "", %progbits
