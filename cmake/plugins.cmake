# cmake/plugins.cmake: the source and trigger types, one folder each, registered from the folder
# list (as Fluent Bit's plugin registry). Included by the top CMakeLists.txt; sets
#   HERALD_PLUGIN_SRCS   the C files of the types in this build (and of the lib/ modules they use)
#   HERALD_PLUGIN_LIBS   the libraries they link
#   HERALD_PLUGIN_LUA    embed_stdlib.lua arguments for their Lua halves: module=chunk=path
# and writes generated/registry.c (the C registry) and generated/plugins.lua (module
# herald.plugins: every type folder, built or not, read by scripts/stdlib/herald/registry.lua).
#
# A folder sources/<type>/ or triggers/<type>/ holds:
#   <type>.c ...      the executor: one const herald_source_<type> / herald_trigger_<type>
#   <type>.lua        its Lua half, embedded as herald.sources.<type> / herald.triggers.<type>
#                     (other *.lua beside it as herald.sources.<type>.<file>)
#   plugin.cmake      optional: the libraries it needs, see below
# Folders whose name starts with "_" are not types.
#
# plugin.cmake runs in this scope with these set for it to change:
#   PLUGIN_FOUND     TRUE; set FALSE when a library is missing ...
#   PLUGIN_MISSING   ... and say which ("librdkafka (pkg-config rdkafka)")
#   PLUGIN_LIBS      targets to link (e.g. PkgConfig::RDKAFKA)
#   PLUGIN_USES      lib/<name> modules it is built with (e.g. kube)
#   PLUGIN_REQUIRES  other types it needs in the build (e.g. "trigger:http")
#   PLUGIN_EXECUTOR  TRUE; FALSE for a type with no C of its own (it says what runs it)
#
# Each type is an option HERALD_SOURCE_<TYPE> / HERALD_TRIGGER_<TYPE> (upper case), ON by
# default when its libraries are found; HERALD_MINIMAL=ON (in a fresh build directory) turns
# every type off except HERALD_MINIMAL_TYPES. A type left out keeps a line in herald.plugins, so
# a spec that needs it gets a load error naming the option.

option(HERALD_MINIMAL "Build only the webhook and calendar sources and the log and http triggers" OFF)
set(HERALD_MINIMAL_TYPES source:webhook source:calendar trigger:log trigger:http)

set(HERALD_PLUGIN_SRCS "")
set(HERALD_PLUGIN_LIBS "")
set(HERALD_PLUGIN_LUA "")
set(HERALD_PLUGIN_USES "")
set(HERALD_BUILT_TYPES "")
set(_reg_decls "")
set(_reg_list_source "")
set(_reg_list_trigger "")
set(_lua_list_source "")
set(_lua_list_trigger "")
set(_requires "")

