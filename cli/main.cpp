// bigsmall: command line front end over the public API. Only this file maps errors to exit codes.
#include <fcntl.h>
#include <poll.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include "bigsmall/container.hpp"
#include "bigsmall/utf8.hpp"
#include "bigsmall/version.hpp"

namespace fs = std::filesystem;
using namespace bigsmall;

namespace {

// Exit codes (documented in README.md and --help).
enum Exit : int {
  kExitOk = 0,
  kExitUsage = 1,
  kExitIo = 2,
  kExitNoSpace = 3,
  kExitBadInput = 4,
  kExitCorrupt = 5,
  kExitVersion = 6,
  kExitNoMemory = 7,
  kExitInternal = 70,
};

int exit_code(Error e) {
  switch (e) {
    case Error::kOk: return kExitOk;
    case Error::kInvalidArgument: return kExitUsage;
    case Error::kIo: return kExitIo;
    case Error::kNoSpace: return kExitNoSpace;
    case Error::kNotSafetensors:
    case Error::kNotBigsmall:
    case Error::kTruncated:
    case Error::kUnknownDtype:
    case Error::kLimit:
    case Error::kNotFound: return kExitBadInput;
    case Error::kCorrupt: return kExitCorrupt;
    case Error::kUnsupportedVersion: return kExitVersion;
    case Error::kOutOfMemory: return kExitNoMemory;
    case Error::kInternal: return kExitInternal;
  }
  return kExitInternal;
}

// After a usage error: its one line, then where the rest is (as xz and GNU tools do), not the
// whole help.
const char* kHelpHint = "Try 'bigsmall --help' for more information.\n";

// The text around the options: what the commands are, then how paths, pipes and exit codes work.
const char* kUsageHead =
    "usage: bigsmall COMMAND [options] PATH...\n"
    "\n"
    "Lossless compression of neural network weights (safetensors files and model directories).\n"
    "\n"
    "commands:\n"
    "  compress    FILE.safetensors -> FILE.bs; DIR -> DIR.bs/ (other files copied, index written)\n"
    "  decompress  FILE.bs -> FILE.safetensors; DIR.bs/ -> DIR/ (byte-identical originals)\n"
    "  verify      decode everything and check every checksum\n"
    "  info        per tensor: dtype, shape, codec, ratio, bits per weight, joint-model floor\n"
    "              (DIR.bs/: each .bs file of its index, then their sum)\n"
    "  bench       ratio and compress/decompress speed at 1 thread and at all threads\n"
    "              (DIR: each *.safetensors under it)\n"
    "\n";
const char* kUsageTail =
    "Short flags combine (-fqc). '-' as the input reads stdin (to stdout, unless -o is given;\n"
    "-o - is stdout too); a file named '-' is './-'. Stdin and named pipes are read whole\n"
    "first (random access), and a .bs for stdout is built whole before it is sent (its index\n"
    "goes at the front, written last): in memory, or beyond a quarter of it (BIGSMALL_SPOOL_BYTES)\n"
    "in a temporary file under the first of TMPDIR, TMP, TEMP, TEMPDIR that is set (else /tmp);\n"
    "decompressing to stdout streams. Binary data is not written to a terminal unless -f is\n"
    "given; --json needs -o when the output goes to stdout.\n"
    "\n"
    "exit codes: 0 ok, 1 usage, 2 I/O error, 3 disk full, 4 invalid input (not safetensors/.bs,\n"
    "truncated, unknown dtype), 5 corrupt data (checksum mismatch), 6 newer format version,\n"
    "7 out of memory, 70 internal error; stopped by signal N, it ends by that signal (shells show\n"
    "128+N: 130 for Ctrl-C)\n";

// Each option with the commands that take it ("*": all); COMMAND --help lists only its own.
const struct OptionHelp {
  const char* text;
  const char* commands;
} kOptions[] = {
    {"  -o, --output PATH    output path (one input only; compress, decompress)\n",
     "compress decompress"},
    {"  -c, --stdout         write the output to stdout (one input only; compress, decompress)\n",
     "compress decompress"},
    {"  -f, --force          overwrite existing outputs (compress, decompress)\n",
     "compress decompress"},
    {"  -T N, -TN, --threads N\n"
         "                       threads, at most one per chunk and 256 (default: all cores, as many as\n"
         "                       the work can use; not for info)\n",
     "compress decompress verify bench"},
    {"  -q, --quiet          errors only (not for info or bench)\n",
     "compress decompress verify"},
    {"  -v, --verbose        after compress/decompress, one line per tensor (dtype, codec, sizes, bits/weight)\n",
     "compress decompress"},
    {"  --json               machine-readable output on stdout: one JSON object per input (bench: per input\n"
         "                       and thread count), one per line\n",
     "*"},
    {"  --no-verify          skip checksum verification (decompress)\n",
     "decompress"},
    {"  -k, --keep           keep the input (always done; accepted as zstd and xz take it)\n",
     "compress decompress"},
    {"  --best               zstd level 19 for tensors with repeated structure (compress; smaller, slower)\n",
     "compress"},
    {"  --                   end of options (for paths that start with '-')\n",
     "*"},
    {"  -h, --help           this text;  -V, --version\n",
     "*"},
};

bool option_applies(const OptionHelp& o, const std::string& command) {
  if (std::strcmp(o.commands, "*") == 0 || command.empty()) return true;
  const std::string list = std::string(" ") + o.commands + " ";
  return list.find(" " + command + " ") != std::string::npos;
}

void print_usage(std::FILE* out, const std::string& command) {
  std::fputs("options:\n", out);
  for (const auto& o : kOptions)
    if (option_applies(o, command)) std::fputs(o.text, out);
  std::fputs(kUsageTail, out);
}

// `bigsmall COMMAND --help`: that command's synopsis and what it does, then the options it takes;
// without a command, the whole text.
void print_help(const std::string& command) {
  static const struct {
    const char* name;
    const char* text;
  } kCommands[] = {
      {"compress", "usage: bigsmall compress [-o OUT | -c] [-f] [-T N] [-q] [-v] [--json] [--best] PATH...\n\n"
                   "FILE.safetensors -> FILE.bs; DIR -> DIR.bs/ (other files copied, index written).\n"},
      {"decompress", "usage: bigsmall decompress [-o OUT | -c] [-f] [-T N] [-q] [-v] [--json] [--no-verify] PATH...\n\n"
                     "FILE.bs -> FILE.safetensors; DIR.bs/ -> DIR/ (byte-identical originals).\n"},
      {"verify", "usage: bigsmall verify [-T N] [-q] [--json] PATH...\n\n"
                 "Decode everything and check every checksum (a directory: every file, each damaged one named).\n"},
      {"info", "usage: bigsmall info [--json] PATH...\n\n"
               "Per tensor: dtype, shape, codec, ratio, bits per weight, joint-model floor\n"
               "(DIR.bs/: each .bs file of its index, then their sum).\n"},
      {"bench", "usage: bigsmall bench [-T N] [--json] PATH...\n\n"
                "Ratio and compress/decompress speed at 1 thread and at all threads (DIR: each *.safetensors\n"
                "under it).\n"},
  };
  for (const auto& c : kCommands)
    if (command == c.name) {
      std::printf("%s\n", c.text);
      print_usage(stdout, command);
      return;
    }
  std::fputs(kUsageHead, stdout);
  print_usage(stdout, "");
}

struct Args {
  std::string command;
  std::vector<std::string> paths;
  std::string output;
  bool force = false, quiet = false, verbose = false, json = false, verify = true, best = false, keep = false;
  bool to_stdout = false;
  int threads = 0;
  bool threads_given = false;
};

// zstd's and xz's spellings in the one form the parser reads: --long=VALUE split in two, long
// names of the short options, and short flags given together (-fq) one by one. Nothing after "--".
std::vector<std::string> normalized_args(const std::vector<std::string>& in) {
  static const std::pair<const char*, const char*> kLong[] = {
      {"--force", "-f"}, {"--quiet", "-q"}, {"--verbose", "-v"}, {"--threads", "-T"}, {"--output", "-o"}, {"--keep", "-k"}, {"--stdout", "-c"}};
  std::vector<std::string> out;
  bool done = false, value_next = false;
  for (const std::string& s : in) {
    if (done || value_next) {  // after "--", and the value of -o or -T ("-o -fq" names a file "-fq")
      value_next = false;
      out.push_back(s);
      continue;
    }
    if (s == "--") {
      done = true;
      out.push_back(s);
      continue;
    }
    if (s == "-o" || s == "-T") value_next = true;
    if (s.rfind("--", 0) == 0) {
      const size_t eq = s.find('=');
      const std::string name = s.substr(0, eq);
      const auto it = std::find_if(std::begin(kLong), std::end(kLong), [&](const auto& l) { return name == l.first; });
      const bool takes_value = it != std::end(kLong) && (it->second[1] == 'o' || it->second[1] == 'T');
      // Unknown names, and =value on a flag (--force=yes), stay as they are: refused as unknown.
      if (it == std::end(kLong) || (eq != std::string::npos && !takes_value)) {
        out.push_back(s);
        continue;
      }
      out.push_back(it->second);
      if (eq != std::string::npos) out.push_back(s.substr(eq + 1));
      else value_next = takes_value;
      continue;
    }
    // Short flags together, as getopt takes them: -fq, and -fqT2 or -fqo OUT (an option that
    // takes a value ends the cluster; the rest of the argument, else the next one, is its value).
    if (s.size() > 2 && s[0] == '-' && s[1] != '-') {
      size_t j = 1;
      while (j < s.size() && std::string_view("fqvkc").find(s[j]) != std::string_view::npos) ++j;
      if (j > 1 && (j == s.size() || s[j] == 'T' || s[j] == 'o')) {
        for (size_t k = 1; k < j; ++k) out.push_back(std::string("-") + s[k]);
        if (j < s.size()) {
          out.push_back(std::string("-") + s[j]);
          if (j + 1 < s.size()) out.push_back(s.substr(j + 1));
          else value_next = true;
        }
        continue;
      }
    }
    out.push_back(s);
  }
  return out;
}

// The scratch .bs file `bench` writes (complete between runs, so not a pending output of the
// library), or that a large compress to stdout builds before it is sent, in a private directory
// of its own (mkdtemp: a predictable name in a shared /tmp could be a link another user
// planted): both removed by the signal handlers too. Fixed buffers: a handler may not allocate.
char g_scratch_file[4096];
char g_scratch_dir[4096];
volatile std::sig_atomic_t g_scratch_set = 0;  // set once both paths are whole

void remove_scratch() {  // async-signal-safe
  if (!g_scratch_set) return;
  ::unlink(g_scratch_file);
  ::rmdir(g_scratch_dir);
}

// The input being read, for the SIGBUS message (same rules as the scratch path).
char g_input[4096];
bool g_quiet = false;  // -q, for warnings said outside a command's own code
volatile std::sig_atomic_t g_input_set = 0;

void note_input(const std::string& path) {
  g_input_set = 0;
  std::snprintf(g_input, sizeof g_input, "%s", path.c_str());
  g_input_set = 1;
}

// Set while a progress bar stands on the terminal's last line: a handler that ends the run
// clears it first, so that its message (or the shell's prompt) starts on a clean line.
volatile std::sig_atomic_t g_bar_drawn = 0;

void clear_bar() {  // async-signal-safe
  if (g_bar_drawn) (void)!::write(2, "\r\033[K", 4);
}

void on_signal(int sig) {
  remove_partial_outputs();
  remove_scratch();
  clear_bar();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Inputs are read through memory maps: a file that another program truncates while it is read
// faults on the pages past its new end. That is a bad input, not a crash: one line, exit 4,
// nothing left behind. (Only async-signal-safe calls here.)
void on_bus_error(int, siginfo_t* info, void*) {
  // Decoding threads reading the same truncated mapping fault together: the first reports and
  // ends the process, the others wait for that (two reports would interleave).
  static std::atomic<bool> reporting{false};
  if (reporting.exchange(true))
    for (;;) ::pause();
  remove_partial_outputs();
  remove_scratch();
  clear_bar();
  // One write of the whole line. Built with plain copies: no allocation in a signal handler.
  static char line[8192];
  size_t n = 0;
  auto add = [&](const char* s) {
    for (; *s && n + 1 < sizeof line; ++s) line[n++] = *s;
  };
  add("bigsmall: ");
  // The file mapped where the fault is (a shard of a directory being compressed), else the input.
  if (const char* mapped = bigsmall::mapped_input_at(info->si_addr)) {
    add(mapped);
    add(": ");
  } else if (g_input_set) {
    add(g_input);
    add(": ");
  }
  add("a mapped file could not be read or written (truncated by another program, or a full disk?)");
  line[n++] = '\n';
  for (size_t off = 0; off < n;) {
    const ssize_t w = ::write(2, line + off, n - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  ::_exit(kExitBadInput);
}

std::string human(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

// JSON string literal for names and paths (tensor names may hold quotes, backslashes, controls).
// Bytes that are not UTF-8 (file names may hold any) become \udc80..\udcff, as in a directory's
// index, so that each name stays its own (Python's json.loads and os.fsencode give back the
// bytes; two names differing in such bytes were one U+FFFD each). JSON's grammar takes such
// escapes; readers that refuse lone surrogates (serde_json) or replace them (jq) meet them only
// for names that are not UTF-8.
std::string jq(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u == '"' || u == '\\') {
      out += '\\';
      out += s[i++];
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
      ++i;
    } else if (const size_t n = utf8_sequence_length(s, i); n > 0) {
      out.append(s, i, n);
      i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\udc%02x", u);
      out += buf;
      ++i;
    }
  }
  return out + "\"";
}

// A code point that changes how a terminal shows the text around it: line separators
// (U+2028/9 end lines in some terminals and editors) and bidirectional controls (U+202E shows
// "gpj.exe" as "exe.jpg": a name could pose as another on screen).
bool hides_text(uint32_t cp) {
  return cp == 0x2028 || cp == 0x2029 || cp == 0x061c || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

uint32_t code_point(std::string_view s, size_t i, size_t n) {
  static constexpr uint8_t kLead[5] = {0, 0x7f, 0x1f, 0x0f, 0x07};
  uint32_t cp = static_cast<unsigned char>(s[i]) & kLead[n];
  for (size_t k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return cp;
}

// A name for a line of text: control characters (a tab or newline in a tensor name) escaped.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    // C1 controls (U+0080-U+009F, C2 80..C2 9F in UTF-8) act on terminals too (CSI).
    const bool c1 = u == 0xc2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xe0) == 0x80;
    if (u >= 0x80 && !c1) {  // a whole UTF-8 character, or a byte that is not one (a raw 0x9b is a CSI)
      if (const size_t n = utf8_sequence_length(s, i); n > 0) {
        if (const uint32_t cp = code_point(s, i, n); hides_text(cp)) {
          char buf[16];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
          out += buf;
        } else {
          out.append(s, i, n);
        }
        i += n - 1;
        continue;
      }
    } else if (u >= 0x20 && u != 0x7f && !c1) {
      out.push_back(s[i]);
      continue;
    }
    char buf[16];
    if (c1) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(s[++i]));
    } else {
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
    }
    out += buf;
  }
  return out;
}

