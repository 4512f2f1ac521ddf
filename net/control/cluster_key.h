// The cluster key: a shared secret file that every process of a cluster started without a
// launcher holds (rwkvpp worker --join, the coordinator's --listen). Joining is a
// challenge-response over it (net/control/join_handshake.h), so that a process without the key
// can neither join nor pose as the coordinator. The key authenticates; it does not encrypt.
//
// The file holds at least 32 bytes of secret (`rwkvpp keygen` writes 64 hex digits); trailing
// whitespace is not part of the key. It must be a regular file that only its owner can read or
// write (mode 0600 or 0400): anything else is refused, naming the file and its mode.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace rwkvpp {

inline constexpr size_t kMinClusterKeyBytes = 32;
inline constexpr size_t kMaxClusterKeyBytes = 4096;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;  // HMAC-SHA256

using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

struct ClusterKey {
  std::vector<uint8_t> secret;
  std::string path;  // for messages
  bool empty() const { return secret.empty(); }
};

// Reads and checks the key file; throws Error naming `path` and what is wrong.
ClusterKey load_cluster_key(const std::string& path);

// Writes a new key (32 random bytes as 64 hex digits and a newline) to `path`, created with mode
// 0600; refuses to overwrite an existing file.
void write_new_cluster_key(const std::string& path);

// 32 bytes from OpenSSL's CSPRNG; throws Error if it cannot give them.
Nonce random_nonce();

// HMAC-SHA256 of the concatenation of `parts` under `key`.
Mac hmac_sha256(const ClusterKey& key, std::initializer_list<std::span<const uint8_t>> parts);

// Constant-time equality of two MACs.
bool macs_equal(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace rwkvpp
