// Hostile model files (issue 21): HDF5 files that point at other files (external links,
// external raw storage, virtual datasets), shapes the stored bytes do not back, and shard lists
// naming files outside the model's directory. Each must be an Error naming the file, without
// reading any other file.
#include <hdf5.h>

#include <string>

#include "catch.h"
#include "common/error.h"
#include "helpers.h"
#include "shards/checkpoint.h"
#include "shards/h5util.h"
#include "shards/model_format.h"
#include "shards/model_reader.h"
#include "shards/synthetic.h"

using namespace rwkvpp;
using namespace rwkvpp::test;

namespace {

// A tiny RWKV-4 checkpoint with the official names (2 layers, 8 wide, vocab 16).
Checkpoint tiny_checkpoint() {
  ModelConfig c;
  c.version = RwkvVersion::V4;
  c.n_layer = 2;
  c.n_embd = 8;
  c.ffn_dim = 32;
  c.vocab_size = 16;
  c.dtype = DType::F32;
  return synthetic_checkpoint(c, 7);
}

// Replaces the dataset `path` of `file` by what `make(file_id)` creates there.
template <typename F>
void replace_dataset(const std::string& file, const std::string& path, F make) {
  h5::quiet();
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(f >= 0);
  REQUIRE(H5Ldelete(f, path.c_str(), H5P_DEFAULT) >= 0);
  make(f);
  H5Fclose(f);
}

// A 1-D fp32 dataset at `path` with the attributes a model's datasets carry, its storage set
// up by `dcpl`; writes `values` when given.
void fp32_dataset(hid_t f, const std::string& path, hsize_t n, hid_t dcpl,
                  const std::vector<float>* values) {
  hid_t space = H5Screate_simple(1, &n, nullptr);
  hid_t ds = H5Dcreate2(f, path.c_str(), H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  REQUIRE(ds >= 0);
  if (values)
    REQUIRE(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values->data()) >= 0);
  h5::set_attr(ds, "dtype", std::string("fp32"));
  h5::set_attr_u64(ds, "checksum", values ? fnv1a64(values->data(), values->size() * 4) : 0);
  H5Dclose(ds);
  H5Sclose(space);
}

}  // namespace

