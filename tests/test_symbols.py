"""Role classification of symbol names, including system-lib prefixes and look-alikes."""

from __future__ import annotations

from ffitool.symbols import Naming, Role, classify


def test_roles_of_the_special_names():
    names = [
        "__tvm_ffi_add_one",
        "__tvm_ffi__metadata_add_one",
        "__tvm_ffi__doc_add_one",
        "__tvm_ffi__library_bin",
        "__tvm_ffi__library_ctx",
        "__tvm_ffi__cubin_k",
        "__tvm_ffi__cubin_k_end",
        "__tvm_dev_mblob",
        "__tvm_module_ctx",
    ]
    assert classify(names) == {
        "__tvm_ffi_add_one": Naming(Role.FUNCTION, "add_one"),
        "__tvm_ffi__metadata_add_one": Naming(Role.METADATA, "add_one"),
        "__tvm_ffi__doc_add_one": Naming(Role.DOC, "add_one"),
        "__tvm_ffi__library_bin": Naming(Role.LIBRARY_BIN, "__tvm_ffi__library_bin"),
        "__tvm_ffi__library_ctx": Naming(Role.LIBRARY_CTX, "__tvm_ffi__library_ctx"),
        "__tvm_ffi__cubin_k": Naming(Role.CUBIN, "k"),
        "__tvm_ffi__cubin_k_end": Naming(Role.CUBIN_END, "k"),
        "__tvm_dev_mblob": Naming(Role.LEGACY_BIN, "__tvm_dev_mblob"),
        "__tvm_module_ctx": Naming(Role.LEGACY_CTX, "__tvm_module_ctx"),
    }


def test_user_function_starting_with_underscore_is_a_function():
    assert classify(["__tvm_ffi__private", "__tvm_ffi___x"]) == {
        "__tvm_ffi__private": Naming(Role.FUNCTION, "_private"),
        "__tvm_ffi___x": Naming(Role.FUNCTION, "__x"),
    }


def test_cubin_named_end_without_its_stem_is_a_cubin():
    assert classify(["__tvm_ffi__cubin_last_end"]) == {
        "__tvm_ffi__cubin_last_end": Naming(Role.CUBIN, "last_end")
    }


def test_system_lib_prefix_applies_to_specials_and_functions():
    names = [
        "mylib___tvm_ffi__library_bin",
        "mylib___tvm_ffi__library_ctx",
        "__tvm_ffi_mylib_add_one",
        "__tvm_ffi_other",
    ]
    assert classify(names) == {
        "mylib___tvm_ffi__library_bin": Naming(
            Role.LIBRARY_BIN, "__tvm_ffi__library_bin", "mylib_"
        ),
        "mylib___tvm_ffi__library_ctx": Naming(
            Role.LIBRARY_CTX, "__tvm_ffi__library_ctx", "mylib_"
        ),
        "__tvm_ffi_mylib_add_one": Naming(Role.FUNCTION, "add_one", "mylib_"),
        "__tvm_ffi_other": Naming(Role.FUNCTION, "other"),
    }


def test_names_that_merely_contain_the_marker_are_not_ffi():
    names = [
        "_ZN3tvm3ffi9__tvm_ffi_xE",
        "x__tvm_ffi_y",
        "__tvm_ffi_",
        "prefix__tvm_ffi__library_binx",
    ]
    assert classify(names) == {}


def test_compiler_clones_are_not_functions():
    names = ["__tvm_ffi_add_one.cold", "__tvm_ffi__doc_f.cold", "__tvm_ffi_f.part.0", "__tvm_ffi_f"]
    assert classify(names) == {"__tvm_ffi_f": Naming(Role.FUNCTION, "f")}
