# The scripts under tools/ that turn results into tables: Python's standard library only, so any
# python3 runs them.
find_program(MH_TOOLS_PYTHON NAMES python3)
if(MH_TOOLS_PYTHON)
  add_test(NAME tools.gpu_summary
           COMMAND ${MH_TOOLS_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/tools/test_gpu_summary.py)
  set_tests_properties(tools.gpu_summary PROPERTIES LABELS unit)
endif()