// An error line stays a line when a hostile header gives a tensor a name of megabytes: its
// middle is left out, keeping the file at the start and the problem at the end.
std::string elided(const std::string& s) {
  constexpr size_t kKeep = 1024;
  if (s.size() <= 2 * kKeep + 64) return s;
  size_t a = kKeep, b = s.size() - kKeep;
  // Whole characters: a cut moves past at most 3 continuation bytes (more are no character).
  for (int k = 0; k < 3 && (static_cast<unsigned char>(s[a]) & 0xc0) == 0x80; ++k) --a;
  for (int k = 0; k < 3 && b < s.size() && (static_cast<unsigned char>(s[b]) & 0xc0) == 0x80; ++k) ++b;
  return s.substr(0, a) + " [... " + std::to_string(b - a) + " bytes left out ...] " + s.substr(b);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Columns a character takes on a terminal, by a small table (no locale is set, so wcwidth would
// not know UTF-8): 2 for East Asian wide and fullwidth characters and emoji, 0 for combining
// marks and zero-width ones, else 1.
int char_columns(uint32_t c) {
  if ((c >= 0x0300 && c <= 0x036F) || (c >= 0x200B && c <= 0x200F) || (c >= 0x20D0 && c <= 0x20FF) ||
      (c >= 0xFE00 && c <= 0xFE0F) || c == 0xFEFF)
    return 0;
  if ((c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0x303E) || (c >= 0x3041 && c <= 0x33FF) ||
      (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xA000 && c <= 0xA4CF) ||
      (c >= 0xAC00 && c <= 0xD7A3) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFE30 && c <= 0xFE4F) ||
      (c >= 0xFF00 && c <= 0xFF60) || (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x1F300 && c <= 0x1F64F) ||
      (c >= 0x1F900 && c <= 0x1F9FF) || (c >= 0x20000 && c <= 0x3FFFD))
    return 2;
  return 1;
}

// Bytes and columns of the character at s[i] (s is printable()'s: well-formed UTF-8).
std::pair<size_t, int> char_at(const std::string& s, size_t i) {
  const size_t n = utf8_sequence_length(s, i);
  if (n <= 1) return {1, 1};
  return {n, char_columns(code_point(s, i, n))};
}

size_t columns_of(const std::string& s) {
  size_t cols = 0;
  for (size_t i = 0; i < s.size();) {
    const auto [n, w] = char_at(s, i);
    cols += static_cast<size_t>(w);
    i += n;
  }
  return cols;
}

// s in at most `cols` columns (cols >= 5): its start and end, "..." between, cut between characters.
std::string squeezed(const std::string& s, size_t cols) {
  if (columns_of(s) <= cols) return s;
  const size_t head = (cols - 3) / 2, tail = cols - 3 - head;
  size_t a = 0, used = 0;
  while (a < s.size()) {
    const auto [n, w] = char_at(s, a);
    if (used + static_cast<size_t>(w) > head) break;
    used += static_cast<size_t>(w);
    a += n;
  }
  size_t b = s.size();
  used = 0;
  while (b > a) {
    size_t start = b - 1;
    while (start > a && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
    const int w = char_at(s, start).second;
    if (used + static_cast<size_t>(w) > tail) break;
    used += static_cast<size_t>(w);
    b = start;
  }
  return s.substr(0, a) + "..." + s.substr(b);
}

// The line of a progress bar in at most `room` columns: the bar narrows, then the name is
// shortened in the middle, then the bar and the name go; what is left is cut. A line that wraps
// would leave a stale row per redraw ("\r\033[K" clears only the last one).
std::string progress_line(const std::string& label, double frac, const std::string& stats, size_t room) {
  // Room kept for the figures as wide as they grow ("100% 999.99 MB/999.99 MB 999.99 MB/s 100s
  // left"), so that the name is not cut differently at every redraw.
  const size_t stat_cols = std::max<size_t>(columns_of(stats), 44);
  auto bar = [&](size_t width) {
    std::string b(static_cast<size_t>(frac * static_cast<double>(width)), '=');
    b.resize(width, ' ');
    return " [" + b + "] ";
  };
  constexpr size_t kBar = 24, kMinBar = 10, kMinLabel = 12;
  size_t width = kBar;
  const size_t label_cols = columns_of(label);
  while (width > kMinBar && label_cols + width + 4 + stat_cols > room) --width;
  if (label_cols + width + 4 + stat_cols <= room) return label + bar(width) + stats;
  if (room >= kMinLabel + width + 4 + stat_cols) return squeezed(label, room - width - 4 - stat_cols) + bar(width) + stats;
  if (room >= kMinLabel + 1 + stat_cols) return squeezed(label, room - 1 - stat_cols) + " " + stats;
  std::string line = stats;
  if (line.size() > room) line.resize(room);  // ASCII
  return line;
}

// Columns of the terminal on stderr, or 0 where it does not say.
size_t terminal_columns() {
  struct winsize w {};
  return ::ioctl(2, TIOCGWINSZ, &w) == 0 ? w.ws_col : 0;
}

// A progress bar on stderr, only when stderr is a terminal and not -q.
class Progress {
 public:
  Progress(bool enabled, const std::string& label) : on_(enabled && isatty(2)), label_(printable(label)) {}
  ProgressFn fn() {
    if (!on_) return nullptr;
    return [this](uint64_t done, uint64_t total) { draw(done, total); };
  }
  void finish() {
    if (on_ && drawn_) std::fprintf(stderr, "\r\033[K");
    g_bar_drawn = 0;
  }

 private:
  void draw(uint64_t done, uint64_t total) {
    const double t = seconds_since(t0_);
    if (done < total && t - last_ < 0.1) return;
    last_ = t;
    drawn_ = true;
    g_bar_drawn = 1;
    const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const double rate = t > 0 ? static_cast<double>(done) / t : 0;
    // Time left once there is a rate to go by: not from the first bytes, which come after the
    // start-up work (a 4.6 GB file once said "3254s left" at its first redraw), but after a
    // second and a hundredth of the work.
    char left[32] = "--";
    if (rate > 0 && t >= 1.0 && static_cast<double>(done) * 100 >= static_cast<double>(total))
      std::snprintf(left, sizeof left, "%.0fs", static_cast<double>(total - done) / rate);
    char stats[160];
    std::snprintf(stats, sizeof stats, "%3.0f%% %s/%s %s/s %s left", frac * 100, human(static_cast<double>(done)).c_str(),
                  human(static_cast<double>(total)).c_str(), human(rate).c_str(), left);
    // Asked at every redraw, so that a resized window is followed; the last column is left
    // free, as a character there wraps the cursor on some terminals.
    const size_t cols = terminal_columns();
    const std::string line = progress_line(label_, frac, stats, cols > 1 ? cols - 1 : SIZE_MAX);
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
  }
  bool on_;
  std::string label_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
  double last_ = -1;
  bool drawn_ = false;
};

// Output size as a share of the input's: two decimals, or two significant digits below 0.01%
// (a 4 GB tensor of zeros comes out at 0.0041%, not 0.00%); an empty input has no share.
std::string percent(uint64_t out, uint64_t in) {
  if (in == 0) return "empty input";
  const double p = 100.0 * static_cast<double>(out) / static_cast<double>(in);
  char buf[32];
  std::snprintf(buf, sizeof buf, p >= 0.01 ? "%.2f%%" : "%.2g%%", p);
  return buf;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string strip_slash(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

// A path as messages start with it: an empty one shown as '' (not a message opening with ": ").
std::string shown_name(const std::string& p) { return p.empty() ? std::string("''") : p; }

// Why stat() failed on an input, as a user reads it: "s.safetensors/" is not a directory, a
// link may point nowhere or loop.
std::string why_unreachable(const std::string& path, int err) {
  struct stat st;
  if (err == ENOENT && ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) return "dangling link (its target does not exist)";
  if (err == ENOENT) return "no such file or directory";
  if (err == ENOTDIR) return "not a directory (a part of the path is a file)";
  if (err == ELOOP) return "too many levels of links (a link loop?)";
  return std::string("cannot access: ") + std::strerror(err);
}

// /dev/stdin, /proc/self/fd/3: an output named after them would land in /dev or /proc (but a
// file in /dev/shm, a tmpfs, is an ordinary file in a directory of its own).
bool in_system_tree(const std::string& in) {
  std::error_code ec;
  const fs::path whole = fs::absolute(in, ec).lexically_normal();
  if (ec) return false;
  const std::string dir = whole.parent_path().string();
  return dir == "/dev" || dir == "/dev/fd" || dir == "/proc" || dir.starts_with("/proc/");
}

// The compressed model directory that lists `bs` among its files (the nearest one above it), or
// empty. A restore beside such a file lands inside that directory and becomes a file of it: a
// later verify or decompress of the directory refuses it (a file where a .bs restores to). By
// the directory the name stands in, its last part not followed: the output goes beside the name
// as given (a snapshot's model.bs is a link into blobs/, and its restore lands in the snapshot).
std::string listing_dir(const std::string& bs) {
  std::error_code ec;
  const fs::path given(bs);
  const fs::path parent = fs::weakly_canonical(given.has_parent_path() ? given.parent_path() : fs::path("."), ec);
  if (ec) return {};
  const fs::path file = parent / given.filename();
  for (fs::path d = parent;; d = d.parent_path()) {
    if (fs::exists(d / kDirIndexName, ec)) {
      if (auto listed = model_dir_files(d.string(), /*check_files=*/false))
        for (const auto& f : *listed) {
          const fs::path p(f);
          if (p.filename() == file.filename() && fs::weakly_canonical(p.parent_path(), ec) == parent) return d.string();
        }
      return {};  // the nearest index is the one that counts
    }
    if (!d.has_relative_path()) return {};
  }
}

std::string default_output(const std::string& cmd, const std::string& in, bool is_dir) {
  std::string p = strip_slash(in);
  // "." or "..": name the output after the directory they are, beside it ("." gave "./..bs",
  // inside the input). Lexically, so that "link/." is named like "link", not like its target.
  if (const std::string last = fs::path(p).filename().string(); last == "." || last == "..") {
    std::error_code ec;
    fs::path whole = fs::absolute(p, ec).lexically_normal();
    if (!whole.has_filename()) whole = whole.parent_path();  // "/a/b/." normalizes to "/a/b/"
    if (!ec && whole.has_filename()) p = whole.string();
  }
  if (cmd == "compress") {
    if (!is_dir && ends_with(p, ".safetensors")) return p.substr(0, p.size() - 12) + ".bs";
    return p + ".bs";
  }
  if (ends_with(p, ".bs")) return p.substr(0, p.size() - 3) + (is_dir ? "" : ".safetensors");
  return "";
}

// Calls fn(path, size) for a file, or for every file under a directory as compress reads it
// (links followed), leaving out `skip` (an output directory inside its own input).
template <class Fn>
void for_each_file(const std::string& p, const std::string& skip, Fn fn) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) {
    const uintmax_t size = fs::file_size(p, ec);
    fn(fs::path(p), ec ? 0 : size);  // -1 on error would wrap a total
    return;
  }
  const fs::path skip_at = skip.empty() ? fs::path() : fs::weakly_canonical(skip, ec);
  for (fs::recursive_directory_iterator it(p, fs::directory_options::follow_directory_symlink, ec), end; !ec && it != end;
       it.increment(ec)) {
    // Links that loop (two links to "." double the walk at every level) end the count; the
    // command's own listing reports them.
    if (it.depth() > 64) break;
    std::error_code e2;
    const bool dir = it->is_directory(e2);
    if (e2) break;  // ELOOP and the like: the listing that follows reports it
    if (dir) {
      if (!skip_at.empty() && fs::weakly_canonical(it->path(), e2) == skip_at) it.disable_recursion_pending();
    } else if (it->is_regular_file(e2)) {
      const uintmax_t size = it->file_size(e2);
      fn(it->path(), e2 ? 0 : size);
    }
  }
}

uint64_t path_bytes(const std::string& p, const std::string& skip = {}) {
  uint64_t total = 0;
  for_each_file(p, skip, [&](const fs::path&, uint64_t size) { total += size; });
  return total;
}

// Bytes a directory run wrote: the counterpart of each input file and the index, not every file
// under the output (-f merges into a directory that may hold other files).
uint64_t written_bytes(const std::string& in, const std::string& out, bool compress) {
  std::error_code ec;
  uint64_t total = compress ? fs::file_size(fs::path(out) / kDirIndexName, ec) : 0;
  if (ec) total = 0;
  for_each_file(in, out, [&](const fs::path& f, uint64_t) {
    std::string rel = f.lexically_relative(in).generic_string();
    if (rel == kDirIndexName) return;
    if (compress && ends_with(rel, ".safetensors")) {
      rel = rel.substr(0, rel.size() - std::string_view(".safetensors").size()) + ".bs";
    } else if (!compress && ends_with(rel, ".bs")) {
      const std::string source = rel.substr(0, rel.size() - 3) + ".safetensors";
      if (fs::exists(fs::path(out) / source, ec)) rel = source;
    }
    std::error_code e2;
    const uint64_t size = fs::file_size(fs::path(out) / rel, e2);
    if (!e2) total += size;
  });
  return total;
}


// -v: one line per tensor of a .bs file (or of every .bs file in a compressed directory).
void print_bs_tensors(const BsFile& bs) {
  for (const auto& t : bs.tensors()) {
    uint64_t numel = 1;
    for (auto d : t.shape) numel *= d;
    std::fprintf(stderr, "  %s: %s %s %s -> %s (%.2f bits/weight)\n", printable(t.name).c_str(),
                 std::string(dtype_info(t.dtype).safetensors_name).c_str(), codec_name(t.codec),
                 human(static_cast<double>(t.nbytes)).c_str(), human(static_cast<double>(t.stored_bytes)).c_str(),
                 numel ? 8.0 * static_cast<double>(t.stored_bytes) / static_cast<double>(numel) : 0.0);
  }
}

void print_tensors(const std::string& bs_path, bool is_dir) {
  std::vector<std::string> files;
  if (is_dir) {
    // The files its index lists (a .bs that was only copied along is not this run's output).
    if (auto names = model_dir_files(bs_path)) files = std::move(*names);
  } else {
    files.push_back(bs_path);
  }
  for (const auto& f : files) {
    auto bs = BsFile::open(f);
    if (!bs) continue;
    if (is_dir) std::fprintf(stderr, " %s:\n", printable(f).c_str());
    print_bs_tensors(*bs);
  }
}

bool g_force = false;  // -f was given

// --json: an input that failed still gets its line, so that a script reads one per input.
void print_json_error(const char* key, const std::string& path, const Status& st) {
  std::printf("{\"%s\": %s, \"ok\": false, \"error\": %s, \"exit_code\": %d}\n", key, jq(path).c_str(),
              jq(st.message()).c_str(), exit_code(st.code()));
}

// verify --json of a directory: every problem found, as its lines on stderr say; "error" and
// "exit_code" keep the shape of the other commands' errors (the first problem, the worst code).
void print_json_verify_error(const std::string& path, const Status& first, const std::vector<Status>& problems,
                             int worst) {
  std::string list;
  for (const Status& p : problems) {
    if (!list.empty()) list += ", ";
    list += "{\"error\": " + jq(p.message()) + ", \"exit_code\": " + std::to_string(exit_code(p.code())) + "}";
  }
  std::printf("{\"path\": %s, \"ok\": false, \"error\": %s, \"exit_code\": %d, \"problems\": [%s]}\n",
              jq(path).c_str(), jq(first.message()).c_str(), std::max(worst, exit_code(first.code())), list.c_str());
}

int report(const Status& st) {
  // The library reports an existing output by errno; the option that replaces it is the CLI's
  // (with -f given, what is in the way is something -f does not replace, e.g. a directory).
  const char* hint = st.sys_errno() == EEXIST && !g_force ? " (use -f to overwrite)" : "";
  // One line, whatever the names in it hold (a newline in a file name).
  std::fprintf(stderr, "bigsmall: %s%s\n", printable(elided(st.message())).c_str(), hint);
  return exit_code(st.code());
}

CompressOptions compress_options(const Args& a, ProgressFn progress) {
  CompressOptions o;
  o.threads = a.threads;
  o.overwrite = a.force;
  o.progress = std::move(progress);
  if (a.best) o.zstd_level = 19;
  return o;
}

DecompressOptions decompress_options(const Args& a, ProgressFn progress) {
  DecompressOptions o;
  o.threads = a.threads;
  o.overwrite = a.force;
  o.verify = a.verify;
  o.progress = std::move(progress);
  return o;
}

// The line (or JSON object) for one input done: in_b and out_b are its and its output's bytes.
void print_summary(const Args& a, const std::string& in, const std::string& out, uint64_t in_b, uint64_t out_b, double t) {
  const bool compress = a.command == "compress";
  const uint64_t raw = compress ? in_b : out_b, packed = compress ? out_b : in_b;
  if (a.json) {
    std::printf("{\"input\": %s, \"ok\": true, \"output\": %s, \"original_bytes\": %llu, \"compressed_bytes\": %llu, "
                "\"ratio\": %.6f, \"seconds\": %.4f}\n",
                jq(in).c_str(), jq(out).c_str(), static_cast<unsigned long long>(raw), static_cast<unsigned long long>(packed),
                raw ? static_cast<double>(packed) / static_cast<double>(raw) : 0.0, t);
  } else if (!a.quiet) {
    std::fprintf(stderr, "%s -> %s: %s -> %s (%s), %.2fs, %s/s\n", printable(in).c_str(), printable(out).c_str(),
                 human(static_cast<double>(in_b)).c_str(), human(static_cast<double>(out_b)).c_str(), percent(packed, raw).c_str(), t,
                 human(t > 0 ? static_cast<double>(raw) / t : 0).c_str());
  }
}

// ---- stdin and stdout ----------------------------------------------------------------------

const char* const kStdinLabel = "<stdin>";
const char* const kStdoutLabel = "<stdout>";

// An input read whole for random access: a regular file (or stdin redirected from one) mapped
// in place, or a stream (a pipe, a device) read to its end into an anonymous mapping grown in
// place (mremap), so that a large model is not copied as it grows.
// The first of TMPDIR, TMP, TEMP, TEMPDIR that is set and not empty (an empty one reads as unset,
// as mktemp and Python take it), else /tmp; `var` gets the variable's name (null for /tmp).
fs::path temp_dir(const char** var) {
  *var = nullptr;
  for (const char* name : {"TMPDIR", "TMP", "TEMP", "TEMPDIR"})
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') {
      *var = name;
      return v;
    }
  return "/tmp";
}

// A stream of more bytes than this is kept in an unnamed temporary file, not in memory: a model
// piped in (`curl ... | bigsmall compress -c`) may be larger than the machine's memory, and a
// file's pages are written back and dropped under pressure where anonymous memory needs swap.
// A quarter of the memory, as bench's in-memory rule; BIGSMALL_SPOOL_BYTES sets it.
// The memory this process may use: the machine's, or less where a cgroup (a container, a
// systemd slice) limits it.
uint64_t usable_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  uint64_t mem = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : UINT64_MAX;
  for (const char* limit : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    if (FILE* f = std::fopen(limit, "r")) {
      unsigned long long n = 0;
      if (std::fscanf(f, "%llu", &n) == 1 && n > 0) mem = std::min<uint64_t>(mem, n);  // "max": no limit
      std::fclose(f);
    }
  }
  return mem;
}