foreach(kind source trigger)
  string(TOUPPER ${kind} KIND)
  file(GLOB _dirs LIST_DIRECTORIES true CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${kind}s/*)
  list(SORT _dirs)
  foreach(dir ${_dirs})
    get_filename_component(n ${dir} NAME)
    if(NOT IS_DIRECTORY ${dir} OR n MATCHES "^[_.]")
      continue()
    endif()
    string(TOUPPER ${n} N)
    set(opt HERALD_${KIND}_${N})
    set(PLUGIN_FOUND TRUE)
    set(PLUGIN_MISSING "")
    set(PLUGIN_LIBS "")
    set(PLUGIN_USES "")
    set(PLUGIN_REQUIRES "")
    set(PLUGIN_EXECUTOR TRUE)
    if(EXISTS ${dir}/plugin.cmake)
      include(${dir}/plugin.cmake)
    endif()
    file(GLOB _c CONFIGURE_DEPENDS ${dir}/*.c)
    file(GLOB _lua CONFIGURE_DEPENDS ${dir}/*.lua)
    set(dflt ${PLUGIN_FOUND})
    if(HERALD_MINIMAL AND NOT "${kind}:${n}" IN_LIST HERALD_MINIMAL_TYPES)
      set(dflt OFF)
    endif()
    option(${opt} "Build the ${n} ${kind}" ${dflt})
    # the two halves go together: a schema with nothing to run it, or an executor the loader
    # cannot reach, is a mistake to see now rather than a spec that silently does nothing
    # (checked for the types being built: -D${opt}=OFF leaves a folder in the making aside)
    if(${opt} AND NOT EXISTS ${dir}/${n}.lua)
      message(FATAL_ERROR "${kind}s/${n}: no ${n}.lua (the ${kind}'s schema and Lua half); see docs/contributing.md")
    endif()
    if(${opt} AND PLUGIN_EXECUTOR AND NOT _c)
      message(FATAL_ERROR "${kind}s/${n}: ${n}.lua but no executor (*.c defining herald_${kind}_${n}); see docs/contributing.md")
    endif()
    if(${opt} AND NOT PLUGIN_EXECUTOR AND _c)
      message(FATAL_ERROR "${kind}s/${n}: plugin.cmake says PLUGIN_EXECUTOR FALSE but the folder has C files")
    endif()
    if(${opt} AND NOT PLUGIN_FOUND)
      message(FATAL_ERROR "${opt} is ON but ${PLUGIN_MISSING} was not found (install it, or configure with -D${opt}=OFF)")
    endif()
    if(${opt})
      set(built true)
      list(APPEND HERALD_BUILT_TYPES ${kind}:${n})
      list(APPEND HERALD_PLUGIN_LIBS ${PLUGIN_LIBS})
      list(APPEND HERALD_PLUGIN_USES ${PLUGIN_USES})
      foreach(r ${PLUGIN_REQUIRES})
        list(APPEND _requires "${kind}:${n}>${r}")
      endforeach()
      if(_c)
        list(APPEND HERALD_PLUGIN_SRCS ${_c})
        string(APPEND _reg_decls "extern const herald_${kind}_type herald_${kind}_${n};\n")
        string(APPEND _reg_list_${kind} "    &herald_${kind}_${n},\n")
      endif()
      foreach(f ${_lua})
        get_filename_component(base ${f} NAME_WE)
        file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${f})
        if(base STREQUAL n)
          list(APPEND HERALD_PLUGIN_LUA "herald.${kind}s.${n}=${rel}=${f}")
        else()
          list(APPEND HERALD_PLUGIN_LUA "herald.${kind}s.${n}.${base}=${rel}=${f}")
        endif()
      endforeach()
    else()
      set(built false)
    endif()
    string(APPEND _lua_list_${kind} "    { name = \"${n}\", built = ${built}, option = \"${opt}\" },\n")
  endforeach()
endforeach()

# a type that runs on others' executors (the lua trigger on http and log) needs them built
foreach(r ${_requires})
  string(REPLACE ">" ";" pair ${r})
  list(GET pair 0 who)
  list(GET pair 1 what)
  if(NOT what IN_LIST HERALD_BUILT_TYPES)
    string(REPLACE ":" ";" w ${what})
    list(GET w 0 wk)
    list(GET w 1 wn)
    string(TOUPPER "${wk}_${wn}" WO)
    message(FATAL_ERROR "${who} needs the ${wn} ${wk}: configure with -DHERALD_${WO}=ON, or leave ${who} out")
  endif()
endforeach()

# lib/<name>/: C shared by several types (the Kubernetes client of k8s and argoWorkflow), built
# when a type in the build uses it; lib/<name>/lib.cmake sets PLUGIN_LIBS as plugin.cmake does.
list(REMOVE_DUPLICATES HERALD_PLUGIN_USES)
foreach(u ${HERALD_PLUGIN_USES})
  if(NOT IS_DIRECTORY ${CMAKE_SOURCE_DIR}/lib/${u})
    message(FATAL_ERROR "a plugin uses lib/${u}, which does not exist")
  endif()
  set(PLUGIN_FOUND TRUE)
  set(PLUGIN_MISSING "")
  set(PLUGIN_LIBS "")
  if(EXISTS ${CMAKE_SOURCE_DIR}/lib/${u}/lib.cmake)
    include(${CMAKE_SOURCE_DIR}/lib/${u}/lib.cmake)
  endif()
  if(NOT PLUGIN_FOUND)
    message(FATAL_ERROR "lib/${u} needs ${PLUGIN_MISSING}, which was not found")
  endif()
  file(GLOB _c CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/lib/${u}/*.c)
  list(APPEND HERALD_PLUGIN_SRCS ${_c})
  list(APPEND HERALD_PLUGIN_LIBS ${PLUGIN_LIBS})
endforeach()
list(REMOVE_DUPLICATES HERALD_PLUGIN_LIBS)

set(REG_DECLS "${_reg_decls}")
set(REG_SOURCES "${_reg_list_source}")
set(REG_TRIGGERS "${_reg_list_trigger}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/registry.c.in ${CMAKE_BINARY_DIR}/generated/registry.c @ONLY)
set(LUA_SOURCES "${_lua_list_source}")
set(LUA_TRIGGERS "${_lua_list_trigger}")
configure_file(${CMAKE_SOURCE_DIR}/cmake/plugins.lua.in ${CMAKE_BINARY_DIR}/generated/plugins.lua @ONLY)
list(APPEND HERALD_PLUGIN_LUA "herald.plugins=generated/plugins.lua=${CMAKE_BINARY_DIR}/generated/plugins.lua")

string(REPLACE ";" " " _built "${HERALD_BUILT_TYPES}")
message(STATUS "Herald types in this build: ${_built}")
