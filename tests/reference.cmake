# Golden tests against PyTorch (included by tests/CMakeLists.txt).
#
#   reference_golden_generate   runs tests/reference/golden.py: one safetensors file per case into
#                               ${CMAKE_BINARY_DIR}/reference (fixture setup "golden")
#   TorchReference.*            the gtest cases of tests/unit/test_torch_reference.cpp, discovered
#                               at build time; they require fixture "golden", so `ctest -R
#                               TorchReference` regenerates the files first, and a failed
#                               generation marks them failed instead of letting them run on
#                               stale or missing files.
#
# Without torch, golden.py exits 0 and writes reference/SKIPPED; the gtest cases then report
# "Skipped" with its message (never "Passed").

set(MH_REFERENCE_DIR ${CMAKE_BINARY_DIR}/reference)
# Debian's python3-torch is installed for the system interpreter, not for whatever python3 comes
# first on PATH (a virtualenv, pyenv, ...).
set(MH_REFERENCE_PYTHON /usr/bin/python3)
if(NOT EXISTS ${MH_REFERENCE_PYTHON})
  find_program(MH_REFERENCE_PYTHON_FOUND NAMES python3)
  if(MH_REFERENCE_PYTHON_FOUND)
    set(MH_REFERENCE_PYTHON ${MH_REFERENCE_PYTHON_FOUND})
  endif()
endif()
message(STATUS "multihead: torch reference tests use ${MH_REFERENCE_PYTHON}")

add_test(NAME reference_golden_generate
         COMMAND ${MH_REFERENCE_PYTHON} ${CMAKE_SOURCE_DIR}/tests/reference/golden.py
                 ${MH_REFERENCE_DIR})
set_tests_properties(reference_golden_generate PROPERTIES FIXTURES_SETUP golden
                     LABELS "reference" TIMEOUT 300)

# The discovered cases exist only at ctest time, in the file gtest_discover_tests writes after
# the build; it also sets test_torch_reference_TESTS to their names. This ctest include file,
# appended after gtest's own, attaches the fixture to them.
if(TARGET test_torch_reference)
  set(_mh_ref_include ${CMAKE_CURRENT_BINARY_DIR}/test_torch_reference_fixture.cmake)
  file(WRITE ${_mh_ref_include}
       "if(test_torch_reference_TESTS)\n"
       "  set_tests_properties(\${test_torch_reference_TESTS} PROPERTIES\n"
       "                       FIXTURES_REQUIRED golden LABELS \"unit;reference\")\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${_mh_ref_include})
endif()