// "4096", "64K", "512M", "4G", "1T" (binary multiples); nullopt for anything else.
std::optional<uint64_t> byte_count(const char* v) {
  uint64_t n = 0;
  const char* p = v;
  for (; *p >= '0' && *p <= '9'; ++p) {
    if (n > (UINT64_MAX - 9) / 10) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(*p - '0');
  }
  if (p == v) return std::nullopt;
  int shift = 0;
  switch (*p) {
    case '\0': return n;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    default: return std::nullopt;
  }
  if (p[1] != '\0' || n > (UINT64_MAX >> shift)) return std::nullopt;
  return n << shift;
}

// A stream of more bytes than this is kept in an unnamed temporary file, not in memory: a model
// piped in (`curl ... | bigsmall compress -c`) may be larger than the machine's memory, and a
// file's pages are written back and dropped under pressure where anonymous memory needs swap.
// A quarter of the usable memory, as bench's in-memory rule; BIGSMALL_SPOOL_BYTES sets it.
uint64_t spool_threshold() {
  if (const char* v = std::getenv("BIGSMALL_SPOOL_BYTES"); v != nullptr && *v != '\0') {
    if (const auto n = byte_count(v)) return *n;
    static bool said = false;
    if (!std::exchange(said, true) && !g_quiet)  // -q: errors only
      std::fprintf(stderr, "bigsmall: BIGSMALL_SPOOL_BYTES='%s' is not a byte count (such as 4G): using a quarter of memory\n",
                   printable(v).c_str());
  }
  const uint64_t mem = usable_memory();
  return mem == UINT64_MAX ? mem : mem / 4;
}

