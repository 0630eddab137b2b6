// nanobind extension: the Python face of the C++ library. Uses the public API only; the only
// place where core Status values become Python exceptions.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "bigsmall/container.hpp"
#include "bigsmall/cuda.hpp"

#if BIGSMALL_HAVE_CUDA
#include <cuda_runtime.h>

#endif

namespace nb = nanobind;
using namespace bigsmall;

namespace {

// Exception classes, created at import: Error(Exception) and one subclass per kind of problem.
PyObject* g_error = nullptr;
PyObject* g_format = nullptr;    // not safetensors / not .bs / truncated / unknown dtype / limits
PyObject* g_corrupt = nullptr;   // checksum mismatch, inconsistent structure
PyObject* g_version = nullptr;   // newer format version
PyObject* g_io = nullptr;        // I/O, disk full (also an OSError)
PyObject* g_notfound = nullptr;  // tensor name missing (also a KeyError)
PyObject* g_value = nullptr;     // invalid argument (also a ValueError)
PyObject* g_memory = nullptr;    // an allocation failed (also a MemoryError)
PyObject* g_file_not_found = nullptr;  // IOError that is also a FileNotFoundError
PyObject* g_permission = nullptr;      // IOError that is also a PermissionError
PyObject* g_file_exists = nullptr;     // IOError that is also a FileExistsError (output there, no overwrite)
PyObject* g_is_a_directory = nullptr;  // IOError that is also an IsADirectoryError
PyObject* g_not_a_directory = nullptr; // IOError that is also a NotADirectoryError

[[noreturn]] void raise(const Status& st) {
  PyObject* cls = g_error;
  switch (st.code()) {
    case Error::kNotSafetensors:
    case Error::kNotBigsmall:
    case Error::kTruncated:
    case Error::kUnknownDtype:
    case Error::kLimit: cls = g_format; break;
    case Error::kCorrupt: cls = g_corrupt; break;
    case Error::kUnsupportedVersion: cls = g_version; break;
    case Error::kIo:
    case Error::kNoSpace:
      cls = st.sys_errno() == ENOENT   ? g_file_not_found
            : st.sys_errno() == EEXIST ? g_file_exists
            : st.sys_errno() == EISDIR ? g_is_a_directory
            : st.sys_errno() == ENOTDIR ? g_not_a_directory
            : (st.sys_errno() == EACCES || st.sys_errno() == EPERM) ? g_permission
                                                                     : g_io;
      break;
    case Error::kNotFound: cls = g_notfound; break;
    case Error::kInvalidArgument: cls = g_value; break;
    case Error::kOutOfMemory: cls = g_memory; break;
    default: break;
  }
  // Messages name files, whose paths may hold any bytes: those that are not UTF-8 are shown
  // escaped (\xff) rather than turning the error into a UnicodeDecodeError.
  std::string m = st.message();
  if (st.sys_errno() == EEXIST) m += " (pass overwrite=True)";  // an existing output
  PyObject* text = PyUnicode_DecodeUTF8(m.data(), static_cast<Py_ssize_t>(m.size()), "backslashreplace");
  if (text == nullptr) throw nb::python_error();
  PyObject* exc = PyObject_CallOneArg(cls, text);
  Py_DECREF(text);
  if (exc == nullptr) throw nb::python_error();
  // OSError's errno attribute, as Python's own file errors carry it.
  if (st.sys_errno() != 0 && PyObject_IsInstance(exc, PyExc_OSError) == 1) {
    PyObject* e = PyLong_FromLong(st.sys_errno());
    if (e == nullptr || PyObject_SetAttrString(exc, "errno", e) != 0) PyErr_Clear();
    Py_XDECREF(e);
    // strerror as Python's own errors carry it (the package keeps str() the one-line message;
    // filename stays unset: the message names the file).
    PyObject* text = PyUnicode_DecodeLocale(std::strerror(st.sys_errno()), "surrogateescape");
    if (text == nullptr || PyObject_SetAttrString(exc, "strerror", text) != 0) PyErr_Clear();
    Py_XDECREF(text);
  }
  PyErr_SetObject(cls, exc);
  Py_DECREF(exc);
  throw nb::python_error();
}

// A path as the operating system spells it: from str (bytes that are not UTF-8 arrive as
// surrogate escapes, as os.fsdecode makes them), bytes or os.PathLike.
std::string fs_path(nb::handle p) {
  PyObject* b = nullptr;
  if (!PyUnicode_FSConverter(p.ptr(), &b)) throw nb::python_error();
  std::string out(PyBytes_AS_STRING(b), static_cast<size_t>(PyBytes_GET_SIZE(b)));
  Py_DECREF(b);
  return out;
}

// And back, as os.fsdecode would give it.
nb::object fs_str(const std::string& s) {
  PyObject* o = PyUnicode_DecodeFSDefaultAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  if (o == nullptr) throw nb::python_error();
  return nb::steal(o);
}

void check(const Status& st) {
  if (!st.is_ok()) raise(st);
}

// Runs core work with the GIL released, then turns its Status into an exception.
template <typename Fn>
void run_released(Fn&& fn) {
  Status st;
  {
    nb::gil_scoped_release release;
    st = fn();
  }
  check(st);
}

PyObject* make_error(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string full = std::string("bigsmall._core.") + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(full.c_str(), doc, bases, nullptr);
  m.attr(name) = nb::handle(cls);
  return cls;
}

using Bytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using ConstBytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// threading.main_thread().ident (with the GIL held), read once per process: a child forked from
// another thread has that thread as its main one (a multiprocessing worker started by a
// launcher thread), and with the parent's ident it got no Ctrl-C hook at all.
unsigned long main_thread_ident() {
  static pid_t pid = 0;
  static unsigned long id = 0;
  if (const pid_t now = ::getpid(); now != pid) {
    nb::object t = nb::module_::import_("threading").attr("main_thread")();
    id = nb::cast<unsigned long>(t.attr("ident"));
    pid = now;
  }
  return id;
}

// With a Python callback, it is called with the GIL between batches. Without one, a call made
// on Python's main thread still gets a hook, so that Ctrl-C stops a long compress, decompress,
// verify or save: between batches (a tensor larger than a batch is one step when restoring or
// verifying) and at most every 100 ms, it takes the GIL and runs Python's pending signal
// handlers. A KeyboardInterrupt, like any exception from the callback, unwinds the core, which
// removes its unfinished output file. Other threads get no hook: signals are only handled on
// the main thread, and taking the GIL there would only wait on other Python threads.
ProgressFn progress_fn(nb::object cb) {
  if (cb.is_none()) {
    if (PyThread_get_thread_ident() != main_thread_ident()) return nullptr;
    auto last = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    return [last](uint64_t, uint64_t) {
      const auto now = std::chrono::steady_clock::now();
      if (now - *last < std::chrono::milliseconds(100)) return;
      *last = now;
      nb::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) throw nb::python_error();
    };
  }
  // The std::function is copied and destroyed while the GIL is released: the Python object is
  // shared through a pointer whose deleter takes the GIL, and calls take it too.
  std::shared_ptr<nb::object> holder(new nb::object(std::move(cb)), [](nb::object* o) {
    nb::gil_scoped_acquire gil;
    delete o;
  });
  return [holder](uint64_t done, uint64_t total) {
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw nb::python_error();
    (*holder)(done, total);
  };
}

