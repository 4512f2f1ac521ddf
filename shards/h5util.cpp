#include "shards/h5util.h"

#include <algorithm>
#include <cstring>

#include "common/limits.h"
#include "shards/model_format.h"

namespace rwkvpp::h5 {

// The longest string attribute read (the shard list of a model of many shards is a few KB).
constexpr size_t kMaxAttrString = size_t(1) << 20;

void Id::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: break;
  }
  id_ = -1;
}

void quiet() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // No filter plugins: a file naming an unknown filter must not make HDF5 load a shared
  // library from HDF5_PLUGIN_PATH (our datasets use only the built-in Fletcher32).
  H5PLset_loading_state(0);
}

namespace {

// The external link the last refused traversal named (HDF5 reports only that opening failed).
thread_local std::string refused_link;

herr_t refuse_external_link(const char* parent_file, const char*, const char* child_file,
                            const char* child_object, unsigned*, hid_t, void*) {
  refused_link =
      fmt::format("'{}' (object '{}'), from '{}'", child_file, child_object, parent_file);
  return -1;
}

// A link (group, dataset) access property list whose external-link traversals all fail.
hid_t guarded_access(hid_t cls) {
  hid_t p = H5Pcreate(cls);
  if (p < 0 || H5Pset_elink_cb(p, refuse_external_link, nullptr) < 0)
    fail("cannot create an HDF5 access property list");
  return p;
}

[[noreturn]] void open_failed(const char* what, const std::string& path, const std::string& where) {
  if (!refused_link.empty()) {
    std::string link = std::move(refused_link);
    refused_link.clear();
    fail(
        "{}: {} '{}' is reached through an external link to {}: refused (a model's files "
        "may not link to other files)",
        where, what, path, link);
  }
  fail("{}: {} '{}' is missing or unreadable", where, what, path);
}

}  // namespace

// Only the layouts rwkvpp writes: chunked with at most the Fletcher32 filter, each chunk within
// the dataset's extent, or contiguous (the tokenizer). libhdf5 1.10 reads out of bounds for a
// chunk far larger than its dataset (found by fuzz_model_h5), and compact layouts and other
// filters are further parsers we do not need.
static void check_layout(hid_t ds, hid_t dcpl, const std::string& path, const std::string& where) {
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_CONTIGUOUS) {
    if (H5Pget_nfilters(dcpl) == 0) return;
  } else if (layout != H5D_CHUNKED) {
    fail("{}: dataset '{}' has a layout ({}) rwkvpp does not write: refused", where, path,
         int(layout));
  }
  const int nf = H5Pget_nfilters(dcpl);
  for (int i = 0; i < nf; ++i) {
    unsigned flags = 0;
    size_t nvalues = 0;
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl, unsigned(i), &flags, &nvalues, nullptr, 0, nullptr, nullptr);
    if (id != H5Z_FILTER_FLETCHER32)
      fail("{}: dataset '{}' uses HDF5 filter {} (only Fletcher32 is read): refused", where, path,
           int(id));
  }
  if (layout != H5D_CHUNKED) return;
  Id space(H5Dget_space(ds));
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank <= 0 || rank > 8) fail("{}: dataset '{}' has rank {}", where, path, rank);
  hsize_t dims[8] = {}, chunk[8] = {};
  H5Sget_simple_extent_dims(space, dims, nullptr);
  if (H5Pget_chunk(dcpl, rank, chunk) != rank)
    fail("{}: dataset '{}' has chunks of another rank than its data", where, path);
  for (int d = 0; d < rank; ++d)
    if (chunk[d] == 0 || chunk[d] > std::max<hsize_t>(dims[d], 1))
      fail("{}: dataset '{}' has chunks of {} along axis {} of {}: corrupt file", where, path,
           uint64_t(chunk[d]), d, uint64_t(dims[d]));
}

Id open_group(hid_t loc, const std::string& path, const std::string& where) {
  static const hid_t gapl = guarded_access(H5P_GROUP_ACCESS);
  refused_link.clear();
  Id g(H5Gopen2(loc, path.c_str(), gapl));
  if (!g.valid()) open_failed("group", path, where);
  return g;
}