// The errors a full disk, a quota or a file size limit give: exit 3, not an I/O error.
bool no_room(int err) { return err == ENOSPC || err == EDQUOT || err == EFBIG; }

// An unnamed file in the temporary directory (gone with the last descriptor, a killed run
// included); -1 with errno set where none can be made.
int unnamed_temp_file() {
  const char* var;
  const std::string dir = temp_dir(&var).string();
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) return fd;
  std::string name = dir + "/.bigsmall-spool-XXXXXX";  // a file system without O_TMPFILE
  fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd >= 0) (void)::unlink(name.c_str());
  return fd;
}

class InputBytes {
 public:
  // What a stream's first bytes declare (declared_bs_size, declared_safetensors_size), and
  // whether that is its exact size (a .bs) or a least one (safetensors).
  using Declared = Result<uint64_t> (*)(const uint8_t*, uint64_t, const std::string&);
  struct Expect {
    Declared declared;
    bool exact;
  };

  InputBytes() = default;
  InputBytes(const InputBytes&) = delete;
  InputBytes& operator=(const InputBytes&) = delete;
  ~InputBytes() {
    if (base_) ::munmap(base_, len_);
    if (spool_ >= 0) ::close(spool_);
  }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Called as a stream is read, once its first bytes declare its size (a piped download shows
  // how far it has come).
  void on_progress(ProgressFn fn) { progress_ = std::move(fn); }

  // fd's bytes from its current offset: mapped if it is a regular file, else read as a stream
  // whose first bytes are checked by `declared` as they arrive (junk is refused after 8 bytes,
  // not after all of it), and whose declared size is allocated at once.
  Status read_all(int fd, const std::string& label, Expect expect) {
    struct stat st;
    if (::fstat(fd, &st) != 0) return Status(Error::kIo, label + ": " + std::strerror(errno)).with_errno(errno);
    if (S_ISREG(st.st_mode)) {
      const off_t at = ::lseek(fd, 0, SEEK_CUR);
      return map_file(fd, at > 0 ? static_cast<uint64_t>(at) : 0, static_cast<uint64_t>(st.st_size), label);
    }
    return read_stream(fd, label, expect);
  }

 private:
  Status map_file(int fd, uint64_t offset, uint64_t file_size, const std::string& label) {
    if (offset >= file_size) return Status::success();  // nothing left to read: empty
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    void* p = ::mmap(nullptr, file_size - start, PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(start));
    if (p == MAP_FAILED) return Status(Error::kIo, label + ": cannot map: " + std::strerror(errno)).with_errno(errno);
    base_ = static_cast<uint8_t*>(p);
    len_ = file_size - start;
    data_ = base_ + (offset - start);
    size_ = file_size - offset;
    (void)::lseek(fd, static_cast<off_t>(file_size), SEEK_SET);  // consumed, as a read would leave it
    return Status::success();
  }

  Status read_stream(int fd, const std::string& label, Expect expect) {
    BIGSMALL_RETURN_IF_ERROR(grow(uint64_t{1} << 20, label));
    return read_on(fd, label, expect, 0, /*may_spool=*/true);
  }

  // Reads on into memory; `expected`: what the first bytes declared, once known (0 before).
  Status read_on(int fd, const std::string& label, Expect expect, uint64_t expected, bool may_spool) {
    for (;;) {
      if (size_ == len_) {
        // The declared size and a byte more (to see the end, or bytes past it) at once; beyond
        // that, doubling, or as much more as memory allows.
        const uint64_t want = expected > size_ ? expected + 1 : 2 * len_;
        if (Status g = grow(want, label); !g.is_ok()) {
          if (want - len_ <= (uint64_t{64} << 20)) return g;
          BIGSMALL_RETURN_IF_ERROR(grow(len_ + (uint64_t{64} << 20), label));
        }
      }
      const ssize_t n = read_some(fd, base_ + size_, len_ - size_);
      if (n < 0) return Status(Error::kIo, label + ": read error: " + std::strerror(errno)).with_errno(errno);
      if (n == 0) break;
      size_ += static_cast<uint64_t>(n);
      if (expected == 0) {
        auto d = expect.declared(base_, size_, label);
        if (!d) return d.status();
        expected = *d;
        if (may_spool && expected > spool_threshold()) return spool(fd, label, expect, expected);
      }
      if (progress_ && expected > 0) progress_(std::min(size_, expected), expected);
      // Bytes past a .bs's end are an error whatever they are: not read on for ever.
      if (expect.exact && expected > 0 && size_ > expected) return too_long(label);
    }
    data_ = base_;
    return Status::success();
  }

  static Status too_long(const std::string& label) {
    return Status(Error::kTruncated, label + ": more bytes than its header declares (appended to, or two files joined?)");
  }

  // The rest of a large stream goes through the buffer read so far into an unnamed temporary
  // file, which is then mapped as a file input is. Written with write(), not through a shared
  // mapping: a full disk is then an error, not a SIGBUS.
  Status spool(int fd, const std::string& label, Expect expect, uint64_t expected) {
    spool_ = unnamed_temp_file();
    const char* var;
    const std::string where = temp_dir(&var).string();
    if (spool_ < 0) {
      // Not quietly in memory instead: the stream is large for this machine, and a mistyped
      // TMPDIR would turn into an out-of-memory failure partway.
      const int err = errno;
      return Status(no_room(err) ? Error::kNoSpace : Error::kIo,
                    label + ": cannot make a temporary file in " + (var ? std::string(var) + "=" : "") + where +
                        " to hold the stream (" + std::strerror(err) + "; set TMPDIR to a usable directory, or " +
                        "BIGSMALL_SPOOL_BYTES to " + std::to_string(expected) + " or more to read it into memory)")
          .with_errno(err);
    }
    auto write_error = [&](int err) {
      return Status(no_room(err) ? Error::kNoSpace : Error::kIo,
                    label + ": cannot keep it in a temporary file in " + where + ": " + std::strerror(err)).with_errno(err);
    };
    uint64_t total = 0;
    for (;;) {
      for (uint64_t off = 0; off < size_;) {
        const ssize_t w = ::write(spool_, base_ + off, std::min<uint64_t>(size_ - off, uint64_t{1} << 30));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return write_error(w < 0 ? errno : ENOSPC);
        off += static_cast<uint64_t>(w);
      }
      total += size_;
      size_ = 0;
      if (progress_) progress_(std::min(total, expected), expected);
      if (expect.exact && total > expected) return too_long(label);
      const ssize_t n = read_some(fd, base_, len_);
      if (n < 0) return Status(Error::kIo, label + ": read error: " + std::strerror(errno)).with_errno(errno);
      if (n == 0) break;
      size_ = static_cast<uint64_t>(n);
    }
    ::munmap(base_, len_);
    base_ = nullptr;
    len_ = size_ = 0;
    if (total == 0) return Status::success();
    return map_file(spool_, 0, total, label);
  }

  // One read(), retried on EINTR and waited for on a non-blocking descriptor; -1 with errno set.
  static ssize_t read_some(int fd, uint8_t* p, uint64_t n) {
    for (;;) {
      const ssize_t r = ::read(fd, p, std::min<uint64_t>(n, uint64_t{1} << 30));
      if (r >= 0) return r;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      struct pollfd w {fd, POLLIN, 0};
      (void)::poll(&w, 1, -1);
    }
  }

  Status grow(uint64_t want, const std::string& label) {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t len = (want + page - 1) / page * page;
    void* q = base_ ? ::mremap(base_, len_, len, MREMAP_MAYMOVE)
                    : ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q == MAP_FAILED)
      return Status(Error::kOutOfMemory, label + ": out of memory reading it (" + human(static_cast<double>(size_)) +
                                             " read, " + human(static_cast<double>(len)) + " asked for)");
    base_ = static_cast<uint8_t*>(q);
    len_ = len;
    return Status::success();
  }

  ProgressFn progress_;
  int spool_ = -1;           // the temporary file of a large stream
  uint8_t* base_ = nullptr;  // the mapping: len_ bytes
  uint64_t len_ = 0;
  const uint8_t* data_ = nullptr;  // the input: size_ bytes
  uint64_t size_ = 0;
};

// A path that is not a regular file or directory (a named pipe, <(...), /dev/stdin on a pipe):
// read whole, as stdin is.
bool is_stream(const std::string& path) {
  struct stat st;
  return path != "-" && ::stat(path.c_str(), &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode));
}

const InputBytes::Expect kBsInput{declared_bs_size, true};
const InputBytes::Expect kSafetensorsInput{declared_safetensors_size, false};

