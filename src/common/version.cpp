#include "bigsmall/version.hpp"

namespace bigsmall {

#define BIGSMALL_STR_(x) #x
#define BIGSMALL_STR(x) BIGSMALL_STR_(x)

const char* version_string() {
  return BIGSMALL_STR(BIGSMALL_VERSION_MAJOR) "." BIGSMALL_STR(BIGSMALL_VERSION_MINOR) "." BIGSMALL_STR(
      BIGSMALL_VERSION_PATCH);
}

unsigned version_number() { return BIGSMALL_VERSION_NUMBER; }

}  // namespace bigsmall
