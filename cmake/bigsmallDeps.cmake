# libzstd and libxxhash as the targets PkgConfig::ZSTD and PkgConfig::XXHASH: through pkg-config
# where it is; otherwise (conda, a bare image with the headers and libraries copied in: set
# CMAKE_PREFIX_PATH) by plain header and library search. Used by the build and, installed, by
# bigsmallConfig.cmake: a static libbigsmall needs both at its users' link.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(ZSTD QUIET IMPORTED_TARGET libzstd)
  pkg_check_modules(XXHASH QUIET IMPORTED_TARGET libxxhash)
endif()
# BIGSMALL_DEPS_OPTIONAL (set by the installed package config): a missing library makes the
# package not found, as find_package(bigsmall QUIET) expects, instead of stopping the configure.
set(_bigsmall_required REQUIRED)
if(BIGSMALL_DEPS_OPTIONAL)
  set(_bigsmall_required)
endif()
foreach(dep ZSTD XXHASH)
  if(NOT TARGET PkgConfig::${dep})
    string(TOLOWER ${dep} lib)
    find_path(${dep}_INCLUDE_DIRS ${lib}.h ${_bigsmall_required})
    find_library(${dep}_LINK_LIBRARIES ${lib} ${_bigsmall_required})
    if(NOT ${dep}_INCLUDE_DIRS OR NOT ${dep}_LINK_LIBRARIES)
      continue()
    endif()
    add_library(PkgConfig::${dep} INTERFACE IMPORTED)
    target_include_directories(PkgConfig::${dep} INTERFACE ${${dep}_INCLUDE_DIRS})
    target_link_libraries(PkgConfig::${dep} INTERFACE ${${dep}_LINK_LIBRARIES})
    message(STATUS "bigsmall: ${lib} without pkg-config: ${${dep}_LINK_LIBRARIES}")
  endif()
endforeach()