// The input of a stream run read whole: stdin ("-"), or a file.
Status read_input(const std::string& in, InputBytes::Expect expect, InputBytes* out) {
  if (in == "-") {
    if (::isatty(0)) return Status(Error::kInvalidArgument, std::string(kStdinLabel) + ": a terminal: pipe or redirect the input into bigsmall");
    return out->read_all(0, kStdinLabel, expect);
  }
  // Non-blocking: a named pipe that no program writes to yet reads as empty at once, where a
  // plain open would wait for a writer for ever (reads wait on poll() all the same).
  const int fd = ::open(in.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Status(Error::kIo, shown_name(in) + ": " + why_unreachable(in, errno)).with_errno(errno);
  if (::isatty(fd)) {
    ::close(fd);
    return Status(Error::kInvalidArgument, in + ": a terminal: pipe or redirect the input into bigsmall");
  }
  const Status st = out->read_all(fd, in, expect);
  ::close(fd);
  return st;
}

// A .bs input (verify, info, decompress) that is stdin or a stream, read whole and opened.
Result<BsFile> open_streamed_bs(const std::string& in, InputBytes* bytes) {
  BIGSMALL_RETURN_IF_ERROR(read_input(in, kBsInput, bytes));
  return BsFile::open_memory(bytes->data(), bytes->size(), in == "-" ? kStdinLabel : in);
}

Status write_stdout(const uint8_t* p, uint64_t n) {
  while (n > 0) {
    const ssize_t w = ::write(1, p, std::min<uint64_t>(n, uint64_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // a descriptor left non-blocking: wait
        struct pollfd o {1, POLLOUT, 0};
        (void)::poll(&o, 1, -1);
        continue;
      }
      const int e = errno;
      // A full disk, a quota or a file size limit: exit 3, as for an output file.
      const bool full = e == ENOSPC || e == EDQUOT || e == EFBIG;
      return Status(full ? Error::kNoSpace : Error::kIo, std::string(kStdoutLabel) + ": write error: " + std::strerror(e)).with_errno(e);
    }
    p += w;
    n -= static_cast<uint64_t>(w);
  }
  return Status::success();
}

// Stdout written by a thread of its own while the next batch decodes: a pipe takes bytes slower
// than they decode (a file through `cat | cat` here: 0.7 GB/s), and a restore that waited for
// each write ran the two one after the other. Two buffers: each batch is copied into the free
// one; the writer takes them in order. The first failed write is returned by the next call.
class StdoutPipeline {
 public:
  StdoutPipeline() = default;
  StdoutPipeline(const StdoutPipeline&) = delete;
  StdoutPipeline& operator=(const StdoutPipeline&) = delete;
  ~StdoutPipeline() { (void)finish(); }

  Status write(const uint8_t* p, uint64_t n) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!error_.is_ok()) return error_;
    // One of many MiB (a large filler) is written here, after those before it.
    if (n > kMaxCopy || !start_thread()) {
      cv_.wait(lk, [&] { return (!full_[0] && !full_[1]) || !error_.is_ok(); });
      if (!error_.is_ok()) return error_;
      lk.unlock();
      return write_stdout(p, n);
    }
    const int b = next_;
    cv_.wait(lk, [&] { return !full_[b] || !error_.is_ok(); });
    if (!error_.is_ok()) return error_;
    lk.unlock();
    buf_[b].assign(p, p + n);  // the writer does not touch a buffer that is not full
    lk.lock();
    full_[b] = true;
    next_ = 1 - b;
    cv_.notify_all();
    return Status::success();
  }

  // Waits until everything handed over is written; the first error.
  Status finish() {
    std::unique_lock<std::mutex> lk(mu_);
    stop_ = true;
    cv_.notify_all();
    lk.unlock();
    if (thread_.joinable()) thread_.join();
    lk.lock();
    return error_;
  }

 private:
  static constexpr uint64_t kMaxCopy = uint64_t{64} << 20;

  bool start_thread() {  // under mu_
    if (thread_.joinable()) return true;
    if (stop_ || no_thread_) return false;
    try {
      thread_ = std::thread([this] { run(); });
      return true;
    } catch (const std::system_error&) {
      no_thread_ = true;  // none to be had: written inline from now on
      return false;
    }
  }

  void run() {
    int b = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return full_[b] || stop_; });
      if (!full_[b]) return;  // stopped with nothing left
      lk.unlock();
      Status st = write_stdout(buf_[b].data(), buf_[b].size());
      lk.lock();
      full_[b] = false;
      if (!st.is_ok()) {
        error_ = std::move(st);
        full_[1 - b] = false;  // dropped: nothing after a failed write
        cv_.notify_all();
        return;
      }
      cv_.notify_all();
      b = 1 - b;
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint8_t> buf_[2];
  bool full_[2] = {false, false};
  int next_ = 0;
  bool stop_ = false;
  bool no_thread_ = false;
  Status error_;
  std::thread thread_;  // last: joined before the buffers go
};

// What the library would say of an output it cannot write, said before a stream is read (a
// download piped in is not lost to an existing output).
Status check_output_early(const std::string& out, bool force) {
  struct stat st;
  if (::stat(out.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return Status(Error::kIo, out + ": is a directory").with_errno(EISDIR);
    if (!force) return Status(Error::kIo, out + ": already exists").with_errno(EEXIST);
    return Status::success();
  }
  std::string parent = fs::path(out).parent_path().string();
  if (parent.empty()) parent = ".";
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    const int e = errno ? errno : ENOTDIR;
    return Status(Error::kIo, out + ": cannot create: " + std::strerror(e)).with_errno(e);
  }
  // A read-only file system or directory (EROFS even for root).
  if (::access(parent.c_str(), W_OK | X_OK) != 0) {
    const int e = errno;
    return Status(Error::kIo, out + ": cannot create: " + std::strerror(e)).with_errno(e);
  }
  return Status::success();
}

// compress or decompress with stdin as the input, stdout as the output, or both: one input.
// Scratch directories (mkdtemp), held locked by their run: bench's "bigsmall-bench-L-XXXXXX", a
// large compress to stdout's "bigsmall-stdout-L-XXXXXX".
constexpr const char* kBenchDirPrefix = "bigsmall-bench-L-";
constexpr const char* kStdoutDirPrefix = "bigsmall-stdout-L-";

// A run killed beyond cleanup (SIGKILL, the OOM killer) leaves its scratch directory and the
// .bs in it, as large as the model: the next run of its kind removes those no live run holds
// locked, this user's, a minute old or more, holding only a scratch .bs and its temporaries.
// (An earlier bigsmall's, named without the "L-" and never locked, are left alone.)
void remove_stale_scratch_dirs(const std::string& tmpdir, const std::string& prefix, bool say) {
  DIR* d = ::opendir(tmpdir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() != prefix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0) continue;
    struct stat st;
    const std::string path = tmpdir + "/" + name;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) continue;
    if (std::time(nullptr) - st.st_mtime < 60) continue;
    stale.push_back(path);
  }
  ::closedir(d);
  for (const auto& path : stale) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      // Only the names a run writes there: anything else keeps the directory.
      if (DIR* inner = ::fdopendir(::dup(fd))) {
        std::vector<std::string> names;
        bool foreign = false;
        while (const dirent* e = ::readdir(inner)) {
          const std::string n = e->d_name;
          if (n == "." || n == "..") continue;
          if (n == "scratch.bs" || n.rfind("scratch.bs.tmp-bigsmall-", 0) == 0) names.push_back(n);
          else foreign = true;
        }
        ::closedir(inner);
        if (!foreign) {
          for (const auto& n : names) (void)::unlinkat(fd, n.c_str(), 0);
          if (::rmdir(path.c_str()) == 0 && say)
            std::fprintf(stderr, "bigsmall: removed %s, left by a %s that was killed\n", printable(path).c_str(),
                         prefix == kBenchDirPrefix ? "bench" : "compress to stdout");
        }
      }
    }
    ::close(fd);
  }
}

// A private scratch directory under the temporary directory, held locked while this run lives
// (the kernel drops a killed run's lock: a later run removes a directory no run holds, a minute
// old), its file named for the signal handlers; both removed when the run ends.
struct ScratchDir {
  std::string dir, file;
  int lock = -1;
  ScratchDir() = default;
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    if (dir.empty()) return;
    remove_scratch();
    g_scratch_set = 0;
    if (lock >= 0) ::close(lock);
  }
};

Status make_scratch(const char* prefix, const char* what, bool say, ScratchDir* out) {
  // The first of TMPDIR, TMP, TEMP, TEMPDIR that is set and not empty, else /tmp; one that is
  // not a directory is an error naming it (the scratch directory must not land in the current one).
  std::error_code ec;
  const char* var = nullptr;
  const fs::path tmpdir = temp_dir(&var);
  if (!fs::is_directory(tmpdir, ec))
    return Status(Error::kIo, std::string(var ? var : "") + (var ? "=" : "") + tmpdir.string() + ": not a usable directory for " + what);
  remove_stale_scratch_dirs(tmpdir.string(), prefix, say);
  std::string dir = (tmpdir / (std::string(prefix) + "XXXXXX")).string();
  if (dir.size() + 16 >= sizeof g_scratch_dir) return Status(Error::kIo, dir + ": name too long for a scratch directory");
  if (::mkdtemp(dir.data()) == nullptr) {
    const int err = errno;
    return Status(no_room(err) ? Error::kNoSpace : Error::kIo, dir + ": cannot create a scratch directory: " + std::strerror(err))
        .with_errno(err);
  }
  out->dir = dir;
  out->file = dir + "/scratch.bs";
  out->lock = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (out->lock >= 0) (void)::flock(out->lock, LOCK_EX | LOCK_NB);
  std::memcpy(g_scratch_dir, dir.c_str(), dir.size() + 1);
  std::memcpy(g_scratch_file, out->file.c_str(), out->file.size() + 1);
  g_scratch_set = 1;
  return Status::success();
}

