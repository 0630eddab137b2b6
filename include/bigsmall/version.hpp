// The version of bigsmall. CMake and pyproject.toml read it from these lines, so that the headers,
// the library, the CLI, the CMake package and the Python package cannot disagree (a test checks
// what each reports).
#pragma once

#define BIGSMALL_VERSION_MAJOR 0
#define BIGSMALL_VERSION_MINOR 3
#define BIGSMALL_VERSION_PATCH 0
// One number that compares in order: 10000 * major + 100 * minor + patch (as ZSTD_VERSION_NUMBER).
#define BIGSMALL_VERSION_NUMBER \
  (BIGSMALL_VERSION_MAJOR * 10000 + BIGSMALL_VERSION_MINOR * 100 + BIGSMALL_VERSION_PATCH)

namespace bigsmall {

// The version of the library linked in ("0.3.0"), which may differ from the headers compiled
// against when a program is linked to another build: compare with BIGSMALL_VERSION_NUMBER.
const char* version_string();
unsigned version_number();

}  // namespace bigsmall