struct PyFile {
  nb::object bytes;  // the bytes object a File.from_bytes reads in place: declared first, so it outlives f
  BsFile f;
};

// Fresh tensor memory is faulted in 4 KiB at a time as the decoder first writes it; 2 MiB pages
// where the kernel offers them on request (transparent_hugepage=madvise) take 512 times fewer
// faults. Only the aligned 2 MiB blocks inside the buffer are advised, so no memory outside it
// is committed; errors (no THP, memory already faulted) change nothing and are ignored.
void advise_huge_pages(uint8_t* p, uint64_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

// A buffer for tensor i of f must hold exactly its decoded bytes.
void check_buffer(const BsFile& f, size_t i, uint64_t size) {
  if (i >= f.tensors().size()) raise(Status(Error::kInvalidArgument, "tensor index out of range"));
  if (size != f.tensors()[i].nbytes)
    raise(Status(Error::kInvalidArgument, "buffer for '" + f.tensors()[i].name + "' has " + std::to_string(size) +
                                              " bytes, tensor has " + std::to_string(f.tensors()[i].nbytes)));
}

void read_released(const BsFile& f, const std::vector<size_t>& which, const std::vector<uint8_t*>& ptrs, int threads,
                   bool verify) {
  DecodeOptions o;
  o.threads = threads;
  o.verify = verify;
  std::vector<uint64_t> sizes;  // callers checked each buffer against its tensor (check_buffer)
  for (size_t i : which) sizes.push_back(f.tensors()[i].nbytes);
  run_released([&] { return f.read_tensors(which, ptrs, sizes, o); });
}

#if BIGSMALL_HAVE_CUDA
// Two pinned host buffers, kept for the life of the process: device-to-host reads of decoded
// tensors for their checksums go through them, the copy of one piece overlapping the hashing of
// the other. Pinned copies run at bus speed; a fresh pageable buffer per call cost more than the
// decode itself.
struct PinnedPair {
  static constexpr size_t kPiece = size_t{8} << 20;
  std::mutex mu;
  uint8_t* buf[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};
  bool ready = false;

  Status init() {
    if (ready) return Status::success();
    // What a failed try allocated is kept for the next (a retry would leak it); what failed is
    // set back to null (a failed call does not promise to leave it so).
    const Status oom(Error::kOutOfMemory, "cannot allocate pinned host memory for checksums");
    for (int b = 0; b < 2; ++b) {
      if (buf[b] == nullptr && cudaMallocHost(&buf[b], kPiece) != cudaSuccess) {
        buf[b] = nullptr;
        cudaGetLastError();
        return oom;
      }
      if (done[b] == nullptr && cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming) != cudaSuccess) {
        done[b] = nullptr;
        cudaGetLastError();
        return oom;
      }
    }
    ready = true;
    return Status::success();
  }
};