// A compress to stdout of an input larger than the spool bound builds its .bs in a scratch file,
// not in memory (a model piped through could be larger than the machine's memory), then sends
// it: the file is unlinked first, so nothing is left however the run ends after that.
Status compress_via_scratch(const Args& a, const InputBytes& bytes, const CompressOptions& o, const std::string& label,
                            const ScratchDir& scratch, uint64_t* out_bytes) {
  CompressOptions co = o;
  co.sync = false;  // read back at once, then gone
  if (Status st = compress_bytes(bytes.data(), bytes.size(), scratch.file, co, label); !st.is_ok()) {
    if (st.code() != Error::kNoSpace) return st;
    // The scratch path it names is gone by the time the message is read: say what to change.
    return Status(Error::kNoSpace, label + ": no room in " + fs::path(scratch.dir).parent_path().string() +
                                       " to build the .bs for stdout (set TMPDIR elsewhere, or BIGSMALL_SPOOL_BYTES to " +
                                       std::to_string(bytes.size()) + " or more to build it in memory): " + st.message())
        .with_errno(st.sys_errno());
  }
  const int fd = ::open(scratch.file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status(Error::kIo, scratch.file + ": " + std::strerror(errno)).with_errno(errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status(Error::kIo, scratch.file + ": " + std::strerror(errno)).with_errno(errno);
  ::unlink(scratch.file.c_str());
  *out_bytes = static_cast<uint64_t>(st.st_size);
  if (st.st_size == 0) return Status::success();
  void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Status(Error::kIo, scratch.file + ": cannot map: " + std::strerror(errno)).with_errno(errno);
  (void)::madvise(p, static_cast<size_t>(st.st_size), MADV_SEQUENTIAL);
  const Status w = write_stdout(static_cast<const uint8_t*>(p), static_cast<uint64_t>(st.st_size));
  if (w.is_ok() && a.verbose)
    if (auto f = BsFile::open_memory(static_cast<const uint8_t*>(p), static_cast<uint64_t>(st.st_size), kStdoutLabel))
      print_bs_tensors(*f);
  ::munmap(p, static_cast<size_t>(st.st_size));
  return w;
}

int run_stream(const Args& a) {
  const bool compress = a.command == "compress";
  const std::string& in = a.paths.front();
  const bool from_stdin = in == "-";
  const bool to_stdout = a.to_stdout || (from_stdin && a.output.empty());  // stdin without -o goes to stdout
  const std::string in_label = from_stdin ? kStdinLabel : in;
  const std::string out_label = to_stdout ? kStdoutLabel : a.output;
  if (a.paths.size() != 1) {
    std::fprintf(stderr, "bigsmall: -c takes exactly one input (.bs files do not concatenate)\n");
    return kExitUsage;
  }
  if (to_stdout && a.json) {
    std::fprintf(stderr, "bigsmall: --json writes to stdout, which carries the output: give -o instead\n");
    return kExitUsage;
  }
  note_input(in_label);
  auto fail = [&](const Status& st) {
    if (a.json) print_json_error("input", in_label, st);
    return report(st);
  };
  struct stat in_st;
  if (!from_stdin && ::stat(in.c_str(), &in_st) != 0) return fail(Status(Error::kIo, shown_name(in) + ": " + why_unreachable(in, errno)));
  std::error_code ec;
  if (!from_stdin && fs::is_directory(in, ec))
    return fail(Status(Error::kInvalidArgument, in + ": a directory cannot be written to stdout; give the output with -o"));
  if (!to_stdout && a.output.empty())
    return fail(Status(Error::kInvalidArgument, in + ": a device or process path has no directory for the output; give the output with -o"));
  if (to_stdout && ::isatty(1) && !a.force)
    return fail(Status(Error::kInvalidArgument, std::string(kStdoutLabel) + ": a terminal: not writing binary data to it (redirect it, give -o, or force with -f)"));
  if (!to_stdout) {
    if (Status st = check_output_early(a.output, a.force); !st.is_ok()) return fail(st);
  }
  const auto t0 = std::chrono::steady_clock::now();
  InputBytes bytes;
  // A .bs file on disk is read in place; stdin, a pipe, and a safetensors file going to stdout
  // (its .bs is built in memory) are read whole first (a regular file: mapped).
  const bool read_whole = from_stdin || compress || is_stream(in);
  const std::string name = from_stdin ? std::string("stdin") : fs::path(strip_slash(in)).filename().string();
  if (read_whole) {
    Progress reading(!a.quiet, name + " (reading)");
    bytes.on_progress(reading.fn());
    const Status st = read_input(in, compress ? kSafetensorsInput : kBsInput, &bytes);
    reading.finish();
    if (!st.is_ok()) return fail(st);
  }
  Progress prog(!a.quiet, name);
  uint64_t in_b = bytes.size(), out_b = 0;
  Status st;
  if (compress) {
    const CompressOptions o = compress_options(a, prog.fn());
    ScratchDir scratch;
    if (to_stdout && bytes.size() > spool_threshold()) {
      // An unusable TMPDIR is an error, not a silent build in memory of what is large for it.
      if (Status made = make_scratch(kStdoutDirPrefix, "the .bs sent to stdout", !a.quiet && !a.json, &scratch); !made.is_ok())
        return fail(Status(made.code(), made.message() + " (set TMPDIR to a usable directory, or BIGSMALL_SPOOL_BYTES to " +
                                            std::to_string(bytes.size()) + " or more to build it in memory)")
                        .with_errno(made.sys_errno()));
      st = compress_via_scratch(a, bytes, o, in_label, scratch, &out_b);
      prog.finish();
    } else if (to_stdout) {
      auto packed = compress_bytes_to_memory(bytes.data(), bytes.size(), o, in_label);
      prog.finish();
      if (!packed) return fail(packed.status());
      st = write_stdout(packed->data(), packed->size());
      out_b = packed->size();
      if (st.is_ok() && a.verbose) {
        auto f = BsFile::open_memory(packed->data(), packed->size(), kStdoutLabel);
        if (f) print_bs_tensors(*f);
      }
    } else {
      st = compress_bytes(bytes.data(), bytes.size(), a.output, o, in_label);
      prog.finish();
      if (st.is_ok()) {
        if (auto f = BsFile::open(a.output)) {
          out_b = f->file_size();
          if (a.verbose) print_bs_tensors(*f);
        }
      }
    }
  } else {
    auto f = read_whole ? BsFile::open_memory(bytes.data(), bytes.size(), in_label) : BsFile::open(in);
    if (!f) {
      prog.finish();
      return fail(f.status());
    }
    in_b = f->file_size();
    out_b = f->original_size();
    const DecompressOptions o = decompress_options(a, prog.fn());
    if (to_stdout) {
      StdoutPipeline out;
      st = f->restore_to([&](const uint8_t* p, uint64_t n) { return out.write(p, n); }, o);
      // A failed write is of bytes before any the decoder reached: its error comes first.
      const Status written = out.finish();
      if (!written.is_ok()) st = written;
    } else {
      st = f->restore(a.output, o);
    }
    prog.finish();
    if (st.is_ok() && a.verbose) print_bs_tensors(*f);
  }
  for (const auto& gone : take_removed_temporaries())
    if (!a.quiet && !a.json) std::fprintf(stderr, "bigsmall: removed %s, left by a run that was killed\n", printable(gone).c_str());
  if (!st.is_ok()) return fail(st);
  print_summary(a, in_label, out_label, in_b, out_b, seconds_since(t0));
  return kExitOk;
}

int run_codec(const Args& a) {
  const bool compress = a.command == "compress";
  if (!a.output.empty() && a.paths.size() != 1) {
    std::fprintf(stderr, "bigsmall: -o takes exactly one input\n");
    return kExitUsage;
  }
  int rc = kExitOk;
  // Outputs this run wrote, by identity, with the input each came from: two inputs can map to one
  // output name ("x.safetensors" and "x" both to "x.bs"), and with -f the second replaced the
  // first's output without a word.
  struct Written {
    dev_t dev;
    ino_t ino;
    dev_t in_dev;
    ino_t in_ino;
    std::string in;
  };
  std::vector<Written> written;
  for (const auto& in : a.paths) {
    note_input(in);
    std::error_code ec;
    const bool is_dir = fs::is_directory(in, ec);
    auto fail = [&](const Status& st) {
      if (a.json) print_json_error("input", in, st);
      rc = std::max(rc, report(st));
    };
    struct stat in_st;
    if (::stat(in.c_str(), &in_st) != 0) {
      fail(Status(Error::kIo, shown_name(in) + ": " + why_unreachable(in, errno)));
      continue;
    }
    if (a.output.empty() && in_system_tree(in)) {
      fail(Status(Error::kInvalidArgument, in + ": a device or process path has no directory for the output; give the output with -o"));
      continue;
    }
    const std::string out = a.output.empty() ? default_output(a.command, in, is_dir) : a.output;
    if (out.empty()) {
      fail(Status(Error::kInvalidArgument, in + ": name does not end in .bs; give the output with -o"));
      continue;
    }
    if (a.output.empty() && !compress && !is_dir) {
      if (const std::string dir = listing_dir(in); !dir.empty()) {
        fail(Status(Error::kInvalidArgument, in + ": a file of the compressed directory " + dir +
                                                 ": restored beside it, it would become part of that directory; give the output with -o"));
        continue;
      }
    }
    if (struct stat out_st; ::stat(out.c_str(), &out_st) == 0) {
      const auto same = std::find_if(written.begin(), written.end(),
                                     [&](const Written& w) { return w.dev == out_st.st_dev && w.ino == out_st.st_ino; });
      const bool same_input = same != written.end() && same->in_dev == in_st.st_dev && same->in_ino == in_st.st_ino;
      if (same_input) {
        // One input given twice (as "x" and "./x"), to the output it already made: once is the
        // job; a second pass would report that output as existing, or with -f redo it. A link
        // under another name has an output of its own and is not this case.
        if (!a.quiet && !a.json) std::fprintf(stderr, "bigsmall: %s: given more than once; done once\n", printable(in).c_str());
        if (a.json)
          std::printf("{\"input\": %s, \"ok\": true, \"output\": %s, \"note\": \"given more than once; done once\"}\n",
                      jq(in).c_str(), jq(out).c_str());
        continue;
      }
      if (same != written.end()) {
        fail(Status(Error::kInvalidArgument, out + ": already written from " + same->in + " in this run; give the output with -o"));
        continue;
      }
    }
    Progress prog(!a.quiet, fs::path(strip_slash(in)).filename().string());
    const uint64_t in_b = path_bytes(in, out);  // before the run: the output may lie inside the input
    const auto t0 = std::chrono::steady_clock::now();
    Status st;
    if (compress) {
      const CompressOptions o = compress_options(a, prog.fn());
      st = is_dir ? compress_dir(in, out, o) : compress_file(in, out, o);
    } else {
      const DecompressOptions o = decompress_options(a, prog.fn());
      st = is_dir ? decompress_dir(in, out, o) : decompress_file(in, out, o);
    }
    prog.finish();
    for (const auto& gone : take_removed_temporaries())
      if (!a.quiet && !a.json) std::fprintf(stderr, "bigsmall: removed %s, left by a run that was killed\n", printable(gone).c_str());
    if (!st.is_ok()) {
      if (a.json) print_json_error("input", in, st);
      rc = std::max(rc, report(st));
      continue;
    }
    const double t = seconds_since(t0);
    if (struct stat out_st; ::stat(out.c_str(), &out_st) == 0)
      written.push_back({out_st.st_dev, out_st.st_ino, in_st.st_dev, in_st.st_ino, in});
    if (a.verbose && !a.json) print_tensors(compress ? out : in, is_dir);
    // Nothing lost, but nothing compressed either: the wrong directory (a .bin checkpoint)?
    if (compress && is_dir && !a.quiet && !a.json)
      if (auto st_files = model_dir_safetensors(in); st_files && st_files->empty())
        std::fprintf(stderr, "bigsmall: warning: %s: no *.safetensors file in it: every file was copied as it is\n",
                     printable(in).c_str());
    const uint64_t out_b = is_dir ? written_bytes(in, out, compress) : path_bytes(out);
    print_summary(a, in, out, in_b, out_b, t);
  }
  return rc;
}

Status verify_streamed(const std::string& p, const std::string& name, bool quiet, const DecompressOptions& o) {
  InputBytes bytes;
  Progress reading(!quiet, name + " (reading)");
  bytes.on_progress(reading.fn());
  auto f = open_streamed_bs(p, &bytes);
  reading.finish();
  if (!f) return f.status();
  return f->verify(o);
}

int run_verify(const Args& a) {
  int rc = kExitOk;
  for (const auto& p : a.paths) {
    const std::string label = p == "-" ? kStdinLabel : p;
    note_input(label);
    const std::string name = p == "-" ? std::string("stdin") : fs::path(strip_slash(p)).filename().string();
    Progress prog(!a.quiet, name);
    DecompressOptions o;
    o.threads = a.threads;
    o.progress = prog.fn();
    // Every damaged file of a directory is named (one line each), not only the first; the exit
    // code is that of the worst.
    int worst = kExitOk;
    std::vector<Status> problems;
    auto each = [&](const Status& problem) {
      prog.finish();
      worst = std::max(worst, report(problem));
      problems.push_back(problem);
    };
    const bool stream = p == "-" || is_stream(p);
    const Status st = stream ? verify_streamed(p, name, a.quiet, o) : verify_path(p, o, each);
    prog.finish();
    if (a.json) {
      if (st.is_ok()) std::printf("{\"path\": %s, \"ok\": true}\n", jq(label).c_str());
      else print_json_verify_error(label, st, problems.empty() ? std::vector<Status>{st} : problems, worst);
    }
    if (!st.is_ok()) {
      rc = std::max(rc, stream ? report(st) : worst);
    } else if (!a.quiet && !a.json) {
      std::fprintf(stderr, "%s: OK\n", printable(label).c_str());
    }
  }
  return rc;
}

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ',';
    r += std::to_string(s[i]);
  }
  return r + "]";
}

// floor_bits is informative and unchecked (FORMAT.md): a forged one must not wrap a total into
// a plausible number.
uint64_t saturating_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

struct InfoTotals {
  uint64_t original = 0, file = 0, floor_bits = 0;
  size_t tensors = 0;
};

// s followed by spaces up to `width` characters (printf pads bytes: a name with multi-byte
// characters pushed its row's columns left).
std::string padded(std::string s, size_t width) {
  const size_t chars = static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
  if (chars < width) s.append(width - chars, ' ');
  return s;
}

