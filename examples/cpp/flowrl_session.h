// A C++ robot's control session with `flowrl serve`: what flowrl_deploy.session.ControlSession does
// for a Python loop, for a controller written in C++ (a ROS 2 node, a real-time thread's companion).
//
// One StreamAct stream per control loop. Each Act() sends the tick's observation with the next seq and
// the tick's budget (timeout_us) and waits for that tick's reply until its deadline; a reply to an
// earlier tick is dropped. Without a fresh action in time the tick holds the last action (before any,
// the middle of the action bounds) and says why. A tick is not sent while one sent two ticks before is
// still unanswered (a stalled server answers a stream in order). A broken stream is reopened with
// backoff, once its channel is connected: a thread of the session's own keeps the channel connecting
// (a new channel after each failed attempt), as opening a stream on a channel still connecting waits for
// the connection, which Act() never does. A refusal that is a mistake to fix (a refused contract pin, a bad token, a wrong observation)
// throws SessionRefused; too many ticks in a row without a fresh action, or too long, throw
// WatchdogError, so that the robot can stop.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "flowrl/v1/policy.grpc.pb.h"

namespace flowrl {

using Clock = std::chrono::steady_clock;

// A refusal by the server that retrying will not cure: the message names the status code.
class SessionRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// max_consecutive_misses ticks in a row without a fresh action: stop the robot.
class WatchdogError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ChannelOptions {
  std::string ca_pem;    // the server certificate's CA (flowrl serve --tls-cert): TLS; empty: plaintext
  std::string cert_pem;  // this client's certificate and key, for a server with --client-ca (mTLS)
  std::string key_pem;
};

// A channel as the Python client makes one: no HTTP proxy (which would read a token sent without TLS),
// quick reconnection, and keepalive pings that notice a server gone without closing the connection in 10-15 s.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, const ChannelOptions& options);

// A channel to the server that can be made anew: gRPC's own reconnection (release 1.51 at least) can wait
// seconds after a server restart, where a new channel connects at once. Copies share the channel.
class Connection {
 public:
  Connection(std::string target, ChannelOptions options)
      : target_(std::move(target)), options_(std::move(options)), channel_(MakeChannel(target_, options_)) {}
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  void Renew() { channel_ = MakeChannel(target_, options_); }

 private:
  std::string target_;
  ChannelOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
};

// The served policy's spec (sizes, bounds, control period, contract hash), waiting up to `wait` for a
// server to listen and to load its model (as a robot started before its server needs); throws
// SessionRefused when the server refuses the call and std::runtime_error when none answers in time.
flowrl::v1::GetSpecReply GetSpec(const std::shared_ptr<grpc::Channel>& channel, const std::string& token,
                                 std::chrono::milliseconds wait);

struct SessionOptions {
  std::string session_id;                  // the server's name for this loop's session (<= 256 bytes)
  std::optional<uint64_t> seed;            // the server's noise for this session; unset: unseeded
  std::string contract_hash;               // the pin (`flowrl inspect` prints it); empty: no pin
  std::chrono::microseconds period{10000};
  std::chrono::microseconds deadline{0};   // how long Act() waits for a fresh action (at most the
                                           // period); 0: half the period
  int max_consecutive_misses = 0;          // > 0: Act() throws WatchdogError at that many misses in a row
  std::chrono::microseconds max_staleness{0};  // > 0: Act() throws WatchdogError when the action held is
                                               // older than that (from the session's start before any)
  std::string token;                       // the server's --token, sent as "authorization: Bearer <token>"
  std::chrono::milliseconds backoff_min{50};
  std::chrono::milliseconds backoff_max{1000};
};

struct Tick {
  std::vector<float> action;                // to apply: the fresh action, or the last one held
  bool fresh = false;
  std::string reason;                       // why not fresh: "deadline", "backlog", "disconnected",
                                            // "invalid action", or the server's status code name
  std::chrono::microseconds round_trip{0};  // send to reply, fresh ticks only
  std::string model_version;                // the served model that produced the action (fresh ticks only)
};

class ControlSession {
 public:
  // `spec` is GetSpec's reply. The session starts on the connection's channel (connected already by
  // GetSpec), and its thread renews it after each failed connection attempt, with backoff.
  ControlSession(Connection connection, flowrl::v1::GetSpecReply spec, SessionOptions options);
  ~ControlSession();
  ControlSession(const ControlSession&) = delete;
  ControlSession& operator=(const ControlSession&) = delete;

  // One control tick, from one thread (the control loop's): blocks at most the deadline. Throws
  // std::invalid_argument for an observation of another size than the spec's or not finite,
  // SessionRefused and WatchdogError as above.
  Tick Act(const std::vector<float>& obs);

 private:
  class Stream;  // one StreamAct call and the thread reading its replies
  using Reply = flowrl::v1::StreamActReply;

  // The fresh reply to tick `seq` before `until`, or the reason there is none.
  std::variant<Reply, std::string> Exchange(const std::vector<float>& obs, uint64_t seq, Clock::time_point until);
  Stream* LiveStream();
  void RetryLater(Clock::time_point now);
  void KeepConnected();  // the session's thread: keeps the channel connected, or connecting
  std::shared_ptr<grpc::Channel> Channel();
  bool Behind() const;
  void Take(const Reply& reply);  // a reply read: its tick and earlier ones answered; a refusal thrown
  void Answered(uint64_t seq);
  std::string Broken();
  bool ValidAction(const std::vector<float>& action) const;

  Connection connection_;  // its channel replaced by KeepConnected, under channel_mutex_
  std::mutex channel_mutex_;
  std::condition_variable stopping_cv_;
  bool stopping_ = false;
  flowrl::v1::GetSpecReply spec_;
  SessionOptions options_;
  std::unique_ptr<Stream> stream_;
  bool opened_ = false;  // whether a reply on this stream was OK (then no seed or pin is sent again)
  std::deque<std::pair<uint64_t, Clock::time_point>> sent_;  // ticks sent and unanswered, oldest first
  uint64_t seq_ = 0;
  int misses_ = 0;
  Clock::time_point last_fresh_;  // when the action held came (the session's start before any)
  std::vector<float> last_action_;
  std::string down_reason_ = "disconnected";
  std::chrono::milliseconds retry_in_;
  Clock::time_point retry_at_{};
  std::minstd_rand jitter_{std::random_device{}()};
  std::thread connector_;
};

}  // namespace flowrl