Id open_dataset(hid_t loc, const std::string& path, const std::string& where) {
  static const hid_t dapl = guarded_access(H5P_DATASET_ACCESS);
  refused_link.clear();
  Id ds(H5Dopen2(loc, path.c_str(), dapl));
  if (!ds.valid()) open_failed("dataset", path, where);
  Id dcpl(H5Dget_create_plist(ds));
  if (!dcpl.valid()) fail("{}: dataset '{}' has no readable creation properties", where, path);
  if (H5Pget_layout(dcpl) == H5D_VIRTUAL)
    fail("{}: dataset '{}' is a virtual dataset (its data would come from other files): refused",
         where, path);
  if (H5Pget_external_count(dcpl) != 0)
    fail("{}: dataset '{}' keeps its data in external files: refused", where, path);
  check_layout(ds, dcpl, path, where);
  return ds;
}

static void put_attr(hid_t obj, const char* name, hid_t type, const void* v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  Id space(H5Screate(H5S_SCALAR));
  Id a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!a.valid() || H5Awrite(a, type, v) < 0) fail("cannot write HDF5 attribute '{}'", name);
}

void set_attr(hid_t obj, const char* name, const std::string& v) {
  Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type, std::max<size_t>(v.size(), 1));
  H5Tset_cset(type, H5T_CSET_UTF8);
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  put_attr(obj, name, type, buf.data());
}
void set_attr(hid_t obj, const char* name, int64_t v) { put_attr(obj, name, H5T_STD_I64LE, &v); }
void set_attr_u64(hid_t obj, const char* name, uint64_t v) { put_attr(obj, name, H5T_STD_U64LE, &v); }
void set_attr(hid_t obj, const char* name, double v) { put_attr(obj, name, H5T_IEEE_F64LE, &v); }

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

static Id open_attr(hid_t obj, const char* name, const std::string& where) {
  if (H5Aexists(obj, name) <= 0) fail("{}: attribute '{}' is missing", where, name);
  Id a(H5Aopen(obj, name, H5P_DEFAULT));
  if (!a.valid()) fail("{}: cannot open attribute '{}'", where, name);
  return a;
}

std::string get_attr_str(hid_t obj, const char* name, const std::string& where) {
  Id a = open_attr(obj, name, where);
  Id type(H5Aget_type(a));
  if (H5Tget_class(type) != H5T_STRING) fail("{}: attribute '{}' is not a string", where, name);
  if (H5Tis_variable_str(type) > 0) fail("{}: attribute '{}' is a variable-length string", where, name);
  Id space(H5Aget_space(a));
  if (H5Sget_simple_extent_npoints(space) != 1)
    fail("{}: attribute '{}' is not one string", where, name);
  size_t n = H5Tget_size(type);
  if (n == 0 || n > kMaxAttrString)
    fail("{}: attribute '{}' is a string of {} bytes (at most {})", where, name, n, kMaxAttrString);
  std::string s(n, '\0');
  Id mem(H5Tcopy(H5T_C_S1));
  H5Tset_size(mem, n);
  H5Tset_cset(mem, H5Tget_cset(type));
  if (H5Aread(a, mem, s.data()) < 0) fail("{}: cannot read attribute '{}'", where, name);
  s.resize(std::strlen(s.c_str()));
  return s;
}

template <typename T>
static T get_num(hid_t obj, const char* name, const std::string& where, hid_t mem, H5T_class_t cls) {
  Id a = open_attr(obj, name, where);
  Id type(H5Aget_type(a));
  Id space(H5Aget_space(a));
  if (H5Tget_class(type) != cls || H5Sget_simple_extent_npoints(space) != 1)
    fail("{}: attribute '{}' has the wrong type", where, name);
  T v{};
  if (H5Aread(a, mem, &v) < 0) fail("{}: cannot read attribute '{}'", where, name);
  return v;
}

int64_t get_attr_i64(hid_t obj, const char* name, const std::string& where) {
  return get_num<int64_t>(obj, name, where, H5T_NATIVE_INT64, H5T_INTEGER);
}
uint64_t get_attr_u64(hid_t obj, const char* name, const std::string& where) {
  return get_num<uint64_t>(obj, name, where, H5T_NATIVE_UINT64, H5T_INTEGER);
}
double get_attr_f64(hid_t obj, const char* name, const std::string& where) {
  return get_num<double>(obj, name, where, H5T_NATIVE_DOUBLE, H5T_FLOAT);
}

Id untimed(hid_t cls) {
  Id p(H5Pcreate(cls));
  if (!p.valid() || H5Pset_obj_track_times(p, 0) < 0)
    fail("cannot create an HDF5 creation property list");
  return p;
}