// One .bs file: its table, or its JSON object without a trailing newline.
void print_file_info(const BsFile& f, const std::string& p, bool json, InfoTotals* tot) {
  uint64_t stored = 0, floor_bits = 0;
  if (json) std::printf("{\"path\": %s, \"ok\": true, \"tensors\": [", jq(p).c_str());
  else std::printf("%-48s %-11s %-18s %-6s %10s %8s %7s %7s\n", "tensor", "dtype", "shape", "codec", "stored", "ratio", "bits/w", "floor");
  bool first = true;
  for (const auto& t : f.tensors()) {
    uint64_t numel = 1;
    for (auto d : t.shape) numel *= d;
    const double bpw = numel ? 8.0 * static_cast<double>(t.stored_bytes) / static_cast<double>(numel) : 0;
    const double fpw = numel ? static_cast<double>(t.floor_bits) / static_cast<double>(numel) : 0;
    const double ratio = t.nbytes ? static_cast<double>(t.stored_bytes) / static_cast<double>(t.nbytes) : 0;
    stored += t.stored_bytes;
    floor_bits = saturating_add(floor_bits, t.floor_bits);
    if (json) {
      std::printf("%s{\"name\": %s, \"dtype\": \"%s\", \"shape\": %s, \"data_offsets\": [%llu, %llu], \"codec\": \"%s\", "
                  "\"bytes\": %llu, \"stored_bytes\": %llu, \"ratio\": %.6f, \"bits_per_weight\": %.4f, \"floor_bits_per_weight\": %.4f}",
                  first ? "" : ", ", jq(t.name).c_str(), std::string(dtype_info(t.dtype).safetensors_name).c_str(),
                  shape_str(t.shape).c_str(), static_cast<unsigned long long>(t.data_begin),
                  static_cast<unsigned long long>(t.data_begin + t.nbytes), codec_name(t.codec), static_cast<unsigned long long>(t.nbytes),
                  static_cast<unsigned long long>(t.stored_bytes), ratio, bpw, fpw);
    } else {
      std::printf("%s %-11s %-18s %-6s %10llu %8.4f %7.3f %7.3f\n", padded(printable(t.name), 48).c_str(),
                  std::string(dtype_info(t.dtype).safetensors_name).c_str(), shape_str(t.shape).c_str(), codec_name(t.codec),
                  static_cast<unsigned long long>(t.stored_bytes), ratio, bpw, fpw);
    }
    first = false;
  }
  const double file_ratio = f.original_size() ? static_cast<double>(f.file_size()) / static_cast<double>(f.original_size()) : 0;
  if (json) {
    std::printf("], \"original_bytes\": %llu, \"file_bytes\": %llu, \"ratio\": %.6f, \"floor_bytes\": %llu}",
                static_cast<unsigned long long>(f.original_size()), static_cast<unsigned long long>(f.file_size()), file_ratio,
                static_cast<unsigned long long>(floor_bits / 8));
  } else {
    std::printf("total: %zu tensor%s, %s -> %s file (%s); tensor data %s, joint floor %s\n", f.tensors().size(),
                f.tensors().size() == 1 ? "" : "s",
                human(static_cast<double>(f.original_size())).c_str(), human(static_cast<double>(f.file_size())).c_str(),
                percent(f.file_size(), f.original_size()).c_str(), human(static_cast<double>(stored)).c_str(), human(static_cast<double>(floor_bits) / 8).c_str());
  }
  tot->original += f.original_size();
  tot->file += f.file_size();
  tot->floor_bits = saturating_add(tot->floor_bits, floor_bits);
  tot->tensors += f.tensors().size();
}

// A compressed model directory: every .bs file of its index, then their sum. All are opened
// before anything is printed, so that a damaged one leaves no half-printed JSON behind.
int info_dir(const std::string& path, bool json) {
  const std::string p = strip_slash(path);
  auto fail = [&](const Status& st) {
    if (json) print_json_error("path", path, st);
    return report(st);
  };
  auto names = model_dir_files(p);
  if (!names) return fail(names.status());
  std::vector<BsFile> files;
  for (const auto& n : *names) {
    auto f = BsFile::open(n);
    if (!f) return fail(f.status());
    files.push_back(std::move(*f));
  }
  InfoTotals tot;
  if (json) std::printf("{\"path\": %s, \"ok\": true, \"files\": [", jq(p).c_str());
  for (size_t i = 0; i < files.size(); ++i) {
    if (json) {
      if (i) std::printf(", ");
    } else {
      std::printf("%s%s:\n", i ? "\n" : "", printable((*names)[i]).c_str());
    }
    print_file_info(files[i], (*names)[i], json, &tot);
  }
  const double ratio = tot.original ? static_cast<double>(tot.file) / static_cast<double>(tot.original) : 0;
  if (json) {
    std::printf("], \"original_bytes\": %llu, \"file_bytes\": %llu, \"ratio\": %.6f, \"floor_bytes\": %llu}\n",
                static_cast<unsigned long long>(tot.original), static_cast<unsigned long long>(tot.file), ratio,
                static_cast<unsigned long long>(tot.floor_bits / 8));
  } else if (files.empty()) {
    std::printf("%s: its index names no compressed files\n", printable(p).c_str());
  } else {
    std::printf("\n%s: %zu .bs file%s, %zu tensors, %s -> %s (%s), joint floor %s (.bs files only: the "
                "directory's other files are not counted)\n",
                printable(p).c_str(), files.size(), files.size() == 1 ? "" : "s", tot.tensors, human(static_cast<double>(tot.original)).c_str(),
                human(static_cast<double>(tot.file)).c_str(), percent(tot.file, tot.original).c_str(), human(static_cast<double>(tot.floor_bits) / 8).c_str());
  }
  return kExitOk;
}

int run_info(const Args& a) {
  int rc = kExitOk;
  for (const auto& p : a.paths) {
    const std::string label = p == "-" ? kStdinLabel : p;
    note_input(label);
    std::error_code ec;
    if (p != "-" && fs::is_directory(p, ec)) {
      rc = std::max(rc, info_dir(p, a.json));
      continue;
    }
    InputBytes bytes;  // a .bs from stdin or a pipe, read whole
    auto f = p == "-" || is_stream(p) ? open_streamed_bs(p, &bytes) : BsFile::open(p);
    if (!f) {
      if (a.json) print_json_error("path", label, f.status());
      rc = std::max(rc, report(f.status()));
      continue;
    }
    InfoTotals tot;
    print_file_info(*f, label, a.json, &tot);
    if (a.json) std::printf("\n");
  }
  return rc;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int run_bench(const Args& a) {
  int rc = kExitOk;
  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int tmax = a.threads > 0 ? a.threads : all;
  // A model directory stands for its *.safetensors files (shards included), each benched alone.
  std::vector<std::string> inputs;
  for (const auto& p : a.paths) {
    std::error_code ec;
    if (!fs::is_directory(p, ec)) {
      inputs.push_back(p);
      continue;
    }
    // compress's own walk: a link loop is refused, not walked for ever.
    Result<std::vector<std::string>> listed = model_dir_safetensors(p);
    if (!listed) {
      if (a.json) print_json_error("file", p, listed.status());
      rc = std::max(rc, report(listed.status()));
      continue;
    }
    std::vector<std::string> found = std::move(listed.value());
    if (found.empty()) {
      const Status st(Error::kNotSafetensors, p + ": no .safetensors files in this directory");
      if (a.json) print_json_error("file", p, st);
      rc = std::max(rc, report(st));
    }
    std::sort(found.begin(), found.end());
    inputs.insert(inputs.end(), found.begin(), found.end());
  }
  ScratchDir scratch;  // the scratch file, the same for every input
  if (!inputs.empty()) {
    if (Status st = make_scratch(kBenchDirPrefix, "bench's scratch file", !a.json, &scratch); !st.is_ok()) {
      std::fprintf(stderr, "bigsmall: %s\n", printable(st.message()).c_str());
      return kExitIo;
    }
  }
  const std::string& tmp = scratch.file;
  for (const auto& p : inputs) {
    note_input(p);
    std::error_code ec;
    const double raw = static_cast<double>(fs::file_size(p, ec));
    struct Row { int threads; double comp, comp_memory, dec, dec_memory; };
    std::vector<Row> rows;
    double ratio = 0;
    // The input mapped once, for compression in memory: what zstd's and ZipNN's benchmarks time
    // (bytes in memory to bytes in memory), beside the file-to-file figure a user of the CLI gets.
    // Not for an input over a quarter of the machine's memory: its .bs would be held whole.
    const double ram = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
    bool time_memory = raw <= ram / 4;
    InputBytes in_memory;
    Status st = time_memory ? read_input(p, kSafetensorsInput, &in_memory) : Status::success();
    // The decoded file, for decompression into memory: allocated and faulted in once, as zstd's
    // benchmark reuses its output buffer, so that page faults are not counted as decoding.
    std::vector<uint8_t> restored;
    // One compress-and-verify round; a failure ends this input (reported once), not the others.
    auto round = [&](int threads, std::vector<double>* tc, std::vector<double>* tm, std::vector<double>* td,
                     std::vector<double>* tdm) -> Status {
      CompressOptions co;
      co.threads = threads;
      co.overwrite = true;
      co.sync = false;
      fs::remove(tmp, ec);  // replacing the last run's output is not compression work
      auto t0 = std::chrono::steady_clock::now();
      BIGSMALL_RETURN_IF_ERROR(compress_file(p, tmp, co));
      tc->push_back(seconds_since(t0));
      if (time_memory) {
        t0 = std::chrono::steady_clock::now();
        Result<std::vector<uint8_t>> bs = compress_bytes_to_memory(in_memory.data(), in_memory.size(), co, p);
        if (bs) tm->push_back(seconds_since(t0));  // the output is freed untimed, as the others' are
        else if (bs.status().code() == Error::kOutOfMemory) time_memory = false;  // the file-to-file figures stand
        else return bs.status();
      }
      BIGSMALL_ASSIGN_OR_RETURN(BsFile f, BsFile::open(tmp));
      ratio = static_cast<double>(f.file_size()) / raw;
      DecompressOptions dopt;
      dopt.threads = threads;
      t0 = std::chrono::steady_clock::now();
      BIGSMALL_RETURN_IF_ERROR(f.verify(dopt));
      td->push_back(seconds_since(t0));
      if (time_memory) {
        // Every byte of the original file written to memory, checksums checked: what zstd -b and
        // ZipNN's decompress produce. verify above decodes into small reused batches instead.
        const std::string& header = f.safetensors_header();
        const uint64_t data_start = 8 + header.size();
        if (restored.size() != static_cast<size_t>(raw)) restored.assign(static_cast<size_t>(raw), 0);
        std::vector<size_t> which(f.tensors().size());
        std::vector<uint8_t*> outs(which.size());
        std::vector<uint64_t> sizes(which.size());
        for (size_t i = 0; i < which.size(); ++i) {
          const TensorInfo& t = f.tensors()[i];
          if (data_start + t.data_begin + t.nbytes > restored.size())
            return Status(Error::kCorrupt, p + ": a tensor lies past the file's end");
          which[i] = i;
          outs[i] = restored.data() + data_start + t.data_begin;
          sizes[i] = t.nbytes;
        }
        t0 = std::chrono::steady_clock::now();
        for (int b = 0; b < 8; ++b) restored[static_cast<size_t>(b)] = static_cast<uint8_t>(header.size() >> (8 * b));
        std::memcpy(restored.data() + 8, header.data(), header.size());
        BIGSMALL_RETURN_IF_ERROR(f.read_tensors(which, outs, sizes, DecodeOptions{threads, true}));
        tdm->push_back(seconds_since(t0));
      }
      return Status::success();
    };
    for (int threads : {1, tmax}) {
      if (!st.is_ok() || (!rows.empty() && threads == rows.back().threads)) break;
      std::vector<double> tc, tm, td, tdm;
      for (int rep = 0; rep < 5 && st.is_ok(); ++rep) st = round(threads, &tc, &tm, &td, &tdm);  // medians of 5: a noisy machine
      // A time too short for the clock (a file of no tensors) gives no speed, not inf (invalid JSON).
      auto speed = [&](const std::vector<double>& t) {
        const double m = t.empty() ? 0.0 : median(t);
        return m > 0 ? raw / m : 0.0;
      };
      if (st.is_ok())
        rows.push_back({threads, speed(tc), time_memory ? speed(tm) : 0.0, speed(td), time_memory ? speed(tdm) : 0.0});
    }
    fs::remove(tmp, ec);
    restored = {};
    if (!st.is_ok()) {
      if (a.json) print_json_error("file", p, st);
      rc = std::max(rc, report(st));
      continue;
    }
    for (const auto& r : rows) {
      char memory_speed[48], memory_dec[48];
      if (a.json) {
        auto json_speed = [](char* buf, size_t n, double bps) {
          if (bps > 0) std::snprintf(buf, n, "%.4f", bps / 1e9);
          else std::snprintf(buf, n, "null");
        };
        json_speed(memory_speed, sizeof memory_speed, r.comp_memory);
        json_speed(memory_dec, sizeof memory_dec, r.dec_memory);
        std::printf("{\"file\": %s, \"ok\": true, \"threads\": %d, \"ratio\": %.6f, \"compress_GBps\": %.4f, "
                    "\"compress_memory_GBps\": %s, \"decompress_GBps\": %s, \"verify_GBps\": %.4f}\n",
                    jq(p).c_str(), r.threads, ratio, r.comp / 1e9, memory_speed, memory_dec, r.dec / 1e9);
      } else {
        if (r.comp_memory > 0) std::snprintf(memory_speed, sizeof memory_speed, "in memory %.3f", r.comp_memory / 1e9);
        else std::snprintf(memory_speed, sizeof memory_speed, "in memory: not timed, too large");
        if (r.dec_memory > 0) std::snprintf(memory_dec, sizeof memory_dec, "%.3f GB/s", r.dec_memory / 1e9);
        else std::snprintf(memory_dec, sizeof memory_dec, "not timed, too large");
        std::printf("%s: ratio %.4f, %d thread%s: compress %.3f GB/s (%s), decompress into memory %s, verify %.3f GB/s\n",
                    printable(p).c_str(), ratio, r.threads, r.threads == 1 ? "" : "s", r.comp / 1e9, memory_speed, memory_dec,
                    r.dec / 1e9);
      }
    }
  }
  return rc;
}

}  // namespace