TEST_CASE("model files may not make HDF5 read other files or invent data", "[shards][hostile]") {
  TempDir d;
  const Checkpoint tiny = tiny_checkpoint();
  write_model(tiny, infer_config(tiny), d / "m", WriteOptions{});
  write_model(tiny, infer_config(tiny), d / "elsewhere", WriteOptions{});
  const std::string model = d / "m/model.h5", other = d / "elsewhere/model.h5";
  const std::vector<float> ones(8, 1.0f);
  CHECK(ModelReader(d / "m").read_tensor("ln_out.weight").to_f32().size() == 8);

  SECTION("an external link to a dataset of another file") {
    replace_dataset(model, "/ln_out/weight", [&](hid_t f) {
      REQUIRE(H5Lcreate_external(other.c_str(), "/ln_out/weight", f, "/ln_out/weight", H5P_DEFAULT,
                                 H5P_DEFAULT) >= 0);
    });
    const std::string msg = error_of([&] { ModelReader(d / "m").read_tensor("ln_out.weight"); });
    CHECK(contains(msg, model));
    CHECK(contains(msg, "external link"));
    CHECK(contains(msg, other));
  }
  SECTION("an external link on the way to the tokenizer") {
    hid_t f = H5Fopen(model.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(H5Lcreate_external(other.c_str(), "/ln_out", f, "/tokenizer", H5P_DEFAULT,
                               H5P_DEFAULT) >= 0);
    H5Fclose(f);
    const std::string msg = error_of([&] { ModelReader(d / "m").read_tokenizer(); });
    CHECK(contains(msg, "external link"));
  }
  SECTION("a dataset whose data live in an outside raw file") {
    write_file(d / "raw.bin", std::string(32, '\x01'));
    replace_dataset(model, "/ln_out/weight", [&](hid_t f) {
      hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
      REQUIRE(H5Pset_external(dcpl, (d / "raw.bin").c_str(), 0, 32) >= 0);
      fp32_dataset(f, "/ln_out/weight", 8, dcpl, nullptr);
      H5Pclose(dcpl);
    });
    const std::string msg = error_of([&] { ModelReader(d / "m").read_tensor("ln_out.weight"); });
    CHECK(contains(msg, "/ln_out/weight"));
    CHECK(contains(msg, "external files"));
  }
  SECTION("a virtual dataset mapping another file") {
    replace_dataset(model, "/ln_out/weight", [&](hid_t f) {
      hsize_t n = 8;
      hid_t src = H5Screate_simple(1, &n, nullptr);
      hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
      REQUIRE(H5Pset_virtual(dcpl, src, other.c_str(), "/ln_out/weight", src) >= 0);
      fp32_dataset(f, "/ln_out/weight", 8, dcpl, nullptr);
      H5Pclose(dcpl);
      H5Sclose(src);
    });
    const std::string msg = error_of([&] { ModelReader(d / "m").read_tensor("ln_out.weight"); });
    CHECK(contains(msg, "virtual dataset"));
  }
  SECTION("a shape that the stored bytes do not back") {
    replace_dataset(model, "/ln_out/weight", [&](hid_t f) {
      hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
      hsize_t chunk = 1 << 20;
      H5Pset_chunk(dcpl, 1, &chunk);
      fp32_dataset(f, "/ln_out/weight", hsize_t(1) << 40, dcpl, nullptr);  // 4 TiB, nothing stored
      H5Pclose(dcpl);
    });
    const std::string msg = error_of([&] { ModelReader(d / "m").read_tensor("ln_out.weight"); });
    CHECK(contains(msg, "/ln_out/weight"));
    CHECK(contains(msg, "the file stores 0"));
  }
  SECTION("layouts and filters the writer never uses") {
    // A deflate filter (any filter but Fletcher32 could also name a plugin library), and a
    // compact layout (libhdf5's compact reader has had out-of-bounds reads).
    for (int kind : {0, 1}) {
      INFO((kind == 0 ? "deflate" : "compact"));
      replace_dataset(model, "/ln_out/weight", [&](hid_t f) {
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
        hsize_t chunk = 8;
        if (kind == 0) {
          H5Pset_chunk(dcpl, 1, &chunk);
          H5Pset_deflate(dcpl, 6);
        } else {
          H5Pset_layout(dcpl, H5D_COMPACT);
        }
        fp32_dataset(f, "/ln_out/weight", 8, dcpl, &ones);
        H5Pclose(dcpl);
      });
      const std::string msg = error_of([&] { ModelReader(d / "m").read_tensor("ln_out.weight"); });
      CHECK(contains(msg, "/ln_out/weight"));
      CHECK(contains(msg, kind == 0 ? "uses HDF5 filter 1" : "layout (0)"));
    }
  }
  SECTION("a shard list that names a file outside the model's directory") {
    hid_t f = H5Fopen(model.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    h5::set_attr(f, "shards",
                 std::string(R"([{"file": "../elsewhere/model.h5", "first": 0, "last": 2}])"));
    H5Fclose(f);
    const std::string msg = error_of([&] { ModelReader r(d / "m"); });
    CHECK(contains(msg, "'shards'"));
    CHECK(contains(msg, "../elsewhere/model.h5"));
  }
  // Each refused open closes model.h5 again (it used to stay open when the constructor threw,
  // and the next H5Fopen for writing failed).
  SECTION("a shard list with layer numbers out of range or not integers") {
    for (const char* bad :
         {R"([{"file": "a.h5", "first": 0, "last": 1e300}])",
          R"([{"file": "a.h5", "first": 0, "last": 3000000000}])", R"({"file": "a.h5"})"}) {
      INFO(bad);
      hid_t f = H5Fopen(model.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
      h5::set_attr(f, "shards", std::string(bad));
      H5Fclose(f);
      const std::string msg = error_of([&] { ModelReader r(d / "m"); });
      CHECK(contains(msg, model));
      CHECK(contains(msg, "'shards'"));
    }
  }
}