void create_parents(hid_t file, const std::string& path, const std::string& file_name) {
  Id gcpl = untimed(H5P_GROUP_CREATE);
  for (size_t at = path.find('/', 1); at != std::string::npos; at = path.find('/', at + 1)) {
    const std::string group = path.substr(0, at);
    if (H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0) continue;
    Id g(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT));
    if (!g.valid()) fail("'{}': cannot create group '{}'", file_name, group);
  }
}

void write_tensor(hid_t file, const std::string& path, const HostTensor& t, const std::string& file_name) {
  const int rank = int(t.shape.size());
  std::vector<hsize_t> dims(t.shape.begin(), t.shape.end()), chunk(dims);
  if (rank == 0) fail("'{}': tensor '{}' is a scalar", file_name, path);
  // Chunks of about 1 MiB along the first axis (HDF5 limits a chunk to 4 GiB).
  size_t row_bytes = size_t(t.numel() / std::max<int64_t>(t.shape[0], 1)) * dtype_size(t.dtype);
  chunk[0] = std::clamp<hsize_t>((1u << 20) / std::max<size_t>(row_bytes, 1), 1, std::max<hsize_t>(dims[0], 1));
  Id space(H5Screate_simple(rank, dims.data(), nullptr));
  Id dcpl = untimed(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, rank, chunk.data());
  H5Pset_fletcher32(dcpl);
  require_storage_dtype(t.dtype, "'" + file_name + "' dataset '" + path + "'");
  hid_t ftype = t.dtype == DType::F32 ? H5T_IEEE_F32LE : H5T_STD_U16LE;
  hid_t mtype = t.dtype == DType::F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16;
  create_parents(file, path, file_name);
  Id ds(H5Dcreate2(file, path.c_str(), ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  if (!ds.valid()) fail("'{}': cannot create dataset '{}'", file_name, path);
  if (H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data.data()) < 0)
    fail("'{}': cannot write dataset '{}' (disk full?)", file_name, path);
  set_attr(ds, "dtype", std::string(dtype_name(t.dtype)));
  set_attr_u64(ds, "checksum", fnv1a64(t.data.data(), t.data.size()));
}

HostTensor read_tensor(hid_t file, const std::string& path, const std::string& file_name,
                       uint64_t* bytes_read) {
  Id ds = open_dataset(file, path, "'" + file_name + "'");
  std::string where = "'" + file_name + "' dataset '" + path + "'";
  HostTensor t;
  t.dtype = parse_storage_dtype(get_attr_str(ds, "dtype", where), where);
  Id space(H5Dget_space(ds));
  int rank = H5Sget_simple_extent_ndims(space);
  if (rank <= 0 || rank > 8) fail("{}: bad rank {}", where, rank);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  for (hsize_t d : dims) {
    if (d > hsize_t(INT64_MAX)) fail("{}: dimension {} is over 2^63", where, d);
    t.shape.push_back(int64_t(d));
  }
  Id ftype(H5Dget_type(ds));
  size_t esize = H5Tget_size(ftype);
  if (esize != dtype_size(t.dtype)) fail("{}: element size {} does not match dtype {}", where, esize, dtype_name(t.dtype));
  // The shape may not promise more bytes than the file stores (HDF5 would make them up from
  // the fill value): a few bytes of header must not become a huge allocation.
  // The storage size comes from the chunk index, which may lie too: bound it by the file's size.
  const uint64_t nbytes = checked_nbytes(t.shape, esize, where);
  hsize_t file_bytes = 0;
  {
    Id fid(H5Iget_file_id(ds));
    if (!fid.valid() || H5Fget_filesize(fid, &file_bytes) < 0)
      fail("{}: cannot tell the file's size", where);
  }
  const uint64_t stored = std::min<uint64_t>(H5Dget_storage_size(ds), file_bytes);
  if (nbytes > stored)
    fail("{}: shape {} needs {} bytes, the file stores {}: corrupt file", where, t.shape_str(),
         nbytes, stored);
  t.data.resize(size_t(nbytes));
  hid_t mtype = t.dtype == DType::F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT16;
  if (H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data.data()) < 0)
    fail("{}: read failed — the Fletcher32 checksum does not match or the file is corrupt", where);
  uint64_t want = get_attr_u64(ds, "checksum", where);
  uint64_t got = fnv1a64(t.data.data(), t.data.size());
  if (want != got) fail("{}: checksum mismatch (stored {:016x}, computed {:016x}): the file is corrupt", where, want, got);
  if (bytes_read) *bytes_read += t.data.size();
  return t;
}

}  // namespace rwkvpp::h5
