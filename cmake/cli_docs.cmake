# Writes the man page and shell completions the binary makes from its own help:
#   cmake -DHERALD=path/to/herald -DOUT=dir -P cmake/cli_docs.cmake
file(MAKE_DIRECTORY ${OUT}/completions)
foreach(pair "man;herald.1" "completion;bash;completions/herald" "completion;zsh;completions/_herald"
             "completion;fish;completions/herald.fish")
  list(POP_BACK pair file)
  execute_process(COMMAND ${HERALD} ${pair} OUTPUT_FILE ${OUT}/${file} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "herald ${pair} failed (${rc})")
  endif()
endforeach()
