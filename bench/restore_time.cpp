// Seconds of each of N restores of one .bs file to a file (not synced, so that the disk's own
// speed stays out), at a given thread count, one per line: for files too large for
// bench/compare.sh's five compressions per run. Build it against each commit's library (as
// compare.sh builds ab_run) and alternate the binaries:
//   c++ -std=c++20 -O2 -Iinclude bench/restore_time.cpp build/libbigsmall.a -lzstd -lxxhash -lpthread -o restore_time
//   ./restore_time FILE.bs OUT.safetensors THREADS N
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

#include "bigsmall/container.hpp"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: restore_time FILE.bs OUT.safetensors THREADS N\n");
    return 2;
  }
  auto f = bigsmall::BsFile::open(argv[1]);
  if (!f) {
    std::fprintf(stderr, "restore_time: %s\n", f.status().message().c_str());
    return 1;
  }
  bigsmall::DecompressOptions o;
  o.threads = std::atoi(argv[3]);
  o.sync = false;
  o.overwrite = true;
  for (int r = 0; r < std::atoi(argv[4]); ++r) {
    ::unlink(argv[2]);  // a fresh file each time, as a user's restore writes
    const auto t0 = std::chrono::steady_clock::now();
    const bigsmall::Status st = f->restore(argv[2], o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!st.is_ok()) {
      std::fprintf(stderr, "restore_time: %s\n", st.message().c_str());
      return 1;
    }
    std::printf("%.3f\n", s);
  }
  ::unlink(argv[2]);
  return 0;
}
