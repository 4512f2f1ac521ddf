// Checkpoint files as their outside tools write them, made by code independent of the readers
// under test: a torch.save look-alike (zip + protocol-2 pickle), rwkv.cpp's converter, and
// safetensors. The reader tests (tests/shards/) and the fuzz seed corpora (tests/fuzz/) use them,
// so that no file made elsewhere is copied into the repository.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "shards/checkpoint.h"

namespace rwkvpp::test {

using Shape = std::vector<int64_t>;

struct ZipFile {
  std::string name, data;
};

// Local headers with zero sizes and a data descriptor (as torch writes them), a central
// directory, and, with `zip64`, ZIP64 extra fields and end records with the 32-bit fields
// saturated, as in archives over 4 GB. `deflate` stores every entry as deflate blocks.
std::string make_zip(const std::vector<ZipFile>& files, bool zip64, bool deflate);

// One tensor of a pickled state dict: a view (offset, sizes, strides, in elements) of storage
// `key` ("data/<key>" in the archive) of `storage_numel` elements of torch.<storage_type>.
struct FakeTensor {
  std::string name, storage_type, key;
  int64_t storage_numel, offset;
  Shape sizes, strides;
  bool parameter = false;  // wrapped in torch._utils._rebuild_parameter
};

// data.pkl for a dict of tensors, with the opcodes torch.save's protocol 2 uses (GLOBAL,
// BINPERSID, REDUCE, SETITEMS, the memo, ...). `extra_op` is inserted before STOP.
std::string make_pickle(const std::vector<FakeTensor>& ts, const std::string& extra_op = "");

// The records of a .pth of `tensors` (one contiguous storage each, little-endian), as
// torch.save writes a state dict under the archive folder `archive`: data.pkl, byteorder, then
// data/0, data/1, ... in tensor order, then version.
std::vector<ZipFile> pth_files(const std::map<std::string, HostTensor>& tensors,
                               const std::string& archive = "model");
// Those records zipped.
std::string make_pth(const std::map<std::string, HostTensor>& tensors, bool zip64, bool deflate,
                     const std::string& archive = "model");

// A safetensors file of `tensors` (names as given), with an optional __metadata__ entry.
std::string make_safetensors(const std::map<std::string, HostTensor>& tensors,
                             bool metadata = false);

// The RWKV-4 official names renamed as Hugging Face transformers names them (the inverse of
// normalize_hf_names).
std::map<std::string, HostTensor> hf_rwkv4_names(const std::map<std::string, HostTensor>& t);

// rwkv.cpp's converter (python/convert_pytorch_to_ggml.py) re-implemented: applies its
// transforms to an official checkpoint of RWKV `version` 4, 6 or 7 and returns the FP32 .bin,
// so that importing it must give the checkpoint back.
std::string rwkvcpp_bytes(const Checkpoint& ck, int version);

}  // namespace rwkvpp::test
