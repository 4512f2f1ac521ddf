// Pieces of the recovery tests (recovery_job.h).
#include "recovery_job.h"

#include <algorithm>
#include <fstream>

#include "catch.h"
#include "net/transports.h"
#include "small_model.h"

namespace rwkvpp::test {

bool skip_without_ucx() {
  if (have_ucx_transport()) return false;
  WARN("SKIPPED: this build has no UCX transport");
  return true;
}

std::vector<std::string> sorted_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> v;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) v.push_back(line);
  std::sort(v.begin(), v.end());
  return v;
}

Job::Job() {
  std::string text;
  for (int i = 0; i < kRecords; ++i)
    text += "{\"id\": " + std::to_string(i) + ", \"prompt\": \"The storyteller of the northern hills began tale " +
            std::to_string(i) + ": once upon a time\", \"max_tokens\": " + std::to_string(100 + (i % 7) * 20) +
            ", \"temperature\": 0.9, \"seed\": " + std::to_string(1000 + i) + "}\n";
  write_file(prompts, text);
  write_file(prefix, "A shared preamble that every prompt continues, read once into a prefix state. ");
  REQUIRE(run(rwkvpp_binary() + " keygen " + key, 30).exit_code == 0);
}

std::vector<std::string> Job::batch_args(const std::string& out) const {
  return {rwkvpp_binary(), "batch", "-m", small_sharded_model(), "--tokenizer", "bytes", "--input", prompts,
          "--output", out, "--prefix-file", prefix, "--presence-penalty", "0.4", "--frequency-penalty", "0.3",
          "--threads", "1", "--max-batch", "8", "--token-ids", "--progress", "none"};
}

std::vector<std::string> Job::coordinator_args(const std::string& out, const std::string& addr, int workers,
                                               int standby) const {
  std::vector<std::string> a = batch_args(out);
  for (const std::string& s : {std::string("--listen"), addr, std::string("--workers"), std::to_string(workers),
                               std::string("--standby"), std::to_string(standby), std::string("--cluster-key"), key,
                               std::string("--join-timeout"), std::string("60"), std::string("--snapshot-tokens"),
                               std::string("16")})
    a.push_back(s);
  return a;
}

std::vector<std::string> worker(const std::string& addr, const std::string& key, const std::string& pidfile,
                                double delay_s, const std::string& extra) {
  return {"/bin/sh", "-c",
          "sleep " + std::to_string(delay_s) + "; echo $$ > " + pidfile + "; exec " + rwkvpp_binary() +
              " worker --join " + addr + " --cluster-key " + key + " --threads 1 --timeout 60" +
              (extra.empty() ? "" : " " + extra)};
}

std::string wait_for_records(const std::string& out, int lines) {
  const std::string n = std::to_string(lines);
  return "i=0; c=0; while [ $i -lt 1200 ]; do c=$(cat " + out + " 2>/dev/null | wc -l); [ \"$c\" -ge " + n +
         " ] && break; i=$((i+1)); sleep 0.05; done; if [ \"$c\" -lt " + n + " ] || [ \"$c\" -ge " +
         std::to_string(kRecords) + " ]; then echo \"not reached: $c records\"; exit 1; fi; ";
}

std::vector<std::string> killer(const std::string& out, int lines, const std::string& pidfile,
                                const std::string& sig) {
  return {"/bin/sh", "-c",
          wait_for_records(out, lines) + "kill " + sig + " $(cat " + pidfile + ") && echo \"killed at $c records\""};
}

}  // namespace rwkvpp::test