int run(int argc, char** argv);

int main(int argc, char** argv) {
  // The core returns errors as values, a failed allocation included; one here, in the CLI's own
  // code, is reported the same way.
  try {
    int rc = run(argc, argv);
    // What info and --json print is the product: a full disk or closed pipe on stdout is an
    // error, not a silent success.
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
      std::fprintf(stderr, "bigsmall: %s: write error: %s\n", kStdoutLabel, std::strerror(errno));
      rc = std::max(rc, static_cast<int>(errno == ENOSPC ? kExitNoSpace : kExitIo));
    }
    return rc;
  } catch (const std::bad_alloc&) {
    remove_partial_outputs();
    std::fprintf(stderr, "bigsmall: out of memory\n");
    return kExitNoMemory;
  }
}

int run(int argc, char** argv) {
  // A signal the parent set to be ignored stays ignored (a job started in the background by a
  // shell script ignores SIGINT), as gzip and zstd do.
  // Every signal whose default action ends the process removes the unfinished outputs first.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU, SIGVTALRM, SIGPROF}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    std::signal(sig, on_signal);
  }
  // A file size limit (ulimit -f) is a full disk by another name: the write that passes it fails
  // with EFBIG and the run ends as on ENOSPC (one line naming the file, exit 3), where the
  // signal's default action killed it without a word.
  std::signal(SIGXFSZ, SIG_IGN);
  {
    struct sigaction bus {};
    bus.sa_sigaction = on_bus_error;
    bus.sa_flags = SA_SIGINFO;
    ::sigemptyset(&bus.sa_mask);
    ::sigaction(SIGBUS, &bus, nullptr);
  }
  Args a;
  const std::vector<std::string> args = normalized_args(std::vector<std::string>(argv + 1, argv + argc));
  if (args.empty()) {
    std::fputs(kUsageHead, stderr);
    print_usage(stderr, "");
    return kExitUsage;
  }
  bool options_done = false;  // after "--", every argument is a command or path
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (options_done || (s.size() > 1 && s[0] != '-') || s == "-") {
      if (a.command.empty()) a.command = s;
      else a.paths.push_back(s);
      continue;
    }
    auto need_value = [&](const char* opt) -> const std::string* {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "bigsmall: %s needs a value\n", opt);
        return nullptr;
      }
      return &args[++i];
    };
    if (s == "--") {
      options_done = true;
    } else if (s == "-h" || s == "--help") {
      print_help(a.command);
      return kExitOk;
    } else if (s == "-V" || s == "--version") {
      std::printf("bigsmall %s (format %u.%u)\n", version_string(), kFormatVersionMajor, kFormatVersionMinor);
      return kExitOk;
    } else if (s == "-o") {
      const std::string* v = need_value("-o");
      if (!v) return kExitUsage;
      if (v->empty()) {
        std::fprintf(stderr, "bigsmall: -o needs a path, got ''\n");
        return kExitUsage;
      }
      if (*v == "-") {  // as zstd takes it
        a.to_stdout = true;
        continue;
      }
      if (!a.output.empty() && a.output != *v) {
        std::fprintf(stderr, "bigsmall: -o given twice ('%s', '%s')\n", printable(a.output).c_str(), printable(*v).c_str());
        return kExitUsage;
      }
      a.output = *v;
    } else if (s.rfind("-T", 0) == 0) {
      // -T N, or -TN as zstd and xz take it.
      const std::string attached = s.substr(2);
      const std::string* v = attached.empty() ? need_value("-T") : &attached;
      if (!v) return kExitUsage;
      char* end = nullptr;
      const long t = std::strtol(v->c_str(), &end, 10);
      // Digits only: strtol alone takes "" as 0 and " +2" as 2.
      const bool digits = !v->empty() && v->size() <= 4 && std::all_of(v->begin(), v->end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits || *end != '\0' || t < 0 || t > 4096) {
        std::fprintf(stderr, "bigsmall: -T takes a thread count from 0 (all cores) to 4096, got '%s'\n", printable(*v).c_str());
        return kExitUsage;
      }
      a.threads = static_cast<int>(t);
      a.threads_given = true;
    } else if (s == "-f") {
      a.force = true;
    } else if (s == "-q") {
      a.quiet = true;
    } else if (s == "-k") {
      a.keep = true;  // the input is always kept: accepted, as zstd and xz users type it
    } else if (s == "-v") {
      a.verbose = true;
    } else if (s == "-c") {
      a.to_stdout = true;
    } else if (s == "--json") {
      a.json = true;
    } else if (s == "--no-verify") {
      a.verify = false;
    } else if (s == "--best") {
      a.best = true;
    } else if (s.size() > 1 && s[0] == '-') {
      // In a cluster of short flags (-fqz), name the letter that is not one.
      // (Only f, q, v, k and c group; a letter of another option, -, or a non-ASCII byte there gets the
      // whole argument named, as the cluster is then not one of flags at all.)
      const size_t bad = s.size() > 2 && s[1] != '-' ? s.find_first_not_of("fqvkc", 1) : std::string::npos;
      const bool letter = bad != std::string::npos && std::isalpha(static_cast<unsigned char>(s[bad])) &&
                          std::string_view("ToVh").find(s[bad]) == std::string_view::npos;
      if (letter && bad > 1)
        std::fprintf(stderr, "bigsmall: unknown option '-%s' in '%s'\n%s", printable(s.substr(bad, 1)).c_str(), printable(s).c_str(), kHelpHint);
      else
        std::fprintf(stderr, "bigsmall: unknown option '%s'\n%s", printable(s).c_str(), kHelpHint);
      return kExitUsage;
    } else if (a.command.empty()) {
      a.command = s;
    } else {
      a.paths.push_back(s);
    }
  }
  static const char* const kCommands[] = {"compress", "decompress", "verify", "info", "bench"};
  if (!a.command.empty() && std::find(std::begin(kCommands), std::end(kCommands), a.command) == std::end(kCommands)) {
    std::fprintf(stderr, "bigsmall: unknown command '%s'\n%s", printable(a.command).c_str(), kHelpHint);
    return kExitUsage;
  }
  if (a.paths.empty()) {
    std::fprintf(stderr, "bigsmall: %s\n%s", a.command.empty() ? "no command" : "no input path", kHelpHint);
    return kExitUsage;
  }
  // Options that a command does not take are refused, not silently ignored.
  const bool writes = a.command == "compress" || a.command == "decompress";
  if (!writes && (!a.output.empty() || a.force)) {
    std::fprintf(stderr, "bigsmall: %s writes no output: -o and -f do not apply\n", a.command.c_str());
    return kExitUsage;
  }
  const struct {
    bool given;
    const char* option;
    bool applies;
  } takes[] = {
      {a.verbose, "-v", writes},
      {a.to_stdout, "-c (or -o -)", writes},
      {a.keep, "-k", writes},
      {a.best, "--best", a.command == "compress"},
      {!a.verify, "--no-verify", a.command == "decompress"},
      {a.threads_given, "-T", a.command != "info"},
      {a.quiet, "-q", a.command != "info" && a.command != "bench"},  // their output is the product
  };
  for (const auto& t : takes) {
    if (t.given && !t.applies) {
      std::fprintf(stderr, "bigsmall: %s does not apply to %s\n", t.option, a.command.c_str());
      return kExitUsage;
    }
  }
  g_force = a.force;
  if (a.quiet && a.verbose) {
    std::fprintf(stderr, "bigsmall: -q and -v contradict each other\n");
    return kExitUsage;
  }
  if (a.json && a.verbose) {  // it would be dropped: --json prints one object per input
    std::fprintf(stderr, "bigsmall: -v does not apply with --json (use `bigsmall info --json` for each tensor)\n");
    return kExitUsage;
  }
  const size_t stdin_inputs = static_cast<size_t>(std::count(a.paths.begin(), a.paths.end(), std::string("-")));
  if (stdin_inputs > 0 && a.paths.size() > 1) {
    std::fprintf(stderr, "bigsmall: stdin ('-') must be the only input\n");
    return kExitUsage;
  }
  if (stdin_inputs > 0 && a.command == "bench") {
    std::fprintf(stderr, "bigsmall: bench reads files, not stdin (it compresses and decompresses them several times)\n");
    return kExitUsage;
  }
  if (a.to_stdout && !a.output.empty()) {
    std::fprintf(stderr, "bigsmall: -c (or -o -) and -o contradict each other\n");
    return kExitUsage;
  }
  g_quiet = a.quiet;
  if (writes && (a.to_stdout || stdin_inputs > 0 || (a.paths.size() == 1 && is_stream(a.paths[0])))) return run_stream(a);
  if (a.command == "compress" || a.command == "decompress") return run_codec(a);
  if (a.command == "verify") return run_verify(a);
  if (a.command == "info") return run_info(a);
  if (a.command == "bench") return run_bench(a);
  std::fprintf(stderr, "bigsmall: unknown command '%s'\n%s", printable(a.command).c_str(), kHelpHint);
  return kExitUsage;
}
