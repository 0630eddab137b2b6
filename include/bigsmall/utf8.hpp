// UTF-8 well-formedness: tensor names and safetensors headers must be UTF-8 (readers of either
// format reject others); file paths need not be, so callers that print paths as JSON use these.
#pragma once
#include <cstddef>
#include <string_view>

namespace bigsmall {

// Length of the well-formed UTF-8 sequence at s[i] (1 to 4), or 0: overlong forms, surrogates
// (U+D800..U+DFFF) and code points past U+10FFFF are not well formed. Requires i < s.size().
size_t utf8_sequence_length(std::string_view s, size_t i);
bool is_valid_utf8(std::string_view s);

}  // namespace bigsmall