PinnedPair& pinned_pair() {
  static PinnedPair* p = new PinnedPair;  // never freed: CUDA may be torn down before statics
  return *p;
}

// XXH3-64 of each decoded tensor, read back piece by piece through the pinned pair (whose lock
// the caller holds).
Status hash_on_host(PinnedPair& pp, const BsFile& f, const std::vector<size_t>& which, const std::vector<uint64_t>& ptrs,
                    cudaStream_t stream) {
  BIGSMALL_RETURN_IF_ERROR(pp.init());
  struct Piece {
    size_t k;
    uint64_t off, n;
  };
  std::vector<Piece> pieces;
  for (size_t k = 0; k < which.size(); ++k)
    for (uint64_t off = 0, nb = f.tensors()[which[k]].nbytes; off < nb; off += PinnedPair::kPiece)
      pieces.push_back({k, off, std::min<uint64_t>(PinnedPair::kPiece, nb - off)});
  auto issue = [&](size_t p) {
    const Piece& x = pieces[p];
    const int b = static_cast<int>(p & 1);
    if (cudaMemcpyAsync(pp.buf[b], reinterpret_cast<const uint8_t*>(ptrs[x.k]) + x.off, x.n, cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
        cudaEventRecord(pp.done[b], stream) != cudaSuccess)
      return Status(Error::kIo, "copy from the device failed");
    return Status::success();
  };
  if (!pieces.empty()) BIGSMALL_RETURN_IF_ERROR(issue(0));
  std::optional<TensorChecksum> hash;
  for (size_t p = 0; p < pieces.size(); ++p) {
    if (p + 1 < pieces.size()) BIGSMALL_RETURN_IF_ERROR(issue(p + 1));  // its buffer was hashed last round
    if (cudaEventSynchronize(pp.done[p & 1]) != cudaSuccess) return Status(Error::kIo, "copy from the device failed");
    const Piece& x = pieces[p];
    if (x.off == 0) {
      hash.reset();
      hash.emplace();
      if (!hash->ok()) return Status(Error::kOutOfMemory, "out of memory for a checksum state");
    }
    hash->update(pp.buf[p & 1], x.n);
    const TensorInfo& t = f.tensors()[which[x.k]];
    if (x.off + x.n == t.nbytes && hash->digest() != f.coding(which[x.k]).checksum)
      return Status(Error::kCorrupt, "tensor '" + t.name + "': checksum mismatch after GPU decode");
  }
  return Status::success();
}

Status verify_on_host(const BsFile& f, const std::vector<size_t>& which, const std::vector<uint64_t>& ptrs, cudaStream_t stream) {
  PinnedPair& pp = pinned_pair();
  std::lock_guard<std::mutex> lock(pp.mu);
  const Status st = hash_on_host(pp, f, which, ptrs, stream);
  if (!st.is_ok()) cudaStreamSynchronize(stream);  // no copy may still write into the pair once it is unlocked
  return st;
}

// Compressed payloads go to the device once, then one launch decodes every chunk of every tensor
// into the callers' device buffers. Synchronises the stream before returning.
Status decode_on_device(const BsFile& f, const std::vector<size_t>& which, const std::vector<uint64_t>& ptrs,
                        const std::vector<uint64_t>& sizes, cudaStream_t stream, bool verify) {
  // As the CPU path checks before its reads: a file cut short since it was opened would fault
  // (SIGBUS, the process killed) when the copy below reads past its new end.
  BIGSMALL_RETURN_IF_ERROR(f.check_not_truncated());
  uint64_t total = 0;
  for (size_t i : which) total += f.tensors()[i].stored_bytes;
  uint8_t* staging = nullptr;
  // Stream-ordered: no device-wide synchronisation on allocation or release.
  const bool async_alloc = cudaMallocAsync(reinterpret_cast<void**>(&staging), std::max<uint64_t>(1, total), stream) == cudaSuccess;
  if (!async_alloc) {
    cudaGetLastError();
    if (cudaMalloc(&staging, std::max<uint64_t>(1, total)) != cudaSuccess && (cudaGetLastError(), true))
      return Status(Error::kOutOfMemory, "cannot allocate device memory for compressed data").with_context(f.path());
  }
  std::vector<cuda::Job> jobs;
  uint64_t off = 0;
  Status st;
  for (size_t k = 0; k < which.size() && st.is_ok(); ++k) {
    const size_t i = which[k];
    const uint64_t n = f.tensors()[i].stored_bytes;
    if (n && cudaMemcpyAsync(staging + off, f.payload(i), n, cudaMemcpyHostToDevice, stream) != cudaSuccess)
      st = Status(Error::kIo, "copy to the device failed");
    jobs.push_back({&f.coding(i), f.payload(i), n, staging + off, reinterpret_cast<uint8_t*>(ptrs[k]), sizes[k],
                    f.tensors()[i].name.c_str()});
    off += n;
  }
  {
    cuda::Decoder dec;
    if (st.is_ok()) st = dec.enqueue(jobs, stream, verify);
    const cudaError_t sync = cudaStreamSynchronize(stream);
    if (st.is_ok() && sync != cudaSuccess) st = Status(Error::kIo, std::string("CUDA: ") + cudaGetErrorString(sync));
    if (st.is_ok()) st = dec.finish();  // the decoder's own finding names the chunk: it goes first
    if (st.is_ok() && verify) st = verify_on_host(f, which, ptrs, stream);
  }
  if (async_alloc) cudaFreeAsync(staging, stream);
  else cudaFree(staging);
  return st.with_context(f.path());
}
#endif

std::vector<TensorView> tensor_views(const std::vector<std::pair<std::string, std::string>>& names_dtypes,
                                     const std::vector<std::vector<uint64_t>>& shapes, const std::vector<ConstBytes>& datas) {
  if (names_dtypes.size() != shapes.size() || shapes.size() != datas.size())
    raise(Status(Error::kInvalidArgument, "names, shapes and buffers differ in length"));
  std::vector<TensorView> views;
  for (size_t i = 0; i < datas.size(); ++i) {
    const auto dt = dtype_from_name(names_dtypes[i].second);
    if (!dt) raise(Status(Error::kUnknownDtype, "unknown dtype '" + names_dtypes[i].second + "'"));
    views.push_back({names_dtypes[i].first, *dt, shapes[i], datas[i].data(), datas[i].size()});
  }
  return views;
}

nb::list tensor_list(const BsFile& f) {
  nb::list out;
  for (const auto& t : f.tensors()) {
    nb::dict d;
    // Files written before names had to be UTF-8 may hold other bytes: they come through as
    // surrogate escapes, as Python spells undecodable file names.
    PyObject* name = PyUnicode_DecodeUTF8(t.name.data(), static_cast<Py_ssize_t>(t.name.size()), "surrogateescape");
    if (name == nullptr) throw nb::python_error();
    d["name"] = nb::steal(name);
    d["dtype"] = std::string(dtype_info(t.dtype).safetensors_name);
    d["shape"] = nb::cast(t.shape);
    d["nbytes"] = t.nbytes;
    nb::list offsets;  // a list, as in the safetensors header
    offsets.append(t.data_begin);
    offsets.append(t.data_begin + t.nbytes);
    d["data_offsets"] = offsets;
    d["stored_bytes"] = t.stored_bytes;
    d["floor_bits"] = t.floor_bits;
    d["codec"] = std::string(codec_name(t.codec));
    out.append(d);
  }
  return out;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "bigsmall core library (C++)";
  m.attr("library_version") = bigsmall::version_string();
  g_error = make_error(m, "Error", PyExc_Exception, "Base class of every bigsmall error.");
  {
    g_format = make_error(m, "FormatError", g_error, "Input is not a valid safetensors or .bs file.");
    g_corrupt = make_error(m, "CorruptError", g_error, "Checksum mismatch or damaged data.");
    g_version = make_error(m, "VersionError", g_error, "File written by a newer bigsmall format version.");
    // Each error is also the builtin exception Python code already catches for its kind.
    auto both = [&](const char* name, PyObject* ours, PyObject* builtin, const char* doc) {
      return make_error(m, name, nb::make_tuple(nb::handle(ours), nb::handle(builtin)).release().ptr(), doc);
    };
    g_io = both("IOError", g_error, PyExc_OSError, "Read or write failed.");
    g_file_not_found = both("FileNotFoundError", g_io, PyExc_FileNotFoundError, "A file or directory does not exist.");
    g_permission = both("PermissionError", g_io, PyExc_PermissionError, "The operating system refused access.");
    g_file_exists = both("FileExistsError", g_io, PyExc_FileExistsError, "The output exists and overwriting was not asked for.");
    g_is_a_directory = both("IsADirectoryError", g_io, PyExc_IsADirectoryError, "A directory where a file was expected.");
    g_not_a_directory = both("NotADirectoryError", g_io, PyExc_NotADirectoryError, "A file where a directory was expected.");
    g_notfound = both("NotFoundError", g_error, PyExc_KeyError, "No tensor of that name.");
    g_value = both("InvalidArgumentError", g_error, PyExc_ValueError, "Invalid argument.");
    g_memory = both("OutOfMemoryError", g_error, PyExc_MemoryError, "An allocation failed: the data asks for more memory than there is.");
  }
  m.attr("FORMAT_VERSION") = nb::make_tuple(kFormatVersionMajor, kFormatVersionMinor);
  m.attr("DIR_INDEX_LAYOUT_VERSION") = kDirIndexLayoutVersion;  // bigsmall.index.json's, not the .bs format's
  m.def("cuda_available", [] { return cuda::available(); }, "Built with CUDA and a GPU is present.");

  m.def(
      "compress",
      [](nb::handle src_path, nb::handle dst_path, int threads, bool overwrite, bool dir, nb::object progress) {
        const std::string src = fs_path(src_path), dst = fs_path(dst_path);
        CompressOptions o;
        o.threads = threads;
        o.overwrite = overwrite;
        o.progress = progress_fn(progress);
        run_released([&] { return dir ? compress_dir(src, dst, o) : compress_file(src, dst, o); });
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("threads") = 0, nb::arg("overwrite") = false, nb::arg("dir") = false,
      nb::arg("progress") = nb::none());

  m.def(
      "decompress",
      [](nb::handle src_path, nb::handle dst_path, int threads, bool overwrite, bool verify, bool dir,
         nb::object progress) {
        const std::string src = fs_path(src_path), dst = fs_path(dst_path);
        DecompressOptions o;
        o.threads = threads;
        o.overwrite = overwrite;
        o.verify = verify;
        o.progress = progress_fn(progress);
        run_released([&] { return dir ? decompress_dir(src, dst, o) : decompress_file(src, dst, o); });
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("threads") = 0, nb::arg("overwrite") = false, nb::arg("verify") = true,
      nb::arg("dir") = false, nb::arg("progress") = nb::none());

  m.def(
      "verify",
      [](nb::handle path_arg, int threads) {
        const std::string path = fs_path(path_arg);
        DecompressOptions o;
        o.threads = threads;
        o.progress = progress_fn(nb::none());  // no bar, but Ctrl-C is heard between batches
        run_released([&] { return verify_path(path, o); });
      },
      nb::arg("path"), nb::arg("threads") = 0);

  m.def(
      "verify_copied_files",
      [](nb::handle dir_arg, nb::list only_arg, bool missing_ok) {
        const std::string dir = fs_path(dir_arg);
        std::vector<std::string> only;  // file names: bytes that are not UTF-8 come as os.fsdecode gives them
        for (nb::handle n : only_arg) only.push_back(fs_path(n));
        run_released([&] { return verify_copied_files(dir, only, missing_ok); });
      },
      nb::arg("dir"), nb::arg("only") = nb::list(), nb::arg("missing_ok") = false,
      "The files a compressed model directory copied along, against its index's checksums.");

  m.def(
      "model_dir_files",
      [](nb::handle dir_arg, bool check) {
        const std::string dir = fs_path(dir_arg);
        auto r = model_dir_files(dir, check);
        if (!r) raise(r.status());
        nb::list out;
        for (const auto& f : *r) out.append(fs_str(f));
        return out;
      },
      nb::arg("dir"), nb::arg("check") = true,
      "The .bs files of a compressed model directory, in the order of its index (check: each file's "
      "header against its entry).");

  m.def(
      "write_tensors",
      [](nb::handle dst_path, const std::vector<std::pair<std::string, std::string>>& names_dtypes,
         const std::vector<std::vector<uint64_t>>& shapes, std::vector<ConstBytes> datas,
         const std::optional<Metadata>& metadata, int threads, bool overwrite) {
        const std::vector<TensorView> views = tensor_views(names_dtypes, shapes, datas);
        CompressOptions o;
        o.threads = threads;
        o.overwrite = overwrite;
        o.progress = progress_fn(nb::none());  // Ctrl-C is heard between batches
        const std::string dst = fs_path(dst_path);
        run_released([&] { return write_tensors(dst, views, metadata, o); });
      },
      nb::arg("dst"), nb::arg("names_dtypes"), nb::arg("shapes"), nb::arg("buffers"), nb::arg("metadata"),
      nb::arg("threads") = 0, nb::arg("overwrite") = false);

  m.def(
      "take_removed_temporaries",
      [] {
        nb::list out;
        for (const auto& p : take_removed_temporaries()) out.append(fs_str(p));
        return out;
      },
      "Paths of temporaries of killed runs removed since the last call.");
  m.def(
      "remove_stale_temporaries", [](nb::handle output) { remove_stale_temporaries(fs_path(output)); }, nb::arg("output"),
      "Removes the temporaries killed attempts at output left (what every output does first).");

  m.def(
      "write_tensors_bytes",
      [](const std::vector<std::pair<std::string, std::string>>& names_dtypes,
         const std::vector<std::vector<uint64_t>>& shapes, std::vector<ConstBytes> datas,
         const std::optional<Metadata>& metadata, int threads) {
        const std::vector<TensorView> views = tensor_views(names_dtypes, shapes, datas);
        CompressOptions o;
        o.threads = threads;
        o.progress = progress_fn(nb::none());  // Ctrl-C is heard between batches
        Result<std::vector<uint8_t>> r = Status(Error::kInternal, "not run");
        run_released([&] {
          r = write_tensors_to_memory(views, metadata, o);
          return r.status();
        });
        PyObject* out = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(r->data()), static_cast<Py_ssize_t>(r->size()));
        if (out == nullptr) {
          PyErr_Clear();
          raise(Status(Error::kOutOfMemory, "<memory>: cannot allocate " + std::to_string(r->size()) + " bytes for the result"));
        }
        return nb::steal<nb::bytes>(out);
      },
      nb::arg("names_dtypes"), nb::arg("shapes"), nb::arg("buffers"), nb::arg("metadata"), nb::arg("threads") = 0,
      "The .bs that write_tensors would write, as bytes.");

  nb::class_<PyFile>(m, "File")
      .def_static(
          "open",
          [](nb::handle path_arg) {
            const std::string path = fs_path(path_arg);
            Result<BsFile> r = [&] {
              nb::gil_scoped_release release;
              return BsFile::open(path);
            }();
            if (!r) raise(r.status());
            auto* p = new PyFile{nb::object(), std::move(r.value())};
            return p;
          },
          nb::arg("path"), nb::rv_policy::take_ownership)
      .def_static(
          "from_bytes",
          [](nb::bytes data, const std::string& label) {
            // Read in place: bytes objects are immutable, and the File holds a reference to it.
            const auto* p = reinterpret_cast<const uint8_t*>(data.c_str());
            const uint64_t n = data.size();
            Result<BsFile> r = [&] {
              nb::gil_scoped_release release;
              return BsFile::open_memory(p, n, label);
            }();
            if (!r) raise(r.status());
            return new PyFile{data, std::move(r.value())};
          },
          nb::arg("data"), nb::arg("label") = "<memory>", nb::rv_policy::take_ownership)
      .def_prop_ro("path", [](const PyFile& p) { return fs_str(p.f.path()); })
      .def_prop_ro("file_size", [](const PyFile& p) { return p.f.file_size(); })
      .def_prop_ro("original_size", [](const PyFile& p) { return p.f.original_size(); })
      .def_prop_ro("fingerprint", [](const PyFile& p) { return p.f.fingerprint(); })
      .def_prop_ro("header", [](const PyFile& p) { return nb::bytes(p.f.safetensors_header().data(), p.f.safetensors_header().size()); })
      .def_prop_ro(
          "metadata",
          [](const PyFile& p) -> nb::object {
            // The core's reading of the kept header, which accepts what Python's json refuses in
            // files of earlier writers; bytes that are not UTF-8 come back as surrogate escapes.
            if (!p.f.metadata()) return nb::none();
            nb::dict d;
            auto text = [](const std::string& s) {
              PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape");
              if (o == nullptr) throw nb::python_error();
              return nb::steal(o);
            };
            for (const auto& [k, v] : *p.f.metadata()) d[text(k)] = text(v);
            return d;
          },
          "The kept header's __metadata__ as a dict of str (None when it has none).")
      .def("tensors", [](const PyFile& p) { return tensor_list(p.f); })
      .def(
          "read_into",
          [](const PyFile& p, std::vector<size_t> which, std::vector<Bytes> outs, int threads, bool verify) {
            if (which.size() != outs.size()) raise(Status(Error::kInvalidArgument, "one buffer per tensor"));
            std::vector<uint8_t*> ptrs;
            for (size_t k = 0; k < which.size(); ++k) {
              check_buffer(p.f, which[k], outs[k].size());
              ptrs.push_back(outs[k].data());
              advise_huge_pages(ptrs.back(), outs[k].size());
            }
            read_released(p.f, which, ptrs, threads, verify);
          },
          nb::arg("which"), nb::arg("outs").noconvert(), nb::arg("threads") = 0, nb::arg("verify") = true)
      .def(
          "read_range_into",
          [](const PyFile& p, size_t i, uint64_t begin, Bytes out, int threads, bool verify) {
            if (i >= p.f.tensors().size()) raise(Status(Error::kInvalidArgument, "tensor index out of range"));
            DecodeOptions o;
            o.threads = threads;
            o.verify = verify;
            run_released([&] { return p.f.read_tensor_range(i, begin, out.data(), out.size(), o); });
          },
          nb::arg("i"), nb::arg("begin"), nb::arg("out").noconvert(), nb::arg("threads") = 0, nb::arg("verify") = true,
          "Decodes bytes [begin, begin + len(out)) of tensor i, only the chunks that hold them (their checksums "
          "are checked). With verify, the first range read of a tensor with tables also decodes the whole "
          "tensor once, in bounded memory, to check its own checksum, which alone covers the tables.")
      // Internal and unsafe (any address given is written to): for the package's own callers,
      // host buffers given by address and size (tensor.data_ptr() of contiguous tensors it
      // holds), which must stay alive and writable for the call. A numpy view per tensor cost
      // ~5 us, a quarter of load_file's time on files of small tensors.
      .def(
          "_read_into_addresses",
          [](const PyFile& p, std::vector<size_t> which, std::vector<uint64_t> addresses, std::vector<uint64_t> sizes,
             int threads, bool verify) {
            if (which.size() != addresses.size() || which.size() != sizes.size())
              raise(Status(Error::kInvalidArgument, "one address and size per tensor"));
            std::vector<uint8_t*> ptrs;
            for (size_t k = 0; k < which.size(); ++k) {
              check_buffer(p.f, which[k], sizes[k]);
              if (addresses[k] == 0 && sizes[k] > 0) raise(Status(Error::kInvalidArgument, "null buffer address"));
              ptrs.push_back(reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(addresses[k])));
              advise_huge_pages(ptrs.back(), sizes[k]);
            }
            read_released(p.f, which, ptrs, threads, verify);
          },
          nb::arg("which"), nb::arg("addresses"), nb::arg("sizes"), nb::arg("threads") = 0, nb::arg("verify") = true)
      .def(
          "read_into_device",
          [](const PyFile& p, std::vector<size_t> which, std::vector<uint64_t> device_ptrs, std::vector<uint64_t> sizes,
             uint64_t stream, bool verify) {
            if (which.size() != device_ptrs.size() || which.size() != sizes.size())
              raise(Status(Error::kInvalidArgument, "one buffer and size per tensor"));
            for (size_t k = 0; k < which.size(); ++k) check_buffer(p.f, which[k], sizes[k]);
#if BIGSMALL_HAVE_CUDA
            run_released([&] { return decode_on_device(p.f, which, device_ptrs, sizes, reinterpret_cast<cudaStream_t>(stream), verify); });
#else
            (void)stream;
            (void)verify;
            raise(Status(Error::kInvalidArgument, "bigsmall was built without CUDA"));
#endif
          },
          nb::arg("which"), nb::arg("device_ptrs"), nb::arg("sizes"), nb::arg("stream"), nb::arg("verify") = true);
}
