// Small RAII and attribute helpers over the HDF5 C API, private to shards/.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tensor.h"

namespace rwkvpp::h5 {

// Owns one HDF5 identifier of any kind; closes it with H5Oclose/H5Fclose/... as fits.
class Id {
 public:
  Id() = default;
  explicit Id(hid_t id) : id_(id) {}
  ~Id() { reset(); }
  Id(Id&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Id& operator=(Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      o.id_ = -1;
    }
    return *this;
  }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  operator hid_t() const { return id_; }
  void reset();
  // Gives up ownership: the caller closes the identifier.
  hid_t release() {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
};

// Silences HDF5's own error printing (we report errors ourselves); idempotent.
void quiet();

void set_attr(hid_t obj, const char* name, const std::string& v);
void set_attr(hid_t obj, const char* name, int64_t v);
void set_attr_u64(hid_t obj, const char* name, uint64_t v);
void set_attr(hid_t obj, const char* name, double v);
bool has_attr(hid_t obj, const char* name);
// Getters throw Error mentioning `where` and the attribute name when missing or mistyped.
std::string get_attr_str(hid_t obj, const char* name, const std::string& where);
int64_t get_attr_i64(hid_t obj, const char* name, const std::string& where);
uint64_t get_attr_u64(hid_t obj, const char* name, const std::string& where);
double get_attr_f64(hid_t obj, const char* name, const std::string& where);

// Opening objects of a file that may be hostile: external links on the way are refused
// (rwkvpp opens shard files itself, by names checked to lie in the model's directory; a link
// could name any file), and so are datasets whose data would come from other files (external
// raw storage, virtual datasets). Throws Error naming `where` (the file) and the path.
Id open_group(hid_t loc, const std::string& path, const std::string& where);
Id open_dataset(hid_t loc, const std::string& path, const std::string& where);

// A creation property list of class `cls` (H5P_FILE_CREATE, H5P_GROUP_CREATE,
// H5P_DATASET_CREATE) that records no modification times, so that converting the same
// checkpoint twice gives the same bytes.
Id untimed(hid_t cls);
// Creates the groups on the way to `path` ("/a/b/name": /a and /a/b) that do not exist yet.
void create_parents(hid_t file, const std::string& path, const std::string& file_name);

// Writes `t` as a chunked, Fletcher32-protected dataset at `path` (intermediate groups
// created), with attributes dtype and checksum (FNV-1a 64 over the raw bytes).
void write_tensor(hid_t file, const std::string& path, const HostTensor& t, const std::string& file_name);
// Reads a dataset written by write_tensor, verifying Fletcher32 and the checksum. `file_name`
// names the file in errors.
HostTensor read_tensor(hid_t file, const std::string& path, const std::string& file_name,
                       uint64_t* bytes_read);

}  // namespace rwkvpp::h5
