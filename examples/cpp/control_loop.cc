// flowrl_cpp_control: a fixed-rate control loop against `flowrl serve`, in C++.
//
// It reads one observation per line from standard input (obs_dim numbers, spaces or commas between
// them), acts once per control period and writes one line per tick to standard output: "fresh" or the
// fallback's reason, then the action. A summary goes to standard error. Replace the reading and writing
// with your robot's sensors and actuators; the session (flowrl_session.h) is the part to keep.
//
// Exit status: 0 at the end of the input, 1 when the server cannot be reached or refuses the session,
// 2 for a usage or input error, 3 when the watchdog fires (--max-misses ticks in a row without a fresh action).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "flowrl_session.h"

namespace {

constexpr char kUsage[] =
    "usage: flowrl_cpp_control --server HOST:PORT [--hz HZ] [--deadline-ms MS] [--seed S] [--pin HASH]\n"
    "                          [--session-id ID] [--max-misses N] [--max-staleness-ms MS] [--wait-s S]\n"
    "                          [--token-file FILE] [--ca FILE [--cert FILE --key FILE]]\n"
    "Reads one observation per line from stdin, acts at HZ (default: the policy's control rate) and writes\n"
    "'fresh' or the fallback's reason, then the action, per tick.\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UsageError("cannot read " + path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

double Number(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    double value = std::stod(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw UsageError(flag + " takes a number, not '" + text + "'");
}

std::vector<float> ParseObservation(std::string line, int line_number, int obs_dim) {
  std::replace(line.begin(), line.end(), ',', ' ');
  std::istringstream fields(line);
  std::vector<float> obs;
  std::string field;
  while (fields >> field) {
    char* end = nullptr;
    const float value = std::strtof(field.c_str(), &end);
    if (end != field.c_str() + field.size())
      throw std::invalid_argument("line " + std::to_string(line_number) + ": '" + field + "' is not a number");
    obs.push_back(value);
  }
  if (static_cast<int>(obs.size()) != obs_dim)
    throw std::invalid_argument("line " + std::to_string(line_number) + " has " + std::to_string(obs.size()) +
                                " numbers; the policy takes " + std::to_string(obs_dim));
  return obs;
}

uint64_t Integer(const std::string& flag, const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
    try {
      return std::stoull(text);
    } catch (const std::out_of_range&) {
    }
  }
  throw UsageError(flag + " takes a whole number from 0 to 2^64 - 1, not '" + text + "'");
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  return values[static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

int Run(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag.rfind("--", 0) != 0 || i + 1 >= argc) throw UsageError("expected --FLAG VALUE at '" + flag + "'");
    args[flag] = argv[++i];
  }
  static const char* const kFlags[] = {"--server",     "--hz",         "--deadline-ms", "--seed",
                                       "--pin",        "--session-id", "--max-misses",  "--max-staleness-ms",
                                       "--wait-s",     "--token-file", "--ca",          "--cert",
                                       "--key"};
  for (const auto& [flag, value] : args)
    if (std::find(std::begin(kFlags), std::end(kFlags), flag) == std::end(kFlags))
      throw UsageError("unknown option " + flag);
  if (!args.count("--server")) throw UsageError("--server HOST:PORT is required");

  flowrl::ChannelOptions tls;
  if (args.count("--ca")) tls.ca_pem = ReadFile(args["--ca"]);
  if (args.count("--cert") != args.count("--key")) throw UsageError("--cert and --key go together");
  if (args.count("--cert")) {
    tls.cert_pem = ReadFile(args["--cert"]);
    tls.key_pem = ReadFile(args["--key"]);
  }
  flowrl::SessionOptions options;
  if (args.count("--token-file")) {
    options.token = ReadFile(args["--token-file"]);
    options.token.erase(options.token.find_last_not_of(" \t\r\n") + 1);
  }
  double hz = 0, deadline_ms = 0, staleness_ms = 0, wait_s = 30;
  if (args.count("--hz") && !((hz = Number("--hz", args["--hz"])) >= 0.01 && hz <= 10000))
    throw UsageError("--hz must be from 0.01 to 10000");
  if (args.count("--deadline-ms") &&
      !((deadline_ms = Number("--deadline-ms", args["--deadline-ms"])) >= 0.001 && deadline_ms <= 1e5))
    throw UsageError("--deadline-ms must be from 0.001 (1 µs) to 100000");
  if (args.count("--max-staleness-ms") &&
      !((staleness_ms = Number("--max-staleness-ms", args["--max-staleness-ms"])) >= 0.001 && staleness_ms <= 1e7))
    throw UsageError("--max-staleness-ms must be from 0.001 to 10000000");
  if (args.count("--wait-s") && !((wait_s = Number("--wait-s", args["--wait-s"])) >= 0 && wait_s <= 86400))
    throw UsageError("--wait-s must be from 0 to 86400");
  flowrl::Connection server(args["--server"], tls);
  flowrl::v1::GetSpecReply spec = flowrl::GetSpec(
      server.channel(), options.token, std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1e3)));

  const double period_s = hz > 0 ? 1.0 / hz : spec.control_period_s() > 0 ? spec.control_period_s() : 0.02;
  options.period = std::chrono::microseconds(static_cast<int64_t>(period_s * 1e6));
  options.deadline = std::chrono::microseconds(static_cast<int64_t>(deadline_ms * 1e3));  // 0: half the period
  options.max_staleness = std::chrono::microseconds(static_cast<int64_t>(staleness_ms * 1e3));
  if (args.count("--seed")) options.seed = Integer("--seed", args["--seed"]);
  if (args.count("--max-misses")) options.max_consecutive_misses = static_cast<int>(std::min<uint64_t>(Integer("--max-misses", args["--max-misses"]), 1u << 30));
  options.contract_hash = args.count("--pin") ? args["--pin"] : "";
  options.session_id = args.count("--session-id") ? args["--session-id"] : "cpp-" + std::to_string(::getpid());

  flowrl::ControlSession session(server, spec, options);
  std::map<std::string, int> fallbacks;
  std::vector<double> round_trips_ms;
  int ticks = 0, overruns = 0;
  std::string line, model_version = spec.model_version();
  auto next_tick = flowrl::Clock::now();
  for (int line_number = 1; std::getline(std::cin, line); ++line_number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<float> obs = ParseObservation(line, line_number, spec.obs_dim());
    flowrl::Tick tick = session.Act(obs);
    ++ticks;
    if (tick.fresh) {
      round_trips_ms.push_back(tick.round_trip.count() / 1e3);
      model_version = tick.model_version;  // a Reload or --watch swaps the model while the loop runs
    } else {
      ++fallbacks[tick.reason];
    }
    std::printf("%s", tick.fresh ? "fresh" : tick.reason.c_str());
    for (float a : tick.action) std::printf(" %.9g", a);
    std::printf("\n");
    std::fflush(stdout);
    next_tick += options.period;
    const auto now = flowrl::Clock::now();
    if (now > next_tick + options.period) {  // a tick overran (the loop stalled): skip the ticks it missed
      ++overruns;                            // rather than run them back to back, a burst of commands
      next_tick = now;
    }
    std::this_thread::sleep_until(next_tick);
  }
  std::fprintf(stderr, "%d ticks at %.1f Hz: %zu fresh", ticks, 1.0 / period_s, round_trips_ms.size());
  for (const auto& [reason, count] : fallbacks) std::fprintf(stderr, ", %d %s", count, reason.c_str());
  if (!round_trips_ms.empty())
    std::fprintf(stderr, "; round trip p50 %.3f ms, p99 %.3f ms", Percentile(round_trips_ms, 0.5),
                 Percentile(round_trips_ms, 0.99));
  if (overruns) std::fprintf(stderr, "; %d overruns (missed ticks skipped)", overruns);
  std::fprintf(stderr, " (policy %s)\n", model_version.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UsageError& error) {
    std::fprintf(stderr, "error: %s\n%s", error.what(), kUsage);
    return 2;
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 2;
  } catch (const flowrl::WatchdogError& error) {
    std::fprintf(stderr, "watchdog: %s: stop the robot\n", error.what());
    return 3;
  } catch (const std::exception& error) {  // SessionRefused, or no answer from the server
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
}
