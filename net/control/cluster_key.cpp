// The cluster key file, HMAC-SHA256 and nonces (OpenSSL's libcrypto; see cluster_key.h).
#include "net/control/cluster_key.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace rwkvpp {

ClusterKey load_cluster_key(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    fail("cluster key '{}': cannot open it: {}{}", path, std::strerror(errno),
         errno == ELOOP ? " (a symbolic link; give the file itself)" : "");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail("cluster key '{}': cannot stat it: {}", path, std::strerror(e));
  }
  auto refuse = [&](const std::string& why) {
    ::close(fd);
    fail("cluster key '{}': {}", path, why);
  };
  if (!S_ISREG(st.st_mode)) refuse("not a regular file");
  if ((st.st_mode & 077) != 0)
    refuse(fmt::format("mode {:04o} lets others read or change it; the key must be readable by its "
                       "owner only (chmod 600 '{}')",
                       unsigned(st.st_mode & 07777), path));
  if (st.st_uid != ::geteuid())
    refuse(fmt::format("owned by uid {}, not by this process's uid {}", st.st_uid, ::geteuid()));
  if (st.st_size > off_t(kMaxClusterKeyBytes + 64))
    refuse(fmt::format("{} bytes; a key file holds at most {}", st.st_size, kMaxClusterKeyBytes));
  std::vector<uint8_t> bytes(size_t(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) refuse(n < 0 ? std::string("read failed: ") + std::strerror(errno) : "shorter than its size");
    got += size_t(n);
  }
  ::close(fd);
  while (!bytes.empty() && (bytes.back() == '\n' || bytes.back() == '\r' || bytes.back() == ' ' ||
                            bytes.back() == '\t'))
    bytes.pop_back();
  if (bytes.size() < kMinClusterKeyBytes)
    fail("cluster key '{}': {} bytes of key; at least {} (make one with `rwkvpp keygen FILE`)", path,
         bytes.size(), kMinClusterKeyBytes);
  if (bytes.size() > kMaxClusterKeyBytes)
    fail("cluster key '{}': {} bytes; at most {}", path, bytes.size(), kMaxClusterKeyBytes);
  return ClusterKey{std::move(bytes), path};
}

void write_new_cluster_key(const std::string& path) {
  Nonce n = random_nonce();
  std::string text;
  static const char* hex = "0123456789abcdef";
  for (uint8_t b : n) {
    text.push_back(hex[b >> 4]);
    text.push_back(hex[b & 15]);
  }
  text.push_back('\n');
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) fail("cluster key '{}': cannot create it: {}", path, std::strerror(errno));
  ::fchmod(fd, 0600);  // whatever the umask
  ssize_t n_written = ::write(fd, text.data(), text.size());
  int e = errno;
  bool ok = n_written == ssize_t(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    ::unlink(path.c_str());
    fail("cluster key '{}': write failed: {}", path, std::strerror(e));
  }
}

Nonce random_nonce() {
  Nonce n{};
  if (RAND_bytes(n.data(), int(n.size())) != 1) fail("OpenSSL's RAND_bytes could not give a nonce");
  return n;
}

Mac hmac_sha256(const ClusterKey& key, std::initializer_list<std::span<const uint8_t>> parts) {
  RWKVPP_CHECK(!key.empty(), "HMAC with an empty cluster key");
  Mac out{};
  EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  EVP_MAC_CTX* ctx = mac ? EVP_MAC_CTX_new(mac) : nullptr;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0), OSSL_PARAM_construct_end()};
  size_t len = 0;
  bool ok = ctx && EVP_MAC_init(ctx, key.secret.data(), key.secret.size(), params) == 1;
  for (auto p : parts)
    if (ok) ok = EVP_MAC_update(ctx, p.data(), p.size()) == 1;
  if (ok) ok = EVP_MAC_final(ctx, out.data(), &len, out.size()) == 1 && len == out.size();
  EVP_MAC_CTX_free(ctx);
  EVP_MAC_free(mac);
  if (!ok) fail("OpenSSL could not compute an HMAC-SHA256");
  return out;
}

bool macs_equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace rwkvpp
