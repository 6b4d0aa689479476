/*
 * versioned.c -- linked with matrix_host.c and versioned.map: one name exported at two
 * versions (the default and an older one), so that a rewritten .dynsym must keep each entry of
 * .gnu.version pointing at the right .gnu.version_d node.  The test resolves both with dlvsym.
 */
#include "ffi_fixture.h"

FIXTURE_EXPORT int ffitool_versioned_v1(void) { return 1; }
FIXTURE_EXPORT int ffitool_versioned_v2(void) { return 2; }

__asm__(".symver ffitool_versioned_v1, ffitool_versioned@FFITOOL_MATRIX_1");
__asm__(".symver ffitool_versioned_v2, ffitool_versioned@@FFITOOL_MATRIX_2");
